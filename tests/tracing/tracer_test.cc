// snow-core's tracer (core/include/snow/core/tracer.h) in one process, exporting over OTLP/gRPC
// to the independent receiver (otlp_receiver.h): what arrives, sampling, propagation through
// carriers, and what happens when the collector is down, refuses, or the tracer closes.

#include "snow/core/tracer.h"

#include <sstream>
#include <unordered_map>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <opentracing/ext/tags.h>

#include "snow/core/dispatcher.h"
#include "snow/posix/active.h"
#include "snow/rpc/otlp_exporter.h"

#include "support/await.h"
#include "support/log_capture.h"
#include "tracing/otlp_receiver.h"

namespace snow::testing {
namespace {

using std::chrono::milliseconds;
using ::testing::HasSubstr;

// Walks (key, value) pairs as the carriers' ForeachKey does.
template <typename Map, typename F>
opentracing::expected<void> forEachHeader(const Map& map, F& f) {
  for (const auto& [key, value] : map) {
    if (auto r = f(key, value); !r) {
      return r;
    }
  }
  return {};
}

using ForeachKeyCallback =
    std::function<opentracing::expected<void>(opentracing::string_view, opentracing::string_view)>;

// A text map carrier over a plain map.
class MapCarrier final : public opentracing::TextMapReader, public opentracing::TextMapWriter {
 public:
  explicit MapCarrier(std::unordered_map<std::string, std::string>& map) : map_(map) {}
  opentracing::expected<void> Set(opentracing::string_view key,
                                  opentracing::string_view value) const override {
    map_[std::string(key)] = std::string(value);
    return {};
  }
  opentracing::expected<void> ForeachKey(ForeachKeyCallback f) const override {
    return forEachHeader(map_, f);
  }

 private:
  std::unordered_map<std::string, std::string>& map_;
};

class HeadersCarrier final : public opentracing::HTTPHeadersReader {
 public:
  HeadersCarrier(std::initializer_list<std::pair<const std::string, std::string>> headers)
      : map_(headers) {}
  opentracing::expected<void> ForeachKey(ForeachKeyCallback f) const override {
    return forEachHeader(map_, f);
  }

 private:
  std::unordered_map<std::string, std::string> map_;
};

class TracerTest : public ::testing::Test {
 protected:
  TracerTest() : os_(posix::makeDefaultPosix()), injected_(*os_) {}

  // A tracer exporting to the receiver, with short delays so that tests do not wait for
  // production's.
  std::shared_ptr<tracing::Tracer> makeTracer(tracing::TracerOptions options = {}) {
    options.batchDelay = milliseconds(20);
    options.retry = {
        .initial = milliseconds(50), .multiplier = 2.0, .jitter = 0.0, .max = milliseconds(200)};
    if (options.serviceName == "snow-core") {
      options.serviceName = "tracer-test";
    }
    options.resource.push_back({"snow.node.id", std::string("0123456789abcdef")});
    rpc::OtlpExporterOptions exporter;
    exporter.endpoint = receiver().endpoint();
    exporter.reconnect = options.retry;
    exporter.scopeVersion = "test";
    return tracing::Tracer::make(std::move(options),
                                 rpc::makeOtlpGrpcExporter(std::move(exporter)));
  }

  OtlpReceiver& receiver() {
    if (!receiver_) {
      receiver_ = std::make_unique<OtlpReceiver>(*loop_);
    }
    return *receiver_;
  }

  static const ReceivedSpan& named(const std::vector<ReceivedSpan>& spans,
                                   const std::string& name) {
    for (const auto& span : spans) {
      if (span.name == name) {
        return span;
      }
    }
    ADD_FAILURE() << "no span named " << name;
    static const ReceivedSpan none;
    return none;
  }

