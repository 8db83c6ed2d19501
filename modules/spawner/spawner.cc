// The spawner module: services from the configuration and from RPC, supervised by Service
// (service.h). docs/spawner.md is the operator's manual.
//
// Reloads: apply() resolves the new definitions and acquires the declared sockets into the new
// generation (inherited when the address is unchanged); activated() reconciles: a service whose
// definition did not change keeps running (same pid), a changed one is stopped and started
// anew, a removed one is stopped, a new one is started. Services submitted through RPC are not
// part of the configuration and live until removed.

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <fmt/format.h>

#include "snow/contexts/static_context.h"
#include "snow/core/future_combinators.h"
#include "snow/core/module.h"
#include "snow/rpc/node.h"
#include "snow/rpc/status.h"
#include "snow/spawner/v1/spawner.pb.h"

#include "cgroups.h"
#include "definition.h"
#include "service.h"

namespace snow::spawner {
namespace {

constexpr std::string_view kService = "/snow.spawner.v1.Spawner/";

struct Plan {
  std::map<std::string, Definition> definitions;
  std::map<std::string, std::vector<std::shared_ptr<ServiceSocket>>> sockets;
  uint32_t logLines = 1000;
  std::string cgroup;
};

class Spawner final : public ConfiguredModule<pb::SpawnerConfig> {
 public:
  using ConfiguredModule::apply;  // The untyped overloads stay visible (-Woverloaded-virtual).
  using ConfiguredModule::verify;
  Future<void> verify(const pb::SpawnerConfig& config) override {
    auto& context = StaticContext::instance();
    std::vector<std::string> problems;
    for (const auto& [name, spec] : config.services()) {
      const std::string where = "modules.spawner.services." + name;
      try {
        (void)define(context.posix(), name, spec, config.log_lines(), where);
      } catch (const std::invalid_argument& e) {
        problems.emplace_back(e.what());
      }
      for (int i = 0; i < spec.sockets_size(); ++i) {
        SocketDefinition socket;
        try {
          socket.address = net::Address::parse(spec.sockets(i).address());
        } catch (const std::exception&) {
          continue;  // define() named it.
        }
        checkBindable(socket, fmt::format("{}.sockets[{}]", where, i), problems);
      }
      if (auto it = services_.find(name);
          it != services_.end() && it->second->origin() != kConfig) {
        problems.push_back(
            fmt::format("{}: a service of that name was submitted at run time; "
                        "remove it first (snowctl remove {})",
                        where, name));
      }
    }
    if (!problems.empty()) {
      return makeErrorFuture<void>(
          std::invalid_argument(fmt::format("{}", fmt::join(problems, "\n"))));
    }
    return makeReadyFuture();
  }

  Future<void> apply(const pb::SpawnerConfig& config, DynamicContext& next) override {
    auto& context = StaticContext::instance();
    Plan plan;
    plan.logLines = config.log_lines() != 0 ? config.log_lines() : 1000;
    plan.cgroup = config.cgroup();
    for (const auto& [name, spec] : config.services()) {
      Definition d = define(context.posix(), name, spec, config.log_lines(),
                            "modules.spawner.services." + name);
      auto& sockets = plan.sockets[name];
      for (const auto& socket : d.sockets) {
        sockets.push_back(next.resources().acquire<ServiceSocket>(
            socket.key(), [&] { return ServiceSocket::open(context.posix(), socket); }));
      }
      plan.definitions.emplace(name, std::move(d));
    }
    pending_[next.generation()] = std::move(plan);
    return makeReadyFuture();
  }

  void activated(DynamicContext& current) override {
    auto it = pending_.find(current.generation());
    if (it == pending_.end()) {
      return;
    }
    plan_ = std::move(it->second);
    pending_.clear();
    if (started_) {
      reconcile();
    }
  }

  Future<void> start() override {
    auto& context = StaticContext::instance();
    started_ = true;
    devNull_.reset(context.posix().open("/dev/null", O_RDWR | O_CLOEXEC, 0).value);
    openCgroups(context);
    handlers_.clear();
    for (const auto& [what, type] : types_) {
      handlers_.push_back(context.events().on(type, [](const EventPtr&) {
        // The service logged it already; the event is for traces and watchers.
        return makeReadyFuture<MessagePtr>(nullptr);
      }));
    }
    environment_ = std::make_unique<ServiceEnvironment>(ServiceEnvironment{
        context.loop(), context.posix(), context.children(), context.logger(), cgroups_.get(),
        devNull_.get(), [this](Lifecycle what, std::shared_ptr<pb::ServiceEvent> payload) {
          StaticContext::instance().events().raise(types_.at(what), std::move(payload)).detach();
        }});
    if (context.hasNode()) {
      serve(context.node().services());
    }
    reconcile();
    return makeReadyFuture();
  }

