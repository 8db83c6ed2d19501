#pragma once

// An OTLP trace collector for tests, standing in for Jaeger (which the tests cannot install):
// tests/tracing/otlp-receiver/receiver.mjs, a Node.js program on OpenTelemetry's own packages,
// so that our exporter is checked against an implementation that shares none of our code.
//
// It serves opentelemetry.proto.collector.trace.v1.TraceService/Export (OTLP/gRPC) on
// 127.0.0.1 and, when asked, OTLP/HTTP protobuf (POST /v1/traces). It stores every span of a
// request in its output file before answering the request: once an exporter has seen OK, spans()
// returns those spans. The file belongs to the OtlpReceiver, not to one process: it survives
// stop() and restart(), and is removed with the object.
//
// Needs the receiver installed by scripts/otlp-receiver-install: tests using this class require
// the CTest fixture "otlp_receiver" (snow_test(... FIXTURES otlp_receiver ...)).
//
// Loop-thread only, like the DaemonProcess it runs the receiver with: every wait runs `loop`, and
// the process is spawned through posix::active(), which the test must have set.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "snow/core/dispatcher.h"

#include "support/files.h"

namespace snow::testing {

class DaemonProcess;

// One span as the receiver decoded it: one line of its output file.
struct ReceivedSpan {
  // Attribute values as text: strings as they are, "true"/"false", integers in decimal (int64
  // exactly), doubles as JSON writes them ("1.5"), arrays and key-value lists as JSON, bytes in
  // hex. `json` keeps the types where a test needs them.
  using Attributes = std::map<std::string, std::string>;
  struct Event {
    std::string name;
    uint64_t timeNs = 0;
    Attributes attributes;
  };
  struct Link {
    std::string traceId;
    std::string spanId;
    std::string traceState;
    Attributes attributes;
  };

  std::string traceId;       // 32 lowercase hex digits.
  std::string spanId;        // 16 lowercase hex digits.
  std::string parentSpanId;  // "" for a root span.
  std::string name;
  std::string traceState;
  int kind = 0;          // OTLP SpanKind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
  uint32_t flags = 0;    // W3C trace flags in the low byte; OTLP's is-remote bits above.
  uint64_t startNs = 0;  // Unix epoch nanoseconds.
  uint64_t endNs = 0;
  Attributes attributes;
  std::vector<Event> events;
  std::vector<Link> links;
  int statusCode = 0;  // OTLP StatusCode: 0 unset, 1 ok, 2 error.
  std::string statusMessage;
  Attributes resource;  // The attributes of the request's resource the span came in.
  std::string scopeName;
  std::string scopeVersion;
  uint32_t droppedAttributesCount = 0;
  std::string json;  // The whole line, as the receiver wrote it.
};

class OtlpReceiver {
 public:
  static constexpr Duration kDefaultDeadline = std::chrono::seconds(20);

  // Starts a receiver on 127.0.0.1:`port` (0: a free port, kept by restart()), refusing its
  // first `failFirst` Export calls with UNAVAILABLE (HTTP 503) and storing nothing for them;
  // `withHttp` adds the OTLP/HTTP listener on a free port. Returns once the receiver listens;
  // throws std::runtime_error, with the receiver's log, when it does not within the deadline.
  explicit OtlpReceiver(Dispatcher& loop, uint16_t port = 0, int failFirst = 0,
                        bool withHttp = false);
  ~OtlpReceiver();  // Stops the receiver and removes its output file.
  OtlpReceiver(const OtlpReceiver&) = delete;
  OtlpReceiver& operator=(const OtlpReceiver&) = delete;

  [[nodiscard]] uint16_t port() const noexcept { return port_; }
  // "127.0.0.1:PORT": the gRPC target of an OTLP exporter.
  [[nodiscard]] std::string endpoint() const;
  // "http://127.0.0.1:PORT/v1/traces", or "" without withHttp.
  [[nodiscard]] std::string httpUrl() const;
  [[nodiscard]] const std::string& outputPath() const noexcept { return outputPath_; }
  [[nodiscard]] bool running() const noexcept { return process_ != nullptr; }

  // Every span stored so far, by this receiver and those before a restart(), in arrival order.
  [[nodiscard]] std::vector<ReceivedSpan> spans() const;
  [[nodiscard]] size_t spanCount() const;
  // Runs the loop until at least `count` spans are stored; false at the deadline.
  bool waitForSpans(size_t count, Duration deadline = kDefaultDeadline);

  // Everything the receivers printed (one "export: N spans" or "export: refused ..." line per
  // request), across restarts.
  [[nodiscard]] std::string log() const;
  // Waits until the running receiver's log contains `text` after byte `from` (offsets count in
  // this receiver process's log only); returns its offset, or npos at the deadline or when the
  // receiver exited first.
  size_t waitForLog(const std::string& text, size_t from = 0, Duration deadline = kDefaultDeadline);

  // Stops the receiver (SIGTERM, SIGKILL if it ignores that) and reaps it; returns its exit code
  // (0 after a clean SIGTERM; -1 if it was not running). Clients see their connections closed.
  int stop();
  // Stops the receiver if it runs and starts a new one on the same port(s) and output file,
  // refusing its own first `failFirst` calls (the count is per receiver process). Throws as the
  // constructor does.
  void restart(int failFirst = 0);

  // The Node.js program, and a file of the installed receiver directory ("send-sample.mjs"),
  // for tests that run the official OpenTelemetry exporters themselves.
  [[nodiscard]] static std::string node();
  [[nodiscard]] static std::string script(const std::string& name);

 private:
  void start(int failFirst);
  // The port announced on a "<prefix><port>\n" line of the starting receiver's log; 0 if none.
  uint16_t waitForPort(const std::string& prefix);
  [[noreturn]] void failToStart(const std::string& why);

  Dispatcher& loop_;
  uint16_t port_;
  bool withHttp_;
  uint16_t httpPort_ = 0;
  TempDir directory_;
  std::string outputPath_;
  std::unique_ptr<DaemonProcess> process_;
  std::string pastLogs_;  // Of the receivers stopped so far.
};

}  // namespace snow::testing
