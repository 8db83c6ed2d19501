// The OTLP receiver the tracing tests export to (otlp_receiver.h): it starts, restarts on its
// port, and decodes what OpenTelemetry's own exporters send, so that a failing tracing test
// points at our exporter and not at the receiver.

#include <algorithm>
#include <stdexcept>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "snow/core/dispatcher.h"
#include "snow/posix/active.h"

#include "daemon/daemon_process.h"
#include "tracing/otlp_receiver.h"

namespace snow::testing {
namespace {

using ::testing::HasSubstr;

class OtlpReceiverTest : public ::testing::Test {
 protected:
  // send-sample.mjs: two spans through the official exporter of `transport` ("grpc" or "http")
  // to `target`; returns {exit code, output}.
  std::pair<int, std::string> sendSample(const std::string& transport, const std::string& target) {
    return runProgram(*loop_, OtlpReceiver::node(),
                      {OtlpReceiver::script("send-sample.mjs"), transport, target});
  }

  posix::PosixPtr layer_ = posix::makeDefaultPosix();
  posix::ScopedInjector injector_{*layer_};
  DispatcherPtr loop_ = makeDispatcher("otlp-receiver-test");
};

const ReceivedSpan* findSpan(const std::vector<ReceivedSpan>& spans, const std::string& name) {
  auto it = std::find_if(spans.begin(), spans.end(), [&](const auto& s) { return s.name == name; });
  return it == spans.end() ? nullptr : &*it;
}

// What send-sample.mjs sent, field by field.
void expectSample(const std::vector<ReceivedSpan>& spans) {
  ASSERT_EQ(spans.size(), 2u);
  const ReceivedSpan* parent = findSpan(spans, "sample.parent");
  const ReceivedSpan* child = findSpan(spans, "sample.child");
  ASSERT_NE(parent, nullptr);
  ASSERT_NE(child, nullptr);

  EXPECT_EQ(parent->traceId, "0af7651916cd43dd8448eb211c80319c");
  EXPECT_EQ(parent->spanId, "b7ad6b7169203331");
  EXPECT_EQ(parent->parentSpanId, "");
  EXPECT_EQ(parent->kind, 2);  // Server.
  // Past 2^53: exact only if nothing on the way went through a double.
  EXPECT_EQ(parent->startNs, 1700000000000001000u);
  EXPECT_EQ(parent->endNs, 1700000001000000500u);
  EXPECT_EQ(parent->flags & 0xffu, 1u);  // Sampled.
  EXPECT_EQ(parent->attributes, (ReceivedSpan::Attributes{{"sample.string", "hello"},
                                                          {"sample.int", "42"},
                                                          {"sample.bool", "true"},
                                                          {"sample.double", "1.5"},
                                                          {"sample.array", R"(["a","b"])"}}));
  ASSERT_EQ(parent->events.size(), 1u);
  EXPECT_EQ(parent->events[0].name, "sample.event");
  EXPECT_EQ(parent->events[0].timeNs, 1700000000000500000u);
  EXPECT_EQ(parent->events[0].attributes, (ReceivedSpan::Attributes{{"event.key", "event-value"}}));
  EXPECT_EQ(parent->statusCode, 1);  // Ok.
  EXPECT_EQ(parent->statusMessage, "");
  EXPECT_THAT(parent->json, HasSubstr(R"("sample.int":42)"));  // A number, not a string.

  EXPECT_EQ(child->traceId, parent->traceId);
  EXPECT_EQ(child->spanId, "00f067aa0ba902b7");
  EXPECT_EQ(child->parentSpanId, parent->spanId);
  EXPECT_EQ(child->kind, 3);  // Client.
  EXPECT_EQ(child->startNs, 1700000000000002000u);
  EXPECT_EQ(child->endNs, 1700000000900000000u);
  EXPECT_EQ(child->attributes, (ReceivedSpan::Attributes{{"peer.service", "downstream"}}));
  EXPECT_TRUE(child->events.empty());
  EXPECT_EQ(child->statusCode, 2);  // Error.
  EXPECT_EQ(child->statusMessage, "sample failure");

  for (const ReceivedSpan* span : {parent, child}) {
    EXPECT_EQ(span->resource, (ReceivedSpan::Attributes{{"service.name", "snow-sample"}}));
    EXPECT_EQ(span->scopeName, "snow-sample-tracer");
    EXPECT_EQ(span->scopeVersion, "1.2.3");
    EXPECT_TRUE(span->links.empty());
    EXPECT_EQ(span->traceState, "");
    EXPECT_EQ(span->droppedAttributesCount, 0u);
  }
}

TEST_F(OtlpReceiverTest, StartsOnAFreePortStopsCleanlyAndRestartsOnTheSamePort) {
  OtlpReceiver receiver(*loop_);
  const uint16_t port = receiver.port();
  ASSERT_NE(port, 0);
  EXPECT_EQ(receiver.endpoint(), "127.0.0.1:" + std::to_string(port));
  EXPECT_EQ(receiver.httpUrl(), "");
  EXPECT_TRUE(receiver.running());
  EXPECT_EQ(receiver.spanCount(), 0u);

  EXPECT_EQ(receiver.stop(), 0) << receiver.log();
  EXPECT_FALSE(receiver.running());
  EXPECT_THAT(receiver.log(), HasSubstr("SIGTERM, exiting"));

  receiver.restart();
  EXPECT_TRUE(receiver.running());
  EXPECT_EQ(receiver.port(), port);
  EXPECT_EQ(receiver.endpoint(), "127.0.0.1:" + std::to_string(port));
}

TEST_F(OtlpReceiverTest, DecodesWhatTheOfficialGrpcExporterSends) {
  OtlpReceiver receiver(*loop_);
  auto [code, output] = sendSample("grpc", receiver.endpoint());
  ASSERT_EQ(code, 0) << output << receiver.log();
  // Stored before the call was answered: no waiting needed.
  EXPECT_EQ(receiver.spanCount(), 2u);
  expectSample(receiver.spans());
  EXPECT_NE(receiver.waitForLog("export: 2 spans"), std::string::npos) << receiver.log();
}

TEST_F(OtlpReceiverTest, DecodesWhatTheOfficialHttpExporterSendsAfterItsRetry) {
  OtlpReceiver receiver(*loop_, 0, 1, true);
  ASSERT_THAT(receiver.httpUrl(), HasSubstr("http://127.0.0.1:"));
  // The HTTP exporter retries a 503 (after about a second), so its one export succeeds.
  auto [code, output] = sendSample("http", receiver.httpUrl());
  ASSERT_EQ(code, 0) << output << receiver.log();
  const size_t refusal = receiver.waitForLog("export: refused (HTTP 503)");
  ASSERT_NE(refusal, std::string::npos) << receiver.log();
  EXPECT_NE(receiver.waitForLog("export: 2 spans", refusal), std::string::npos) << receiver.log();
  expectSample(receiver.spans());
}

TEST_F(OtlpReceiverTest, RefusesTheFirstExportsWithUnavailableAndStoresNothingForThem) {
  OtlpReceiver receiver(*loop_, 0, 1);
  // The gRPC exporter does not retry: its first export fails with the receiver's status.
  auto [refusedCode, refused] = sendSample("grpc", receiver.endpoint());
  EXPECT_EQ(refusedCode, 1) << refused;
  EXPECT_THAT(refused, HasSubstr("14 UNAVAILABLE"));
  EXPECT_NE(receiver.waitForLog("export: refused (UNAVAILABLE)"), std::string::npos)
      << receiver.log();
  EXPECT_EQ(receiver.spanCount(), 0u);

  auto [code, output] = sendSample("grpc", receiver.endpoint());
  ASSERT_EQ(code, 0) << output << receiver.log();
  expectSample(receiver.spans());
}

TEST_F(OtlpReceiverTest, KeepsTheSpansAcrossARestartAndServesTheSameClientsAgain) {
  OtlpReceiver receiver(*loop_);
  const uint16_t port = receiver.port();
  auto [first, firstOutput] = sendSample("grpc", receiver.endpoint());
  ASSERT_EQ(first, 0) << firstOutput << receiver.log();

  // Stopped with a client connection just closed, so the port has connections in TIME_WAIT.
  EXPECT_EQ(receiver.stop(), 0) << receiver.log();
  auto [down, downOutput] = sendSample("grpc", receiver.endpoint());
  EXPECT_EQ(down, 1) << downOutput;
  EXPECT_THAT(downOutput, HasSubstr("UNAVAILABLE"));

  receiver.restart();
  ASSERT_EQ(receiver.port(), port);
  auto [second, secondOutput] = sendSample("grpc", receiver.endpoint());
  ASSERT_EQ(second, 0) << secondOutput << receiver.log();
  ASSERT_TRUE(receiver.waitForSpans(4, std::chrono::seconds(10))) << receiver.log();
  const auto spans = receiver.spans();
  EXPECT_EQ(spans.size(), 4u);
  expectSample({spans.begin(), spans.begin() + 2});
  expectSample({spans.begin() + 2, spans.end()});
}

TEST_F(OtlpReceiverTest, WaitingForSpansThatNeverComeEndsAtTheDeadline) {
  OtlpReceiver receiver(*loop_);
  EXPECT_FALSE(receiver.waitForSpans(1, std::chrono::milliseconds(100)));
}

TEST_F(OtlpReceiverTest, ATakenPortIsAClearStartFailure) {
  OtlpReceiver first(*loop_);
  try {
    OtlpReceiver second(*loop_, first.port());
    ADD_FAILURE() << "a second receiver started on port " << first.port();
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("cannot listen on " + first.endpoint()));
    EXPECT_THAT(e.what(), HasSubstr("EADDRINUSE"));
  }
  EXPECT_TRUE(first.running());
}

}  // namespace
}  // namespace snow::testing
