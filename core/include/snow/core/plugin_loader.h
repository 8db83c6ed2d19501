#pragma once

// Loads plugins (shared objects carrying snow-core modules) from a directory.
//
// Each file ending in ".so" is checked, in name order, before any of its code is trusted:
//   1. the file and its directory are regular, owned by root or by the daemon's user, and not
//      group- or world-writable (someone else could otherwise swap the code the daemon runs);
//   2. it starts with an ELF header (else: "not a shared object");
//   3. dlopen(RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE) succeeds (unresolved symbols are found now,
//      not later; a plugin whose code ran once is never unmapped, see plugin_loader.cc);
//   4. it exports snow_plugin_descriptor (module.h) with the right magic, the plugin API version
//      and the ABI signature of this snow-core (compiler, standard library ABI, version);
//   5. its modules register without clashing with a module already registered.
// Each refusal is one line naming the file and the reason, e.g.
//   plugins/old.so: built for plugin API 0, this snow-core speaks 1
// The only code of the plugin that runs before step 4 is its static initialisation, which
// SNOW_MODULE keeps to linking pointers inside the plugin.
//
// Thread: loop thread. Ownership: the loader keeps every loaded plugin open until it is
// destroyed, which must happen after every module made from them is destroyed; even then the
// plugins stay mapped (RTLD_NODELETE) until the process exits.

#include <stdexcept>
#include <string>
#include <vector>

#include "snow/core/module.h"
#include "snow/posix/posix.h"

namespace snow {

class PluginError : public std::runtime_error {
 public:
  PluginError(const std::string& file, const std::string& reason)
      : std::runtime_error(file + ": " + reason) {}
};

enum class PluginErrorPolicy {
  Refuse,  // The first bad plugin stops the load (the daemon refuses to start).
  Skip,    // A bad plugin is logged and left out; the others load.
};

class PluginLoader {
 public:
  PluginLoader(posix::Posix& os, ModuleRegistry& registry) : os_(os), registry_(registry) {}
  ~PluginLoader();
  PluginLoader(const PluginLoader&) = delete;
  PluginLoader& operator=(const PluginLoader&) = delete;

  // Loads every "*.so" of `directory`. With Refuse, throws PluginError at the first problem; with
  // Skip, returns the problems (one line each) and loads the rest.
  std::vector<std::string> loadDirectory(const std::string& directory, PluginErrorPolicy policy);

  // Loads one plugin file; throws PluginError. Registers its modules only when every check passed.
  void load(const std::string& path);

  [[nodiscard]] const std::vector<std::string>& loaded() const noexcept { return paths_; }

 private:
  void checkOwnership(const std::string& path, const char* what);

  posix::Posix& os_;
  ModuleRegistry& registry_;
  std::vector<void*> handles_;
  std::vector<std::string> paths_;
};

}  // namespace snow
