#include "wire.h"

#include <cmath>

#include <fmt/format.h>
#include <sodium.h>

#include "snow/core/identity.h"

namespace snow::gossip {

Value stringValue(std::string text) {
  Value v;
  v.set_string_value(std::move(text));
  return v;
}

Value numberValue(double number) {
  Value v;
  v.set_number_value(number);
  return v;
}

Value boolValue(bool flag) {
  Value v;
  v.set_bool_value(flag);
  return v;
}

Value emptyObject() {
  Value v;
  (void)v.mutable_struct_value();
  return v;
}

Value memberValue(const MemberRecord& record) {
  Value v;
  auto& fields = *v.mutable_struct_value()->mutable_fields();
  fields["id"] = stringValue(record.id);
  fields["addr"] = stringValue(record.address);
  // Incarnations start at the start time in milliseconds: exact in a JSON number (< 2^53).
  fields["inc"] = numberValue(static_cast<double>(record.incarnation));
  fields["status"] = stringValue(statusName(record.status));
  if (!record.metadata.empty()) {
    auto& meta = *fields["meta"].mutable_struct_value()->mutable_fields();
    for (const auto& [key, value] : record.metadata) {
      meta[key] = stringValue(value);
    }
  }
  return v;
}

Value membersValue(const std::vector<const MemberRecord*>& records) {
  Value v;
  auto& list = *v.mutable_list_value();
  for (const MemberRecord* record : records) {
    *list.add_values() = memberValue(*record);
  }
  return v;
}

Value idsValue(const std::vector<std::string>& ids) {
  Value v;
  auto& list = *v.mutable_list_value();
  for (const auto& id : ids) {
    list.add_values()->set_string_value(id);
  }
  return v;
}

const Struct& objectOf(const Value& payload) {
  if (payload.kind_case() != Value::kStructValue) {
    throw Malformed("the payload is not a JSON object");
  }
  return payload.struct_value();
}

const Value& fieldOf(const Struct& object, const char* key) {
  auto it = object.fields().find(key);
  if (it == object.fields().end()) {
    throw Malformed(fmt::format("'{}' is missing", key));
  }
  return it->second;
}

std::string stringField(const Struct& object, const char* key, size_t maxLength) {
  const Value& v = fieldOf(object, key);
  if (v.kind_case() != Value::kStringValue) {
    throw Malformed(fmt::format("'{}' is not a string", key));
  }
  if (v.string_value().empty() || v.string_value().size() > maxLength) {
    throw Malformed(fmt::format("'{}' is not 1 to {} characters", key, maxLength));
  }
  return v.string_value();
}

uint64_t integerField(const Struct& object, const char* key) {
  const Value& v = fieldOf(object, key);
  if (v.kind_case() == Value::kStringValue) {  // Nanosecond times travel as strings.
    const std::string& text = v.string_value();
    if (text.empty() || text.size() > 19 ||
        text.find_first_not_of("0123456789") != std::string::npos) {
      throw Malformed(fmt::format("'{}' is not a non-negative integer", key));
    }
    return std::stoull(text);
  }
  if (v.kind_case() != Value::kNumberValue) {
    throw Malformed(fmt::format("'{}' is not a number", key));
  }
  const double d = v.number_value();
  if (!(d >= 0) || d > 9007199254740992.0 || std::floor(d) != d) {
    throw Malformed(fmt::format("'{}' is not a non-negative integer", key));
  }
  return static_cast<uint64_t>(d);
}

bool boolField(const Struct& object, const char* key) {
  const Value& v = fieldOf(object, key);
  if (v.kind_case() != Value::kBoolValue) {
    throw Malformed(fmt::format("'{}' is not true or false", key));
  }
  return v.bool_value();
}

MemberRecord memberOf(const Value& value) {
  const Struct& object = objectOf(value);
  MemberRecord record;
  record.id = stringField(object, "id", 32);
  if (!NodeIdentity::isNodeId(record.id)) {
    throw Malformed(fmt::format("member id '{}' is not a node id", record.id));
  }
  record.address = stringField(object, "addr", kMaxAddress);
  record.incarnation = integerField(object, "inc");
  const std::string status = stringField(object, "status", 16);
  auto named = statusNamed(status);
  if (!named) {
    throw Malformed(fmt::format("member status '{}' is not alive, suspect, dead or left", status));
  }
  record.status = *named;
  if (auto it = object.fields().find("meta"); it != object.fields().end()) {
    if (it->second.kind_case() != Value::kStructValue) {
      throw Malformed("member 'meta' is not an object");
    }
    const auto& meta = it->second.struct_value().fields();
    if (meta.size() > kMaxMetadataEntries) {
      throw Malformed(fmt::format("member 'meta' has over {} entries", kMaxMetadataEntries));
    }
    for (const auto& [key, v] : meta) {
      if (key.empty() || key.size() > kMaxMetadataKey || v.kind_case() != Value::kStringValue ||
          v.string_value().size() > kMaxMetadataValue) {
        throw Malformed(fmt::format(
            "member 'meta' entries are strings, keys 1 to {} and values up to {} characters",
            kMaxMetadataKey, kMaxMetadataValue));
      }
      record.metadata.emplace(key, v.string_value());
    }
  }
  return record;
}

std::vector<MemberRecord> membersOf(const Struct& object, const char* key) {
  const Value& v = fieldOf(object, key);
  if (v.kind_case() != Value::kListValue) {
    throw Malformed(fmt::format("'{}' is not a list", key));
  }
  if (static_cast<size_t>(v.list_value().values_size()) > 65536) {
    throw Malformed(fmt::format("'{}' has over 65536 members", key));
  }
  std::vector<MemberRecord> out;
  out.reserve(v.list_value().values_size());
  for (const auto& entry : v.list_value().values()) {
    out.push_back(memberOf(entry));
  }
  return out;
}

std::vector<std::string> idsOf(const Struct& object, const char* key) {
  const Value& v = fieldOf(object, key);
  if (v.kind_case() != Value::kListValue || v.list_value().values_size() == 0 ||
      static_cast<size_t>(v.list_value().values_size()) > kMaxIdsPerMessage) {
    throw Malformed(fmt::format("'{}' is not a list of 1 to {} ids", key, kMaxIdsPerMessage));
  }
  std::vector<std::string> out;
  for (const auto& entry : v.list_value().values()) {
    if (entry.kind_case() != Value::kStringValue || entry.string_value().empty() ||
        entry.string_value().size() > kMaxIdLength) {
      throw Malformed(fmt::format("'{}' holds something that is not a message id", key));
    }
    out.push_back(entry.string_value());
  }
  return out;
}

bool isTopic(std::string_view topic) noexcept {
  if (topic.empty() || topic.size() > kMaxTopicLength) {
    return false;
  }
  for (char c : topic) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '/' || c == '-';
    if (!ok) {
      return false;
    }
  }
  return true;
}

std::string toBase64(std::string_view bytes) {
  std::string out(sodium_base64_encoded_len(bytes.size(), sodium_base64_VARIANT_ORIGINAL), '\0');
  sodium_bin2base64(out.data(), out.size(), reinterpret_cast<const unsigned char*>(bytes.data()),
                    bytes.size(), sodium_base64_VARIANT_ORIGINAL);
  out.pop_back();  // The terminating NUL.
  return out;
}

std::optional<std::string> fromBase64(std::string_view text) {
  std::string out(text.size() / 4 * 3 + 3, '\0');
  size_t length = 0;
  const char* end = nullptr;
  if (sodium_base642bin(reinterpret_cast<unsigned char*>(out.data()), out.size(), text.data(),
                        text.size(), nullptr, &length, &end, sodium_base64_VARIANT_ORIGINAL) != 0 ||
      end != text.data() + text.size()) {
    return std::nullopt;
  }
  out.resize(length);
  return out;
}

}  // namespace snow::gossip
