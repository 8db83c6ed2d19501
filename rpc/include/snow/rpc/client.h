#pragma once

// The RPC client: every call returns a Future, has a deadline and never blocks the loop.
//
// Peers are addressed as "unix:/path/to/rpc.sock" or "host:port" (TLS when ClientOptions::tls is
// set). The client keeps one pool of channels per peer (poolSize connections, calls spread over
// them round-robin) for as long as it lives; gRPC reconnects a broken channel with the backoff
// policy's numbers.
//
// A failed attempt is retried, with jittered exponential backoff, only when its code is
// retryable (status.h: UNAVAILABLE) and the call is idempotent, and only while the deadline
// leaves time for it. Every call ends by its deadline: the future rejects with RpcError
// DEADLINE_EXCEEDED (naming method, peer and the last attempt's error), or with the last
// attempt's code as soon as the next retry would not fit before the deadline.
//
// Health: monitor(peer) pings the peer every HealthOptions::interval; after `failures` failed
// pings it is DOWN, after one good ping UP, and every change is reported to the onHealth
// callback (the daemon raises it as an event, so a peer going down is visible in
// `snowctl events` before a call needs that peer).
//
// Contract:
//   - Thread: construct, call and destroy on the loop thread; futures settle on it.
//   - Ownership: the client owns its completion-queue thread and channels. Destroying it cancels
//     the calls in flight (their futures reject with CANCELLED).
//   - Errors: calls reject with RpcError; a malformed address rejects with INVALID_ARGUMENT, an
//     unreadable TLS file with FAILED_PRECONDITION naming the file.

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <opentracing/span.h>
#include <opentracing/tracer.h>

#include "snow/core/backoff.h"
#include "snow/core/dispatcher.h"
#include "snow/core/event.h"
#include "snow/core/function.h"
#include "snow/core/future.h"
#include "snow/rpc/server.h"
#include "snow/rpc/status.h"

namespace snow::rpc {

struct HealthOptions {
  Duration interval = std::chrono::seconds(5);
  Duration timeout = std::chrono::seconds(2);
  uint32_t failures = 2;
};

struct ClientOptions {
  BackoffPolicy backoff;
  HealthOptions health;
  Duration defaultTimeout = std::chrono::seconds(10);
  uint32_t poolSize = 2;
  std::optional<TlsFiles> tls;  // For "host:port" peers; unix sockets never use TLS.
  int maxMessageBytes = 4 << 20;
  // Injects the caller's span context into each call's metadata. Null: the noop tracer.
  std::shared_ptr<opentracing::Tracer> tracer;
  uint64_t seed = 0;  // Backoff jitter; 0: drawn from the OS.
};

struct CallOptions {
  Duration timeout{0};  // 0: ClientOptions::defaultTimeout.
  // Safe to send again after an UNAVAILABLE attempt? Off by default: whether a repeat is harmless
  // is a property of the method (Node::dispatch() sets it: the receiver deduplicates).
  bool idempotent = false;
  // The span this call is a child of; defaults to the current event's span (if any).
  const opentracing::SpanContext* traceParent = nullptr;
  std::vector<std::pair<std::string, std::string>> metadata;
};

enum class Health { Unknown, Up, Down };
std::string_view healthName(Health health) noexcept;

// Why `address` is not a peer address ("unix:/path" or "host:port"), or empty when it is one.
std::string checkPeerAddress(std::string_view address);

struct PeerHealth {
  std::string address;
  Health health = Health::Unknown;
  std::chrono::system_clock::time_point since{};
  std::string lastError;
  Duration roundTrip{0};
};

class Client {
 public:
  using HealthCallback = UniqueFunction<void(const PeerHealth&)>;

  Client(Dispatcher& loop, ClientOptions options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Calls `method` ("/package.Service/Method") on `peer`; the reply is parsed as a message of
  // `replyPrototype`'s type.
  Future<MessagePtr> call(std::string_view peer, std::string_view method,
                          const google::protobuf::Message& request,
                          const google::protobuf::Message& replyPrototype,
                          CallOptions options = {});

  template <typename Resp>
  Future<std::shared_ptr<const Resp>> call(std::string_view peer, std::string_view method,
                                           const google::protobuf::Message& request,
                                           CallOptions options = {}) {
    return call(peer, method, request, Resp::default_instance(), std::move(options))
        .then([](MessagePtr reply) { return std::static_pointer_cast<const Resp>(reply); });
  }

  // A server-streaming call: `onMessage` runs for every message received (on the loop); the
  // future resolves when the server ends the stream with OK and rejects otherwise. Cancel the
  // future to end the stream. Not retried. CallOptions::timeout is the stream's whole deadline;
  // 0 here means none (a watch runs until cancelled).
  Future<void> stream(std::string_view peer, std::string_view method,
                      const google::protobuf::Message& request,
                      const google::protobuf::Message& replyPrototype,
                      UniqueFunction<void(MessagePtr)> onMessage, CallOptions options = {});

  // A client-streaming call: sends the messages `next()` produces, then resolves with the
  // server's single reply, parsed as a message of `replyPrototype`'s type.
  //   - Flow control: next() is called (on the loop) for one message at a time, and again only
  //     once gRPC took the previous one, so at most one message waits here and a server that
  //     reads slowly slows the producer down. Its future resolving with nullptr ends the stream.
  //   - Errors: RpcError with the server's code and message; the server may answer before the
  //     stream ended (a handler that rejects, or replies, early), and next() is not called after.
  //     RESOURCE_EXHAUSTED for a message over ClientOptions::maxMessageBytes (or the server's
  //     limit). next()'s own error when it rejects or throws: the call is cancelled.
  //   - Deadline: CallOptions::timeout is the whole upload's, from the call to the reply; 0 is
  //     ClientOptions::defaultTimeout, as for call(), to keep a deadline on every call. That is
  //     short for a large upload: set it from the size (e.g. 500 MiB at 20 MiB/s needs 25 s).
  //   - Not retried: a stream cannot be replayed. Cancelling the future cancels the call and the
  //     future next() returned, if pending; it rejects with Cancelled.
  Future<MessagePtr> upload(std::string_view peer, std::string_view method,
                            const google::protobuf::Message& replyPrototype,
                            UniqueFunction<Future<MessagePtr>()> next, CallOptions options = {});

  template <typename Resp>
  Future<std::shared_ptr<const Resp>> upload(std::string_view peer, std::string_view method,
                                             UniqueFunction<Future<MessagePtr>()> next,
                                             CallOptions options = {}) {
    return upload(peer, method, Resp::default_instance(), std::move(next), std::move(options))
        .then([](MessagePtr reply) { return std::static_pointer_cast<const Resp>(reply); });
  }

  // Starts health checks of `peer` (idempotent); changes go to the health callback. Throws
  // std::invalid_argument for a malformed address.
  void monitor(std::string_view peer);
  // Stops every health check (a ping in flight still completes).
  void stopMonitoring();
  void onHealth(HealthCallback callback);
  // Every monitored peer's state, in the order monitor() was first called.
  [[nodiscard]] std::vector<PeerHealth> health() const;

  [[nodiscard]] const ClientOptions& options() const noexcept;

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace snow::rpc
