#include "snow/posix/active.h"

#include <atomic>
#include <memory>
#include <stdexcept>
#include <utility>

#include "snow/posix/checked_posix.h"
#include "snow/posix/logging_posix.h"

#include "real_posix.h"

namespace snow::posix {
namespace {

// Constant-initialised, so it is valid before any dynamic initialiser runs (a static object's
// constructor may already reach the OS).
std::atomic<Posix*> activeLayer{nullptr};

}  // namespace

Posix& active() {
  Posix* layer = activeLayer.load(std::memory_order_acquire);
  if (layer == nullptr) {
    throw std::logic_error(
        "snow::posix::active() called before the POSIX layer was set: call "
        "snow::posix::setActive() at start-up (or use posix::ScopedInjector in tests)");
  }
  return *layer;
}

bool hasActive() noexcept {
  return activeLayer.load(std::memory_order_acquire) != nullptr;
}

void setActive(Posix* layer) noexcept {
  activeLayer.store(layer, std::memory_order_release);
}

PosixPtr makeDefaultPosix(bool traceCalls) {
  PosixPtr layer = std::make_unique<RealPosix>();
  if (traceCalls) {
    layer = std::make_unique<LoggingPosix>(std::move(layer));
  }
  return std::make_unique<CheckedPosix>(std::move(layer));
}

ScopedInjector::ScopedInjector(Posix& layer) noexcept
    : previous_(activeLayer.exchange(&layer, std::memory_order_acq_rel)) {}

ScopedInjector::~ScopedInjector() {
  activeLayer.store(previous_, std::memory_order_release);
}

}  // namespace snow::posix
