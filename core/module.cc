#include "snow/core/module.h"

#include <algorithm>
#include <stdexcept>

namespace snow {

void ModuleRegistry::add(ModuleInfo info) {
  const bool wellFormed =
      !info.name.empty() && std::all_of(info.name.begin(), info.name.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
      });
  if (!wellFormed) {
    throw std::invalid_argument("invalid module name '" + info.name +
                                "': use lower case letters, digits, '_' and '-'");
  }
  if (const ModuleInfo* existing = find(info.name)) {
    throw std::invalid_argument("module '" + info.name + "' is registered twice: by " +
                                existing->origin + " and by " + info.origin);
  }
  if (!info.factory) {
    throw std::invalid_argument("module '" + info.name + "' has no factory");
  }
  modules_.push_back(std::move(info));
}

const ModuleInfo* ModuleRegistry::find(std::string_view name) const {
  for (const auto& info : modules_) {
    if (info.name == name) {
      return &info;
    }
  }
  return nullptr;
}

void ModuleRegistry::truncate(size_t size) {
  if (size < modules_.size()) {
    modules_.erase(modules_.begin() + static_cast<std::ptrdiff_t>(size), modules_.end());
  }
}

}  // namespace snow
