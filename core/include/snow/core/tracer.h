#pragma once

// snow-core's own OpenTracing tracer: W3C trace context, sampling, and finished spans batched off
// the caller's thread to a SpanExporter (OTLP to Jaeger: rpc/otlp_exporter.h).
//
// Span model. Each span gets a 64-bit span id and inherits (or, as a root, draws) a 128-bit trace
// id. Parent: the first ChildOf reference, else the first FollowsFrom; further references become
// OTLP links. OpenTracing conventions map onto OTLP: the `span.kind` tag gives the span kind
// (server, client, producer, consumer; else internal), `error: true` gives status ERROR with the
// message of an `event: error` log (its `message` or `error.object` field), other tags become
// attributes, and each Log() becomes an OTLP event named by its `event` field ("log" without one).
// At most kMaxAttributes attributes and kMaxEvents events are kept per span; the rest are counted
// as dropped in the exported span.
//
// Sampling is decided once, when a span starts (Sampler below), and travels with the context: an
// unsampled span still has ids and propagates them, but records nothing and costs little.
//
// Propagation. Inject writes W3C `traceparent` (and `tracestate`, and `baggage` when the span
// carries baggage) to text maps and HTTP headers, which is what gRPC metadata carries. Extract
// reads `traceparent`/`tracestate`, or Jaeger's `uber-trace-id` (with `uberctx-*` baggage) when
// there is no traceparent; keys match case-insensitively. No context: a null SpanContext.
// A malformed one: span_context_corrupted_error, and the caller starts a new trace.
//
// Export. Finished sampled spans wait in a bounded queue of TracerOptions::queueSize spans, which
// counts the batch being sent. When it is full, a finished span is dropped and counted; the count
// is logged (at most once per dropLogInterval) and shown by stats(). One background thread sends
// batches of up to batchSize spans, when a batch is full or batchDelay after the first span
// waited. A batch the exporter could not deliver (collector down) is retried with backoff and
// kept, in order, until it goes through; meanwhile the queue bound holds. A batch the collector
// refuses as malformed is dropped and counted as rejected. Close() (and the destructor) exports
// what is queued within shutdownTimeout, then stops the thread; spans finished after Close() are
// dropped.
//
// Contract:
//   - Thread: the tracer, its spans and contexts may be used from any thread, as OpenTracing
//     requires. The exporter is called on the tracer's thread only.
//   - Ownership: spans keep their tracer alive (shared_ptr); the tracer owns its exporter.
//   - Errors: make() throws std::invalid_argument on impossible options. Nothing else throws;
//     export failures are logged and counted.

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include <opentracing/tracer.h>
#include <spdlog/logger.h>

#include "snow/core/backoff.h"
#include "snow/core/dispatcher.h"

namespace snow::tracing {

using TraceId = std::array<uint8_t, 16>;  // Big-endian, as printed.

enum class SpanKind : uint8_t { Internal = 1, Server = 2, Client = 3, Producer = 4, Consumer = 5 };
enum class StatusCode : uint8_t { Unset = 0, Ok = 1, Error = 2 };

using AttributeValue = std::variant<bool, int64_t, double, std::string>;
struct Attribute {
  std::string key;
  AttributeValue value;
};

inline constexpr size_t kMaxAttributes = 128;
inline constexpr size_t kMaxEvents = 128;

// A finished span, as the exporter receives it.
struct SpanData {
  struct Event {
    uint64_t timeUnixNano = 0;
    std::string name;
    std::vector<Attribute> attributes;
  };
  struct Link {
    TraceId traceId{};
    uint64_t spanId = 0;
  };

  TraceId traceId{};
  uint64_t spanId = 0;
  uint64_t parentSpanId = 0;  // 0: a root span.
  bool parentIsRemote = false;
  std::string traceState;
  std::string name;
  SpanKind kind = SpanKind::Internal;
  uint64_t startUnixNano = 0;
  uint64_t endUnixNano = 0;
  std::vector<Attribute> attributes;
  std::vector<Event> events;
  std::vector<Link> links;
  StatusCode status = StatusCode::Unset;
  std::string statusMessage;
  uint32_t droppedAttributes = 0;
  uint32_t droppedEvents = 0;
};

// Which traces are recorded. Decisions on a trace id are deterministic (its low 8 bytes against
// the ratio, as OpenTelemetry's TraceIdRatioBased), so every node configured with the same ratio
// keeps the same traces whole.
struct Sampler {
  enum class Kind {
    Always,       // Every span.
    Never,        // No span (ids still propagate).
    Ratio,        // A `ratio` of traces by trace id, whatever a parent decided.
    ParentBased,  // A child follows its parent's decision; a root is kept at `ratio`.
  };
  Kind kind = Kind::ParentBased;
  double ratio = 1.0;  // In [0, 1].

  // `parentSampled`: the parent's decision, or nullopt for a root span.
  [[nodiscard]] bool sample(const TraceId& traceId,
                            std::optional<bool> parentSampled) const noexcept;
};

// Delivers batches of finished spans somewhere (an OTLP collector).
class SpanExporter {
 public:
  struct Result {
    enum class Outcome {
      Exported,  // Delivered (`rejected` of them may have been refused by the collector).
      Retry,     // Not delivered, try again later (collector unreachable, overloaded).
      Rejected,  // Refused for good (malformed); retrying cannot help.
    };
    Outcome outcome = Outcome::Exported;
    std::string error;      // Why, for the log; empty when exported.
    uint64_t rejected = 0;  // Spans the collector refused in an Exported batch.
  };