  Future<void> stop() override {
    stopping_ = true;
    rpc_.clear();
    std::vector<Future<void>> stops;
    for (auto& [name, service] : services_) {
      stops.push_back(service->stop());
    }
    for (const auto& service : retiring_) {
      stops.push_back(service->stop());
    }
    return all(std::move(stops)).whenSettled([this](const Future<void>&) {
      services_.clear();
      cgroups_.reset();
      handlers_.clear();
    });
  }

 private:
  static constexpr std::string_view kConfig = "config";
  static constexpr std::string_view kSubmitted = "submitted";

  static void checkBindable(const SocketDefinition& socket, const std::string& where,
                            std::vector<std::string>& problems) {
    auto& context = StaticContext::instance();
    const auto& current = context.current();
    if (current != nullptr && current->resources().inherit(socket.key()) != nullptr) {
      return;  // Held already: it will be inherited, not bound again.
    }
    try {
      (void)net::Listener::open(context.posix(), socket.address, 1);
    } catch (const std::exception& e) {
      problems.push_back(
          fmt::format("{}: cannot listen on {}: {}", where, socket.address.toString(), e.what()));
    }
  }

  void openCgroups(StaticContext& context) {
    if (plan_.cgroup == "none") {
      context.logger().info("spawner: cgroups off (cgroup: none): services are process groups");
      return;
    }
    std::string why;
    const auto& current = context.current();
    cgroups_ = Cgroups::open(context.posix(), plan_.cgroup, current ? current->source() : "", &why);
    if (!cgroups_) {
      context.logger().warn(
          "spawner: no cgroups ({}): a service's processes that leave its process group are "
          "not stopped with it, and a SIGKILLed daemon's leftovers are not found at restart",
          why);
      return;
    }
    for (const auto& leftover : cgroups_->cleanUp()) {
      context.logger().warn("spawner: killed what a previous run left in its cgroup: {}", leftover);
    }
    context.logger().info("spawner: one cgroup per service under {}", cgroups_->root());
  }

  // Brings the running services in line with plan_.
  void reconcile() {
    for (auto it = services_.begin(); it != services_.end();) {
      auto& [name, service] = *it;
      if (service->origin() != kConfig || plan_.definitions.contains(name)) {
        ++it;
        continue;
      }
      retire(service);
      it = services_.erase(it);
    }
    for (auto& [name, definition] : plan_.definitions) {
      auto it = services_.find(name);
      if (it != services_.end() && it->second->definition().sameSpecAs(definition)) {
        continue;  // Unchanged: keeps running, same pid.
      }
      std::shared_ptr<Service> previous;
      if (it != services_.end()) {
        previous = std::move(it->second);
        services_.erase(it);
      }
      auto service = std::make_shared<Service>(*environment_, definition, plan_.sockets[name],
                                               std::string(kConfig));
      services_[name] = service;
      if (!previous) {
        if (definition.autostart) {
          service->start();
        }
        continue;
      }
      // Changed: the old one ends first (it may hold what the new one needs, like its cgroup).
      retire(previous, [weak = std::weak_ptr<Service>(service), autostart = definition.autostart] {
        if (auto next = weak.lock(); next && autostart) {
          next->start();
        }
      });
    }
  }

  // Stops a service that left the configuration or was replaced. It lives until it ended, and
  // the module's stop() waits for it as for the others; then `then` runs, unless the module is
  // stopping by then.
  void retire(const std::shared_ptr<Service>& service, std::function<void()> then = {}) {
    retiring_.insert(service);
    service->stop()
        .whenSettled([this, service, then = std::move(then)](const Future<void>&) {
          retiring_.erase(service);
          if (then && !stopping_) {
            then();
          }
        })
        .detach();
  }

  std::shared_ptr<Service> find(const std::string& name) {
    auto it = services_.find(name);
    if (it == services_.end()) {
      std::string names;
      for (const auto& [known, s] : services_) {
        names += (names.empty() ? "" : ", ") + known;
      }
      throw rpc::RpcError(rpc::Code::NotFound, fmt::format("no service '{}' (services: {})", name,
                                                           names.empty() ? "none" : names));
    }
    return it->second;
  }

  static MessagePtr statusOf(const Service& service) {
    return std::make_shared<pb::ServiceStatus>(service.status());
  }

