#pragma once

// The event loop every module runs on.
//
// A Dispatcher owns one libevent event_base and the thread that runs it (the "loop thread": the
// thread that constructed the dispatcher). All module state belongs to a loop thread. Other
// threads hand work to it with post(); post() and exit() are the only thread-safe methods,
// everything else must be called on the loop thread.
//
// Ordering rules (tests/core/dispatcher_test.cc checks each one; rule 5 is in future_test.cc):
//   1. schedule()d callbacks run on the loop thread in the order they were scheduled, after the
//      current callback returns, never inline. A callback scheduled while the queue drains runs
//      in a later drain; after at most 64 callbacks (drains, timers, I/O) in a row the loop polls
//      for I/O, timers and signals, so work that keeps rescheduling itself cannot starve them.
//   2. post()ed callbacks run on the loop thread in the order each producer thread posted them.
//      A post() wakes a loop blocked in run().
//   3. Timers fire no earlier than their deadline, in deadline order; a timer enabled with a zero
//      delay fires on the next pass, after callbacks that were already scheduled.
//   4. Signals are delivered as ordinary loop callbacks, never in signal-handler context.
//   5. Promise continuations are schedule()d when their promise settles (see future.h), so they
//      follow rule 1.
//   6. deferredDelete() destroys its object after the current callback returns (rule 1), so an
//      object may ask for its own deletion from inside its own callback.
//   7. An exception escaping a loop callback is logged and swallowed: it never unwinds through
//      libevent, and the loop keeps running.
//
// Handles (Timer, FileEvent, SignalEvent) are owned by the caller: destroying the handle
// unregisters it. They must be destroyed on the loop thread, before the dispatcher.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "snow/core/function.h"

namespace snow {

using Duration = std::chrono::nanoseconds;
using MonotonicTime = std::chrono::steady_clock::time_point;

class Timer {
 public:
  virtual ~Timer() = default;
  // Arms the timer to fire once after `delay`, replacing any earlier deadline.
  virtual void enable(Duration delay) = 0;
  virtual void disable() = 0;
  [[nodiscard]] virtual bool enabled() const = 0;
};
using TimerPtr = std::unique_ptr<Timer>;

// Readiness bits for file events (a bit set, hence not an enum class).
struct FileReady {
  static constexpr uint32_t kRead = 0x1;
  static constexpr uint32_t kWrite = 0x2;
  static constexpr uint32_t kClosed =
      0x4;  // The peer closed (EV_CLOSED, where the backend has it).
};

// A persistent, level-triggered watch on a file descriptor (which it does not own).
class FileEvent {
 public:
  virtual ~FileEvent() = default;
  // Changes the set of FileReady bits watched; 0 pauses the watch.
  virtual void setEnabled(uint32_t events) = 0;
};
using FileEventPtr = std::unique_ptr<FileEvent>;

class SignalEvent {
 public:
  virtual ~SignalEvent() = default;
};
using SignalEventPtr = std::unique_ptr<SignalEvent>;

// Something whose destruction may be deferred to after the current callback (rule 6).
class DeferredDeletable {
 public:
  virtual ~DeferredDeletable() = default;
};
using DeferredDeletablePtr = std::unique_ptr<DeferredDeletable>;

enum class RunMode {
  UntilExit,  // Block, running callbacks, until exit() is called.
  Once,       // Block until at least one callback ran, run what is ready, return.
  NonBlock,   // Run what is ready now without waiting, return.
};

namespace detail {
// One per thread; its address identifies the thread in a single instruction (initial-exec TLS:
// libsnow-core is linked by the daemon, never dlopen()ed). Futures check it on every operation,
// where std::this_thread::get_id() would be a library call.
extern constinit __attribute__((tls_model("initial-exec"))) thread_local char tThreadMarker;
}  // namespace detail

class Dispatcher {
 public:
  virtual ~Dispatcher() = default;

  [[nodiscard]] virtual const std::string& name() const = 0;

  [[nodiscard]] virtual TimerPtr createTimer(Callback onFire) = 0;
  [[nodiscard]] virtual FileEventPtr createFileEvent(int fd, UniqueFunction<void(uint32_t)> onReady,
                                                     uint32_t events) = 0;
  [[nodiscard]] virtual SignalEventPtr listenForSignal(int signum, Callback onSignal) = 0;

  // Runs `callback` on the loop thread after the current callback (rule 1). Loop thread only.
  virtual void schedule(Callback callback) = 0;

  // Runs `callback` on the loop thread (rule 2). Any thread. Callbacks still queued when the
  // dispatcher is destroyed are destroyed without running.
  virtual void post(Callback callback) = 0;

  // Destroys `object` after the current callback (rule 6). Loop thread only.
  virtual void deferredDelete(DeferredDeletablePtr object) = 0;

  virtual void run(RunMode mode) = 0;

  // Runs the loop until `done()` returns true or `timeout` passes; returns done()'s last answer.
  // `done` is checked after every pass. Meant for tests and shutdown sequences.
  virtual bool runUntil(UniqueFunction<bool()> done, Duration timeout) = 0;

  // Makes run(UntilExit) return as soon as the callback running now (if any) returns; callbacks
  // not yet run in this pass wait for the next run(). Any thread.
  virtual void exit() = 0;

  // True when called on this dispatcher's loop thread.
  [[nodiscard]] bool isLoopThread() const noexcept { return &detail::tThreadMarker == owner_; }

  [[nodiscard]] virtual MonotonicTime now() const noexcept = 0;

  // The dispatcher whose loop thread is the calling thread, or nullptr.
  static Dispatcher* current() noexcept;

 protected:
  // The constructing thread becomes the loop thread.
  Dispatcher() noexcept : owner_(&detail::tThreadMarker) {}

  // Implementations register and unregister themselves as their thread's current dispatcher.
  static void setCurrent(Dispatcher* dispatcher) noexcept;

 private:
  const char* owner_;
};
using DispatcherPtr = std::unique_ptr<Dispatcher>;

// A dispatcher on libevent whose loop thread is the calling thread. `name` appears in logs.
DispatcherPtr makeDispatcher(std::string name);

}  // namespace snow
