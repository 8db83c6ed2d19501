// libFuzzer target: the trace-context parsers (core/trace_context.h) read headers from the
// network. They must never crash or read out of bounds, and whatever they accept must print as
// a traceparent that parses back to the same context.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "snow/core/trace_context.h"

namespace {

void checkRoundTrip(const snow::tracing::TraceContext& context) {
  auto again = snow::tracing::TraceContext::parseTraceparent(context.traceparent());
  if (!again || !(*again == context)) {
    std::abort();  // Accepted input that does not survive printing: a parser bug.
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  if (auto context = snow::tracing::TraceContext::parseTraceparent(input)) {
    checkRoundTrip(*context);
  }
  if (auto context = snow::tracing::TraceContext::parseUberTraceId(input)) {
    checkRoundTrip(*context);
  }
  return 0;
}
