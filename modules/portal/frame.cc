#include "frame.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <iterator>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <google/protobuf/util/time_util.h>
#include <rapidjson/error/en.h>
#include <rapidjson/memorystream.h>
#include <rapidjson/reader.h>

namespace snow::portal {
namespace {

bool validType(std::string_view type) {
  if (type.empty() || type.size() > 64 ||
      !((type[0] >= 'a' && type[0] <= 'z') || (type[0] >= '0' && type[0] <= '9'))) {
    return false;
  }
  return std::all_of(type.begin(), type.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
  });
}

bool validId(std::string_view id) {
  return !id.empty() && id.size() <= 64 &&
         std::all_of(id.begin(), id.end(), [](char c) { return c > ' ' && c < 127; });
}

// What a peer may see of our input in an error message: short, and printable.
std::string excerpt(std::string_view text) {
  std::string out;
  for (const char c : text.substr(0, 40)) {
    out += c >= ' ' && c < 127 ? c : '?';
  }
  return text.size() > 40 ? out + "..." : out;
}

// Whether `text` is well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates, at most
// U+10FFFF). Eight ASCII bytes at a time: RapidJSON's own validation cost more than the parse.
bool validUtf8(std::string_view text) {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const auto* end = p + text.size();
  while (p < end) {
    if (end - p >= 8) {
      uint64_t eight = 0;
      std::memcpy(&eight, p, 8);
      if ((eight & 0x8080808080808080ULL) == 0) {
        p += 8;
        continue;
      }
    }
    const unsigned char c = *p;
    if (c < 0x80) {
      ++p;
      continue;
    }
    size_t length = 0;
    uint32_t low = 0x80;  // The smallest second byte allowed (rules out overlong forms).
    uint32_t high = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) {
      length = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
      length = 3;
      low = c == 0xe0 ? 0xa0 : 0x80;
      high = c == 0xed ? 0x9f : 0xbf;  // No UTF-16 surrogates.
    } else if (c >= 0xf0 && c <= 0xf4) {
      length = 4;
      low = c == 0xf0 ? 0x90 : 0x80;
      high = c == 0xf4 ? 0x8f : 0xbf;
    } else {
      return false;
    }
    if (static_cast<size_t>(end - p) < length || p[1] < low || p[1] > high) {
      return false;
    }
    for (size_t i = 2; i < length; ++i) {
      if ((p[i] & 0xc0U) != 0x80) {
        return false;
      }
    }
    p += length;
  }
  return true;
}

}  // namespace

void FrameDecoder::feed(std::string_view bytes) {
  if (offset_ > 0 && offset_ >= buffer_.size() / 2) {
    buffer_.erase(0, offset_);  // Compact once half is consumed: amortised O(1) per byte.
    offset_ = 0;
  }
  buffer_.append(bytes);
}

std::optional<std::string> FrameDecoder::next() {
  if (pending() < kFrameHeaderBytes) {
    return std::nullopt;
  }
  const auto* header = reinterpret_cast<const unsigned char*>(buffer_.data() + offset_);
  const uint32_t length = (uint32_t{header[0]} << 24) | (uint32_t{header[1]} << 16) |
                          (uint32_t{header[2]} << 8) | uint32_t{header[3]};
  if (length == 0) {
    throw FrameError("empty frame (length 0): every frame holds one JSON envelope");
  }
  if (length > max_) {
    throw FrameError(fmt::format("frame of {} bytes is over the limit of {} bytes", length, max_));
  }
  if (pending() < kFrameHeaderBytes + length) {
    return std::nullopt;
  }
  std::string body = buffer_.substr(offset_ + kFrameHeaderBytes, length);
  offset_ += kFrameHeaderBytes + length;
  if (offset_ == buffer_.size()) {
    buffer_.clear();
    offset_ = 0;
  }
  return body;
}

std::string frameHeader(uint32_t length) {
  std::string header(kFrameHeaderBytes, '\0');
  header[0] = static_cast<char>(length >> 24);
  header[1] = static_cast<char>((length >> 16) & 0xff);
  header[2] = static_cast<char>((length >> 8) & 0xff);
  header[3] = static_cast<char>(length & 0xff);
  return header;
}

