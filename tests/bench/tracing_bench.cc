// The cost of tracing, in one run (docs/performance.md, "Tracing"):
//   1. span:   one span's start, two string tags (snow.event.id, snow.event.type, as the event
//              tree sets them) and finish, on the calling thread. OpenTracing's noop tracer and
//              its mocktracer (recording into a Recorder that discards) are the peers; ours runs
//              unsampled (Sampler Never) and sampled (Always).
//   2. event:  the event-tree event of core_bench.cc (raise, dispatch to the handler, settle,
//              span), in bursts of 64 and 1000, with each of those tracers.
//   3. export: spans/s through our tracer and the real OTLP/gRPC exporter, to the Node.js
//              receiver of the tracing tests (tests/tracing/otlp-receiver, --count-only: it
//              decodes every request and counts its spans) and to an in-process gRPC sink that
//              answers without decoding (the exporter's own ceiling). Not a Google Benchmark
//              loop: it runs once, after the benchmarks, and prints its own table.
//
// Names are "<tracer>/<what>[/<burst>]", so that the ratio tables (ratio_reporter.h) divide each
// cost by the same measure's with the noop tracer, then with the mocktracer.
//
// Ours, sampled, exports to a bench-local exporter that discards each batch at once: parts 1 and
// 2 measure what a span costs the loop thread (building its SpanData, queueing it), not what an
// exporter costs the export thread. The queue is large so that the export thread keeps up; spans
// it still drops are counted in the "dropped" column and should be 0.
//
// Run: build/release/tests/bench/snow_tracing_bench [--export=yes|no|only] [--export-spans=N]
//        [--export-rate=N] [--export-batch=N] [--export-queue=N] [--export-warmup=N]
//        [Google Benchmark flags]
// Export offers --export-spans (200000) spans to each sink in three ways, each with a fresh tracer
// and exporter, in batches of --export-batch (512, the default) spans, after --export-warmup
// (2048) spans that are flushed and not counted (the first call connects; Node's decoder starts
// cold):
//   flat out      as fast as possible into a queue that holds them all, then flush;
//   closed loop   as fast as possible through the default queue (TracerOptions::queueSize, or
//                 --export-queue), the producer waiting whenever the queue could not take more:
//                 the exporter's ceiling, without drops;
//   paced         --export-rate (100000) spans/s, 1 ms worth at a time, through that queue: zero
//                 drops means the rate is sustained.
// The Node receiver must be installed (scripts/otlp-receiver-install): without it, its half is
// skipped with a message.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <benchmark/benchmark.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <opentracing/mocktracer/recorder.h>
#include <opentracing/mocktracer/tracer.h>
#include <opentracing/noop.h>
#include <spdlog/spdlog.h>
#include <sys/types.h>
#include <unistd.h>

#include "snow/core/dispatcher.h"
#include "snow/core/event.h"
#include "snow/core/future.h"
#include "snow/core/tracer.h"
#include "snow/posix/active.h"
#include "snow/rpc/otlp_exporter.h"

#include "daemon/daemon_process.h"
#include "event_tree_bench.h"
#include "ratio_reporter.h"
#include "tracing/otlp_receiver.h"

