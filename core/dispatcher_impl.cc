// The libevent implementation of Dispatcher. Raw libevent handles never leave this file.

#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include <event2/event.h>
#include <event2/thread.h>
#include <spdlog/spdlog.h>

#include "snow/core/dispatcher.h"

namespace snow {
namespace {

constinit __attribute__((tls_model("initial-exec"))) thread_local Dispatcher* tCurrent = nullptr;

constexpr int kMaxCallbacksPerPass = 64;

struct EventBaseDeleter {
  void operator()(event_base* base) const noexcept { event_base_free(base); }
};
struct EventDeleter {
  void operator()(event* ev) const noexcept { event_free(ev); }
};
struct EventConfigDeleter {
  void operator()(event_config* config) const noexcept { event_config_free(config); }
};
using EventBasePtr = std::unique_ptr<event_base, EventBaseDeleter>;
using EventPtr = std::unique_ptr<event, EventDeleter>;

// Loop callbacks are called from C; an exception must not unwind through libevent (rule 7).
template <typename F>
void guarded(const std::string& loopName, const char* what, F&& f) noexcept {
  try {
    f();
  } catch (const std::exception& e) {
    spdlog::error("loop '{}': {} callback threw: {}", loopName, what, e.what());
  } catch (...) {
    spdlog::error("loop '{}': {} callback threw a non-standard exception", loopName, what);
  }
}

timeval toTimeval(Duration d) {
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(d).count();
  const auto clamped = us < 0 ? 0 : us;
  return timeval{static_cast<time_t>(clamped / 1'000'000),
                 static_cast<suseconds_t>(clamped % 1'000'000)};
}

class LibeventDispatcher;

class TimerImpl final : public Timer {
 public:
  TimerImpl(LibeventDispatcher& owner, event_base* base, Callback onFire);
  void enable(Duration delay) override {
    const timeval tv = toTimeval(delay);
    event_add(event_.get(), &tv);
  }
  void disable() override { event_del(event_.get()); }
  [[nodiscard]] bool enabled() const override {
    return event_pending(event_.get(), EV_TIMEOUT, nullptr) != 0;
  }

 private:
  static void onEvent(evutil_socket_t, short, void* arg);
  LibeventDispatcher& owner_;
  Callback onFire_;
  EventPtr event_;
};

class FileEventImpl final : public FileEvent {
 public:
  FileEventImpl(LibeventDispatcher& owner, event_base* base, int fd,
                UniqueFunction<void(uint32_t)> onReady, uint32_t events);
  void setEnabled(uint32_t events) override;

 private:
  static void onEvent(evutil_socket_t, short what, void* arg);
  LibeventDispatcher& owner_;
  event_base* base_;
  int fd_;
  UniqueFunction<void(uint32_t)> onReady_;
  EventPtr event_;
  uint32_t enabled_ = 0;
};

class SignalEventImpl final : public SignalEvent {
 public:
  SignalEventImpl(LibeventDispatcher& owner, event_base* base, int signum, Callback onSignal);

 private:
  static void onEvent(evutil_socket_t, short, void* arg);
  LibeventDispatcher& owner_;
  Callback onSignal_;
  EventPtr event_;
};

class LibeventDispatcher final : public Dispatcher {
 public:
  explicit LibeventDispatcher(std::string name) : name_(std::move(name)) {
    static std::once_flag threadsOnce;
    std::call_once(threadsOnce, [] {
      if (evthread_use_pthreads() != 0) {
        throw std::runtime_error("libevent: evthread_use_pthreads failed");
      }
    });
    std::unique_ptr<event_config, EventConfigDeleter> config(event_config_new());
    // libevent runs an event activated during its own callback again in the same pass, so a
    // callback that keeps scheduling work would starve I/O and timers. Capping the callbacks per
    // pass makes the loop poll again (rule 1) while still batching up to the cap.
    // Rule 3 promises "no earlier than the deadline": that needs the precise monotonic clock and
    // no time cached from the start of the pass (which would arm timers from a stale "now").
    if (!config ||
        event_config_set_max_dispatch_interval(config.get(), nullptr, kMaxCallbacksPerPass, 0) !=
            0 ||
        event_config_set_flag(config.get(), EVENT_BASE_FLAG_PRECISE_TIMER) != 0 ||
        event_config_set_flag(config.get(), EVENT_BASE_FLAG_NO_CACHE_TIME) != 0) {
      throw std::runtime_error("libevent: cannot configure the event base");
    }
    base_.reset(event_base_new_with_config(config.get()));
    if (!base_) {
      throw std::runtime_error("libevent: event_base_new_with_config failed");
    }
    scheduledEvent_.reset(event_new(base_.get(), -1, 0, &LibeventDispatcher::onScheduled, this));
    postedEvent_.reset(event_new(base_.get(), -1, 0, &LibeventDispatcher::onPosted, this));
    exitEvent_.reset(event_new(base_.get(), -1, 0, &LibeventDispatcher::onExit, this));
    if (!scheduledEvent_ || !postedEvent_ || !exitEvent_) {
      throw std::runtime_error("libevent: event_new failed");
    }
    previous_ = current();
    setCurrent(this);
  }

