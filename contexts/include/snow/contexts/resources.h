#pragma once

// Resources handed from one configuration generation to the next.
//
// A resource is anything a generation owns that is costly or disruptive to recreate: a listening
// socket, a running child, an open connection. Each DynamicContext has a ResourceTable. While a
// new generation is being applied, a module asks its table for a resource by key; when the new
// generation does not have it yet but the current one does, the two generations share it (the
// resource moves into the new generation instead of being closed and reopened). A resource lives
// as long as some generation holds it: when the old generation is dropped after a reload, what
// the new one did not inherit is destroyed (closed), and what it inherited lives on.
//
// Keys are chosen by modules and should start with the module's name, and name what makes the
// resource reusable, e.g. "greeter/listen/127.0.0.1:8080": an unchanged address maps to the same
// key, a changed one to a new key and so a new socket.
//
// Thread: loop thread. Ownership: shared between the generations that hold the resource.

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace snow {

class Resource {
 public:
  virtual ~Resource() = default;
};
using ResourcePtr = std::shared_ptr<Resource>;

class ResourceTable {
 public:
  // `previous` is the current generation's table (null for the first generation); it must stay
  // alive until forgetPrevious() is called, which the daemon does when the transaction ends.
  explicit ResourceTable(const ResourceTable* previous = nullptr) : previous_(previous) {}

  // The resource at `key`: this generation's, else the previous generation's (now shared by
  // both), else the one `make()` returns (a std::shared_ptr<R>; may throw). Throws
  // std::logic_error when the resource at `key` is not an R.
  template <typename R, typename Make>
  std::shared_ptr<R> acquire(const std::string& key, Make&& make) {
    if (ResourcePtr found = inherit(key)) {
      auto typed = std::dynamic_pointer_cast<R>(found);
      if (!typed) {
        throw std::logic_error("resource '" + key + "' has another type");
      }
      return typed;
    }
    std::shared_ptr<R> made = make();
    put(key, made);
    return made;
  }

  // This generation's resource at `key`, else the previous generation's (then shared), else null.
  ResourcePtr inherit(const std::string& key);

  // Whether `key` came from the previous generation (for logs and tests).
  [[nodiscard]] bool inherited(const std::string& key) const;

  void put(const std::string& key, ResourcePtr resource);
  void erase(const std::string& key) { resources_.erase(key); }
  [[nodiscard]] std::vector<std::string> keys() const;
  [[nodiscard]] size_t size() const noexcept { return resources_.size(); }

  void forgetPrevious() noexcept { previous_ = nullptr; }

 private:
  struct Entry {
    ResourcePtr resource;
    bool inherited = false;
  };
  const ResourceTable* previous_;
  std::map<std::string, Entry, std::less<>> resources_;
};

}  // namespace snow
