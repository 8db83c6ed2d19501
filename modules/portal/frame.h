#pragma once

// The portal's framing and envelope: a byte stream cut into length-prefixed frames, each holding
// one JSON envelope. Both are what a peer's bytes meet first, so every limit is checked before
// memory is committed and every refusal says what was wrong.
//
// Frame: a 4-byte big-endian unsigned length, then that many bytes (1 or more, at most the
// limit; 64 KiB by default).
//
// Thread: a FrameDecoder belongs to one connection; the functions are pure. Errors: FrameError
// for a stream that cannot go on (the connection must be closed: framing cannot resynchronise),
// EnvelopeError for one bad message (the stream may go on).

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include "snow/portal/v1/portal.pb.h"

namespace snow::portal {

inline constexpr size_t kFrameHeaderBytes = 4;
inline constexpr size_t kDefaultMaxFrameBytes = size_t{64} * 1024;

class FrameError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class EnvelopeError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class FrameDecoder {
 public:
  explicit FrameDecoder(size_t maxFrameBytes = kDefaultMaxFrameBytes) : max_(maxFrameBytes) {}

  // Changes the limit for the frames not yet announced (the handshake raises it from the small
  // pre-authentication one to the negotiated size).
  void setLimit(size_t maxFrameBytes) noexcept { max_ = maxFrameBytes; }

  // Appends bytes read from the connection.
  void feed(std::string_view bytes);
  // The next complete frame's body, or nullopt until more bytes come. Throws FrameError as soon
  // as a header announces an empty frame or one over the limit, before its body arrives.
  std::optional<std::string> next();
  // Bytes received that do not make a complete frame yet: at the end of the stream, a frame cut
  // in the middle.
  [[nodiscard]] size_t pending() const noexcept { return buffer_.size() - offset_; }

 private:
  size_t max_;
  std::string buffer_;
  size_t offset_ = 0;  // Consumed bytes at the front of buffer_, dropped in bulk.
};

// The 4-byte header of a frame of `length` bytes.
std::string frameHeader(uint32_t length);

// The frame holding `body`. Throws FrameError when body is empty or over `maxFrameBytes`.
std::string encodeFrame(std::string_view body, size_t maxFrameBytes = kDefaultMaxFrameBytes);

// The envelope in `json`, checked: valid JSON, only known keys, type and id well-formed.
v1::Envelope decodeEnvelope(std::string_view json);
// A `portal.error` (docs/protocol/portal.md): `code` from the protocol's list, `message` for
// people, `ref` the id of the message it is about (none when empty). Id and sender are the
// sender's to set.
v1::Envelope errorEnvelope(std::string_view code, std::string_view message,
                           std::string_view ref = {});
// A payload field of `envelope` as a string ("" when absent or not a string).
std::string payloadField(const v1::Envelope& envelope, const char* name);

// Compact JSON, as decodeEnvelope reads it back.
std::string encodeEnvelope(const v1::Envelope& envelope);

}  // namespace snow::portal