  ~LibeventDispatcher() override {
    // Callbacks still queued are destroyed, not run: running them now would touch objects the
    // owner is tearing down. Destroying them may queue more work (deferred deletes), so drain.
    while (!scheduled_.empty() || !posted_.empty()) {
      std::vector<Callback> dropped = std::exchange(scheduled_, {});
      {
        std::lock_guard lock(postedMutex_);
        for (auto& cb : posted_) {
          dropped.push_back(std::move(cb));
        }
        posted_.clear();
      }
      dropped.clear();
    }
    if (current() == this) {
      setCurrent(previous_);
    }
  }

  [[nodiscard]] const std::string& name() const override { return name_; }

  TimerPtr createTimer(Callback onFire) override {
    return std::make_unique<TimerImpl>(*this, base_.get(), std::move(onFire));
  }

  FileEventPtr createFileEvent(int fd, UniqueFunction<void(uint32_t)> onReady,
                               uint32_t events) override {
    return std::make_unique<FileEventImpl>(*this, base_.get(), fd, std::move(onReady), events);
  }

  SignalEventPtr listenForSignal(int signum, Callback onSignal) override {
    return std::make_unique<SignalEventImpl>(*this, base_.get(), signum, std::move(onSignal));
  }

  void schedule(Callback callback) override {
    if (scheduled_.empty()) {
      event_active(scheduledEvent_.get(), 0, 0);
    }
    scheduled_.push_back(std::move(callback));
  }

  void post(Callback callback) override {
    bool wake = false;
    {
      std::lock_guard lock(postedMutex_);
      wake = posted_.empty();
      posted_.push_back(std::move(callback));
    }
    if (wake) {
      event_active(postedEvent_.get(), 0, 0);
    }
  }

  void deferredDelete(DeferredDeletablePtr object) override {
    schedule([doomed = std::move(object)] {});
  }

  void run(RunMode mode) override {
    int flags = 0;
    switch (mode) {
      case RunMode::UntilExit:
        flags = EVLOOP_NO_EXIT_ON_EMPTY;
        break;
      case RunMode::Once:
        flags = EVLOOP_ONCE;
        break;
      case RunMode::NonBlock:
        flags = EVLOOP_NONBLOCK;
        break;
    }
    event_base_loop(base_.get(), flags);
  }

  bool runUntil(UniqueFunction<bool()> done, Duration timeout) override {
    bool expired = false;
    TimerPtr deadline = createTimer([&expired] { expired = true; });
    deadline->enable(timeout);
    bool finished = done();
    while (!finished && !expired) {
      event_base_loop(base_.get(), EVLOOP_ONCE);
      finished = done();
    }
    return finished;
  }

  void exit() override {
    // event_base_loopexit from another thread is safe, but activating our own event keeps exit
    // ordered after callbacks that were posted before it.
    event_active(exitEvent_.get(), 0, 0);
  }

  [[nodiscard]] MonotonicTime now() const noexcept override {
    return std::chrono::steady_clock::now();
  }

 private:
  static void onScheduled(evutil_socket_t, short, void* arg) {
    auto* self = static_cast<LibeventDispatcher*>(arg);
    // Run a snapshot so that work scheduled now waits for the next pass (rule 1): a callback that
    // keeps rescheduling itself cannot starve I/O.
    std::swap(self->draining_, self->scheduled_);
    for (auto& cb : self->draining_) {
      guarded(self->name_, "scheduled", cb);
    }
    self->draining_.clear();
  }

