#pragma once

// Gossip's wire messages: portal envelopes whose payload is a JSON object (docs/gossip.md,
// "Wire"). Reading one checks every field the handler uses; a malformed message is refused with
// the reason, never half-applied.

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <google/protobuf/struct.pb.h>

#include "membership.h"

namespace snow::gossip {

using google::protobuf::Struct;
using google::protobuf::Value;

// A gossip message that does not say what it must.
class Malformed : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Limits on what peers may make us keep.
inline constexpr size_t kMaxMetadataEntries = 64;
inline constexpr size_t kMaxMetadataKey = 128;
inline constexpr size_t kMaxMetadataValue = 1024;
inline constexpr size_t kMaxAddress = 300;
inline constexpr size_t kMaxIdLength = 128;
inline constexpr size_t kMaxTopicLength = 128;
inline constexpr size_t kMaxIdsPerMessage = 4096;

// Builders.
Value stringValue(std::string text);
Value numberValue(double number);
Value boolValue(bool flag);
// {}: what messages without fields carry (every gossip payload is an object).
Value emptyObject();
Value memberValue(const MemberRecord& record);
Value membersValue(const std::vector<const MemberRecord*>& records);
Value idsValue(const std::vector<std::string>& ids);

// Readers: throw Malformed naming the field.
const Struct& objectOf(const Value& payload);
const Value& fieldOf(const Struct& object, const char* key);
std::string stringField(const Struct& object, const char* key, size_t maxLength);
uint64_t integerField(const Struct& object, const char* key);
bool boolField(const Struct& object, const char* key);
MemberRecord memberOf(const Value& value);
std::vector<MemberRecord> membersOf(const Struct& object, const char* key);
std::vector<std::string> idsOf(const Struct& object, const char* key);

// [A-Za-z0-9._/-]{1,128}; "gossip." is the module's own.
bool isTopic(std::string_view topic) noexcept;

std::string toBase64(std::string_view bytes);
// Nullopt when `text` is not base64.
std::optional<std::string> fromBase64(std::string_view text);

}  // namespace snow::gossip
