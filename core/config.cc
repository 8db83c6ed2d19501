#include "snow/core/config.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <limits>
#include <system_error>

#include <fmt/format.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/duration.pb.h>
#include <google/protobuf/reflection.h>
#include <yaml-cpp/yaml.h>

#include "snow/posix/files.h"

namespace snow::config {
namespace {

namespace pb = google::protobuf;

std::string joinLines(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& line : lines) {
    if (!out.empty()) {
      out += '\n';
    }
    out += line;
  }
  return out;
}

std::vector<std::string_view> splitPath(std::string_view keyPath) {
  std::vector<std::string_view> parts;
  while (!keyPath.empty()) {
    const auto dot = keyPath.find('.');
    parts.push_back(keyPath.substr(0, dot));
    keyPath = dot == std::string_view::npos ? std::string_view() : keyPath.substr(dot + 1);
  }
  return parts;
}

size_t editDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) {
    row[j] = j;
  }
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

template <typename T>
bool parseInteger(std::string_view text, T& out) {
  const auto* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, out);
  return ec == std::errc() && ptr == end;
}

bool parseDouble(std::string_view text, double& out) {
  if (text == ".inf" || text == "+.inf") {
    out = std::numeric_limits<double>::infinity();
    return true;
  }
  if (text == "-.inf") {
    out = -std::numeric_limits<double>::infinity();
    return true;
  }
  const auto* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, out);
  return ec == std::errc() && ptr == end;
}

bool parseBool(std::string_view text, bool& out) {
  if (text == "true" || text == "True" || text == "TRUE") {
    out = true;
    return true;
  }
  if (text == "false" || text == "False" || text == "FALSE") {
    out = false;
    return true;
  }
  return false;
}

bool equalsIgnoringCase(std::string_view a, std::string_view b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](char x, char y) {
    return std::tolower(static_cast<unsigned char>(x)) ==
           std::tolower(static_cast<unsigned char>(y));
  });
}

// The enum value named `text`: an exact match first, then one differing only in case (operators
// write `plugin_errors: skip`).
const pb::EnumValueDescriptor* findEnumValue(const pb::EnumDescriptor& type,
                                             const std::string& text) {
  if (const auto* exact = type.FindValueByName(text)) {
    return exact;
  }
  for (int i = 0; i < type.value_count(); ++i) {
    if (equalsIgnoringCase(type.value(i)->name(), text)) {
      return type.value(i);
    }
  }
  return nullptr;
}

// Parses `text` as an integer of type T and stores it through `set`, or `add` for an element
// of a repeated field; false when it is not a T (malformed or out of range).
template <typename T>
bool storeInteger(const std::string& text, pb::Message& out, const pb::FieldDescriptor& field,
                  bool repeated,
                  void (pb::Reflection::*set)(pb::Message*, const pb::FieldDescriptor*, T) const,
                  void (pb::Reflection::*add)(pb::Message*, const pb::FieldDescriptor*, T) const) {
  T value{};
  if (!parseInteger(text, value)) {
    return false;
  }
  const pb::Reflection& reflection = *out.GetReflection();
  (reflection.*(repeated ? add : set))(&out, &field, value);
  return true;
}

// Walks YAML against a message descriptor, collecting every problem.
class Decoder {
 public:
  explicit Decoder(const std::string& file) : file_(file) {}

  void message(const YAML::Node& node, const std::string& path, pb::Message& out) {
    if (node.IsNull()) {
      return;
    }
    if (out.GetDescriptor()->full_name() == "google.protobuf.Duration") {
      duration(node, path, out);
      return;
    }
    if (!node.IsMap()) {
      problem(node, path, "expected a mapping of keys (" + out.GetDescriptor()->name() + ")");
      return;
    }
    const pb::Descriptor* descriptor = out.GetDescriptor();
    for (const auto& entry : node) {
      if (!plainKey(entry.first, path)) {
        continue;
      }
      const auto key = entry.first.as<std::string>();
      const std::string childPath = path.empty() ? key : fmt::format("{}.{}", path, key);
      const pb::FieldDescriptor* field = findField(*descriptor, key);
      if (field == nullptr) {
        problem(entry.first, childPath, unknownKey(*descriptor, key));
        continue;
      }
      this->field(entry.second, childPath, out, *field);
    }
  }

  [[nodiscard]] const std::vector<std::string>& problems() const { return problems_; }

