#include "snow/core/daemon.h"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "snow/core/v1/daemon.pb.h"
#include "snow/core/v1/tracing.pb.h"
#include "snow/posix/file_descriptor.h"
#include "snow/rpc/node.h"
#include "snow/rpc/v1/config.pb.h"

#include "tracing_setup.h"

namespace snow {

const char* const kDefaultConfiguration = R"(# snow-core's built-in default configuration.
daemon:
  plugin_errors: REFUSE
  stop_timeout: 10s
modules: {}
)";

namespace {

constexpr Duration kDefaultStopTimeout = std::chrono::seconds(10);

// Runs `call` and turns a throw into a rejected future, so that every failure takes one path.
template <typename F>
Future<void> guarded(F&& call) {
  try {
    return call();
  } catch (...) {
    return makeErrorFuture<void>(std::current_exception());
  }
}

// Prefixes a module's failure with the module and the stage.
Future<void> named(Future<void> outcome, const std::string& module, const char* stage) {
  return outcome.recover([module, stage](const std::exception_ptr& error) -> Future<void> {
    return makeErrorFuture<void>(std::runtime_error(fmt::format(
        "module '{}' refused the configuration ({}): {}", module, stage, describe(error))));
  });
}

}  // namespace

Daemon::Daemon(StaticContext& context, DaemonOptions options)
    : context_(context),
      options_(std::move(options)),
      loader_(context.posix(), registry_),
      stopTimeout_(kDefaultStopTimeout) {}

Daemon::~Daemon() {
  // Everything made by plugin code goes before the loader unloads the plugins: the modules, and
  // the registry, whose factories' destructors are plugin code too.
  modules_.clear();
  context_.setNode(nullptr);
  node_.reset();
  registry_.clear();
}

config::Document Daemon::readConfiguration() const {
  if (options_.configFile.empty()) {
    return config::Document::parseString(kDefaultConfiguration, "built-in default configuration");
  }
  return config::Document::parseFile(context_.posix(), options_.configFile);
}

core::v1::DaemonConfig Daemon::decodeDaemonSection(const config::Document& document) const {
  std::vector<std::string> problems;
  for (const auto& section : document.keys("")) {
    if (section != "daemon" && section != "modules" && section != "rpc" && section != "tracing") {
      problems.push_back(fmt::format(
          "{}: {}: unknown section{}; the sections are 'daemon', 'rpc', 'tracing' and "
          "'modules'",
          document.sourceName(), section,
          section.size() > 3 && (section.starts_with("dae") || section.starts_with("dea"))
              ? " (did you mean 'daemon'?)"
              : ""));
    }
  }
  core::v1::DaemonConfig daemon;
  try {
    document.decode("daemon", daemon);
  } catch (const config::ConfigError& e) {
    problems.insert(problems.end(), e.problems().begin(), e.problems().end());
  }
  if (!problems.empty()) {
    throw config::ConfigError(std::move(problems));
  }
  return daemon;
}

namespace {

// Decodes the section `key` and lets `check` find its problems; throws ConfigError with all of
// them, each prefixed with the file.
template <typename Message, typename Check>
Message decodeChecked(const config::Document& document, const char* key, Check&& check) {
  Message section;
  document.decode(key, section);
  std::vector<std::string> problems = check(section);
  if (!problems.empty()) {
    for (auto& problem : problems) {
      problem = fmt::format("{}: {}", document.sourceName(), problem);
    }
    throw config::ConfigError(std::move(problems));
  }
  return section;
}

}  // namespace

rpc::v1::RpcConfig Daemon::decodeRpcSection(const config::Document& document) const {
  return decodeChecked<rpc::v1::RpcConfig>(document, "rpc", [this](const auto& section) {
    return rpc::checkConfig(section, context_.posix());
  });
}

core::v1::TracingConfig Daemon::decodeTracingSection(const config::Document& document) const {
  return decodeChecked<core::v1::TracingConfig>(document, "tracing", [this](const auto& section) {
    return checkTracingConfig(section, context_.posix());
  });
}

std::string configuredKeyDirectory(posix::Posix& os, const std::string& configFile) {
  const config::Document document =
      configFile.empty()
          ? config::Document::parseString(kDefaultConfiguration, "built-in default configuration")
          : config::Document::parseFile(os, configFile);
  core::v1::DaemonConfig daemon;
  document.decode("daemon", daemon);
  return daemon.key_directory();
}