namespace {

using Clock = std::chrono::steady_clock;
using snow::tracing::Sampler;

// What the event tree tags a span with: an EventId's text ("{:016x}-{:x}", too long for the
// small-string buffer, as real ids are) and the type's name.
constexpr const char* kEventIdText = "0000000000000001-3e8";
constexpr const char* kEventTypeName = "bench.event";

// Large enough that the export thread, discarding, keeps up with the loop thread (at ~2 M
// spans/s, 30 ms of slack); drops are counted all the same.
constexpr size_t kBenchQueueSize = 65536;

// ---- Tracers ------------------------------------------------------------------------------------

// Discards every batch at once: the sampled benchmarks measure the loop thread's cost, not an
// exporter's.
class DiscardingExporter final : public snow::tracing::SpanExporter {
 public:
  Result exportSpans(std::span<const snow::tracing::SpanData> /*spans*/,
                     std::span<const snow::tracing::Attribute> /*resource*/,
                     Clock::time_point /*deadline*/) override {
    return {};
  }
  [[nodiscard]] std::string describe() const override { return "discard"; }
};

// The mocktracer's recorder, discarding: memory stays flat however long the benchmark runs.
class NullRecorder final : public opentracing::mocktracer::Recorder {
 public:
  void RecordSpan(opentracing::mocktracer::SpanData&& /*span*/) noexcept override {}
};

enum class Peer { Noop, Mock, OursUnsampled, OursSampled };

std::shared_ptr<opentracing::Tracer> makeTracer(Peer peer) {
  switch (peer) {
    case Peer::Noop:
      return opentracing::MakeNoopTracer();
    case Peer::Mock: {
      opentracing::mocktracer::MockTracerOptions options;
      options.recorder = std::make_unique<NullRecorder>();
      return std::make_shared<opentracing::mocktracer::MockTracer>(std::move(options));
    }
    case Peer::OursUnsampled:
    case Peer::OursSampled: {
      snow::tracing::TracerOptions options;
      options.serviceName = "tracing-bench";
      options.sampler.kind =
          peer == Peer::OursSampled ? Sampler::Kind::Always : Sampler::Kind::Never;
      options.queueSize = kBenchQueueSize;
      options.seed = 1;
      return snow::tracing::Tracer::make(std::move(options),
                                         std::make_unique<DiscardingExporter>());
    }
  }
  return nullptr;
}

// Spans our tracer dropped since `before` (0 for the other tracers), as a column of the table.
class DropCounter {
 public:
  explicit DropCounter(opentracing::Tracer& tracer) : own_(snow::tracing::asOwnTracer(tracer)) {
    if (own_ != nullptr) {
      before_ = own_->stats().dropped;
    }
  }
  void report(benchmark::State& state) const {
    const uint64_t dropped = own_ != nullptr ? own_->stats().dropped - before_ : 0;
    state.counters["dropped"] = benchmark::Counter(static_cast<double>(dropped));
  }

 private:
  snow::tracing::Tracer* own_;
  uint64_t before_ = 0;
};

// ---- 1. A span's start, tags and finish ---------------------------------------------------------

struct EventTags {
  std::string id = kEventIdText;
  std::string type = kEventTypeName;
};

// One span as Event's constructor and EventTree::finish() make it for a root event. Each tag's
// Value copies its string, as the event tree's builds one.
void traceEvent(const opentracing::Tracer& tracer, const EventTags& tags) {
  auto span = tracer.StartSpan(tags.type, {opentracing::ChildOf(nullptr)});
  span->SetTag("snow.event.id", tags.id);
  span->SetTag("snow.event.type", tags.type);
  span->Finish();
  benchmark::DoNotOptimize(span.get());
}

void spanStartTagFinish(benchmark::State& state, Peer peer) {
  const auto tracer = makeTracer(peer);
  const DropCounter drops(*tracer);
  const EventTags tags;
  for (auto _ : state) {
    traceEvent(*tracer, tags);
  }
  state.SetItemsProcessed(state.iterations());
  drops.report(state);
}

// ---- 2. The event tree --------------------------------------------------------------------------

// core_bench.cc's eventTreeEvent, with `peer` as the tree's tracer (the noop one is given as null,
// as a daemon without tracing configured does).
void eventTreeEvent(benchmark::State& state, Peer peer) {
  auto loop = snow::makeDispatcher("bench");
  const auto tracer = makeTracer(peer);
  const DropCounter drops(*tracer);
  {
    snow::EventTree tree(*loop, peer == Peer::Noop ? nullptr : tracer, 1);
    snow::bench::raiseAndSettleBursts(state, *loop, tree, snow::EventType::of(kEventTypeName));
  }
  drops.report(state);
}

void registerBenchmarks() {
  const std::pair<Peer, const char*> peers[] = {{Peer::Noop, "noop"},
                                                {Peer::Mock, "mocktracer"},
                                                {Peer::OursUnsampled, "ours_unsampled"},
                                                {Peer::OursSampled, "ours_sampled"}};
  for (const auto& [peer, name] : peers) {
    benchmark::RegisterBenchmark((std::string(name) + "/span").c_str(), spanStartTagFinish, peer);
  }
  for (const auto& [peer, name] : peers) {
    benchmark::RegisterBenchmark((std::string(name) + "/event").c_str(), eventTreeEvent, peer)
        ->Arg(64)
        ->Arg(1000);
  }
}

// The ratio tables: against the noop tracer (printed after Google Benchmark's own table), the
// mocktracer, and ours unsampled (tracing configured at 0%). The last two discard their copy of
// Google Benchmark's table.
class PeerRatioReporter final : public snow::bench::RatioReporter {
 public:
  PeerRatioReporter() : RatioReporter("noop"), mock_("mocktracer"), unsampled_("ours_unsampled") {
    for (auto* other : {&mock_, &unsampled_}) {
      other->SetOutputStream(&discard_);
      other->SetErrorStream(&discard_);
    }
  }

