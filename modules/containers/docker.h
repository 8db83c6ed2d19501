#pragma once

// The Docker Engine API client (docs/containers.md): builds images and runs containers through a
// Docker engine's unix socket, API v1.41 (docker 20.10), over HTTP with libcurl.
//
// Contract:
//   - Thread: a DockerEngine belongs to the loop thread that constructs it; call it and destroy
//     it there. It owns one engine thread, which runs every transfer with libcurl's multi
//     interface (curl_multi_poll), so the loop never waits on the engine. Requests reach that
//     thread through a mutex-protected queue and curl_multi_wakeup(); what the engine answers
//     comes back by Dispatcher::post(), one post per batch of I/O. Every callback given here
//     (onOutput) runs on the loop thread, and every future settles there (never inline).
//   - Ownership: a call keeps what it was given (copies, or moves: build() takes the context by
//     value, and the engine thread uploads it from that string without copying it again) and its
//     callback until its future settles. The engine owns its thread and the transfers in flight.
//   - Cancellation: cancelling a call's future (directly, through within() or a derived future)
//     aborts its transfer: that is how logs(follow = true) is ended. Destroying the engine aborts
//     every transfer in flight, joins the engine thread, and rejects their futures with
//     snow::Cancelled; no callback runs after the destructor returned.
//   - Errors: futures reject with DockerError.
//       status() 0         no complete HTTP answer: the engine cannot be reached ("cannot reach
//                          the Docker engine at <socket>: <why>"), or it broke the answer off.
//       status() >= 400    the engine refused: message() is Docker's "message"; notFound() for
//                          404 (no such container or image).
//       a failed build     status() is the answer's (200 when the failure came in the stream),
//                          message() Docker's error, what() adds the tail of the build log.
//       a malformed answer status() is the answer's; message() says what was wrong.
//     An exception thrown by an onOutput callback aborts its call and rejects the future with it.
//   - Tracing: a call given a parent span context makes one child span, named by method and route
//     ("docker POST /containers/{id}/start"), tagged span.kind client, http.method, http.url (the
//     path, without the query), peer.address (the socket) and http.status_code, plus error and an
//     error log when it fails. A call without a parent makes no span (as rpc/ does: no root spans
//     of their own to bury the traces that matter).

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <opentracing/span.h>
#include <opentracing/tracer.h>

#include "snow/core/dispatcher.h"
#include "snow/core/function.h"
#include "snow/core/future.h"

namespace snow::containers {

namespace detail {
class EngineCore;
class EngineThread;
}  // namespace detail

// What the Docker engine (or the way to it) answered instead of what was asked.
class DockerError : public std::runtime_error {
 public:
  DockerError(int status, std::string message, const std::string& what)
      : std::runtime_error(what), status_(status), message_(std::move(message)) {}

  // The HTTP status; 0 when no complete answer arrived (unreachable, broken off).
  [[nodiscard]] int status() const noexcept { return status_; }
  // Docker's "message" (or the build's "error"); curl's words when status() is 0.
  [[nodiscard]] const std::string& message() const noexcept { return message_; }
  // No such container (or image): the module treats a container that vanished specially.
  [[nodiscard]] bool notFound() const noexcept { return status_ == 404; }
  // No answer at all: the engine is down, or the socket is wrong.
  [[nodiscard]] bool unreachable() const noexcept { return status_ == 0; }