void Daemon::takeIdentity(const config::Document& document) {
  const std::string directory = decodeDaemonSection(document).key_directory();
  auto& os = context_.posix();
  if (directory.empty()) {
    context_.setIdentity(std::make_shared<NodeIdentity>(NodeIdentity::generate(os)));
    context_.logger().info(
        "node id {} (ephemeral: daemon.key_directory is not set, a restart makes a new one)",
        context_.nodeId());
    return;
  }
  if (!NodeIdentity::existsIn(os, directory)) {
    NodeIdentity made = NodeIdentity::generate(os);
    made.save(os, directory, false);
    context_.logger().info("made a node key in {} (first start)", directory);
    context_.setIdentity(std::make_shared<NodeIdentity>(std::move(made)));
  } else {
    context_.setIdentity(std::make_shared<NodeIdentity>(NodeIdentity::load(os, directory)));
  }
  context_.logger().info("node id {} (key in {})", context_.nodeId(), directory);
}

void Daemon::startTracing(const config::Document& document) {
  const core::v1::TracingConfig config = decodeTracingSection(document);
  uint64_t seed = 0;
  if (auto r = context_.posix().getrandom(&seed, sizeof(seed), 0); !r.ok()) {
    seed = 0;  // The tracer derives one from the clock; ids stay unique within the process.
  }
  TracingSetup setup =
      makeTracer(config, context_.nodeId(), SNOW_VERSION, seed, context_.loggerPtr());
  context_.setTracer(std::move(setup.tracer));
  tracingDescription_ = std::move(setup.description);
  context_.logger().info("tracing: {}", tracingDescription_);
}

void Daemon::closeTracing() {
  // Exports what is queued, within the section's shutdown_timeout: the last thing the daemon
  // does, so that the spans of the shutdown itself are in.
  context_.tracer().Close();
}

void Daemon::startNode(const config::Document& document) {
  const rpc::v1::RpcConfig config = decodeRpcSection(document);
  rpc::Node::Hooks hooks;
  hooks.modules = [this] {
    std::vector<rpc::Node::Hooks::Module> out;
    for (const auto& m : modules_) {
      out.push_back({m.info->name, m.info->version, m.info->origin});
    }
    return out;
  };
  hooks.reload = [this] {
    return reload().recover([this](const std::exception_ptr& error) -> Future<void> {
      context_.logger().error(
          "reload (asked through RPC) refused, the previous configuration "
          "keeps serving: {}",
          describe(error));
      return makeErrorFuture<void>(error);
    });
  };
  hooks.ready = [this] { return started_; };
  hooks.configSource = options_.configFile.empty() ? "built-in" : options_.configFile;
  hooks.tracing = tracingDescription_;
  node_ = std::make_unique<rpc::Node>(context_, config, std::move(hooks));
  node_->start();
  context_.setNode(node_.get());
}

void Daemon::loadModules(const config::Document& document) {
  const core::v1::DaemonConfig daemon = decodeDaemonSection(document);
  stopTimeout_ = config::durationOr(daemon.stop_timeout(), kDefaultStopTimeout);
  if (!options_.modulesDirectory.empty()) {
    const auto policy = daemon.plugin_errors() == core::v1::DaemonConfig::SKIP
                            ? PluginErrorPolicy::Skip
                            : PluginErrorPolicy::Refuse;
    for (const auto& problem : loader_.loadDirectory(options_.modulesDirectory, policy)) {
      context_.logger().error("plugin skipped: {}", problem);
    }
  }
  for (const auto& info : registry_.modules()) {
    modules_.push_back(Loaded{&info, info.factory()});
    context_.logger().info("module {} {} loaded from {}", info.name, info.version, info.origin);
  }
}

Daemon::Configs Daemon::decodeSections(const config::Document& document) const {
  std::vector<std::string> problems;
  for (const auto& key : document.keys("modules")) {
    if (registry_.find(key) == nullptr) {
      std::string loaded;
      for (const auto& m : modules_) {
        loaded += (loaded.empty() ? "" : ", ") + m.info->name;
      }
      problems.push_back(
          fmt::format("{}: modules.{}: no module named '{}' is loaded ({})", document.sourceName(),
                      key, key, loaded.empty() ? "no modules are loaded" : "loaded: " + loaded));
    }
  }
  Configs configs;
  for (const auto& m : modules_) {
    std::unique_ptr<google::protobuf::Message> config(m.module->configPrototype().New());
    try {
      document.decode("modules." + m.info->name, *config);
    } catch (const config::ConfigError& e) {
      problems.insert(problems.end(), e.problems().begin(), e.problems().end());
    }
    configs.push_back(std::move(config));
  }
  if (!problems.empty()) {
    throw config::ConfigError(std::move(problems));
  }
  return configs;
}

