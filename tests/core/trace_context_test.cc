// W3C traceparent and Jaeger uber-trace-id, parsed and printed (core/trace_context.h). The valid
// examples are the W3C Trace Context recommendation's own.

#include "snow/core/trace_context.h"

#include <gtest/gtest.h>

namespace snow::tracing {
namespace {

constexpr std::string_view kSpecExample = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

TEST(TraceContextTest, ParsesAndPrintsTheSpecsExample) {
  auto context = TraceContext::parseTraceparent(kSpecExample);
  ASSERT_TRUE(context.has_value());
  EXPECT_EQ(context->traceIdHex(), "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(context->spanId, 0x00f067aa0ba902b7U);
  EXPECT_TRUE(context->sampled);
  EXPECT_EQ(context->traceparent(), kSpecExample);
  auto unsampled =
      TraceContext::parseTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
  ASSERT_TRUE(unsampled.has_value());
  EXPECT_FALSE(unsampled->sampled);
}

TEST(TraceContextTest, RefusesWhatTheSpecRefuses) {
  const char* bad[] = {
      "",
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",    // short
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",  // v00 with more
      "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",   // upper case
      "00-00000000000000000000000000000000-00f067aa0ba902b7-01",   // zero trace id
      "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",   // zero span id
      "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",   // forbidden version
      "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",   // separator
      "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",   // not hex
      "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",   // version not hex
  };
  for (const char* value : bad) {
    EXPECT_FALSE(TraceContext::parseTraceparent(value).has_value()) << value;
  }
}

TEST(TraceContextTest, AFutureVersionMayCarryMoreFields) {
  auto context = TraceContext::parseTraceparent(
      "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds");
  ASSERT_TRUE(context.has_value());
  EXPECT_EQ(context->spanId, 0x00f067aa0ba902b7U);
  EXPECT_FALSE(
      TraceContext::parseTraceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x")
          .has_value());
}

TEST(TraceContextTest, ReadsJaegersUberTraceId) {
  auto full =
      TraceContext::parseUberTraceId("4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7:0:1");
  ASSERT_TRUE(full.has_value());
  EXPECT_EQ(full->traceparent(), kSpecExample);
  // 64-bit trace ids, short ids, upper case and the URL-encoded form all occur in the wild.
  auto short64 = TraceContext::parseUberTraceId("A3CE929D0E0E4736%3Af067aa0ba902b7%3a0%3A0");
  ASSERT_TRUE(short64.has_value());
  EXPECT_EQ(short64->traceIdHex(), "0000000000000000a3ce929d0e0e4736");
  EXPECT_EQ(short64->spanId, 0xf067aa0ba902b7U);
  EXPECT_FALSE(short64->sampled);
  const char* bad[] = {"",          "abc",     "1:2:3",
                       "1:2:3:4:5", "0:1:0:1", "1:0:0:1",
                       "xyz:1:0:1", "1:2:3:",  "100000000000000000000000000000000:1:0:1"};
  for (const char* value : bad) {
    EXPECT_FALSE(TraceContext::parseUberTraceId(value).has_value()) << value;
  }
}

}  // namespace
}  // namespace snow::tracing
