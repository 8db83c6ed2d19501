#pragma once

// Trace context on the wire: the W3C Trace Context `traceparent` header
// (https://www.w3.org/TR/trace-context/) and Jaeger's `uber-trace-id`, parsed and printed
// without any tracer. Tracers (issue 5) and carriers (gRPC metadata, text maps) build on it.
//
// Contract: pure functions, any thread. Parsing never throws: malformed input gives nullopt, as
// the W3C rules say a receiver must then start a new trace rather than fail the request.

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace snow::tracing {

struct TraceContext {
  std::array<uint8_t, 16> traceId{};  // Big-endian, as printed.
  uint64_t spanId = 0;
  bool sampled = false;

  // Both ids non-zero (the spec makes all-zero ids invalid).
  [[nodiscard]] bool valid() const noexcept;
  // "00-<32 hex trace id>-<16 hex span id>-<2 hex flags>", lower case.
  [[nodiscard]] std::string traceparent() const;
  // The trace id as 32 lower-case hex digits.
  [[nodiscard]] std::string traceIdHex() const;

  // A `traceparent` value. Version 00 must be exactly 55 characters; a later version (not ff)
  // may carry more fields after the flags, which are ignored, as the spec asks.
  static std::optional<TraceContext> parseTraceparent(std::string_view value) noexcept;
  // A Jaeger `uber-trace-id` value: "<trace id>:<span id>:<parent span id>:<flags>", ids in hex
  // of up to 32 (trace) and 16 (span) digits, ':' possibly URL-encoded as "%3A".
  static std::optional<TraceContext> parseUberTraceId(std::string_view value) noexcept;

  friend bool operator==(const TraceContext&, const TraceContext&) = default;
};

}  // namespace snow::tracing
