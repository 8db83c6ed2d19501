#pragma once

// Shared pieces of the RPC suites: a temporary directory, a fixture with a loop, a method table
// and real servers, and helpers to read an RpcError out of a rejected future.

#include <chrono>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "snow/core/dispatcher.h"
#include "snow/core/future.h"
#include "snow/posix/active.h"
#include "snow/rpc/client.h"
#include "snow/rpc/server.h"
#include "snow/rpc/services.h"
#include "snow/rpc/status.h"
#include "snow/rpc/v1/node.pb.h"

#include "support/await.h"
#include "support/files.h"

namespace snow::testing {

using namespace std::chrono_literals;

// A private directory under /tmp, removed with everything in it.
// The RpcError a future rejected with; nullopt when it did not reject, or with something else.
template <typename T>
std::optional<rpc::RpcError> rpcErrorOf(const Future<T>& future) {
  if (!future.isReady() || !future.hasError()) {
    return std::nullopt;
  }
  try {
    std::rethrow_exception(future.error());
  } catch (const rpc::RpcError& e) {
    return e;
  } catch (...) {
    return std::nullopt;
  }
}

// The code of the RpcError a future rejected with (Code::Ok when it did not).
template <typename T>
rpc::Code codeOf(const Future<T>& future) {
  const auto error = rpcErrorOf(future);
  return error ? error->code() : rpc::Code::Ok;
}

inline std::shared_ptr<const rpc::v1::PingReply> pingReply(const std::string& payload) {
  auto reply = std::make_shared<rpc::v1::PingReply>();
  reply->set_payload(payload);
  return reply;
}

inline rpc::v1::PingRequest pingRequest(const std::string& payload) {
  rpc::v1::PingRequest request;
  request.set_payload(payload);
  return request;
}

// Methods of a service no linked .proto declares (so any message types may be registered).
inline constexpr const char* kEcho = "/snow.test.Echo/Echo";

// A loop, a method table, servers on it and a client, torn down in the right order.
class RpcFixture : public ::testing::Test {
 protected:
  RpcFixture() = default;
  ~RpcFixture() override {
    client_.reset();
    servers_.clear();
  }

  // A server on `socket` (relative names are put in the temporary directory) and, when `tcp`, on
  // 127.0.0.1 with a free port; started. Fails the test when it cannot start.
  rpc::Server& startServer(const std::string& socket, bool tcp = false,
                           std::optional<rpc::TlsFiles> tls = std::nullopt) {
    rpc::ServerOptions options;
    if (!socket.empty()) {
      options.unixSocket = socket.front() == '/' ? socket : dir_.file(socket);
    }
    if (tcp) {
      options.tcpListen = "127.0.0.1:0";
    }
    options.tls = std::move(tls);
    return startServer(std::move(options));
  }

  rpc::Server& startServer(rpc::ServerOptions options) {
    servers_.push_back(
        std::make_unique<rpc::Server>(*loop_, services_, *layer_, std::move(options)));
    servers_.back()->start();
    return *servers_.back();
  }

  rpc::Client& client(rpc::ClientOptions options = {}) {
    if (!client_) {
      if (options.seed == 0) {
        options.seed = 42;
      }
      client_ = std::make_unique<rpc::Client>(*loop_, std::move(options));
    }
    return *client_;
  }

  // Both ends traced by `tracer`: a server on rpc.sock and the client, made with it.
  void startTraced(const std::shared_ptr<opentracing::Tracer>& tracer) {
    rpc::ServerOptions serverOptions;
    serverOptions.unixSocket = dir_.file("rpc.sock");
    serverOptions.tracer = tracer;
    startServer(std::move(serverOptions));
    rpc::ClientOptions clientOptions;
    clientOptions.tracer = tracer;
    client(std::move(clientOptions));
  }

  std::string unixPeer(const std::string& socket) const { return "unix:" + dir_.file(socket); }

  // Registers kEcho: answers the request's payload, with the caller's peer as node_id.
  void addEcho() {
    registrations_.push_back(services_.addUnary<rpc::v1::PingRequest, rpc::v1::PingReply>(
        kEcho, [](const rpc::CallContext& call, const rpc::v1::PingRequest& request) {
          auto reply = std::make_shared<rpc::v1::PingReply>();
          reply->set_payload(request.payload());
          reply->set_node_id(call.peer());
          return makeReadyFuture<std::shared_ptr<const rpc::v1::PingReply>>(std::move(reply));
        }));
  }

  Duration since(MonotonicTime start) const { return loop_->now() - start; }

  posix::PosixPtr layer_ = posix::makeDefaultPosix();
  posix::ScopedInjector injector_{*layer_};
  DispatcherPtr loop_ = makeDispatcher("rpc-test");
  TempDir dir_;
  rpc::Services services_;
  std::vector<rpc::Services::Registration> registrations_;
  std::vector<std::unique_ptr<rpc::Server>> servers_;
  std::unique_ptr<rpc::Client> client_;
};

}  // namespace snow::testing
