#include "snow/core/plugin_loader.h"

#include <algorithm>
#include <cstring>

#include <dlfcn.h>
#include <fcntl.h>
#include <fmt/format.h>

#include "snow/posix/file_descriptor.h"

namespace snow {
namespace {

std::string errnoText(int errnum) {
  return std::system_category().message(errnum);
}

}  // namespace

PluginLoader::~PluginLoader() {
  for (auto it = handles_.rbegin(); it != handles_.rend(); ++it) {
    (void)os_.dlclose(*it);
  }
}

void PluginLoader::checkOwnership(const std::string& path, const char* what) {
  struct stat st {};
  auto r = os_.stat(path.c_str(), &st);
  if (!r.ok()) {
    throw PluginError(path, fmt::format("cannot stat the {}: {}", what, errnoText(r.errnum)));
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    throw PluginError(path, fmt::format("the {} is group- or world-writable (mode {:o}): refusing "
                                        "to load code others could replace (chmod go-w)",
                                        what, st.st_mode & 07777));
  }
  const uid_t self = os_.geteuid().value;
  if (st.st_uid != 0 && st.st_uid != self) {
    throw PluginError(path, fmt::format("the {} is owned by uid {}, not by root or the daemon's "
                                        "user (uid {})",
                                        what, st.st_uid, self));
  }
}

void PluginLoader::load(const std::string& path) {
  struct stat st {};
  auto statted = os_.stat(path.c_str(), &st);
  if (!statted.ok()) {
    throw PluginError(path, "cannot stat: " + errnoText(statted.errnum));
  }
  if (!S_ISREG(st.st_mode)) {
    throw PluginError(path, "not a regular file");
  }
  checkOwnership(path, "file");

  {
    auto opened = os_.open(path.c_str(), O_RDONLY | O_CLOEXEC, 0);
    if (!opened.ok()) {
      throw PluginError(path, "cannot open: " + errnoText(opened.errnum));
    }
    posix::FileDescriptor fd(opened.value);
    char header[4] = {};
    auto r = os_.read(fd.get(), header, sizeof(header));
    if (!r.ok() || r.value != 4 ||
        std::memcmp(header,
                    "\x7f"
                    "ELF",
                    4) != 0) {
      throw PluginError(path, "not a shared object (no ELF header)");
    }
  }

  std::string dlError;
  posix::Result<void*> opened;
  try {
    // RTLD_NODELETE: once its static initialisers ran, a plugin stays mapped until the process
    // exits, even when refused. libprotobuf's generated pool and its reflection data point into
    // the plugin's memory; unmapping it would leave them dangling (and LeakSanitizer rightly
    // reports the reflection objects as lost).
    opened = os_.dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE, &dlError);
  } catch (const std::system_error&) {
    // A checked layer throws for a failed dlopen(); dlerror()'s text says more than its errno.
    throw PluginError(path, "cannot be loaded: " + (dlError.empty() ? "dlopen failed" : dlError));
  } catch (const std::exception& e) {
    // Static initialisers run inside dlopen(). Ours only link pointers, but generated protobuf
    // code registers its .proto files in libprotobuf's process-wide pool, which refuses a file
    // that another plugin registered already.
    throw PluginError(path, std::string("its static initialisation failed: ") + e.what() +
                                " (does another plugin embed the same .proto file? Each .proto "
                                "path and package may appear in one plugin only)");
  }
  if (!opened.ok()) {
    throw PluginError(path, "cannot be loaded: " + dlError);
  }
  void* handle = opened.value;
  try {
    auto symbol = os_.dlsym(handle, "snow_plugin_descriptor");
    if (!symbol.ok() || symbol.value == nullptr) {
      throw PluginError(path,
                        "no snow_plugin_descriptor: not a snow-core plugin (build it with "
                        "snow_add_plugin() from the SnowCore CMake package)");
    }
    const auto* descriptor = static_cast<const SnowPluginDescriptor*>(symbol.value);
    if (descriptor->magic != kPluginMagic) {
      throw PluginError(path,
                        "snow_plugin_descriptor has a wrong magic number: not a snow-core "
                        "plugin, or a corrupt one");
    }
    if (descriptor->apiVersion != kPluginApiVersion) {
      throw PluginError(path, fmt::format("built for plugin API {}, this snow-core speaks {}",
                                          descriptor->apiVersion, kPluginApiVersion));
    }
    const std::string_view theirs =
        descriptor->abiSignature != nullptr ? descriptor->abiSignature : "(none)";
    if (theirs != SNOW_ABI_SIGNATURE) {
      throw PluginError(path, fmt::format("ABI mismatch: the plugin was built as '{}', this "
                                          "snow-core is '{}'; rebuild the plugin",
                                          theirs, SNOW_ABI_SIGNATURE));
    }
    const size_t before = registry_.modules().size();
    try {
      descriptor->registerModules(&registry_, path.c_str());
    } catch (const std::exception& e) {
      registry_.truncate(before);  // All of a plugin or nothing of it.
      throw PluginError(path, e.what());
    }
    if (registry_.modules().size() == before) {
      throw PluginError(path, "registers no module (no SNOW_MODULE line)");
    }
  } catch (...) {
    (void)os_.dlclose(handle);
    throw;
  }
  handles_.push_back(handle);
  paths_.push_back(path);
}

std::vector<std::string> PluginLoader::loadDirectory(const std::string& directory,
                                                     PluginErrorPolicy policy) {
  checkOwnership(directory, "plugin directory");
  auto listed = os_.readDirectory(directory.c_str());
  if (!listed.ok()) {
    throw PluginError(directory, "cannot list: " + errnoText(listed.errnum));
  }
  std::vector<std::string> names;
  for (const auto& entry : listed.value) {
    if (entry.name.size() > 3 && entry.name.ends_with(".so")) {
      names.push_back(entry.name);
    }
  }
  std::sort(names.begin(), names.end());
  std::vector<std::string> problems;
  for (const auto& name : names) {
    const std::string path =
        fmt::format("{}{}{}", directory, directory.ends_with('/') ? "" : "/", name);
    try {
      load(path);
    } catch (const PluginError& e) {
      if (policy == PluginErrorPolicy::Refuse) {
        throw;
      }
      problems.emplace_back(e.what());
    }
  }
  return problems;
}

}  // namespace snow