  void serve(rpc::Services& services) {
    const std::string prefix(kService);
    rpc_.push_back(services.addUnary<pb::ListRequest, pb::ListReply>(
        prefix + "List", [this](const rpc::CallContext&, const pb::ListRequest&) {
          auto reply = std::make_shared<pb::ListReply>();
          for (const auto& [name, service] : services_) {
            *reply->add_services() = service->status();
          }
          return makeReadyFuture<MessagePtr>(std::move(reply));
        }));
    rpc_.push_back(services.addUnary<pb::ServiceRequest, pb::ServiceStatus>(
        prefix + "Start", [this](const rpc::CallContext&, const pb::ServiceRequest& request) {
          auto service = find(request.name());
          service->start();
          return makeReadyFuture<MessagePtr>(statusOf(*service));
        }));
    rpc_.push_back(services.addUnary<pb::ServiceRequest, pb::ServiceStatus>(
        prefix + "Stop", [this](const rpc::CallContext&, const pb::ServiceRequest& request) {
          auto service = find(request.name());
          return service->stop().then([service] { return statusOf(*service); });
        }));
    rpc_.push_back(services.addUnary<pb::ServiceRequest, pb::ServiceStatus>(
        prefix + "Restart", [this](const rpc::CallContext&, const pb::ServiceRequest& request) {
          auto service = find(request.name());
          return service->stop().then([service] {
            service->start();
            return statusOf(*service);
          });
        }));
    rpc_.push_back(services.addUnary<pb::SubmitRequest, pb::ServiceStatus>(
        prefix + "Submit", [this](const rpc::CallContext&, const pb::SubmitRequest& request) {
          return submit(request);
        }));
    rpc_.push_back(services.addUnary<pb::ServiceRequest, pb::ServiceStatus>(
        prefix + "Remove", [this](const rpc::CallContext&, const pb::ServiceRequest& request) {
          auto service = find(request.name());
          if (service->origin() != kSubmitted) {
            throw rpc::RpcError(rpc::Code::FailedPrecondition,
                                fmt::format("service '{}' comes from the configuration: take it "
                                            "out of the file and reload",
                                            request.name()));
          }
          return service->stop().then([this, service] {
            if (auto it = services_.find(service->name());
                it != services_.end() && it->second == service) {
              services_.erase(it);
            }
            return statusOf(*service);
          });
        }));
    rpc_.push_back(services.addStream<pb::LogsRequest, pb::LogLine>(
        prefix + "Logs", [this](const rpc::CallContext&, const pb::LogsRequest& request,
                                const rpc::ServerStreamPtr& stream) {
          auto service = find(request.name());
          for (const auto& line :
               service->logs()->last(request.lines() == 0 ? 20 : request.lines())) {
            stream->write(line);
          }
          if (!request.follow()) {
            return makeReadyFuture();
          }
          return service->logs()->follow(stream);
        }));
  }

  Future<MessagePtr> submit(const pb::SubmitRequest& request) {
    auto& context = StaticContext::instance();
    Definition d;
    try {
      d = define(context.posix(), request.name(), request.spec(), plan_.logLines, request.name());
    } catch (const std::invalid_argument& e) {
      throw rpc::RpcError(rpc::Code::InvalidArgument, e.what());
    }
    if (auto it = services_.find(request.name()); it != services_.end()) {
      if (it->second->origin() == kSubmitted && it->second->definition().sameSpecAs(d)) {
        return makeReadyFuture<MessagePtr>(statusOf(*it->second));  // A retried submit.
      }
      throw rpc::RpcError(rpc::Code::AlreadyExists,
                          fmt::format("a service '{}' exists already ({}); remove it first",
                                      request.name(), it->second->origin()));
    }
    std::vector<std::shared_ptr<ServiceSocket>> sockets;
    for (const auto& socket : d.sockets) {
      try {
        sockets.push_back(ServiceSocket::open(context.posix(), socket));
      } catch (const std::exception& e) {
        throw rpc::RpcError(
            rpc::Code::FailedPrecondition,
            fmt::format("cannot listen on {}: {}", socket.address.toString(), e.what()));
      }
    }
    const bool autostart = d.autostart;
    auto service = std::make_shared<Service>(*environment_, std::move(d), std::move(sockets),
                                             std::string(kSubmitted));
    services_[request.name()] = service;
    if (autostart) {
      service->start();
    }
    return makeReadyFuture<MessagePtr>(statusOf(*service));
  }

  const std::map<Lifecycle, EventType> types_{
      {Lifecycle::Spawned, EventType::of("spawner.spawned")},
      {Lifecycle::Ready, EventType::of("spawner.ready")},
      {Lifecycle::Exited, EventType::of("spawner.exited")},
      {Lifecycle::Restarted, EventType::of("spawner.restarted")},
      {Lifecycle::GaveUp, EventType::of("spawner.gave_up")},
  };
  std::map<uint64_t, Plan> pending_;
  Plan plan_;
  bool started_ = false;
  bool stopping_ = false;
  std::set<std::shared_ptr<Service>> retiring_;
  posix::FileDescriptor devNull_;
  std::unique_ptr<Cgroups> cgroups_;
  std::unique_ptr<ServiceEnvironment> environment_;
  std::map<std::string, std::shared_ptr<Service>> services_;
  std::vector<EventTree::Registration> handlers_;
  std::vector<rpc::Services::Registration> rpc_;
};

}  // namespace
}  // namespace snow::spawner

using SpawnerModule = snow::spawner::Spawner;
SNOW_MODULE(SpawnerModule, "spawner", "1.0.0");