std::string encodeFrame(std::string_view body, size_t maxFrameBytes) {
  if (body.empty() || body.size() > maxFrameBytes) {
    throw FrameError(fmt::format("cannot send a frame of {} bytes (1 to {} allowed)", body.size(),
                                 maxFrameBytes));
  }
  std::string frame = frameHeader(static_cast<uint32_t>(body.size()));
  frame.reserve(kFrameHeaderBytes + body.size());
  frame.append(body);
  return frame;
}

namespace {

constexpr int kMaxPayloadDepth = 64;

// Builds the envelope from RapidJSON's events (SAX): one pass, no intermediate document. Only the
// envelope's keys are accepted at the top; the payload becomes a google.protobuf.Value.
class EnvelopeReader : public rapidjson::BaseReaderHandler<rapidjson::UTF8<>, EnvelopeReader> {
 public:
  explicit EnvelopeReader(v1::Envelope& out) : out_(out) {}

  [[nodiscard]] const std::string& problem() const noexcept { return problem_; }

  bool Null() {
    if (field_ == Field::Payload) {
      slot()->set_null_value(google::protobuf::NULL_VALUE);
      return scalarDone();
    }
    return field_ != Field::None ? fieldDone() : notAString();  // null for a field: absent.
  }
  bool Bool(bool b) {
    if (field_ != Field::Payload) {
      return notAString();
    }
    slot()->set_bool_value(b);
    return scalarDone();
  }
  // Numbers arrive as text (kParseNumbersAsStringsFlag) and are converted here, correctly
  // rounded, so that what we encode again reads back the same. RapidJSON's own conversion is
  // either fast and off in the last place, or (full precision) undefined for inputs like
  // "0.0e-309" (clz of zero in diyfp.h): the fuzzer found both.
  bool RawNumber(const char* text, rapidjson::SizeType length, bool /*copy*/) {
    double d = 0;
    const auto [end, error] = std::from_chars(text, text + length, d);
    if (end != text + length || (error != std::errc() && error != std::errc::result_out_of_range)) {
      return false;
    }
    if (error == std::errc::result_out_of_range) {
      // Too small rounds to zero; too big has no double: refused, as JSON parsers may.
      const std::string_view number(text, length);
      const bool underflow = number.find("e-") != std::string_view::npos ||
                             number.find("E-") != std::string_view::npos;
      if (!underflow) {
        return false;
      }
      d = 0;
    }
    return Double(d);
  }
  bool Double(double d) {
    if (field_ != Field::Payload) {
      return notAString();
    }
    slot()->set_number_value(d);
    return scalarDone();
  }
  bool String(const char* text, rapidjson::SizeType length, bool /*copy*/) {
    const std::string_view value(text, length);
    switch (field_) {
      case Field::Payload:
        slot()->set_string_value(std::string(value));
        return scalarDone();
      case Field::Type:
        out_.set_type(std::string(value));
        break;
      case Field::Id:
        out_.set_id(std::string(value));
        break;
      case Field::Sender:
        out_.set_sender(std::string(value));
        break;
      case Field::Traceparent:
        out_.set_traceparent(std::string(value));
        break;
      case Field::Timestamp:
        if (!google::protobuf::util::TimeUtil::FromString(std::string(value),
                                                          out_.mutable_timestamp())) {
          return fail(
              fmt::format("timestamp '{}' is not RFC 3339 (2026-11-25T04:40:00Z)", excerpt(value)));
        }
        break;
      case Field::None:
        return notAString();
    }
    return fieldDone();
  }
  bool StartObject() {
    if (field_ == Field::Payload) {
      return enter(slot(), true);
    }
    if (top_) {
      return notAString();
    }
    top_ = true;
    return true;
  }
  bool Key(const char* text, rapidjson::SizeType length, bool /*copy*/) {
    const std::string_view key(text, length);
    if (!stack_.empty()) {
      pendingKey_.assign(key);
      return true;
    }
    static constexpr std::pair<std::string_view, Field> kFields[] = {
        {"type", Field::Type},       {"id", Field::Id},
        {"sender", Field::Sender},   {"timestamp", Field::Timestamp},
        {"payload", Field::Payload}, {"traceparent", Field::Traceparent}};
    for (const auto& [name, field] : kFields) {
      if (key == name) {
        const auto bit = 1U << static_cast<unsigned>(field);
        if ((seen_ & bit) != 0) {
          return fail(fmt::format("key '{}' appears twice", name));
        }
        seen_ |= bit;
        field_ = field;
        return true;
      }
    }
    return fail(
        fmt::format("unknown key '{}' (the keys are type, id, sender, timestamp, "
                    "payload, traceparent)",
                    excerpt(key)));
  }
  bool EndObject(rapidjson::SizeType /*members*/) { return leave(); }
  bool StartArray() {
    if (field_ != Field::Payload) {
      return notAString();
    }
    return enter(slot(), false);
  }
  bool EndArray(rapidjson::SizeType /*elements*/) { return leave(); }