  void ReportRuns(const std::vector<Run>& runs) override {
    RatioReporter::ReportRuns(runs);
    mock_.ReportRuns(runs);
    unsampled_.ReportRuns(runs);
  }
  void Finalize() override {
    RatioReporter::Finalize();
    mock_.Finalize();
    unsampled_.Finalize();
  }

 private:
  std::ostream discard_{nullptr};  // No buffer: every write fails, silently.
  snow::bench::RatioReporter mock_;
  snow::bench::RatioReporter unsampled_;
};

// ---- 3. Export throughput -----------------------------------------------------------------------

constexpr const char* kExportMethod = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

// An OTLP collector that answers every Export with an empty ExportTraceServiceResponse (zero
// bytes) without decoding the request: what is left is our exporter's encoding and gRPC.
class GrpcSink final : public grpc::CallbackGenericService {
 public:
  GrpcSink() {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterCallbackGenericService(this);
    server_ = builder.BuildAndStart();
    if (!server_ || port_ == 0) {
      throw std::runtime_error("the gRPC sink did not start");
    }
  }
  ~GrpcSink() override {
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  }
  GrpcSink(const GrpcSink&) = delete;
  GrpcSink& operator=(const GrpcSink&) = delete;

  [[nodiscard]] std::string endpoint() const { return "127.0.0.1:" + std::to_string(port_); }
  [[nodiscard]] uint64_t requests() const { return requests_.load(); }
  [[nodiscard]] uint64_t bytes() const { return bytes_.load(); }

  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext* context) override {
    return new Call(*this, context->method() == kExportMethod);
  }

 private:
  // One unary call: read the request, answer, delete itself when gRPC is done with it.
  class Call final : public grpc::ServerGenericBidiReactor {
   public:
    Call(GrpcSink& sink, bool isExport) : sink_(sink) {
      if (!isExport) {
        Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "only TraceService/Export"));
        return;
      }
      StartRead(&request_);
    }
    void OnReadDone(bool ok) override {
      if (!ok) {
        Finish(grpc::Status(grpc::StatusCode::INTERNAL, "no request"));
        return;
      }
      ++sink_.requests_;
      sink_.bytes_ += request_.Length();
      grpc::Slice empty;
      response_ = grpc::ByteBuffer(&empty, 1);
      StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
    }
    void OnDone() override { delete this; }

   private:
    GrpcSink& sink_;
    grpc::ByteBuffer request_;
    grpc::ByteBuffer response_;
  };

  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  std::atomic<uint64_t> requests_{0};
  std::atomic<uint64_t> bytes_{0};
};

double cpuSeconds(clockid_t clock) {
  timespec t{};
  clock_gettime(clock, &t);
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) * 1e-9;
}