 private:
  // A key that is a list or a mapping (`? [a, b]`) has no name; as<std::string>() would throw
  // yaml-cpp's bad conversion instead of a ConfigError.
  bool plainKey(const YAML::Node& key, const std::string& path) {
    if (key.IsScalar() || key.IsNull()) {
      return true;
    }
    problem(key, path, "a key must be a plain name");
    return false;
  }

  static const pb::FieldDescriptor* findField(const pb::Descriptor& descriptor,
                                              const std::string& key) {
    if (const auto* field = descriptor.FindFieldByName(key)) {
      return field;
    }
    for (int i = 0; i < descriptor.field_count(); ++i) {
      if (descriptor.field(i)->json_name() == key) {
        return descriptor.field(i);
      }
    }
    return nullptr;
  }

  static std::string unknownKey(const pb::Descriptor& descriptor, const std::string& key) {
    std::string known;
    std::string suggestion;
    size_t best = 3;  // Suggest only names within two edits; the closest one, not the first.
    for (int i = 0; i < descriptor.field_count(); ++i) {
      const std::string& name = descriptor.field(i)->name();
      known += (known.empty() ? "" : ", ") + name;
      if (const size_t distance = editDistance(key, name); distance < best) {
        best = distance;
        suggestion = name;
      }
    }
    std::string text = "unknown key";
    if (!suggestion.empty()) {
      text += " (did you mean '" + suggestion + "'?)";
    }
    return text + (known.empty() ? "; this section takes no keys" : "; known keys: " + known);
  }

  void problem(const YAML::Node& node, const std::string& path, const std::string& what) {
    const YAML::Mark mark = node.Mark();
    if (mark.is_null()) {
      problems_.push_back(fmt::format("{}: {}: {}", file_, path, what));
    } else {
      problems_.push_back(
          fmt::format("{}:{}:{}: {}: {}", file_, mark.line + 1, mark.column + 1, path, what));
    }
  }

  void field(const YAML::Node& value, const std::string& path, pb::Message& out,
             const pb::FieldDescriptor& field) {
    const pb::Reflection& reflection = *out.GetReflection();
    if (value.IsNull()) {
      reflection.ClearField(&out, &field);  // "key:" with no value: the default.
      return;
    }
    if (field.is_map()) {
      mapField(value, path, out, field);
    } else if (field.is_repeated()) {
      if (!value.IsSequence()) {
        problem(value, path, "expected a list");
        return;
      }
      reflection.ClearField(&out, &field);
      for (size_t i = 0; i < value.size(); ++i) {
        single(value[i], fmt::format("{}[{}]", path, i), out, field, true);
      }
    } else {
      single(value, path, out, field, false);
    }
  }

  void mapField(const YAML::Node& value, const std::string& path, pb::Message& out,
                const pb::FieldDescriptor& field) {
    if (!value.IsMap()) {
      problem(value, path, "expected a mapping");
      return;
    }
    const pb::Reflection& reflection = *out.GetReflection();
    reflection.ClearField(&out, &field);
    const pb::Descriptor* entryType = field.message_type();
    for (const auto& entry : value) {
      if (!plainKey(entry.first, path)) {
        continue;
      }
      const auto key = entry.first.as<std::string>();
      pb::Message* item = reflection.AddMessage(&out, &field);
      const std::string itemPath = fmt::format("{}.{}", path, key);
      single(entry.first, itemPath, *item, *entryType->map_key(), false);
      single(entry.second, itemPath, *item, *entryType->map_value(), false);
    }
  }