 private:
  int status_;
  std::string message_;
};

struct DockerOptions {
  std::string socketPath = "/var/run/docker.sock";
  std::string apiVersion = "1.41";  // The path prefix: /v1.41/...
  // Spans of calls made with a parent context; null: the noop tracer.
  std::shared_ptr<opentracing::Tracer> tracer;
  Duration connectTimeout = std::chrono::seconds(5);
};

// GET /version.
struct EngineVersion {
  std::string version;        // "20.10.24+dfsg1"
  std::string apiVersion;     // "1.41"
  std::string minApiVersion;  // "1.12"
  std::string os;
  std::string arch;
  std::string kernelVersion;
};

// POST /build (the legacy builder's options that the runner uses).
struct BuildOptions {
  std::string dockerfile = "Dockerfile";  // Its path inside the context.
  std::vector<std::string> tags;          // "name:tag", each one a `t` parameter.
  std::map<std::string, std::string> labels;
  std::map<std::string, std::string> buildArgs;
  bool noCache = false;
  // The network of RUN steps; "" leaves the engine's default (the bridge, which the runner's
  // engines may not have).
  std::string networkMode = "none";
};

// POST /containers/create. The container gets no TTY, so its logs are multiplexed (logs()).
struct ContainerSpec {
  std::string name;  // "" lets Docker pick one.
  std::string image;
  std::optional<std::vector<std::string>> cmd;  // Unset: the image's CMD.
  std::vector<std::string> env;                 // "NAME=value".
  std::map<std::string, std::string> labels;
  std::string networkMode = "none";
  std::optional<int64_t> memoryBytes;  // HostConfig.Memory; unset: no limit.
};

// GET /containers/{id}/json, the parts the runner reads.
struct ContainerState {
  std::string id;
  std::string name;     // "/name", as Docker reports it.
  std::string image;    // As the container was created (Config.Image).
  std::string imageId;  // "sha256:..."
  std::string status;   // "created", "running", "exited", ...
  bool running = false;
  bool oomKilled = false;
  int64_t exitCode = 0;
  std::string error;       // State.Error: why the engine could not run it.
  std::string startedAt;   // RFC 3339; "0001-01-01T00:00:00Z" when it never started.
  std::string finishedAt;  // Likewise.
  std::map<std::string, std::string> labels;
};

// One entry of GET /containers/json.
struct ContainerSummary {
  std::string id;
  std::vector<std::string> names;  // "/name"
  std::string image;
  std::string state;   // "running", "exited", ...
  std::string status;  // "Exited (3) 2 seconds ago"
  std::map<std::string, std::string> labels;
  int64_t created = 0;  // Unix seconds.
};

// POST /containers/{id}/wait?condition=...
enum class WaitCondition {
  NotRunning,  // Returns at once for a container that is not running (created, exited).
  NextExit,    // The next time it exits: wait before start() without racing it.
  Removed,     // Once it was removed.
};

// The streams of logs(): Docker's stream numbers.
inline constexpr int kStdout = 1;
inline constexpr int kStderr = 2;

// A build's output, one line at a time, without its newline.
using BuildOutput = UniqueFunction<void(std::string_view line)>;
// A container's output: the stream (kStdout, kStderr) and bytes as they came, not split in lines.
using LogOutput = UniqueFunction<void(int stream, std::string_view bytes)>;

using SpanParent = const opentracing::SpanContext*;

class DockerEngine {
 public:
  // Starts the engine thread; connects to nothing until the first call.
  DockerEngine(Dispatcher& loop, DockerOptions options);
  ~DockerEngine();
  DockerEngine(const DockerEngine&) = delete;
  DockerEngine& operator=(const DockerEngine&) = delete;

  // GET /_ping: resolves when the engine answers.
  Future<void> ping(SpanParent parent = nullptr);
  Future<EngineVersion> version(SpanParent parent = nullptr);

  // POST /build with `tarContext` (an uncompressed or gzipped tar); `onOutput` gets each output
  // line as it arrives. Resolves with the image id ("sha256:...").
  Future<std::string> build(std::string tarContext, const BuildOptions& options,
                            BuildOutput onOutput, SpanParent parent = nullptr);

  // POST /containers/create: resolves with the container id.
  Future<std::string> createContainer(const ContainerSpec& spec, SpanParent parent = nullptr);
  // Starting a running container, or stopping a stopped one, is not an error (HTTP 304).
  Future<void> start(const std::string& id, SpanParent parent = nullptr);
  // Long-polls until `condition`; resolves with the exit code.
  Future<int64_t> wait(const std::string& id, WaitCondition condition = WaitCondition::NotRunning,
                       SpanParent parent = nullptr);
  // SIGTERM, then SIGKILL after `timeoutSeconds`; resolves once it stopped.
  Future<void> stop(const std::string& id, int timeoutSeconds = 10, SpanParent parent = nullptr);
  // Removes the container and its anonymous volumes; `force` kills a running one first.
  Future<void> remove(const std::string& id, bool force = false, SpanParent parent = nullptr);
  Future<ContainerState> inspect(const std::string& id, SpanParent parent = nullptr);
  // The containers carrying every label of `labels` ("key" = "value"; an empty value matches any
  // value of the key); `all` includes those not running.
  Future<std::vector<ContainerSummary>> list(const std::map<std::string, std::string>& labels,
                                             bool all = true, SpanParent parent = nullptr);
  // The container's stdout and stderr, demultiplexed, as they arrive; resolves when the stream
  // ends (at once for what was logged so far; with `follow`, once the container stops). Cancel
  // the future to stop following.
  Future<void> logs(const std::string& id, bool follow, LogOutput onOutput,
                    SpanParent parent = nullptr);

  [[nodiscard]] const std::string& socketPath() const noexcept;
  // Calls whose futures have not settled yet.
  [[nodiscard]] size_t callsInFlight() const noexcept;

 private:
  std::shared_ptr<detail::EngineCore> core_;
  std::unique_ptr<detail::EngineThread> thread_;
};
using DockerEnginePtr = std::unique_ptr<DockerEngine>;

}  // namespace snow::containers