// utime + stime of another process, from /proc; 0 when unreadable.
double processCpuSeconds(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text;
  std::getline(stat, text);              // One line.
  const size_t close = text.rfind(')');  // The command name may hold spaces.
  if (close == std::string::npos) {
    return 0;
  }
  std::istringstream fields(text.substr(close + 2));
  std::string field;
  unsigned long long utime = 0;
  unsigned long long stime = 0;
  for (int i = 3; fields >> field; ++i) {  // Field 3 is the state.
    if (i == 14) {
      utime = std::stoull(field);
    } else if (i == 15) {
      stime = std::stoull(field);
      break;
    }
  }
  return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

struct ExportRun {
  std::string sink;
  std::string mode;
  uint64_t offered = 0;
  uint64_t exported = 0;
  uint64_t dropped = 0;
  uint64_t rejected = 0;
  uint64_t failedExports = 0;
  double pushSeconds = 0;   // Until the last span was finished.
  double totalSeconds = 0;  // Until flush() saw the queue drained.
  double cpuSeconds = 0;    // This process.
  double sinkCpuSeconds = -1;
  bool flushed = false;
  std::vector<double> callMilliseconds;  // Each export call, sorted.
  uint64_t warmupExported = 0;           // Before the run: not counted above.
};

// The OTLP exporter, with the duration of each call recorded (read once the tracer is closed).
class TimedExporter final : public snow::tracing::SpanExporter {
 public:
  TimedExporter(std::unique_ptr<SpanExporter> inner, std::shared_ptr<std::vector<double>> calls)
      : inner_(std::move(inner)), calls_(std::move(calls)) {}

  Result exportSpans(std::span<const snow::tracing::SpanData> spans,
                     std::span<const snow::tracing::Attribute> resource,
                     Clock::time_point deadline) override {
    const Clock::time_point start = Clock::now();
    Result result = inner_->exportSpans(spans, resource, deadline);
    calls_->push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
    return result;
  }
  [[nodiscard]] std::string describe() const override { return inner_->describe(); }

 private:
  std::unique_ptr<SpanExporter> inner_;
  std::shared_ptr<std::vector<double>> calls_;
};

// How spans are offered to the tracer.
struct ExportMode {
  std::string name;
  snow::tracing::TracerOptions options;
  double rate = 0;          // Spans/s; 0: as fast as the loop thread makes them.
  bool closedLoop = false;  // Wait while a full queue would drop, so that nothing is dropped.
};

// Flushes, running `pump` meanwhile; false after 60 s.
bool flush(snow::tracing::Tracer& tracer, const std::function<void()>& pump) {
  const Clock::time_point deadline = Clock::now() + std::chrono::seconds(60);
  while (!tracer.flush(std::chrono::milliseconds(10))) {
    if (Clock::now() >= deadline) {
      return false;
    }
    pump();
  }
  return true;
}

// Pushes `count` event-like spans through a fresh tracer exporting to `endpoint` as `mode` says,
// then flushes. `pump` runs between bursts and while flushing (the Node receiver's log must be
// read, or it blocks on its stderr pipe). Before that, and not counted, `warmup` spans go through
// flat out and are flushed: the first call connects, and the Node receiver's decoder is cold.
ExportRun pushSpans(const std::string& endpoint, uint64_t count, uint64_t warmup,
                    const ExportMode& mode, const std::function<void()>& pump) {
  snow::tracing::TracerOptions options = mode.options;
  // Closed loop: the producer waits while the queue could not take another burst.
  const size_t closedLoopLimit =
      options.queueSize > options.batchSize ? options.queueSize - options.batchSize : 0;
  options.serviceName = "tracing-bench";
  options.sampler.kind = Sampler::Kind::Always;
  options.seed = 1;
  snow::rpc::OtlpExporterOptions exporterOptions;
  exporterOptions.endpoint = endpoint;
  auto calls = std::make_shared<std::vector<double>>();
  const auto tracer = snow::tracing::Tracer::make(
      std::move(options),
      std::make_unique<TimedExporter>(snow::rpc::makeOtlpGrpcExporter(exporterOptions), calls));

  // Paced: 1 ms worth of spans at a time, close to a loop's steady flow.
  uint64_t burst = 1000;
  if (mode.closedLoop) {
    burst = std::min<uint64_t>(256, closedLoopLimit);
  } else if (mode.rate > 0) {
    burst = std::max<uint64_t>(1, static_cast<uint64_t>(mode.rate / 1000));
  }
  const EventTags tags;
  ExportRun run;
  run.sink = "?";
  run.mode = mode.name;
  run.offered = count;
  for (uint64_t i = 0; i < warmup; ++i) {
    traceEvent(*tracer, tags);
  }
  (void)flush(*tracer, pump);
  const auto before = tracer->stats();
  run.warmupExported = before.exported;
  calls->clear();  // flush() returned: the export thread waits, and wrote before it settled.
  const double cpu0 = cpuSeconds(CLOCK_PROCESS_CPUTIME_ID);
  const Clock::time_point start = Clock::now();
  for (uint64_t i = 0; i < count; ++i) {
    if (i % burst == 0) {
      pump();
      if (mode.rate > 0) {
        std::this_thread::sleep_until(
            start + std::chrono::duration_cast<Clock::duration>(
                        std::chrono::duration<double>(static_cast<double>(i) / mode.rate)));
      }
      while (mode.closedLoop && tracer->stats().queued + burst > closedLoopLimit) {
        std::this_thread::sleep_for(std::chrono::microseconds(100));
        pump();
      }
    }
    traceEvent(*tracer, tags);
  }
  const Clock::time_point pushed = Clock::now();
  run.flushed = flush(*tracer, pump);
  const Clock::time_point done = Clock::now();
  run.cpuSeconds = cpuSeconds(CLOCK_PROCESS_CPUTIME_ID) - cpu0;
  const auto stats = tracer->stats();
  run.exported = stats.exported - before.exported;
  run.dropped = stats.dropped - before.dropped;
  run.rejected = stats.rejected - before.rejected;
  run.failedExports = stats.failedExports - before.failedExports;
  run.pushSeconds = std::chrono::duration<double>(pushed - start).count();
  run.totalSeconds = std::chrono::duration<double>(done - start).count();
  if (!run.flushed) {
    std::printf("export: flush did not finish within 60 s (%s)\n", stats.lastError.c_str());
  }
  tracer->Close();  // The export thread has ended: `calls` is ours.
  run.callMilliseconds = std::move(*calls);
  std::sort(run.callMilliseconds.begin(), run.callMilliseconds.end());
  return run;
}

// The Node.js receiver with --count-only, started as the tests' OtlpReceiver starts it.
class CountingReceiver {
 public:
  explicit CountingReceiver(snow::Dispatcher& loop) {
    const std::string script = snow::testing::OtlpReceiver::script("receiver.mjs");
    const std::string modules = snow::testing::OtlpReceiver::script("node_modules");
    if (!std::filesystem::exists(script) || !std::filesystem::exists(modules)) {
      throw std::runtime_error(script + " or its node_modules is missing");
    }
    process_ = std::make_unique<snow::testing::DaemonProcess>(
        loop, snow::testing::OtlpReceiver::node(),
        std::vector<std::string>{script, "--port", "0", "--count-only"},
        std::vector<std::string>{});
    const std::string prefix = "otlp-receiver listening on 127.0.0.1:";
    const size_t at = process_->waitForLog(prefix);
    const size_t end = at == std::string::npos ? at : process_->waitForLog("\n", at);
    if (end == std::string::npos) {
      throw std::runtime_error("it did not start; its log:\n" + process_->log());
    }
    const size_t begin = at + prefix.size();
    endpoint_ = "127.0.0.1:" + process_->log().substr(begin, end - begin);
  }
  ~CountingReceiver() {
    process_->signal(SIGTERM);
    (void)process_->waitForExit(std::chrono::seconds(10));
  }
  CountingReceiver(const CountingReceiver&) = delete;
  CountingReceiver& operator=(const CountingReceiver&) = delete;

  [[nodiscard]] const std::string& endpoint() const noexcept { return endpoint_; }
  [[nodiscard]] pid_t pid() const noexcept { return process_->pid(); }
  // Whether the receiver reports having decoded `total` spans in all.
  bool decoded(uint64_t total) {
    return process_->waitForLog("(total " + std::to_string(total) + ")", 0,
                                std::chrono::seconds(5)) != std::string::npos;
  }

 private:
  std::unique_ptr<snow::testing::DaemonProcess> process_;
  std::string endpoint_;
};

double percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) {
    return 0;
  }
  return sorted[static_cast<size_t>(p * static_cast<double>(sorted.size() - 1))];
}

