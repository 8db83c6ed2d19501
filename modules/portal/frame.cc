#include "frame.h"

#include <algorithm>

#include <fmt/format.h>
#include <google/protobuf/util/json_util.h>

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

v1::Envelope decodeEnvelope(std::string_view json) {
  v1::Envelope envelope;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  const auto status = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(json.data(), json.size()), &envelope, options);
  if (!status.ok()) {
    throw EnvelopeError(
        fmt::format("malformed envelope '{}': {}", excerpt(json), std::string(status.message())));
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

std::string encodeEnvelope(const v1::Envelope& envelope) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(envelope, &out, options);
  return out;
}

}  // namespace snow::portal