Future<void> Daemon::verifyAll(const Configs& configs) {
  std::vector<Future<void>> verifications;
  for (size_t i = 0; i < modules_.size(); ++i) {
    Module& module = *modules_[i].module;
    const google::protobuf::Message& config = *configs[i];
    verifications.push_back(
        named(guarded([&] { return module.verify(config); }), modules_[i].info->name, "verify"));
  }
  return all(std::move(verifications));
}

Future<void> Daemon::runInOrder(const char* stage, UniqueFunction<Future<void>(size_t)> step) {
  auto index = std::make_shared<size_t>(0);
  auto body = std::make_shared<UniqueFunction<Future<void>(size_t)>>(std::move(step));
  return repeat([this, index, body, stage]() -> Future<Step> {
    if (*index == modules_.size()) {
      return makeReadyFuture<Step>(Step::Stop);
    }
    const size_t i = (*index)++;
    return named(guarded([&] { return (*body)(i); }), modules_[i].info->name, stage).then([] {
      return Step::Continue;
    });
  });
}

Future<void> Daemon::transaction(const config::Document& document) {
  auto configs = std::make_shared<Configs>(decodeSections(document));
  const DynamicContextPtr& current = context_.current();
  const uint64_t generation = current ? current->generation() + 1 : 1;
  auto next = std::make_shared<DynamicContext>(generation, document.sourceName(), current.get());
  return verifyAll(*configs)
      .then([this, configs, next] {
        return runInOrder("apply", [this, configs, next](size_t i) {
          return modules_[i].module->apply(*(*configs)[i], *next);
        });
      })
      .then([this, next] {
        DynamicContextPtr previous = context_.install(next);
        next->resources().forgetPrevious();
        for (auto& m : modules_) {
          m.module->activated(*next);
        }
        size_t inherited = 0;
        for (const auto& key : next->resources().keys()) {
          inherited += next->resources().inherited(key) ? 1 : 0;
        }
        if (previous) {
          context_.logger().info(
              "configuration generation {} from {} is current; {} of its {} "
              "resources inherited from generation {}",
              next->generation(), next->source(), inherited, next->resources().size(),
              previous->generation());
        } else {
          context_.logger().info("configuration generation {} from {} is current",
                                 next->generation(), next->source());
        }
      });
}

void Daemon::becomeSubreaper() {
  // Children that the modules' children leave behind become ours instead of init's, so that the
  // daemon can bury them (no zombies) and a service's leftovers stay within reach.
  const auto r = context_.posix().prctl(PR_SET_CHILD_SUBREAPER, 1);
  if (!r.ok()) {
    context_.logger().warn("cannot become a child subreaper: {}", std::strerror(r.errnum));
  }
  context_.children().reapOrphans(true);
}

Future<void> Daemon::start() {
  busy_ = true;  // A SIGHUP during start-up must not run a second transaction beside this one.
  return guarded([this] {
           config::Document document = readConfiguration();
           becomeSubreaper();
           takeIdentity(document);
           startTracing(document);
           loadModules(document);
           startNode(document);
           return transaction(document);
         })
      .finally([this] { busy_ = false; })
      .then([this] {
        return runInOrder("start", [this](size_t i) { return modules_[i].module->start(); });
      })
      .then([this] {
        started_ = true;
        context_.logger().info("ready: {} module{} started ({})", modules_.size(),
                               modules_.size() == 1 ? "" : "s", fmt::join(moduleNames(), ", "));
        try {
          notifySystemd(context_.posix(), "READY=1");
        } catch (const std::exception& e) {
          context_.logger().warn("cannot tell systemd we are ready: {}", e.what());
        }
      });
}

Future<void> Daemon::check() {
  return guarded([this] {
    config::Document document = readConfiguration();
    if (const std::string keys = decodeDaemonSection(document).key_directory();
        !keys.empty() && NodeIdentity::existsIn(context_.posix(), keys)) {
      (void)NodeIdentity::load(context_.posix(), keys);  // Throws what is wrong with it.
    }
    loadModules(document);
    (void)decodeRpcSection(document);
    (void)decodeTracingSection(document);
    auto configs = std::make_shared<Configs>(decodeSections(document));
    return verifyAll(*configs).finally([configs] {});
  });
}