void printExportRuns(const std::vector<ExportRun>& runs) {
  std::printf("\n%-14s %-32s %8s %8s %7s %9s %7s %6s %6s %7s %7s %7s\n", "sink", "mode", "offered",
              "exported", "dropped", "spans/s", "push s", "cpu", "sink", "call", "call", "call");
  std::printf("%-14s %-32s %8s %8s %7s %9s %7s %6s %6s %7s %7s %7s\n", "", "", "", "", "", "", "",
              "us/sp", "us/sp", "p50 ms", "p99 ms", "max ms");
  for (const auto& r : runs) {
    const auto offered = static_cast<double>(r.offered);
    char sinkCpu[16] = "-";
    if (r.sinkCpuSeconds >= 0) {
      std::snprintf(sinkCpu, sizeof sinkCpu, "%.2f", r.sinkCpuSeconds * 1e6 / offered);
    }
    std::printf("%-14s %-32s %8llu %8llu %7llu %9.0f %7.3f %6.2f %6s %7.2f %7.2f %7.2f%s\n",
                r.sink.c_str(), r.mode.c_str(), static_cast<unsigned long long>(r.offered),
                static_cast<unsigned long long>(r.exported),
                static_cast<unsigned long long>(r.dropped),
                static_cast<double>(r.exported) / r.totalSeconds, r.pushSeconds,
                r.cpuSeconds * 1e6 / offered, sinkCpu, percentile(r.callMilliseconds, 0.5),
                percentile(r.callMilliseconds, 0.99), percentile(r.callMilliseconds, 1.0),
                r.flushed ? "" : "  (not flushed)");
    if (r.rejected > 0 || r.failedExports > 0) {
      std::printf("%-14s   %llu rejected, %llu failed export attempts\n", "",
                  static_cast<unsigned long long>(r.rejected),
                  static_cast<unsigned long long>(r.failedExports));
    }
  }
  std::printf(
      "(spans/s = exported / time from the first span to the drained queue; cpu = this process's "
      "CPU time per offered span, the in-process sink's included; sink = the Node receiver's; "
      "call = one export call, encoding included)\n");
}

