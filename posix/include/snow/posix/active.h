#pragma once

// The one process-wide singleton snow-core permits: the active POSIX layer.
//
// main() sets it once at start-up (normally to makeDefaultPosix()); everything else reaches the OS
// through active(). Tests swap it with ScopedInjector.
//
// Thread: active() may be called from any thread. setActive() and ScopedInjector must not race
// with calls in flight (set at start-up, swap in single-threaded test set-up).

#include "snow/posix/posix.h"

namespace snow::posix {

// The active layer. Throws std::logic_error with a message telling how to fix it when called
// before setActive().
Posix& active();

// True once setActive() installed a layer.
bool hasActive() noexcept;

// Installs `layer` as the active one (non-owning: the caller keeps it alive until replaced or the
// process ends). Passing nullptr uninstalls it.
void setActive(Posix* layer) noexcept;

// The stack a daemon runs on: CheckedPosix over (LoggingPosix over) RealPosix. Logging of every
// call is on when `traceCalls` is set (costly: meant for debugging).
PosixPtr makeDefaultPosix(bool traceCalls = false);

// Swaps the active layer for the lifetime of the injector, restoring the previous one after.
class ScopedInjector {
 public:
  explicit ScopedInjector(Posix& layer) noexcept;
  ~ScopedInjector();
  ScopedInjector(const ScopedInjector&) = delete;
  ScopedInjector& operator=(const ScopedInjector&) = delete;

 private:
  Posix* previous_;
};

}  // namespace snow::posix
