#pragma once

// One configuration generation.
//
// A new DynamicContext is built while a configuration is verified and applied; only then does it
// become current (StaticContext::install). An asynchronous operation that must finish against the
// generation it started in captures the DynamicContextPtr it got from instance(): the old
// generation then lives until that operation lets go, even after a newer one became current.
// Most code should not do that and instead call instance() again when it needs the configuration,
// so that it follows reloads.
//
// Contract:
//   - Thread: loop thread (the StaticContext's).
//   - Ownership: shared; the StaticContext holds the current one, operations may hold older ones.
//   - Errors: instance() throws std::logic_error when no StaticContext exists or no generation
//     was installed yet.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "snow/contexts/resources.h"

namespace snow {

class DynamicContext;
using DynamicContextPtr = std::shared_ptr<DynamicContext>;

class DynamicContext {
 public:
  // `generation` counts configurations applied since start (1 for the first); `source` says where
  // the configuration came from, for logs ("built-in default", "/etc/snow/snow.yaml").
  // `previous` is the current generation, whose resources this one may inherit (resources.h).
  DynamicContext(uint64_t generation, std::string source, DynamicContext* previous = nullptr);
  virtual ~DynamicContext();
  DynamicContext(const DynamicContext&) = delete;
  DynamicContext& operator=(const DynamicContext&) = delete;

  // The current generation of the current StaticContext.
  static DynamicContextPtr instance();

  [[nodiscard]] uint64_t generation() const noexcept { return generation_; }
  [[nodiscard]] const std::string& source() const noexcept { return source_; }
  [[nodiscard]] std::chrono::system_clock::time_point createdAt() const noexcept {
    return createdAt_;
  }

  [[nodiscard]] ResourceTable& resources() noexcept { return resources_; }
  [[nodiscard]] const ResourceTable& resources() const noexcept { return resources_; }

 private:
  uint64_t generation_;
  std::string source_;
  std::chrono::system_clock::time_point createdAt_;
  ResourceTable resources_;
};

}  // namespace snow
