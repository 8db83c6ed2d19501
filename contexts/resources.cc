#include "snow/contexts/resources.h"

namespace snow {

ResourcePtr ResourceTable::inherit(const std::string& key) {
  if (auto it = resources_.find(key); it != resources_.end()) {
    return it->second.resource;
  }
  if (previous_ != nullptr) {
    if (auto it = previous_->resources_.find(key); it != previous_->resources_.end()) {
      resources_[key] = Entry{it->second.resource, true};
      return it->second.resource;
    }
  }
  return nullptr;
}

bool ResourceTable::inherited(const std::string& key) const {
  auto it = resources_.find(key);
  return it != resources_.end() && it->second.inherited;
}

void ResourceTable::put(const std::string& key, ResourcePtr resource) {
  resources_[key] = Entry{std::move(resource), false};
}

std::vector<std::string> ResourceTable::keys() const {
  std::vector<std::string> out;
  out.reserve(resources_.size());
  for (const auto& [key, entry] : resources_) {
    out.push_back(key);
  }
  return out;
}

}  // namespace snow