  // One value of `field` (an element, when `repeated`).
  void single(const YAML::Node& value, const std::string& path, pb::Message& out,
              const pb::FieldDescriptor& field, bool repeated) {
    const pb::Reflection& r = *out.GetReflection();
    if (field.cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      pb::Message* child = repeated ? r.AddMessage(&out, &field) : r.MutableMessage(&out, &field);
      message(value, path, *child);
      return;
    }
    if (!value.IsScalar()) {
      problem(value, path, std::string("expected a single value (") + field.type_name() + ")");
      return;
    }
    const std::string text = value.Scalar();
    auto bad = [&](const std::string& what) {
      problem(value, path, fmt::format("'{}' is not {}", text, what));
    };
    switch (field.cpp_type()) {
      case pb::FieldDescriptor::CPPTYPE_INT32:
        if (!storeInteger<int32_t>(text, out, field, repeated, &pb::Reflection::SetInt32,
                                   &pb::Reflection::AddInt32)) {
          return bad("a 32-bit integer");
        }
        break;
      case pb::FieldDescriptor::CPPTYPE_INT64:
        if (!storeInteger<int64_t>(text, out, field, repeated, &pb::Reflection::SetInt64,
                                   &pb::Reflection::AddInt64)) {
          return bad("a 64-bit integer");
        }
        break;
      case pb::FieldDescriptor::CPPTYPE_UINT32:
        if (!storeInteger<uint32_t>(text, out, field, repeated, &pb::Reflection::SetUInt32,
                                    &pb::Reflection::AddUInt32)) {
          return bad("an unsigned 32-bit integer");
        }
        break;
      case pb::FieldDescriptor::CPPTYPE_UINT64:
        if (!storeInteger<uint64_t>(text, out, field, repeated, &pb::Reflection::SetUInt64,
                                    &pb::Reflection::AddUInt64)) {
          return bad("an unsigned 64-bit integer");
        }
        break;
      case pb::FieldDescriptor::CPPTYPE_DOUBLE:
      case pb::FieldDescriptor::CPPTYPE_FLOAT: {
        double v = 0;
        if (!parseDouble(text, v)) {
          return bad("a number");
        }
        if (field.cpp_type() == pb::FieldDescriptor::CPPTYPE_FLOAT) {
          const auto f = static_cast<float>(v);
          repeated ? r.AddFloat(&out, &field, f) : r.SetFloat(&out, &field, f);
        } else {
          repeated ? r.AddDouble(&out, &field, v) : r.SetDouble(&out, &field, v);
        }
        break;
      }
      case pb::FieldDescriptor::CPPTYPE_BOOL: {
        bool v = false;
        if (!parseBool(text, v)) {
          return bad("true or false");
        }
        repeated ? r.AddBool(&out, &field, v) : r.SetBool(&out, &field, v);
        break;
      }
      case pb::FieldDescriptor::CPPTYPE_ENUM: {
        const pb::EnumValueDescriptor* v = findEnumValue(*field.enum_type(), text);
        if (v == nullptr) {
          std::string names;
          for (int i = 0; i < field.enum_type()->value_count(); ++i) {
            names += (i == 0 ? "" : ", ") + field.enum_type()->value(i)->name();
          }
          return bad("one of: " + names);
        }
        repeated ? r.AddEnum(&out, &field, v) : r.SetEnum(&out, &field, v);
        break;
      }
      case pb::FieldDescriptor::CPPTYPE_STRING:
        repeated ? r.AddString(&out, &field, text) : r.SetString(&out, &field, text);
        break;
      case pb::FieldDescriptor::CPPTYPE_MESSAGE:
        break;  // Handled above.
    }
  }

  void duration(const YAML::Node& node, const std::string& path, pb::Message& out) {
    auto nanos = node.IsScalar() ? parseDurationNanos(node.Scalar()) : std::nullopt;
    if (!nanos) {
      problem(node, path, "expected a duration such as 250ms, 10s, 1.5m or 2h");
      return;
    }
    auto& d = dynamic_cast<pb::Duration&>(out);
    d.set_seconds(*nanos / 1'000'000'000);
    d.set_nanos(static_cast<int32_t>(*nanos % 1'000'000'000));
  }

  const std::string& file_;
  std::vector<std::string> problems_;
};

}  // namespace

ConfigError::ConfigError(std::vector<std::string> problems)
    : std::runtime_error(joinLines(problems)), problems_(std::move(problems)) {}

Document::Document(std::unique_ptr<YAML::Node> root, std::string sourceName)
    : root_(std::move(root)), sourceName_(std::move(sourceName)) {}

Document::Document(const Document& other)
    : root_(std::make_unique<YAML::Node>(*other.root_)), sourceName_(other.sourceName_) {}
Document& Document::operator=(const Document& other) {
  if (this != &other) {
    root_ = std::make_unique<YAML::Node>(*other.root_);
    sourceName_ = other.sourceName_;
  }
  return *this;
}
Document::Document(Document&&) noexcept = default;
Document& Document::operator=(Document&&) noexcept = default;
Document::~Document() = default;

Document Document::parseString(std::string_view text, std::string sourceName) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(text));
  } catch (const YAML::ParserException& e) {
    throw ConfigError({fmt::format("{}:{}:{}: YAML syntax error: {}", sourceName, e.mark.line + 1,
                                   e.mark.column + 1, e.msg)});
  }
  if (!root.IsNull() && !root.IsMap()) {
    throw ConfigError({sourceName + ": the top level must be a mapping of sections"});
  }
  return Document(std::make_unique<YAML::Node>(std::move(root)), std::move(sourceName));
}

