#pragma once

// The node's RPC face: its server, its client, the built-in snow.rpc.v1.Node service
// (node.proto) and events dispatched between nodes.
//
// The daemon makes one Node from the `rpc:` section at start-up; modules reach it through
// StaticContext::node() to add services (services()), call peers (client()) and dispatch events
// (dispatch()).
//
// Events across nodes: dispatch(peer, type, payload) mints an event id here, sends it with the
// current event as its parent and the current span in the call's metadata; the peer raises the
// event in its own tree (a root there, whose remoteParent() is our event and whose span is a
// child of ours) and answers with the handler's result, which settles the returned future. The
// peer deduplicates by event id: a retried dispatch is handled once, and a retry that arrives
// while the first is running waits for the same answer. With `rpc.dispatch.journal` set, the
// dedup table survives a restart of the peer (docs/rpc.md, "Exactly once").
//
// Contract: loop thread. Errors: dispatch() rejects with RpcError (status.h); a handler's
// failure arrives as UNKNOWN with its message, a missing handler as NOT_FOUND.

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "snow/core/event.h"
#include "snow/core/function.h"
#include "snow/core/future.h"
#include "snow/rpc/client.h"
#include "snow/rpc/server.h"
#include "snow/rpc/services.h"

namespace snow {
class StaticContext;
}  // namespace snow

namespace snow::rpc {
namespace v1 {
class RpcConfig;
}  // namespace v1

// The built-in service's method names.
inline constexpr std::string_view kPing = "/snow.rpc.v1.Node/Ping";
inline constexpr std::string_view kGetStatus = "/snow.rpc.v1.Node/GetStatus";
inline constexpr std::string_view kListModules = "/snow.rpc.v1.Node/ListModules";
inline constexpr std::string_view kReload = "/snow.rpc.v1.Node/Reload";
inline constexpr std::string_view kDispatch = "/snow.rpc.v1.Node/Dispatch";
inline constexpr std::string_view kWatch = "/snow.rpc.v1.Node/Watch";

// What is wrong with an `rpc:` section that can be seen without serving (addresses, TLS files),
// each problem naming its field; empty when nothing is. Used by --check-config and at start.
std::vector<std::string> checkConfig(const v1::RpcConfig& config, posix::Posix& os);

// The control socket used when the configuration names none (config.proto, unix_socket), and
// snowctl's default node: $SNOW_RPC_SOCKET when set, else /run/snow-core/rpc.sock as root, else
// $XDG_RUNTIME_DIR/snow-core/rpc.sock, else /tmp/snow-core-<uid>/rpc.sock.
std::string defaultSocketPath(posix::Posix& os);

class Node {
 public:
  // What the Node service asks of the daemon.
  struct Hooks {
    struct Module {
      std::string name, version, origin;
    };
    UniqueFunction<std::vector<Module>()> modules;
    UniqueFunction<Future<void>()> reload;
    // Whether the modules are started: before and after, Dispatch answers UNAVAILABLE (so the
    // sender retries) rather than NOT_FOUND from a handler not registered yet. Null: always.
    UniqueFunction<bool()> ready;
    std::string configSource;
    std::string tracing = "off";  // What the tracer exports to, for the status.
  };

  Node(StaticContext& context, const v1::RpcConfig& config, Hooks hooks);
  ~Node();
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  // Listens, registers the Node service, starts health checks of the configured peers. Throws
  // std::runtime_error when it cannot listen or read the journal.
  void start();
  // Stops serving (calls in flight get `grace`) and stops the health checks. Calls the client
  // has in flight run on; they are cancelled when the Node is destroyed.
  Future<void> stop(Duration grace = std::chrono::seconds(1));

  [[nodiscard]] Services& services() noexcept;
  [[nodiscard]] Client& client() noexcept;
  [[nodiscard]] const std::string& id() const noexcept;
  [[nodiscard]] std::vector<std::string> endpoints() const;

  // Raises `type` with `payload` on `peer` (see above). The call is idempotent by its event id,
  // so UNAVAILABLE attempts are retried until the deadline.
  Future<MessagePtr> dispatch(std::string_view peer, EventType type, const MessagePtr& payload,
                              CallOptions options = {});

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace snow::rpc