 private:
  enum class Field : uint8_t { None, Type, Id, Sender, Timestamp, Payload, Traceparent };

  // Where the payload's next value goes.
  google::protobuf::Value* slot() {
    if (stack_.empty()) {
      return out_.mutable_payload();
    }
    google::protobuf::Value* top = stack_.back();
    if (top->has_struct_value()) {
      return &(*top->mutable_struct_value()->mutable_fields())[pendingKey_];
    }
    return top->mutable_list_value()->add_values();
  }
  bool enter(google::protobuf::Value* value, bool object) {
    if (stack_.size() >= kMaxPayloadDepth) {
      return fail(fmt::format("payload nested deeper than {} levels", kMaxPayloadDepth));
    }
    if (object) {
      value->mutable_struct_value();
    } else {
      value->mutable_list_value();
    }
    stack_.push_back(value);
    return true;
  }
  bool leave() {
    if (stack_.empty()) {
      return true;  // The envelope itself.
    }
    stack_.pop_back();
    return scalarDone();
  }
  bool scalarDone() { return stack_.empty() ? fieldDone() : true; }
  bool fieldDone() {
    field_ = Field::None;
    return true;
  }
  bool notAString() {
    return fail(top_ ? "envelope fields other than payload are strings"
                     : "an envelope is a JSON object");
  }
  bool fail(std::string problem) {
    problem_ = std::move(problem);
    return false;
  }

  v1::Envelope& out_;
  Field field_ = Field::None;
  bool top_ = false;
  unsigned seen_ = 0;
  std::vector<google::protobuf::Value*> stack_;
  std::string pendingKey_;
  std::string problem_;
};

}  // namespace

v1::Envelope decodeEnvelope(std::string_view json) {
  v1::Envelope envelope;
  EnvelopeReader handler(envelope);
  rapidjson::Reader reader;
  rapidjson::MemoryStream stream(json.data(), json.size());
  if (!validUtf8(json)) {
    throw EnvelopeError(fmt::format("malformed envelope '{}': not valid UTF-8", excerpt(json)));
  }
  // Iterative: a deeply nested payload cannot overflow the stack. Numbers as text: see
  // EnvelopeReader::RawNumber.
  const rapidjson::ParseResult result =
      reader.Parse<rapidjson::kParseIterativeFlag | rapidjson::kParseNumbersAsStringsFlag>(stream,
                                                                                           handler);
  if (!result) {
    throw EnvelopeError(
        fmt::format("malformed envelope '{}': {}", excerpt(json),
                    !handler.problem().empty()
                        ? handler.problem()
                        : fmt::format("{} (at byte {})", rapidjson::GetParseError_En(result.Code()),
                                      result.Offset())));
  }
  if (!validType(envelope.type())) {
    throw EnvelopeError(
        envelope.type().empty()
            ? std::string("envelope without a type")
            : fmt::format("envelope type '{}' is not [a-z0-9][a-z0-9._-]* of at most 64",
                          excerpt(envelope.type())));
  }
  if (!validId(envelope.id())) {
    throw EnvelopeError(envelope.id().empty()
                            ? fmt::format("envelope of type '{}' without an id", envelope.type())
                            : fmt::format("envelope id '{}' is not 1 to 64 printable characters",
                                          excerpt(envelope.id())));
  }
  return envelope;
}