Future<void> Daemon::reload() {
  if (busy_) {
    return makeErrorFuture<void>(
        std::runtime_error("a configuration transaction (start-up or reload) is already running"));
  }
  busy_ = true;
  context_.logger().info("reloading the configuration from {}", options_.configFile.empty()
                                                                    ? "the built-in default"
                                                                    : options_.configFile);
  return guarded([this] {
           config::Document document = readConfiguration();
           // The daemon section is checked like the modules' (a reload with a broken one is
           // refused); stop_timeout takes effect, plugin_errors only at the next start.
           const core::v1::DaemonConfig daemon = decodeDaemonSection(document);
           // Checked; they take effect at the next start.
           (void)decodeRpcSection(document);
           (void)decodeTracingSection(document);
           return transaction(document).then([this, daemon] {
             stopTimeout_ = config::durationOr(daemon.stop_timeout(), kDefaultStopTimeout);
           });
         })
      .finally([this] { busy_ = false; });
}

Future<void> Daemon::stop() {
  return stopModules()
      .then([this] {
        if (!node_) {
          return makeReadyFuture();
        }
        return node_->stop().recover([this](const std::exception_ptr& error) {
          context_.logger().error("RPC did not stop cleanly: {}", describe(error));
        });
      })
      .finally([this] { closeTracing(); });
}

Future<void> Daemon::stopModules() {
  if (!started_) {
    return makeReadyFuture();
  }
  started_ = false;
  const MonotonicTime deadline = context_.loop().now() + stopTimeout_;
  return runReversed({"draining", "drained"}, deadline, [](Module& m) { return m.drain(); })
      .then([this, deadline] {
        return runReversed({"stopping", "stopped"}, deadline, [](Module& m) { return m.stop(); });
      });
}

Future<void> Daemon::runReversed(Stage stage, MonotonicTime deadline,
                                 UniqueFunction<Future<void>(Module&)> step) {
  auto index = std::make_shared<size_t>(0);
  auto body = std::make_shared<UniqueFunction<Future<void>(Module&)>>(std::move(step));
  return repeat([this, index, body, stage, deadline]() -> Future<Step> {
    if (*index == modules_.size()) {
      return makeReadyFuture<Step>(Step::Stop);
    }
    Loaded& m = modules_[modules_.size() - 1 - *index];
    ++*index;
    const Duration left = std::max(Duration::zero(), deadline - context_.loop().now());
    const std::string name = m.info->name;
    return guarded([&] { return (*body)(*m.module); })
        .within(left, fmt::format("{} module '{}'", stage.doing, name))
        .then([this, name, stage] { context_.logger().info("module {} {}", name, stage.done); })
        .recover([this, name, stage](const std::exception_ptr& error) {
          context_.logger().error("module {} did not finish {} cleanly: {}", name, stage.doing,
                                  describe(error));
        })
        .then([] { return Step::Continue; });
  });
}

std::vector<std::string> Daemon::moduleNames() const {
  std::vector<std::string> names;
  for (const auto& m : modules_) {
    names.push_back(m.info->name);
  }
  return names;
}

bool notifySystemd(posix::Posix& os, std::string_view state) {
  const char* socketPath = os.getenv("NOTIFY_SOCKET").value;
  if (socketPath == nullptr || *socketPath == '\0') {
    return false;
  }
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  const size_t length = std::strlen(socketPath);
  if (length >= sizeof(address.sun_path)) {
    throw std::system_error(ENAMETOOLONG, std::system_category(), "NOTIFY_SOCKET");
  }
  std::memcpy(address.sun_path, socketPath, length);
  if (address.sun_path[0] == '@') {
    address.sun_path[0] = '\0';  // An abstract socket.
  }
  auto made = os.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (!made.ok()) {
    throw std::system_error(made.errnum, std::system_category(), "socket(NOTIFY_SOCKET)");
  }
  posix::FileDescriptor fd(made.value);
  const auto size = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + length);
  auto connected = os.connect(fd.get(), reinterpret_cast<const sockaddr*>(&address), size);
  if (!connected.ok()) {
    throw std::system_error(connected.errnum, std::system_category(),
                            std::string("connect(") + socketPath + ")");
  }
  auto written = os.write(fd.get(), state.data(), state.size());
  if (!written.ok()) {
    throw std::system_error(written.errnum, std::system_category(), "write(NOTIFY_SOCKET)");
  }
  return true;
}

}  // namespace snow