  static void onPosted(evutil_socket_t, short, void* arg) {
    auto* self = static_cast<LibeventDispatcher*>(arg);
    std::vector<Callback> batch;
    {
      std::lock_guard lock(self->postedMutex_);
      batch.swap(self->posted_);
    }
    for (auto& cb : batch) {
      guarded(self->name_, "posted", cb);
    }
  }

  static void onExit(evutil_socket_t, short, void* arg) {
    event_base_loopbreak(static_cast<LibeventDispatcher*>(arg)->base_.get());
  }

  std::string name_;
  EventBasePtr base_;
  EventPtr scheduledEvent_;
  EventPtr postedEvent_;
  EventPtr exitEvent_;
  std::vector<Callback> scheduled_;
  std::vector<Callback> draining_;
  std::mutex postedMutex_;
  std::vector<Callback> posted_;
  Dispatcher* previous_ = nullptr;

  friend class TimerImpl;
  friend class FileEventImpl;
  friend class SignalEventImpl;
};

TimerImpl::TimerImpl(LibeventDispatcher& owner, event_base* base, Callback onFire)
    : owner_(owner),
      onFire_(std::move(onFire)),
      event_(event_new(base, -1, 0, &TimerImpl::onEvent, this)) {
  if (!event_) {
    throw std::runtime_error("libevent: event_new (timer) failed");
  }
}

void TimerImpl::onEvent(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<TimerImpl*>(arg);
  guarded(self->owner_.name_, "timer", self->onFire_);
}

short toLibevent(uint32_t events) {
  short what = EV_PERSIST;
  if ((events & FileReady::kRead) != 0) {
    what |= EV_READ;
  }
  if ((events & FileReady::kWrite) != 0) {
    what |= EV_WRITE;
  }
  if ((events & FileReady::kClosed) != 0) {
    what |= EV_CLOSED;
  }
  return what;
}

FileEventImpl::FileEventImpl(LibeventDispatcher& owner, event_base* base, int fd,
                             UniqueFunction<void(uint32_t)> onReady, uint32_t events)
    : owner_(owner), base_(base), fd_(fd), onReady_(std::move(onReady)) {
  setEnabled(events);
}

void FileEventImpl::setEnabled(uint32_t events) {
  if (event_ && events == enabled_) {
    return;  // Callers re-assert their set on every write; each change costs epoll_ctl calls.
  }
  enabled_ = events;
  // libevent cannot change the watched set of an added event in place: replace it.
  event_.reset(event_new(base_, fd_, toLibevent(events), &FileEventImpl::onEvent, this));
  if (!event_) {
    throw std::runtime_error("libevent: event_new (fd) failed");
  }
  if ((events & (FileReady::kRead | FileReady::kWrite | FileReady::kClosed)) != 0) {
    event_add(event_.get(), nullptr);
  }
}

void FileEventImpl::onEvent(evutil_socket_t, short what, void* arg) {
  auto* self = static_cast<FileEventImpl*>(arg);
  uint32_t ready = 0;
  if ((what & EV_READ) != 0) {
    ready |= FileReady::kRead;
  }
  if ((what & EV_WRITE) != 0) {
    ready |= FileReady::kWrite;
  }
  if ((what & EV_CLOSED) != 0) {
    ready |= FileReady::kClosed;
  }
  guarded(self->owner_.name_, "file", [self, ready] { self->onReady_(ready); });
}

SignalEventImpl::SignalEventImpl(LibeventDispatcher& owner, event_base* base, int signum,
                                 Callback onSignal)
    : owner_(owner),
      onSignal_(std::move(onSignal)),
      event_(evsignal_new(base, signum, &SignalEventImpl::onEvent, this)) {
  if (!event_ || event_add(event_.get(), nullptr) != 0) {
    throw std::runtime_error("libevent: cannot watch signal " + std::to_string(signum));
  }
}

void SignalEventImpl::onEvent(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<SignalEventImpl*>(arg);
  guarded(self->owner_.name_, "signal", self->onSignal_);
}

}  // namespace

namespace detail {
constinit __attribute__((tls_model("initial-exec"))) thread_local char tThreadMarker = 0;
}  // namespace detail

Dispatcher* Dispatcher::current() noexcept {
  return tCurrent;
}

void Dispatcher::setCurrent(Dispatcher* dispatcher) noexcept {
  tCurrent = dispatcher;
}

DispatcherPtr makeDispatcher(std::string name) {
  return std::make_unique<LibeventDispatcher>(std::move(name));
}

}  // namespace snow