v1::Envelope errorEnvelope(std::string_view code, std::string_view message, std::string_view ref) {
  v1::Envelope error;
  error.set_type("portal.error");
  auto& fields = *error.mutable_payload()->mutable_struct_value()->mutable_fields();
  fields["code"].set_string_value(std::string(code));
  fields["message"].set_string_value(std::string(message));
  if (!ref.empty()) {
    fields["ref"].set_string_value(std::string(ref));
  }
  return error;
}

std::string payloadField(const v1::Envelope& envelope, const char* name) {
  const auto& fields = envelope.payload().struct_value().fields();
  auto it = fields.find(name);
  return it != fields.end() ? it->second.string_value() : std::string();
}

namespace {

void appendString(std::string& out, std::string_view text) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += '"';
  size_t plain = 0;  // Runs of bytes that need no escape are appended at once.
  for (size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c != '"' && c != '\\') {
      continue;
    }
    out.append(text.substr(plain, i - plain));
    plain = i + 1;
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        out += "\\u00";
        out += kHex[c >> 4U];
        out += kHex[c & 0xfU];
    }
  }
  out.append(text.substr(plain));
  out += '"';
}

void appendValue(std::string& out, const google::protobuf::Value& value) {
  switch (value.kind_case()) {
    case google::protobuf::Value::kNumberValue: {
      const double d = value.number_value();
      if (!std::isfinite(d)) {
        out += "null";  // JSON has no NaN or infinity.
      } else if (d == std::trunc(d) && std::fabs(d) < 9007199254740992.0) {
        fmt::format_to(std::back_inserter(out), "{}", static_cast<int64_t>(d));
      } else {
        fmt::format_to(std::back_inserter(out), "{}", d);  // Shortest round-trip form.
      }
      break;
    }
    case google::protobuf::Value::kStringValue:
      appendString(out, value.string_value());
      break;
    case google::protobuf::Value::kBoolValue:
      out += value.bool_value() ? "true" : "false";
      break;
    case google::protobuf::Value::kStructValue: {
      out += '{';
      bool first = true;
      for (const auto& [key, member] : value.struct_value().fields()) {
        if (!first) {
          out += ',';
        }
        first = false;
        appendString(out, key);
        out += ':';
        appendValue(out, member);
      }
      out += '}';
      break;
    }
    case google::protobuf::Value::kListValue: {
      out += '[';
      bool first = true;
      for (const auto& element : value.list_value().values()) {
        if (!first) {
          out += ',';
        }
        first = false;
        appendValue(out, element);
      }
      out += ']';
      break;
    }
    default:
      out += "null";
  }
}

}  // namespace

std::string encodeEnvelope(const v1::Envelope& envelope) {
  std::string out;
  out.reserve(128 + envelope.payload().string_value().size());
  out += "{\"type\":";
  appendString(out, envelope.type());
  out += ",\"id\":";
  appendString(out, envelope.id());
  if (!envelope.sender().empty()) {
    out += ",\"sender\":";
    appendString(out, envelope.sender());
  }
  if (envelope.has_timestamp()) {
    out += ",\"timestamp\":";
    appendString(out, google::protobuf::util::TimeUtil::ToString(envelope.timestamp()));
  }
  if (envelope.has_payload()) {
    out += ",\"payload\":";
    appendValue(out, envelope.payload());
  }
  if (!envelope.traceparent().empty()) {
    out += ",\"traceparent\":";
    appendString(out, envelope.traceparent());
  }
  out += '}';
  return out;
}

}  // namespace snow::portal
