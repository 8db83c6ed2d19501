#pragma once

// The RPC server: gRPC, asynchronous, with its handlers on the loop.
//
// One completion-queue thread waits for gRPC's completions and posts them to the loop, in
// batches; every handler and every write decision runs on the loop thread (the pump only starts
// reading a new call's request, so that call and request reach the loop together). Calls are
// served from a Services table (services.h), through gRPC's generic service, so modules add
// methods at run time with protobuf messages only.
//
// Endpoints: a unix socket (local control: the socket is 0600; its directory, created 0700 when
// missing, must belong to the daemon's user and not be writable by others, or start() refuses
// it) and optionally a TCP address, with TLS or mutual TLS from PEM files.
//
// Contract:
//   - Thread: construct, start(), stop() and destroy on the loop thread.
//   - Errors: start() throws std::runtime_error naming the endpoint when it cannot listen (socket
//     in use by a running daemon, port taken, unreadable certificate).
//   - Lifetime: stop() cancels the calls in flight after `grace` and resolves when every call
//     object is gone. Destroying a started server without stop() does the same at once, blocking.

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <opentracing/tracer.h>

#include "snow/core/dispatcher.h"
#include "snow/core/future.h"
#include "snow/posix/posix.h"
#include "snow/rpc/services.h"

namespace snow::rpc {

struct TlsFiles {
  std::string certFile;
  std::string keyFile;
  std::string caFile;
  bool requireClientCert = false;  // Server: mutual TLS.
  std::string serverName;          // Client: name to verify instead of the address's host.
};

struct ServerOptions {
  std::string unixSocket;  // Empty: none.
  std::string tcpListen;   // "host:port"; port 0 picks a free one (see tcpPort()). Empty: none.
  std::optional<TlsFiles> tls;  // For the TCP endpoint.
  int maxMessageBytes = 4 << 20;
  // Extracts callers' span contexts from metadata (CallContext::traceParent). Null: noop.
  std::shared_ptr<opentracing::Tracer> tracer;
};

class Server {
 public:
  Server(Dispatcher& loop, Services& services, posix::Posix& os, ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  void start();
  Future<void> stop(Duration grace = std::chrono::seconds(1));

  // "unix:/run/snow-core/rpc.sock", "127.0.0.1:7400": what it listens on, once started.
  [[nodiscard]] std::vector<std::string> endpoints() const;
  // The TCP port bound, or 0.
  [[nodiscard]] int tcpPort() const;
  // Calls being served now.
  [[nodiscard]] size_t activeCalls() const;

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Reads a whole file for TLS (certificates, keys); throws std::runtime_error naming the file.
std::string readPemFile(posix::Posix& os, const std::string& path, const char* what);

}  // namespace snow::rpc
