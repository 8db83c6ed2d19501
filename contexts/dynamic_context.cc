#include "snow/contexts/dynamic_context.h"

#include <stdexcept>

#include "snow/contexts/static_context.h"

namespace snow {

DynamicContext::DynamicContext(uint64_t generation, std::string source, DynamicContext* previous)
    : generation_(generation),
      source_(std::move(source)),
      createdAt_(std::chrono::system_clock::now()),
      resources_(previous != nullptr ? &previous->resources() : nullptr) {}

DynamicContext::~DynamicContext() = default;

DynamicContextPtr DynamicContext::instance() {
  const DynamicContextPtr& current = StaticContext::instance().current();
  if (!current) {
    throw std::logic_error("DynamicContext::instance() called before a configuration was applied");
  }
  return current;
}

}  // namespace snow