void runExport(uint64_t count, uint64_t warmup, double rate, size_t batch, size_t queue) {
  const auto os = snow::posix::makeDefaultPosix();
  const snow::posix::ScopedInjector injected(*os);
  auto loop = snow::makeDispatcher("export-bench");

  // The default queue, or at least 4 batches when the batches are larger than the default.
  snow::tracing::TracerOptions bounded;
  bounded.batchSize = batch;
  bounded.queueSize = queue != 0 ? std::max(queue, batch) : std::max(bounded.queueSize, 4 * batch);
  snow::tracing::TracerOptions holdsAll = bounded;
  holdsAll.queueSize = std::max<size_t>(count, batch);
  const std::string b = ", b " + std::to_string(batch);
  const std::vector<ExportMode> modes{
      // As the issue asks: as fast as possible into a queue that holds every span, then flush.
      {"flat out, q " + std::to_string(holdsAll.queueSize) + b, holdsAll},
      // The exporter's ceiling with a bounded queue: the producer waits instead of dropping.
      {"closed loop, q " + std::to_string(bounded.queueSize) + b, bounded, 0, true},
      // Zero drops at `rate` through the bounded queue: the rate is sustained.
      {"paced " + std::to_string(static_cast<uint64_t>(rate)) + "/s, q " +
           std::to_string(bounded.queueSize) + b,
       bounded, rate},
  };

  std::vector<ExportRun> runs;
  {
    GrpcSink sink;
    for (const auto& mode : modes) {
      const uint64_t before = sink.requests();
      const uint64_t bytes = sink.bytes();
      runs.push_back(pushSpans(sink.endpoint(), count, warmup, mode, [] {}));
      runs.back().sink = "grpc sink";
      const uint64_t requests = sink.requests() - before;
      std::printf(
          "export: grpc sink, %s: %llu requests, %llu bytes each on average\n", mode.name.c_str(),
          static_cast<unsigned long long>(requests),
          static_cast<unsigned long long>(requests == 0 ? 0 : (sink.bytes() - bytes) / requests));
    }
  }

  for (const auto& mode : modes) {
    std::optional<CountingReceiver> receiver;
    try {
      receiver.emplace(*loop);
    } catch (const std::exception& e) {
      std::printf(
          "export: skipping the Node receiver (scripts/otlp-receiver-install installs it): %s\n",
          e.what());
      break;
    }
    const double cpu0 = processCpuSeconds(receiver->pid());
    runs.push_back(pushSpans(receiver->endpoint(), count, warmup, mode,
                             [&loop] { loop->run(snow::RunMode::NonBlock); }));
    runs.back().sink = "node receiver";
    runs.back().sinkCpuSeconds = processCpuSeconds(receiver->pid()) - cpu0;
    const uint64_t total = runs.back().warmupExported + runs.back().exported;
    if (!receiver->decoded(total)) {
      std::printf("export: the receiver did not report decoding %llu spans\n",
                  static_cast<unsigned long long>(total));
    }
  }
  printExportRuns(runs);
}

