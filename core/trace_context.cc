#include "snow/core/trace_context.h"

#include <fmt/format.h>

namespace snow::tracing {
namespace {

// Lower-case hex only: the spec refuses upper case in traceparent.
int lowerHexDigit(char c) noexcept {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  return -1;
}

int anyHexDigit(char c) noexcept {
  if (c >= 'A' && c <= 'F') {
    return c - 'A' + 10;
  }
  return lowerHexDigit(c);
}

// Parses `text` (at most 2 * out.size() digits) into the low end of `out`, big-endian.
template <size_t N>
bool parseHexBytes(std::string_view text, std::array<uint8_t, N>& out, int (*digit)(char)) {
  if (text.empty() || text.size() > 2 * N) {
    return false;
  }
  out.fill(0);
  size_t nibble = 2 * N - text.size();  // Left-padded with zeros.
  for (char c : text) {
    const int d = digit(c);
    if (d < 0) {
      return false;
    }
    out[nibble / 2] |= static_cast<uint8_t>(nibble % 2 == 0 ? d << 4 : d);
    ++nibble;
  }
  return true;
}

bool parseHex64(std::string_view text, uint64_t& out, int (*digit)(char)) {
  std::array<uint8_t, 8> bytes{};
  if (!parseHexBytes(text, bytes, digit)) {
    return false;
  }
  out = 0;
  for (uint8_t b : bytes) {
    out = out << 8 | b;
  }
  return true;
}

bool allZero(const std::array<uint8_t, 16>& id) {
  for (uint8_t b : id) {
    if (b != 0) {
      return false;
    }
  }
  return true;
}

}  // namespace

bool TraceContext::valid() const noexcept {
  return spanId != 0 && !allZero(traceId);
}

std::string TraceContext::traceIdHex() const {
  std::string out;
  out.reserve(32);
  for (uint8_t b : traceId) {
    fmt::format_to(std::back_inserter(out), "{:02x}", b);
  }
  return out;
}

std::string TraceContext::traceparent() const {
  return fmt::format("00-{}-{:016x}-{:02x}", traceIdHex(), spanId, sampled ? 1 : 0);
}

std::optional<TraceContext> TraceContext::parseTraceparent(std::string_view value) noexcept {
  // version "-" trace-id "-" parent-id "-" flags: 2 + 1 + 32 + 1 + 16 + 1 + 2 = 55.
  constexpr size_t kLength = 55;
  if (value.size() < kLength || value[2] != '-' || value[35] != '-' || value[52] != '-') {
    return std::nullopt;
  }
  std::array<uint8_t, 1> version{};
  std::array<uint8_t, 1> flags{};
  TraceContext context;
  if (!parseHexBytes(value.substr(0, 2), version, lowerHexDigit) || version[0] == 0xff ||
      !parseHexBytes(value.substr(3, 32), context.traceId, lowerHexDigit) ||
      !parseHex64(value.substr(36, 16), context.spanId, lowerHexDigit) ||
      !parseHexBytes(value.substr(53, 2), flags, lowerHexDigit)) {
    return std::nullopt;
  }
  // Version 00 is exactly this long; a later version may append "-<more>".
  if (value.size() != kLength && (version[0] == 0 || value[kLength] != '-')) {
    return std::nullopt;
  }
  context.sampled = (flags[0] & 1) != 0;
  if (!context.valid()) {
    return std::nullopt;
  }
  return context;
}

std::optional<TraceContext> TraceContext::parseUberTraceId(std::string_view value) noexcept {
  std::string decoded;
  decoded.reserve(value.size());
  for (size_t i = 0; i < value.size(); ++i) {
    if (value[i] == '%' && i + 2 < value.size() && value[i + 1] == '3' &&
        (value[i + 2] == 'A' || value[i + 2] == 'a')) {
      decoded.push_back(':');
      i += 2;
    } else {
      decoded.push_back(value[i]);
    }
  }
  std::string_view fields[4];
  std::string_view rest = decoded;
  for (int i = 0; i < 4; ++i) {
    const size_t colon = rest.find(':');
    if ((colon == std::string_view::npos) != (i == 3)) {
      return std::nullopt;  // Exactly four fields.
    }
    fields[i] = rest.substr(0, colon);
    rest = colon == std::string_view::npos ? std::string_view() : rest.substr(colon + 1);
  }
  TraceContext context;
  uint64_t parentSpan = 0;
  uint64_t flags = 0;
  if (!parseHexBytes(fields[0], context.traceId, anyHexDigit) ||
      !parseHex64(fields[1], context.spanId, anyHexDigit) ||
      !parseHex64(fields[2], parentSpan, anyHexDigit) ||
      !parseHex64(fields[3], flags, anyHexDigit)) {
    return std::nullopt;
  }
  context.sampled = (flags & 1) != 0;
  if (!context.valid()) {
    return std::nullopt;
  }
  return context;
}

}  // namespace snow::tracing