  posix::PosixPtr os_;
  posix::ScopedInjector injected_;
  DispatcherPtr loop_ = makeDispatcher("test");
  std::unique_ptr<OtlpReceiver> receiver_;
};

TEST_F(TracerTest, SpansArriveWithIdsParentsKindTagsLogsStatusAndResource) {
  auto tracer = makeTracer();
  auto root = tracer->StartSpan("root", {opentracing::SetTag("component", "test")});
  root->SetTag("count", 42);
  root->SetTag("ratio", 0.5);
  root->SetTag("flag", true);
  root->SetTag("big", uint64_t{1} << 63U);
  root->SetTag("count", 43);  // A second SetTag replaces the first.
  auto child = tracer->StartSpan("call", {opentracing::ChildOf(&root->context())});
  child->SetTag(opentracing::ext::span_kind, opentracing::ext::span_kind_rpc_client);
  child->SetTag(opentracing::ext::error, true);
  child->Log({{"event", "error"}, {"message", "boom"}, {"attempt", 2}});
  child->Log({{"note", "no event field"}});
  child->Finish();
  root->Finish();
  ASSERT_TRUE(tracer->flush(std::chrono::seconds(10)));

  const auto spans = receiver().spans();
  ASSERT_EQ(spans.size(), 2U);
  const ReceivedSpan& r = named(spans, "root");
  const ReceivedSpan& c = named(spans, "call");
  EXPECT_EQ(r.traceId, root->context().ToTraceID());
  EXPECT_EQ(r.spanId, root->context().ToSpanID());
  EXPECT_EQ(r.parentSpanId, "");
  EXPECT_EQ(c.traceId, r.traceId);
  EXPECT_EQ(c.parentSpanId, r.spanId);
  EXPECT_EQ(r.kind, 1);  // Internal.
  EXPECT_EQ(c.kind, 3);  // Client.
  EXPECT_EQ(r.attributes.at("component"), "test");
  EXPECT_EQ(r.attributes.at("count"), "43");
  EXPECT_EQ(r.attributes.at("ratio"), "0.5");
  EXPECT_EQ(r.attributes.at("flag"), "true");
  EXPECT_EQ(r.attributes.at("big"), "9223372036854775808");  // Beyond int64: as text.
  EXPECT_EQ(r.statusCode, 0);
  EXPECT_EQ(c.statusCode, 2);
  EXPECT_EQ(c.statusMessage, "boom");
  EXPECT_EQ(c.attributes.count("error"), 0U) << "error is the status, not an attribute";
  ASSERT_EQ(c.events.size(), 2U);
  EXPECT_EQ(c.events[0].name, "error");
  EXPECT_EQ(c.events[0].attributes.at("message"), "boom");
  EXPECT_EQ(c.events[0].attributes.at("attempt"), "2");
  EXPECT_EQ(c.events[1].name, "log");
  EXPECT_GE(c.events[0].timeNs, c.startNs);
  EXPECT_LE(r.startNs, c.startNs);
  EXPECT_LE(c.endNs, r.endNs);
  EXPECT_LT(r.startNs, r.endNs);
  EXPECT_EQ(r.flags & 0xffU, 1U) << "sampled";
  for (const auto* span : {&r, &c}) {
    EXPECT_EQ(span->resource.at("service.name"), "tracer-test");
    EXPECT_EQ(span->resource.at("snow.node.id"), "0123456789abcdef");
    EXPECT_EQ(span->scopeName, "snow-core");
    EXPECT_EQ(span->scopeVersion, "test");
  }
  const tracing::TracerStats stats = tracer->stats();
  EXPECT_EQ(stats.started, 2U);
  EXPECT_EQ(stats.finished, 2U);
  EXPECT_EQ(stats.exported, 2U);
  EXPECT_EQ(stats.dropped, 0U);
  EXPECT_EQ(stats.queued, 0U);
  EXPECT_EQ(stats.destination, "OTLP/gRPC " + receiver().endpoint());
}

TEST_F(TracerTest, ChildOfIsTheParentAndFurtherReferencesAreLinks) {
  auto tracer = makeTracer();
  auto a = tracer->StartSpan("a");
  auto b = tracer->StartSpan("b");
  auto c = tracer->StartSpan("c");
  // FollowsFrom first, then ChildOf: the ChildOf one is the parent all the same.
  auto joined = tracer->StartSpan(
      "joined", {opentracing::FollowsFrom(&a->context()), opentracing::ChildOf(&b->context()),
                 opentracing::ChildOf(&c->context())});
  auto follower = tracer->StartSpan("follower", {opentracing::FollowsFrom(&a->context())});
  for (auto* span : {&joined, &follower, &a, &b, &c}) {
    (*span)->Finish();
  }
  ASSERT_TRUE(tracer->flush(std::chrono::seconds(10)));
  const auto spans = receiver().spans();
  ASSERT_EQ(spans.size(), 5U);
  const ReceivedSpan& j = named(spans, "joined");
  EXPECT_EQ(j.parentSpanId, b->context().ToSpanID());
  EXPECT_EQ(j.traceId, b->context().ToTraceID());
  ASSERT_EQ(j.links.size(), 2U);
  EXPECT_EQ(j.links[0].spanId, a->context().ToSpanID());
  EXPECT_EQ(j.links[1].spanId, c->context().ToSpanID());
  EXPECT_EQ(named(spans, "follower").parentSpanId, a->context().ToSpanID());
}

TEST_F(TracerTest, InjectWritesW3CHeadersAndExtractReadsThemBack) {
  auto tracer = makeTracer();
  auto span = tracer->StartSpan("s");
  span->SetBaggageItem("user", "ana maría,=x");
  std::unordered_map<std::string, std::string> map;
  MapCarrier carrier(map);
  ASSERT_TRUE(tracer->Inject(span->context(), carrier));
  EXPECT_EQ(map.at("traceparent"),
            "00-" + span->context().ToTraceID() + "-" + span->context().ToSpanID() + "-01");
  EXPECT_EQ(map.count("tracestate"), 0U) << "no tracestate was received, none is sent";
  EXPECT_THAT(map.at("baggage"), HasSubstr("user="));

  map["tracestate"] = "vendor=abc,other=1";
  auto extracted = tracer->Extract(carrier);
  ASSERT_TRUE(extracted);
  ASSERT_NE(*extracted, nullptr);
  EXPECT_EQ((*extracted)->ToTraceID(), span->context().ToTraceID());
  EXPECT_EQ((*extracted)->ToSpanID(), span->context().ToSpanID());
  std::string user;
  (*extracted)->ForeachBaggageItem([&](const std::string& key, const std::string& value) {
    if (key == "user") {
      user = value;
    }
    return true;
  });
  EXPECT_EQ(user, "ana maría,=x");

  // A span continuing the extracted context keeps its tracestate and is marked remote-parented.
  auto child = tracer->StartSpan("continued", {opentracing::ChildOf(extracted->get())});
  EXPECT_EQ(child->BaggageItem("user"), "ana maría,=x");
  std::unordered_map<std::string, std::string> next;
  MapCarrier nextCarrier(next);
  ASSERT_TRUE(tracer->Inject(child->context(), nextCarrier));
  EXPECT_EQ(next.at("tracestate"), "vendor=abc,other=1");
  child->Finish();
  ASSERT_TRUE(tracer->flush(std::chrono::seconds(10)));
  const auto spans = receiver().spans();
  ASSERT_EQ(spans.size(), 1U);
  EXPECT_EQ(spans[0].parentSpanId, span->context().ToSpanID());
  EXPECT_EQ(spans[0].traceState, "vendor=abc,other=1");
  EXPECT_EQ(spans[0].flags & 0x300U, 0x300U) << "the parent is remote";
}

TEST_F(TracerTest, ExtractAcceptsAnyCaseJaegersHeaderAndReportsCorruptContexts) {
  auto tracer = makeTracer();
  auto fromHeaders = tracer->Extract(
      HeadersCarrier({{"TraceParent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}));
  ASSERT_TRUE(fromHeaders);
  ASSERT_NE(*fromHeaders, nullptr);
  EXPECT_EQ((*fromHeaders)->ToTraceID(), "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ((*fromHeaders)->ToSpanID(), "00f067aa0ba902b7");

  auto fromJaeger = tracer->Extract(HeadersCarrier(
      {{"uber-trace-id", "a3ce929d0e0e4736:00f067aa0ba902b7:0:1"}, {"uberctx-user", "bob"}}));
  ASSERT_TRUE(fromJaeger);
  ASSERT_NE(*fromJaeger, nullptr);
  EXPECT_EQ((*fromJaeger)->ToTraceID(), "0000000000000000a3ce929d0e0e4736");
  std::string user;
  (*fromJaeger)->ForeachBaggageItem([&](const std::string& key, const std::string& value) {
    user = key == "user" ? value : user;
    return true;
  });
  EXPECT_EQ(user, "bob");

  // traceparent wins over uber-trace-id when both are there.
  auto both = tracer->Extract(
      HeadersCarrier({{"uber-trace-id", "1:2:0:1"},
                      {"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}));
  ASSERT_TRUE(both);
  EXPECT_EQ((*both)->ToSpanID(), "00f067aa0ba902b7");

  auto none = tracer->Extract(HeadersCarrier({{"content-type", "x"}}));
  ASSERT_TRUE(none);
  EXPECT_EQ(*none, nullptr);

  auto corrupt = tracer->Extract(HeadersCarrier({{"traceparent", "00-zz-00f067aa0ba902b7-01"}}));
  ASSERT_FALSE(corrupt);
  EXPECT_EQ(corrupt.error(), opentracing::span_context_corrupted_error);

  // The stream carrier: the same headers, one per line.
  auto span = tracer->StartSpan("s");
  std::stringstream stream;
  ASSERT_TRUE(tracer->Inject(span->context(), stream));
  auto back = tracer->Extract(stream);
  ASSERT_TRUE(back);
  ASSERT_NE(*back, nullptr);
  EXPECT_EQ((*back)->ToSpanID(), span->context().ToSpanID());
}

TEST_F(TracerTest, SamplersDecideOnceAndTheDecisionTravelsWithTheContext) {
  tracing::TracerOptions never;
  never.sampler.kind = tracing::Sampler::Kind::Never;
  auto quiet = makeTracer(never);
  auto unsampled = quiet->StartSpan("unsampled");
  std::unordered_map<std::string, std::string> map;
  MapCarrier carrier(map);
  ASSERT_TRUE(quiet->Inject(unsampled->context(), carrier));
  EXPECT_TRUE(map.at("traceparent").ends_with("-00")) << "ids propagate, unsampled";
  unsampled->Finish();

  // Parent-based: a child follows the remote parent whatever the ratio says.
  tracing::TracerOptions parentBased;
  parentBased.sampler = {.kind = tracing::Sampler::Kind::ParentBased, .ratio = 0.0};
  auto follower = makeTracer(parentBased);
  auto parentUnsampled = follower->Extract(carrier);
  ASSERT_TRUE(parentUnsampled && *parentUnsampled);
  follower->StartSpan("follows an unsampled parent", {opentracing::ChildOf(parentUnsampled->get())})
      ->Finish();
  map["traceparent"].back() = '1';
  auto parentSampled = follower->Extract(carrier);
  ASSERT_TRUE(parentSampled && *parentSampled);
  follower->StartSpan("follows a sampled parent", {opentracing::ChildOf(parentSampled->get())})
      ->Finish();
  follower->StartSpan("root at ratio 0")->Finish();
  // sampling.priority forces a decision, as OpenTracing defines.
  follower->StartSpan("forced", {opentracing::SetTag(opentracing::ext::sampling_priority, 1)})
      ->Finish();
  ASSERT_TRUE(quiet->flush(std::chrono::seconds(10)));
  ASSERT_TRUE(follower->flush(std::chrono::seconds(10)));
  const auto spans = receiver().spans();
  std::vector<std::string> names;
  names.reserve(spans.size());
  for (const auto& span : spans) {
    names.push_back(span.name);
  }
  EXPECT_THAT(names, ::testing::UnorderedElementsAre("follows a sampled parent", "forced"));
  EXPECT_EQ(quiet->stats().started, 1U);
  EXPECT_EQ(quiet->stats().finished, 0U);
}

TEST(SamplerTest, RatioSamplingKeepsTheRatioAndTheSameTracesOnEveryNode) {
  const tracing::Sampler quarter{.kind = tracing::Sampler::Kind::Ratio, .ratio = 0.25};
  const tracing::Sampler alsoQuarter{.kind = tracing::Sampler::Kind::ParentBased, .ratio = 0.25};
  uint64_t x = 0x9e3779b97f4a7c15ULL;
  int kept = 0;
  constexpr int kTraces = 20000;
  for (int i = 0; i < kTraces; ++i) {
    tracing::TraceId id{};
    for (auto& byte : id) {
      x ^= x << 13U;
      x ^= x >> 7U;
      x ^= x << 17U;
      byte = static_cast<uint8_t>(x);
    }
    const bool decision = quarter.sample(id, std::nullopt);
    kept += decision ? 1 : 0;
    ASSERT_EQ(decision, alsoQuarter.sample(id, std::nullopt)) << "roots decide by trace id alone";
    ASSERT_EQ(quarter.sample(id, !decision), decision) << "Ratio ignores the parent";
  }
  EXPECT_NEAR(static_cast<double>(kept) / kTraces, 0.25, 0.02);
  EXPECT_TRUE((tracing::Sampler{.kind = tracing::Sampler::Kind::Ratio, .ratio = 1.0}.sample(
      tracing::TraceId{}, std::nullopt)));
  EXPECT_FALSE((tracing::Sampler{.kind = tracing::Sampler::Kind::Ratio, .ratio = 0.0}.sample(
      tracing::TraceId{}, std::nullopt)));
}

// The bound: while the collector is down, at most queueSize finished spans wait (the
// batch being retried included); the rest are dropped, counted and logged; and when the collector
// is back, every kept span arrives.
TEST_F(TracerTest, ACollectorDownLosesNoSpansBeyondTheQueueBound) {
  LogCapture log;
  receiver().stop();
  tracing::TracerOptions options;
  options.queueSize = 64;
  options.batchSize = 16;
  options.dropLogInterval = milliseconds(0);
  auto tracer = makeTracer(options);
  for (int i = 0; i < 100; ++i) {
    tracer->StartSpan("span-" + std::to_string(i))->Finish();
  }
  tracing::TracerStats stats = tracer->stats();
  EXPECT_EQ(stats.finished, 100U);
  EXPECT_EQ(stats.dropped, 36U);
  EXPECT_EQ(stats.queued, 64U);
  // The export thread fails at least once before the collector is back.
  ASSERT_TRUE(awaitPolled(*loop_, [&] { return tracer->stats().failedExports > 0; }));
  EXPECT_FALSE(tracer->stats().lastError.empty());

  receiver().restart();
  ASSERT_TRUE(tracer->flush(std::chrono::seconds(20)));
  const auto spans = receiver().spans();
  ASSERT_EQ(spans.size(), 64U);
  for (int i = 0; i < 64; ++i) {
    EXPECT_EQ(spans[i].name, "span-" + std::to_string(i)) << "kept in order";
  }
  stats = tracer->stats();
  EXPECT_EQ(stats.exported, 64U);
  EXPECT_EQ(stats.dropped, 36U);
  EXPECT_TRUE(stats.lastError.empty()) << stats.lastError;
  tracer->Close();
  // Reported as they happen (the export thread may report part of them before the rest).
  EXPECT_THAT(log.text(), HasSubstr("finished spans because the export queue was full (64 spans); "
                                    "36 dropped since start"));
  EXPECT_THAT(log.text(), HasSubstr("cannot export 16 spans to OTLP/gRPC"));
  EXPECT_THAT(log.text(), HasSubstr("exporting to OTLP/gRPC " + receiver().endpoint() + " again"));
}

TEST_F(TracerTest, ABatchTheCollectorRefusesForNowIsRetriedUntilAccepted) {
  receiver().restart(/*failFirst=*/2);
  auto tracer = makeTracer();
  for (int i = 0; i < 5; ++i) {
    tracer->StartSpan("retried")->Finish();
  }
  ASSERT_TRUE(tracer->flush(std::chrono::seconds(20)));
  EXPECT_EQ(receiver().spans().size(), 5U);
  EXPECT_EQ(tracer->stats().failedExports, 2U);
  EXPECT_EQ(tracer->stats().exported, 5U);
}

TEST_F(TracerTest, CloseSendsWhatIsQueuedAndGivesUpAtItsDeadline) {
  auto tracer = makeTracer();
  for (int i = 0; i < 10; ++i) {
    tracer->StartSpan("at close")->Finish();
  }
  tracer->Close();  // No flush(): Close() sends them.
  EXPECT_EQ(receiver().spans().size(), 10U);
  tracer->StartSpan("after close")->Finish();
  EXPECT_EQ(tracer->stats().dropped, 1U);
  EXPECT_FALSE(tracer->flush(milliseconds(100)));

  LogCapture log;
  receiver().stop();
  tracing::TracerOptions options;
  options.shutdownTimeout = milliseconds(300);
  auto stuck = makeTracer(options);
  for (int i = 0; i < 7; ++i) {
    stuck->StartSpan("never sent")->Finish();
  }
  const auto before = std::chrono::steady_clock::now();
  stuck->Close();
  EXPECT_LT(std::chrono::steady_clock::now() - before, std::chrono::seconds(3));
  EXPECT_EQ(stuck->stats().unsent, 7U);
  EXPECT_THAT(log.text(), HasSubstr("7 spans were not exported to OTLP/gRPC"));
}

TEST(OtlpEndpointTest, AcceptsHostPortAndHttpSchemesAndExplainsTheRest) {
  EXPECT_EQ(rpc::checkOtlpEndpoint("127.0.0.1:4317"), std::nullopt);
  EXPECT_EQ(rpc::checkOtlpEndpoint("jaeger:4317"), std::nullopt);
  EXPECT_EQ(rpc::checkOtlpEndpoint("http://jaeger:4317"), std::nullopt);
  EXPECT_EQ(rpc::checkOtlpEndpoint("https://jaeger.example.com:443/"), std::nullopt);
  EXPECT_EQ(rpc::checkOtlpEndpoint("[::1]:4317"), std::nullopt);
  EXPECT_THAT(rpc::checkOtlpEndpoint("http://jaeger:4318/v1/traces").value_or(""),
              HasSubstr("has no path"));
  EXPECT_THAT(rpc::checkOtlpEndpoint("jaeger").value_or(""), HasSubstr("expected host:port"));
  EXPECT_THAT(rpc::checkOtlpEndpoint("jaeger:99999").value_or(""), HasSubstr("expected host:port"));
  EXPECT_THAT(rpc::checkOtlpEndpoint("udp://jaeger:6831").value_or(""),
              HasSubstr("http:// or https://"));
  rpc::OtlpExporterOptions nonsense;
  nonsense.endpoint = "nonsense";
  EXPECT_THROW(rpc::makeOtlpGrpcExporter(nonsense), std::invalid_argument);
}

}  // namespace
}  // namespace snow::testing