// --name=value, removed from argv when it is ours.
std::optional<std::string> takeFlag(int& argc, char** argv, std::string_view name) {
  const std::string prefix = "--" + std::string(name) + "=";
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg.starts_with(prefix)) {
      std::string value(arg.substr(prefix.size()));
      for (int j = i; j + 1 < argc; ++j) {
        argv[j] = argv[j + 1];
      }
      --argc;
      return value;
    }
  }
  return std::nullopt;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string exportWhat = takeFlag(argc, argv, "export").value_or("yes");
  const uint64_t exportSpans = std::stoull(takeFlag(argc, argv, "export-spans").value_or("200000"));
  const double exportRate = std::stod(takeFlag(argc, argv, "export-rate").value_or("100000"));
  const size_t exportBatch = std::stoul(takeFlag(argc, argv, "export-batch").value_or("512"));
  const size_t exportQueue = std::stoul(takeFlag(argc, argv, "export-queue").value_or("0"));
  const uint64_t exportWarmup = std::stoull(takeFlag(argc, argv, "export-warmup").value_or("2048"));
  if ((exportWhat != "yes" && exportWhat != "no" && exportWhat != "only") || exportBatch == 0) {
    std::fprintf(stderr, "--export=yes|no|only, --export-batch > 0\n");
    return 1;
  }
  spdlog::set_level(spdlog::level::warn);  // The tracers' start-up and drop reports only.

  registerBenchmarks();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) {
    return 1;
  }
  if (exportWhat != "only") {
    PeerRatioReporter reporter;
    benchmark::RunSpecifiedBenchmarks(&reporter);
  }
  if (exportWhat != "no") {
    runExport(exportSpans, exportWarmup, exportRate, exportBatch, exportQueue);
  }
  benchmark::Shutdown();
  return 0;
}