Document Document::parseFile(posix::Posix& os, const std::string& path) {
  const char* call = nullptr;
  auto text = posix::readFile(os, path, &call);
  if (!text.ok()) {
    throw ConfigError({fmt::format("{}: cannot {}: {}", path, call,
                                   std::system_category().message(text.errnum))});
  }
  return parseString(text.value, path);
}

std::unique_ptr<YAML::Node> Document::find(std::string_view keyPath) const {
  // yaml-cpp's operator[] on a const node does not insert; Node copies share the tree.
  YAML::Node current = *root_;
  for (auto part : splitPath(keyPath)) {
    if (!current.IsMap()) {
      return nullptr;
    }
    const YAML::Node next = static_cast<const YAML::Node&>(current)[std::string(part)];
    if (!next.IsDefined()) {
      return nullptr;
    }
    current.reset(next);  // Rebinds; operator= would overwrite the tree's content instead.
  }
  return std::make_unique<YAML::Node>(current);
}

bool Document::has(std::string_view keyPath) const {
  return find(keyPath) != nullptr;
}

std::vector<std::string> Document::keys(std::string_view keyPath) const {
  auto node = find(keyPath);
  std::vector<std::string> out;
  if (!node || node->IsNull()) {
    return out;
  }
  if (!node->IsMap()) {
    const YAML::Mark mark = node->Mark();
    throw ConfigError({fmt::format("{}:{}:{}: {}: expected a mapping", sourceName_, mark.line + 1,
                                   mark.column + 1, keyPath)});
  }
  for (const auto& entry : *node) {
    if (!entry.first.IsScalar() && !entry.first.IsNull()) {  // As in Decoder::plainKey.
      const YAML::Mark mark = entry.first.Mark();
      throw ConfigError({fmt::format("{}:{}:{}: {}: a key must be a plain name", sourceName_,
                                     mark.line + 1, mark.column + 1, keyPath)});
    }
    out.push_back(entry.first.as<std::string>());
  }
  return out;
}

void Document::decode(std::string_view keyPath, google::protobuf::Message& out) const {
  out.Clear();
  auto node = find(keyPath);
  if (!node) {
    return;
  }
  Decoder decoder(sourceName_);
  decoder.message(*node, std::string(keyPath), out);
  if (!decoder.problems().empty()) {
    throw ConfigError(decoder.problems());
  }
}

std::optional<int64_t> parseDurationNanos(std::string_view text) noexcept {
  struct Unit {
    std::string_view suffix;
    double nanos;
  };
  // Longest suffixes first: "ms" before "s", "us" and "ns" before "s".
  static constexpr Unit kUnits[] = {{"ns", 1},  {"us", 1e3}, {"ms", 1e6},
                                    {"s", 1e9}, {"m", 60e9}, {"h", 3600e9}};
  for (const auto& unit : kUnits) {
    if (text.size() > unit.suffix.size() && text.ends_with(unit.suffix)) {
      double amount = 0;
      if (!parseDouble(text.substr(0, text.size() - unit.suffix.size()), amount) || amount < 0 ||
          !std::isfinite(amount)) {
        return std::nullopt;
      }
      const double nanos = amount * unit.nanos;
      // int64_t's maximum is 2^63 - 1, which as a double is 2^63: `>=`, so that a value that
      // rounds to 2^63 is rejected rather than overflowing llround (which gave INT64_MIN).
      if (nanos >= static_cast<double>(std::numeric_limits<int64_t>::max())) {
        return std::nullopt;
      }
      return static_cast<int64_t>(std::llround(nanos));
    }
  }
  return std::nullopt;
}

std::chrono::nanoseconds durationOr(const google::protobuf::Duration& value,
                                    std::chrono::nanoseconds fallback) noexcept {
  if (value.seconds() == 0 && value.nanos() == 0) {
    return fallback;
  }
  return std::chrono::seconds(value.seconds()) + std::chrono::nanoseconds(value.nanos());
}

}  // namespace snow::config
