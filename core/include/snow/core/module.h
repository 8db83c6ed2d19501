#pragma once

// Modules: the unit of extension of snow-core.
//
// A module is a class implementing Module, plus one registration line:
//
//   class Greeter final : public snow::ConfiguredModule<example::v1::GreeterConfig> { ... };
//   SNOW_MODULE(Greeter, "greeter", "1.0.0")
//
// Built into a shared object (a plugin), it is loaded by `snow-core --modules DIR`. Registration
// only records a factory; the daemon instantiates every registered module in an explicit phase
// after all plugins loaded, then runs the configuration transaction:
//
//   verify(config) ... every module, concurrently; nothing changes yet
//   apply(config, next) every module, in load order; prepares the generation `next`
//   install(next)      the new generation becomes current (commit)
//   activated(next)    every module switches to it
//   start()            once, after the first generation was installed (load order)
//   drain()            at shutdown, in reverse load order, while every module still runs
//   stop()             then, in reverse load order; drain and stop share the stop timeout
//
// A rejected verify() or apply() aborts the transaction: `next` is dropped, and with it whatever
// apply() opened in it; the current generation keeps serving. So apply() must prepare only into
// `next` (and resources it inherits from the current generation, see resources.h), never tear
// down what the current generation uses.
//
// Modules talk to each other through events (EventTree) and RPC, never by holding each other's
// objects.
//
// Contract: every method is called on the loop thread. Errors: reject the returned future (or
// throw) with a message an operator can act on; the daemon logs it with the module's name.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <google/protobuf/empty.pb.h>
#include <google/protobuf/message.h>

#include "snow/contexts/dynamic_context.h"
#include "snow/core/future.h"

namespace snow {

class Module {
 public:
  virtual ~Module() = default;

  // A default instance of the message that describes this module's configuration section
  // (`modules.<name>` in the file). google::protobuf::Empty for a module without settings.
  [[nodiscard]] virtual const google::protobuf::Message& configPrototype() const = 0;

  // Checks `config` for the generation about to be built, without changing anything. May be slow
  // or external (can this port be bound?).
  virtual Future<void> verify(const google::protobuf::Message& config) = 0;

  // Prepares `next` from `config`: opens, or inherits from the current generation, what next
  // needs (next.resources()).
  virtual Future<void> apply(const google::protobuf::Message& config, DynamicContext& next) = 0;

  // `current` became the current generation: serve from it from now on.
  virtual void activated(DynamicContext& current) { (void)current; }

  virtual Future<void> start() { return makeReadyFuture(); }
  // Shutdown has begun and every module is still running: say goodbye while the modules this one
  // talks through can still carry it (leave a cluster, hand off work). Settle once it is on its
  // way; a module that does not settle in the stop timeout is logged and stopped anyway.
  virtual Future<void> drain() { return makeReadyFuture(); }
  virtual Future<void> stop() { return makeReadyFuture(); }
};
using ModulePtr = std::unique_ptr<Module>;

// The base most modules derive from: casts the configuration to the module's own message type.
template <typename Config>
class ConfiguredModule : public Module {
 public:
  [[nodiscard]] const google::protobuf::Message& configPrototype() const final {
    return Config::default_instance();
  }
  Future<void> verify(const google::protobuf::Message& config) final {
    return verify(static_cast<const Config&>(config));
  }
  Future<void> apply(const google::protobuf::Message& config, DynamicContext& next) final {
    return apply(static_cast<const Config&>(config), next);
  }

  virtual Future<void> verify(const Config& config) {
    (void)config;
    return makeReadyFuture();
  }
  virtual Future<void> apply(const Config& config, DynamicContext& next) = 0;
};

// What the registry knows of a module before it is instantiated.
struct ModuleInfo {
  std::string name;
  std::string version;
  std::string origin;  // The plugin file it came from, or "built-in".
  std::function<ModulePtr()> factory;
};

// Registered modules, by name, in registration order.
//
// Thread: loop thread. Errors: add() throws std::invalid_argument for a duplicate name (naming
// both origins) or a malformed one (module names are [a-z0-9_-]+, they key the config file).
class ModuleRegistry {
 public:
  void add(ModuleInfo info);
  [[nodiscard]] const ModuleInfo* find(std::string_view name) const;
  [[nodiscard]] const std::vector<ModuleInfo>& modules() const noexcept { return modules_; }
  // Forgets the modules registered after the first `size` (undoes a plugin's partial register).
  void truncate(size_t size);
  void clear() { modules_.clear(); }