  virtual ~SpanExporter() = default;
  // Called on the tracer's thread only; must return by `deadline`. `resource` is the same for
  // every call.
  virtual Result exportSpans(std::span<const SpanData> spans, std::span<const Attribute> resource,
                             std::chrono::steady_clock::time_point deadline) = 0;
  // Where spans go, for logs and status: "OTLP/gRPC 127.0.0.1:4317".
  [[nodiscard]] virtual std::string describe() const = 0;
};

struct TracerOptions {
  std::string serviceName = "snow-core";  // The `service.name` resource attribute.
  std::vector<Attribute> resource;        // Further resource attributes (node id, version).
  Sampler sampler;
  // Finished spans waiting for export, the batch in flight included. 8192: 80 ms at 100,000
  // spans/s, enough to ride out a collector's slow answers (docs/performance.md, "Tracing").
  size_t queueSize = 8192;
  size_t batchSize = 512;  // At most this many spans per export call; <= queueSize.
  Duration batchDelay = std::chrono::seconds(1);      // The longest a finished span waits.
  Duration exportTimeout = std::chrono::seconds(10);  // One export call.
  BackoffPolicy retry{.initial = std::chrono::seconds(1),
                      .multiplier = 2.0,
                      .jitter = 0.2,
                      .max = std::chrono::seconds(30)};
  Duration shutdownTimeout = std::chrono::seconds(5);  // Close()'s last export.
  Duration dropLogInterval = std::chrono::seconds(10);
  uint64_t seed = 0;  // Id generation; give a random one (0: derived from the clock).
  std::shared_ptr<spdlog::logger> logger;  // Null: spdlog's default logger.
};

struct TracerStats {
  uint64_t started = 0;        // Spans started, sampled or not.
  uint64_t finished = 0;       // Sampled spans finished (offered to the queue).
  uint64_t exported = 0;       // Delivered to the collector and accepted.
  uint64_t dropped = 0;        // Lost to a full queue, or finished after Close().
  uint64_t rejected = 0;       // Refused by the collector.
  uint64_t unsent = 0;         // Still queued when Close()'s deadline passed.
  uint64_t failedExports = 0;  // Export attempts that failed (each retried).
  size_t queued = 0;           // Waiting now, the batch in flight included.
  std::string lastError;       // Of the last failed attempt; empty once one succeeded.
  std::string destination;     // SpanExporter::describe().
};

class SpanPipeline;
class RecordingSpan;

class Tracer final : public opentracing::Tracer, public std::enable_shared_from_this<Tracer> {
 public:
  // Starts the export thread.
  static std::shared_ptr<Tracer> make(TracerOptions options,
                                      std::unique_ptr<SpanExporter> exporter);
  ~Tracer() override;
  Tracer(const Tracer&) = delete;
  Tracer& operator=(const Tracer&) = delete;

  std::unique_ptr<opentracing::Span> StartSpanWithOptions(
      opentracing::string_view operationName,
      const opentracing::StartSpanOptions& options) const noexcept override;

  opentracing::expected<void> Inject(const opentracing::SpanContext& context,
                                     std::ostream& writer) const override;
  opentracing::expected<void> Inject(const opentracing::SpanContext& context,
                                     const opentracing::TextMapWriter& writer) const override;
  opentracing::expected<void> Inject(const opentracing::SpanContext& context,
                                     const opentracing::HTTPHeadersWriter& writer) const override;
  opentracing::expected<void> Inject(const opentracing::SpanContext& context,
                                     const opentracing::CustomCarrierWriter& writer) const override;
  opentracing::expected<std::unique_ptr<opentracing::SpanContext>> Extract(
      std::istream& reader) const override;
  opentracing::expected<std::unique_ptr<opentracing::SpanContext>> Extract(
      const opentracing::TextMapReader& reader) const override;
  opentracing::expected<std::unique_ptr<opentracing::SpanContext>> Extract(
      const opentracing::HTTPHeadersReader& reader) const override;
  opentracing::expected<std::unique_ptr<opentracing::SpanContext>> Extract(
      const opentracing::CustomCarrierReader& reader) const override;

  // Exports what is queued within shutdownTimeout and stops the export thread. Idempotent.
  void Close() noexcept override;

  // Sends what is queued now and waits until it was delivered or refused; false at the timeout
  // (the collector is down, say) or after Close().
  bool flush(Duration timeout) noexcept;

  [[nodiscard]] TracerStats stats() const;
  [[nodiscard]] const TracerOptions& options() const noexcept { return options_; }

  // The next random span id (never 0). Thread-safe.
  uint64_t nextId() const noexcept;

 private:
  Tracer(TracerOptions options, std::unique_ptr<SpanExporter> exporter);
  friend class RecordingSpan;
  void finished(SpanData&& span) const noexcept;

  TracerOptions options_;
  uint64_t seed_;
  mutable std::atomic<uint64_t> idCounter_{0};
  mutable std::atomic<uint64_t> started_{0};
  std::unique_ptr<SpanPipeline> pipeline_;
};

// True when `tracer` is snow-core's own; then stats() can be read through it.
Tracer* asOwnTracer(opentracing::Tracer& tracer) noexcept;

}  // namespace snow::tracing
