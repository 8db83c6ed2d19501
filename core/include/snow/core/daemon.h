#pragma once

// The daemon: plugins, modules and the configuration transaction, driven by core/main.cc.
//
// start():  load the configuration file (or the built-in default) -> load the plugins of the
//           modules directory -> instantiate every registered module -> run the transaction ->
//           start the modules in load order -> tell systemd READY=1 (when NOTIFY_SOCKET is set).
// reload(): read the configuration again and run the transaction; the current generation keeps
//           serving until the new one is installed, and stays when the transaction fails.
// check():  what start() does up to and including every module's verify(), changing nothing.
// stop():   stop the modules in reverse load order within the configured stop timeout, then
//           stop serving RPC.
//
// The RPC node (rpc/node.h) starts serving after the plugins loaded and before the transaction,
// so that modules can add services and reach peers from apply() and start() on. The tracer of the
// `tracing:` section is made first of all, and closed (flushing its spans) last in stop(). Like
// `daemon:`, the `rpc:` and `tracing:` sections are read at start-up only.
//
// The transaction (module.h): decode every module's section (all problems reported at once) ->
// every module verify()s, concurrently -> every module apply()s into the next generation, in
// load order -> the next generation is installed -> every module is told it is activated().
// A failure names the module and stage, e.g.
//   module 'greeter' refused the configuration (verify): cannot bind 127.0.0.1:80: Permission
//   denied
//
// Thread: loop thread. Ownership: owns the modules and the plugin loader; destroys the modules
// before unloading their plugins.

#include <memory>
#include <string>
#include <vector>

#include "snow/contexts/static_context.h"
#include "snow/core/config.h"
#include "snow/core/future.h"
#include "snow/core/module.h"
#include "snow/core/plugin_loader.h"

namespace snow {
namespace core::v1 {
class DaemonConfig;
class TracingConfig;
}  // namespace core::v1
namespace rpc {
class Node;
namespace v1 {
class RpcConfig;
}  // namespace v1
}  // namespace rpc

struct DaemonOptions {
  std::string modulesDirectory;  // Empty: no plugins.
  std::string configFile;        // Empty: the built-in default configuration.
};

// The configuration used when no file is given.
extern const char* const kDefaultConfiguration;

// daemon.key_directory of `configFile` (the built-in default configuration when empty), for
// `snow-core keygen`. Throws config::ConfigError for a file that cannot be read or decoded.
std::string configuredKeyDirectory(posix::Posix& os, const std::string& configFile);

class Daemon {
 public:
  Daemon(StaticContext& context, DaemonOptions options);
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  Future<void> start();
  Future<void> check();
  Future<void> reload();
  Future<void> stop();

  // Module names in load order.
  [[nodiscard]] std::vector<std::string> moduleNames() const;
  [[nodiscard]] const ModuleRegistry& registry() const noexcept { return registry_; }

 private:
  struct Loaded {
    const ModuleInfo* info;
    ModulePtr module;
  };
  using Configs = std::vector<std::unique_ptr<google::protobuf::Message>>;

  config::Document readConfiguration() const;
  // The `daemon:` section, and a check that no other top-level section but `modules:` exists.
  [[nodiscard]] core::v1::DaemonConfig decodeDaemonSection(const config::Document& document) const;
  // The `rpc:` section (rpc/proto/snow/rpc/v1/config.proto).
  [[nodiscard]] rpc::v1::RpcConfig decodeRpcSection(const config::Document& document) const;
  // The `tracing:` section (core/proto/snow/core/v1/tracing.proto).
  [[nodiscard]] core::v1::TracingConfig decodeTracingSection(
      const config::Document& document) const;
  // Makes the tracer of the `tracing:` section the context's, before anything starts a span.
  void becomeSubreaper();
  void startTracing(const config::Document& document);
  // The node's identity from daemon.key_directory (made there at the first start), or an
  // ephemeral one; throws what NodeIdentity::load/save throw.
  void takeIdentity(const config::Document& document);
  void closeTracing();
  // Makes the RPC node from the `rpc:` section and starts serving.
  void startNode(const config::Document& document);
  Future<void> stopModules();
  // Runs step(module) for every module in reverse load order, each within what is left until
  // `deadline`; a failure or timeout is logged (naming the module and `stage`) and the next runs.
  struct Stage {
    const char* doing;  // "stopping"
    const char* done;   // "stopped"
  };
  Future<void> runReversed(Stage stage, MonotonicTime deadline,
                           UniqueFunction<Future<void>(Module&)> step);
  void loadModules(const config::Document& document);
  Configs decodeSections(const config::Document& document) const;
  Future<void> verifyAll(const Configs& configs);
  Future<void> transaction(const config::Document& document);
  // Runs step(i) for every module i in load order, one after the other; stops at the first
  // failure, which names the module and `stage`.
  Future<void> runInOrder(const char* stage, UniqueFunction<Future<void>(size_t)> step);

  StaticContext& context_;
  DaemonOptions options_;
  ModuleRegistry registry_;
  PluginLoader loader_;
  std::vector<Loaded> modules_;  // Declared after loader_: destroyed before the plugins unload.
  std::unique_ptr<rpc::Node> node_;
  std::string tracingDescription_ = "off";
  Duration stopTimeout_;
  bool started_ = false;
  bool busy_ = false;  // A transaction is running: another reload is refused, not queued.
};

// Sends `state` (e.g. "READY=1") to systemd when NOTIFY_SOCKET is set; returns false when it is
// not set. Throws std::system_error when the socket is set but cannot be reached.
bool notifySystemd(posix::Posix& os, std::string_view state);

}  // namespace snow
