#pragma once

// The process-lifetime context: the things every module shares for as long as the process runs.
//
// Exactly one StaticContext exists at a time; instance() returns it. Everything lives in the
// instance, so tests make their own. The only process-wide state besides it: the injected POSIX
// layer, the EventType name table (names are constants of the program) and spdlog's default
// logger, which core code logs through (logger() defaults to it; the daemon configures it).
//
// Contract:
//   - Thread: create, use and destroy on the loop thread (the thread that owns `loop()`).
//   - Ownership: owns the loop, the event tree and the current DynamicContext reference; shares
//     the tracer and logger. Must outlive every module and every DynamicContext user.
//   - Errors: the constructor throws std::logic_error when another StaticContext exists or the
//     POSIX layer is not set; instance() throws std::logic_error when none exists.

#include <cstdint>
#include <memory>
#include <string>

#include <opentracing/tracer.h>
#include <spdlog/logger.h>

#include "snow/contexts/dynamic_context.h"
#include "snow/core/dispatcher.h"
#include "snow/core/event.h"
#include "snow/core/identity.h"
#include "snow/core/process.h"
#include "snow/posix/posix.h"

namespace snow {
namespace rpc {
class Node;
}  // namespace rpc

class StaticContext {
 public:
  struct Options {
    std::string name = "snow-core";               // The loop's and the logger's name.
    std::shared_ptr<opentracing::Tracer> tracer;  // Null: the noop tracer.
    std::shared_ptr<spdlog::logger> logger;       // Null: spdlog's default logger.
    uint64_t origin = 0;                          // Event id origin; 0: draw a random one.
  };

  explicit StaticContext(Options options);
  StaticContext() : StaticContext(Options{}) {}
  ~StaticContext();
  StaticContext(const StaticContext&) = delete;
  StaticContext& operator=(const StaticContext&) = delete;

  static StaticContext& instance();
  static bool exists() noexcept;

  [[nodiscard]] posix::Posix& posix() const;
  [[nodiscard]] Dispatcher& loop() const noexcept { return *loop_; }
  [[nodiscard]] EventTree& events() const noexcept { return *events_; }
  [[nodiscard]] spdlog::logger& logger() const noexcept { return *logger_; }
  [[nodiscard]] const std::shared_ptr<spdlog::logger>& loggerPtr() const noexcept {
    return logger_;
  }
  [[nodiscard]] opentracing::Tracer& tracer() const noexcept { return *tracer_; }
  [[nodiscard]] const std::shared_ptr<opentracing::Tracer>& tracerPtr() const noexcept {
    return tracer_;
  }
  // Replaces the tracer (null: the noop one), as the daemon does once it read the `tracing:`
  // section. Call before anything started a span: the event tree refuses (std::logic_error)
  // while events are live, and components made earlier keep the tracer they were given.
  void setTracer(std::shared_ptr<opentracing::Tracer> tracer);
  // This node's id in logs, RPC answers, events and traces: its identity's node id (identity.h),
  // or, before it has one (bare contexts in tests), the event id origin in 16 hex digits.
  [[nodiscard]] std::string nodeId() const;
  // The node's key pair, as the daemon set it at start-up; nullptr before (bare contexts).
  [[nodiscard]] const std::shared_ptr<const NodeIdentity>& identity() const noexcept {
    return identity_;
  }
  // Gives the node its identity, as the daemon does first thing at start-up. Event ids keep their
  // random per-process origin: a node's id outlives restarts, and event ids must not repeat.
  void setIdentity(std::shared_ptr<const NodeIdentity> identity);
  [[nodiscard]] uint64_t origin() const noexcept { return origin_; }

  // The current configuration generation, or nullptr before the first one was installed.
  [[nodiscard]] const DynamicContextPtr& current() const noexcept { return current_; }

  // Makes `next` the current generation and returns the one it replaced. Operations that hold the
  // previous one keep it alive until they finish (see dynamic_context.h).
  DynamicContextPtr install(DynamicContextPtr next);

  // The node's RPC layer (rpc/node.h: services, client, dispatch to other nodes), set by the
  // daemon once it serves. Throws std::logic_error when there is none (no daemon, as in tests
  // that make a bare context).
  [[nodiscard]] rpc::Node& node() const;
  [[nodiscard]] bool hasNode() const noexcept { return node_ != nullptr; }
  void setNode(rpc::Node* node) noexcept { node_ = node; }

  // The process's one reaper of child processes (process.h), made on first use: it listens for
  // SIGCHLD from then on. Every module that starts children hands them to it.
  [[nodiscard]] ChildReaper& children();

 private:
  static uint64_t randomOrigin(posix::Posix& os);

  std::shared_ptr<opentracing::Tracer> tracer_;
  std::shared_ptr<spdlog::logger> logger_;
  uint64_t origin_;
  std::shared_ptr<const NodeIdentity> identity_;
  DispatcherPtr loop_;
  std::unique_ptr<EventTree> events_;
  DynamicContextPtr current_;
  rpc::Node* node_ = nullptr;
  std::unique_ptr<ChildReaper> children_;
};

}  // namespace snow