 private:
  std::vector<ModuleInfo> modules_;
};

// ---- Plugins -----------------------------------------------------------------------------------

// The version of the plugin interface below. Bumped on any incompatible change to it.
inline constexpr uint32_t kPluginApiVersion = 2;      // 2: Module::drain().
inline constexpr uint32_t kPluginMagic = 0x574f4e53;  // "SNOW", little-endian.

#define SNOW_STRINGIFY_INNER(x) #x
#define SNOW_STRINGIFY(x) SNOW_STRINGIFY_INNER(x)

// What must match between the daemon and a plugin for C++ objects to cross between them: the
// snow-core version (headers), the compiler, the standard library ABI and the language version.
#define SNOW_ABI_SIGNATURE \
  "snow-core " SNOW_VERSION "; g++ " SNOW_STRINGIFY(__GNUC__) "." SNOW_STRINGIFY(     \
      __GNUC_MINOR__) "; libstdc++ cxx11-abi " SNOW_STRINGIFY(_GLIBCXX_USE_CXX11_ABI) \
      "; C++ " SNOW_STRINGIFY(__cplusplus)

// The one symbol the loader looks up in a plugin. Plain C layout, so that it can be read and
// checked before any C++ of the plugin is trusted.
struct SnowPluginDescriptor {
  uint32_t magic;
  uint32_t apiVersion;
  const char* abiSignature;
  // Called only after the checks passed: registers the plugin's modules.
  void (*registerModules)(snow::ModuleRegistry* registry, const char* origin);
};

namespace detail {

// Registrations made in this shared object, linked at static-initialisation time. Hidden: every
// plugin has its own list. Building the list only writes pointers inside the plugin, which is
// safe before the loader checked the descriptor.
struct ModuleRegistration {
  const char* name;
  const char* version;
  ModulePtr (*factory)();
  ModuleRegistration* next;
};

__attribute__((visibility("hidden"))) inline ModuleRegistration* gLocalRegistrations = nullptr;

__attribute__((visibility("hidden"))) inline void registerLocalModules(ModuleRegistry* registry,
                                                                       const char* origin) {
  std::vector<const ModuleRegistration*> backwards;  // The list is built backwards.
  for (const ModuleRegistration* r = gLocalRegistrations; r != nullptr; r = r->next) {
    backwards.push_back(r);
  }
  for (auto it = backwards.rbegin(); it != backwards.rend(); ++it) {
    registry->add(ModuleInfo{(*it)->name, (*it)->version, origin, (*it)->factory});
  }
}

template <typename Class>
ModulePtr makeModule() {
  return std::make_unique<Class>();
}

struct ModuleRegistrar {
  explicit ModuleRegistrar(ModuleRegistration* registration) noexcept {
    registration->next = gLocalRegistrations;
    gLocalRegistrations = registration;
  }
};

}  // namespace detail
}  // namespace snow

// The descriptor exists only in plugins (SNOW_BUILDING_PLUGIN is set by snow_add_plugin() in
// CMake): dlsym() on a plugin also searches the libraries it depends on, so a copy in
// libsnow-core would make a plugin without a descriptor look like it had one.
// It is a weak definition, merged by the linker across the plugin's translation units. Not an
// inline variable: g++ makes those STB_GNU_UNIQUE, which the dynamic linker unifies across the
// whole process, RTLD_LOCAL or not, so every plugin would see the first plugin's descriptor.
#ifdef SNOW_BUILDING_PLUGIN
extern "C" __attribute__((weak, visibility("default"), used))
const snow::SnowPluginDescriptor snow_plugin_descriptor = {
    snow::kPluginMagic, snow::kPluginApiVersion, SNOW_ABI_SIGNATURE,
    &snow::detail::registerLocalModules};
#endif

// Registers `Class` (default-constructible, deriving from snow::Module) as module `name`.
// The registration is constant-initialised (constinit: no code runs for it, nothing can throw);
// the registrar only links it into the plugin's own list.
#define SNOW_MODULE(Class, name, version)                                             \
  static constinit ::snow::detail::ModuleRegistration snowModuleRegistration_##Class{ \
      name, version, &::snow::detail::makeModule<Class>, nullptr};                    \
  static const ::snow::detail::ModuleRegistrar snowModuleRegistrar_##Class {          \
    &snowModuleRegistration_##Class                                                   \
  }
