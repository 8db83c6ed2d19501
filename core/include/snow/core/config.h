#pragma once

// Configuration documents: one YAML file, each section decoded into a protobuf message.
//
// A module describes its section with a protobuf message; decode() fills it by walking the YAML
// against the message's descriptor. Unknown keys, wrong types, out-of-range numbers and unknown
// enum values are errors that name the file, the line and column, the key path and the problem:
//   /etc/snow/snow.yaml:12:5: modules.example.greting: unknown key (known keys: greeting, listen)
// Every problem in a section is reported at once, not just the first.
//
// Mapping: a message is a YAML mapping whose keys are the field names (or their JSON names);
// repeated fields are sequences; map<string, V> fields are mappings; enums are their value names;
// bools are true/false; google.protobuf.Duration is a string such as "250ms", "10s", "1.5m".
// Scalars are converted by the field's type, quoted or not ("8080" and 8080 both fill an int32;
// 123 fills a string field with "123"); enum names match case-insensitively.
//
// Thread: a Document is immutable after parsing; decode() may be called from any thread.

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <google/protobuf/duration.pb.h>
#include <google/protobuf/message.h>

#include "snow/posix/posix.h"

namespace YAML {  // NOLINT(readability-identifier-naming): yaml-cpp's namespace.
class Node;
}

namespace snow::config {

// One or more problems in a configuration; what() has one line per problem.
class ConfigError : public std::runtime_error {
 public:
  explicit ConfigError(std::vector<std::string> problems);
  [[nodiscard]] const std::vector<std::string>& problems() const noexcept { return problems_; }

 private:
  std::vector<std::string> problems_;
};

class Document {
 public:
  // Reads and parses `path` through `os`. Throws ConfigError (unreadable file, YAML syntax error
  // with its position, top level not a mapping).
  static Document parseFile(posix::Posix& os, const std::string& path);
  // Parses `text`; `sourceName` stands for the file in error messages.
  static Document parseString(std::string_view text, std::string sourceName);

  Document(const Document&);
  Document& operator=(const Document&);
  Document(Document&&) noexcept;
  Document& operator=(Document&&) noexcept;
  ~Document();

  [[nodiscard]] const std::string& sourceName() const noexcept { return sourceName_; }

  // True when the dotted `keyPath` ("modules.example") names a node.
  [[nodiscard]] bool has(std::string_view keyPath) const;

  // The keys of the mapping at `keyPath` (empty when absent). Throws ConfigError when the node is
  // not a mapping.
  [[nodiscard]] std::vector<std::string> keys(std::string_view keyPath) const;

  // Fills `out` (reset first) from the node at `keyPath`; an absent node leaves the defaults.
  // Throws ConfigError listing every problem.
  void decode(std::string_view keyPath, google::protobuf::Message& out) const;

 private:
  Document(std::unique_ptr<YAML::Node> root, std::string sourceName);
  [[nodiscard]] std::unique_ptr<YAML::Node> find(std::string_view keyPath) const;

  std::unique_ptr<YAML::Node> root_;
  std::string sourceName_;
};

// A Duration field's value, or `fallback` when it is unset (zero): how a section gives a duration
// its default (`stop_timeout:` absent or `0s` means the documented default).
std::chrono::nanoseconds durationOr(const google::protobuf::Duration& value,
                                    std::chrono::nanoseconds fallback) noexcept;

// Parses "250ms", "10s", "1.5m", "2h", "100us" into nanoseconds; nullopt when malformed.
std::optional<int64_t> parseDurationNanos(std::string_view text) noexcept;

}  // namespace snow::config
