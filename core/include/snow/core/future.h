#pragma once

// Loop-affine futures and promises.
//
// A Promise<T> is the producer's end, a Future<T> the consumer's; both share a state that belongs
// to one Dispatcher (the loop that was current when the promise was made, or the one passed in).
//
// Contract:
//   - Thread: a Future, and everything done through it (then, cancel, value...), belongs to its
//     loop thread; calling from another thread throws std::logic_error. A Promise may be moved to
//     and settled (or dropped) on any thread: settling off the loop thread post()s to the loop.
//   - Continuations never run inline: when a promise settles, or when then() is called on a
//     settled future, the continuation is schedule()d on the loop (dispatcher.h, rule 5). Long
//     chains and repeat() loops therefore run in constant stack.
//   - A Future is single-consumer and move-only: then/recover/finally/within consume it.
//   - Errors are std::exception_ptr. A continuation that throws rejects the future it returned:
//     exceptions never cross the loop.
//   - A Promise destroyed unsettled rejects with BrokenPromise: nothing hangs.
//   - A rejection nobody observed (no continuation, no value()/error() call) is logged when the
//     shared state dies, with the label the producer gave (the event tree sets the event path).
//   - Cancelling a future runs the producer's onCancel() hook, then rejects with Cancelled.
//     Cancelling a derived future (from then/recover/...) cancels the one it waits on, so
//     cancellation flows towards the producer that is still working.

#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "snow/core/dispatcher.h"
#include "snow/core/function.h"

namespace snow {

// A promise was destroyed before it was settled.
class BrokenPromise : public std::runtime_error {
 public:
  BrokenPromise() : std::runtime_error("broken promise: the producer dropped it unsettled") {}
};

// The future was cancelled (directly, through a derived future, or through its event's parent).
class Cancelled : public std::runtime_error {
 public:
  Cancelled() : std::runtime_error("cancelled") {}
};

// within() ran out of time.
class TimeoutError : public std::runtime_error {
 public:
  explicit TimeoutError(const std::string& what) : std::runtime_error(what) {}
};

// The message of an exception_ptr, for logs and errors ("unknown error" for non-std exceptions).
std::string describe(const std::exception_ptr& error);

template <typename T>
class Future;
template <typename T>
class Promise;

namespace detail {

struct Unit {};
template <typename T>
using Stored = std::conditional_t<std::is_void_v<T>, Unit, T>;

Dispatcher& currentDispatcher();  // Throws std::logic_error when the thread has none.
[[noreturn]] void throwOffLoopThread(const Dispatcher& loop, const char* operation);
inline void requireLoopThread(const Dispatcher& loop, const char* operation) {
  if (!loop.isLoopThread()) [[unlikely]] {
    throwOffLoopThread(loop, operation);
  }
}
void reportUnobserved(const std::exception_ptr& error, const std::string& label) noexcept;

// Memory for future states, recycled per thread. A burst of in-flight futures overflows glibc's
// per-thread cache (7 blocks per size), after which malloc dominated the cost of a continuation
// (docs/performance.md). States are always freed on their loop thread. Sanitizer builds bypass
// the cache so that every use-after-free is still seen.
void* allocateState(std::size_t size);
void deallocateState(void* block, std::size_t size) noexcept;

// An allocator over the same recycler, for other loop-thread objects made and freed in bursts
// (events, with std::allocate_shared). Free on the thread that allocates, or on the loop thread.
template <typename T>
struct RecyclingAllocator {
  using value_type = T;
  RecyclingAllocator() noexcept = default;
  template <typename U>
  RecyclingAllocator(const RecyclingAllocator<U>&) noexcept {
  }  // NOLINT(google-explicit-constructor)
  T* allocate(std::size_t n) { return static_cast<T*>(allocateState(n * sizeof(T))); }
  void deallocate(T* p, std::size_t n) noexcept { deallocateState(p, n * sizeof(T)); }
  template <typename U>
  bool operator==(const RecyclingAllocator<U>&) const noexcept {
    return true;
  }
};

class StateBase {
 public:
  explicit StateBase(Dispatcher& loop) noexcept : loop_(&loop) {}
  StateBase(const StateBase&) = delete;
  StateBase& operator=(const StateBase&) = delete;
  virtual ~StateBase() {
    if (status_ == Status::Error && !observed_) {
      reportUnobserved(error_, label_);
    }
  }

  // Not atomic: only the loop thread counts. Other threads never copy or drop a reference; they
  // move it into a post()ed callback, which the loop thread runs and destroys (Promise::settle,
  // ~Promise, ~Future).
  static void* operator new(std::size_t size) { return allocateState(size); }
  static void operator delete(void* block, std::size_t size) noexcept {
    deallocateState(block, size);
  }

  void addRef() noexcept { ++refs_; }
  void release() noexcept {
    if (--refs_ == 0) {
      delete this;
    }
  }

  enum class Status : uint8_t { Pending, Value, Error };

  [[nodiscard]] bool pending() const noexcept { return status_ == Status::Pending; }
  [[nodiscard]] Dispatcher& loop() const noexcept { return *loop_; }

  // Loop thread only, from here on.
  void fail(std::exception_ptr error) {
    if (status_ != Status::Pending) {
      return;
    }
    error_ = std::move(error);
    status_ = Status::Error;
    settled();
  }

  void cancel() {
    if (status_ != Status::Pending) {
      return;
    }
    cancelled_ = true;
    observed_ = true;  // The consumer asked for it: the Cancelled rejection is not news to anyone.
    if (Callback hook = std::exchange(onCancel_, nullptr)) {
      hook();  // May settle the state itself; then the Cancelled below is ignored.
    }
    fail(std::make_exception_ptr(Cancelled()));
  }

  void setContinuation(Callback continuation) {
    if (status_ == Status::Pending) {
      continuation_ = std::move(continuation);
    } else {
      loop_->schedule(std::move(continuation));
    }
  }

  Dispatcher* loop_;
  uint32_t refs_ = 1;
  Status status_ = Status::Pending;
  bool observed_ = false;
  bool cancelled_ = false;
  std::exception_ptr error_;
  Callback continuation_;
  Callback onCancel_;
  std::string label_;

 protected:
  void settled() {
    onCancel_.reset();  // Settled: nothing left to cancel; also breaks reference cycles.
    if (continuation_) {
      loop_->schedule(std::move(continuation_));
    }
  }
};

template <typename T>
class State final : public StateBase {
 public:
  using StateBase::StateBase;

  template <typename... A>
  void succeed(A&&... args) {
    if (status_ != Status::Pending) {
      return;
    }
    value_.emplace(std::forward<A>(args)...);
    status_ = Status::Value;
    settled();
  }

  std::optional<Stored<T>> value_;
};

// An intrusive reference to a State.
template <typename T>
class StateRef {
 public:
  StateRef() noexcept = default;
  explicit StateRef(State<T>* adopted) noexcept : state_(adopted) {}  // Takes over one reference.
  StateRef(const StateRef& other) noexcept : state_(other.state_) {
    if (state_ != nullptr) {
      state_->addRef();
    }
  }
  StateRef(StateRef&& other) noexcept : state_(std::exchange(other.state_, nullptr)) {}
  StateRef& operator=(StateRef other) noexcept {
    std::swap(state_, other.state_);
    return *this;
  }
  ~StateRef() {
    if (state_ != nullptr) {
      state_->release();
    }
  }
  State<T>* leak() noexcept { return std::exchange(state_, nullptr); }
  State<T>* operator->() const noexcept { return state_; }
  State<T>& operator*() const noexcept { return *state_; }
  explicit operator bool() const noexcept { return state_ != nullptr; }

 private:
  State<T>* state_ = nullptr;
};

// Drops `ref` on its loop thread: directly when called there, else through post().
template <typename T>
void releaseOnLoop(StateRef<T>& ref) noexcept {
  if (ref && !ref->loop().isLoopThread()) {
    Dispatcher& loop = ref->loop();
    try {
      loop.post([doomed = std::move(ref)] {});
    } catch (...) {  // Out of memory: leaking the state beats a data race on its count.
      (void)ref.leak();
    }
  }
  ref = {};
}

template <typename R>
struct FutureTraits {
  static constexpr bool kIsFuture = false;
  using Value = R;
};
template <typename U>
struct FutureTraits<Future<U>> {
  static constexpr bool kIsFuture = true;
  using Value = U;
};

// Invokes f with the value (or nothing, for void).
template <typename T, typename F>
decltype(auto) invokeWithValue(F& f, std::optional<Stored<T>>& value) {
  if constexpr (std::is_void_v<T>) {
    return f();
  } else {
    return f(std::move(*value));
  }
}

template <typename T, typename F>
using ThenResult =
    decltype(invokeWithValue<T>(std::declval<F&>(), std::declval<std::optional<Stored<T>>&>()));

// The combinators' (future_combinators.h) way into Future's state.
struct FutureAccess;

}  // namespace detail

template <typename T>
class Promise {
 public:
  // A promise owned by the calling thread's dispatcher (throws std::logic_error if none).
  Promise() : Promise(detail::currentDispatcher()) {}
  explicit Promise(Dispatcher& loop) : state_(new detail::State<T>(loop)) {}

  Promise(Promise&& other) noexcept = default;
  Promise& operator=(Promise&& other) noexcept {
    if (this != &other) {
      abandon();
      detail::releaseOnLoop(state_);
      state_ = std::move(other.state_);
      done_ = std::exchange(other.done_, true);
      futureTaken_ = other.futureTaken_;
    }
    return *this;
  }
  Promise(const Promise&) = delete;
  Promise& operator=(const Promise&) = delete;
  ~Promise() {
    abandon();
    detail::releaseOnLoop(state_);
  }

  // The consumer's end. At most once, on the loop thread.
  Future<T> future() {
    if (state_) {
      detail::requireLoopThread(state_->loop(), "Promise::future");
    }
    if (!state_ || futureTaken_) {
      throw std::logic_error("Promise::future() called twice");
    }
    futureTaken_ = true;
    return Future<T>(state_);
  }

  // Settles with a value. Any thread. Settling twice is a logic error; settling after the consumer
  // cancelled is silently ignored (the producer may not know yet).
  template <typename... A>
  void setValue(A&&... args) {
    static_assert(!std::is_void_v<T> || sizeof...(A) == 0, "Promise<void>::setValue takes nothing");
    if constexpr (std::is_void_v<T>) {
      settle([](detail::State<T>& s) { s.succeed(); });
    } else {
      settle([v = T(std::forward<A>(args)...)](detail::State<T>& s) mutable {
        s.succeed(std::move(v));
      });
    }
  }

  void setError(std::exception_ptr error) {
    settle([e = std::move(error)](detail::State<T>& s) mutable { s.fail(std::move(e)); });
  }

  template <typename E>
  void reject(E&& exception) {
    setError(std::make_exception_ptr(std::forward<E>(exception)));
  }

  // Called (on the loop thread) when the consumer cancels, before the future rejects with
  // Cancelled. Replaces an earlier hook. Loop thread only.
  void onCancel(Callback hook) {
    detail::requireLoopThread(state_->loop(), "Promise::onCancel");
    if (state_->pending()) {
      state_->onCancel_ = std::move(hook);
    }
  }

  // Names this promise in the "unobserved rejection" log line. Loop thread only.
  void setLabel(std::string_view label) {
    detail::requireLoopThread(state_->loop(), "Promise::setLabel");
    state_->label_.assign(label);
  }

  // Loop thread only: the consumer cancels on the loop thread.
  [[nodiscard]] bool isCancelled() const noexcept { return state_ && state_->cancelled_; }
  // True once this promise was settled, or its consumer cancelled. Loop thread only.
  [[nodiscard]] bool isSettled() const noexcept { return done_ || isCancelled(); }
  [[nodiscard]] Dispatcher& loop() const noexcept { return state_->loop(); }

 private:
  template <typename Apply>
  void settle(Apply&& apply) {
    if (!state_) {
      throw std::logic_error("settling a moved-from Promise");
    }
    if (done_) {
      throw std::logic_error("Promise settled twice");
    }
    done_ = true;
    if (state_->loop().isLoopThread()) {
      apply(*state_);
    } else {
      Dispatcher& loop = state_->loop();
      loop.post([s = std::move(state_), a = std::forward<Apply>(apply)]() mutable { a(*s); });
    }
  }

  void abandon() noexcept {
    if (state_ && !done_ && !futureTaken_) {
      return;  // Nobody holds the future: no one to tell, nothing to log. The state just goes.
    }
    if (state_ && !done_) {
      try {
        setError(std::make_exception_ptr(BrokenPromise()));
      } catch (...) {  // Only an allocation failure can land here; the state then stays pending.
      }
    }
  }

  detail::StateRef<T> state_;
  bool done_ = false;
  bool futureTaken_ = false;
};

template <typename T>
class [[nodiscard]] Future {
 public:
  using ValueType = T;

  Future() noexcept = default;
  Future(Future&&) noexcept = default;
  Future& operator=(Future&& other) noexcept {
    if (this != &other) {
      detail::releaseOnLoop(state_);
      state_ = std::move(other.state_);
    }
    return *this;
  }
  ~Future() { detail::releaseOnLoop(state_); }
  Future(const Future&) = delete;
  Future& operator=(const Future&) = delete;

  [[nodiscard]] bool valid() const noexcept { return static_cast<bool>(state_); }
  [[nodiscard]] bool isReady() const { return checked("isReady").status_ != Status::Pending; }
  [[nodiscard]] bool hasValue() const { return checked("hasValue").status_ == Status::Value; }
  [[nodiscard]] bool hasError() const { return checked("hasError").status_ == Status::Error; }
  [[nodiscard]] Dispatcher& loop() const { return state_->loop(); }

  // The value of a settled future; rethrows its error; std::logic_error when pending.
  const detail::Stored<T>& value() const {
    auto& s = checked("value");
    s.observed_ = true;
    if (s.status_ == Status::Error) {
      std::rethrow_exception(s.error_);
    }
    if (s.status_ == Status::Pending) {
      throw std::logic_error("Future::value() on a pending future");
    }
    return *s.value_;
  }

  // The error of a rejected future, nullptr otherwise. Marks the rejection observed.
  [[nodiscard]] std::exception_ptr error() const {
    auto& s = checked("error");
    s.observed_ = true;
    return s.error_;
  }

  // f(value) -> U or Future<U>; returns Future<U>. An error skips f and passes through.
  template <typename F>
  auto then(F&& f) {
    using R = detail::ThenResult<T, std::decay_t<F>>;
    using U = typename detail::FutureTraits<R>::Value;
    return chain<U>([f = std::forward<F>(f)](detail::State<T>& source, Promise<U>& next) mutable {
      if (source.status_ == Status::Error) {
        next.setError(source.error_);
        return;
      }
      deliver<U>(next,
                 [&]() -> decltype(auto) { return detail::invokeWithValue<T>(f, source.value_); });
    });
  }

  // f(std::exception_ptr) -> T or Future<T>, run only on error; a value passes through.
  template <typename F>
  Future<T> recover(F&& f) {
    return chain<T>([f = std::forward<F>(f)](detail::State<T>& source, Promise<T>& next) mutable {
      if (source.status_ == Status::Value) {
        passValue(source, next);
        return;
      }
      deliver<T>(next, [&]() -> decltype(auto) { return f(source.error_); });
    });
  }

  // f() runs whatever the outcome; the outcome passes through unless f throws.
  template <typename F>
  Future<T> finally(F&& f) {
    return chain<T>([f = std::forward<F>(f)](detail::State<T>& source, Promise<T>& next) mutable {
      try {
        f();
      } catch (...) {
        next.setError(std::current_exception());
        return;
      }
      passOutcome(source, next);
    });
  }

  // f(Future<T> settled) -> U or Future<U>, run whatever the outcome; the settled future's
  // value()/error() tell which.
  template <typename F>
  auto whenSettled(F&& f) {
    using R = std::invoke_result_t<std::decay_t<F>&, Future<T>>;
    using U = typename detail::FutureTraits<R>::Value;
    return chain<U>([f = std::forward<F>(f)](detail::State<T>& source, Promise<U>& next) mutable {
      source.addRef();
      Future<T> settled{detail::StateRef<T>(&source)};
      deliver<U>(next, [&]() -> decltype(auto) { return f(std::move(settled)); });
    });
  }

  // Rejects with TimeoutError (and cancels this future) when it has not settled after `timeout`.
  Future<T> within(Duration timeout, std::string what = "operation");

  // Cancels: see the header comment. No effect on a settled future. Keeps the future usable.
  void cancel() { checked("cancel").cancel(); }

  // Gives up interest: the outcome is dropped, and a rejection is not reported as unobserved.
  void detach() {
    if (state_) {
      checked("detach").observed_ = true;
      state_ = {};
    }
  }

 private:
  using Status = detail::StateBase::Status;
  template <typename>
  friend class Promise;
  template <typename>
  friend class Future;
  friend struct detail::FutureAccess;

  explicit Future(detail::StateRef<T> state) noexcept : state_(std::move(state)) {}

  detail::State<T>& checked(const char* operation) const {
    if (!state_) {
      throw std::logic_error(std::string("Future::") + operation + " on an empty future");
    }
    detail::requireLoopThread(state_->loop(), operation);
    return *state_;
  }

  static void passValue(detail::State<T>& source, Promise<T>& next) {
    if constexpr (std::is_void_v<T>) {
      next.setValue();
    } else {
      next.setValue(std::move(*source.value_));
    }
  }

  static void passOutcome(detail::State<T>& source, Promise<T>& next) {
    source.observed_ = true;
    if (source.status_ == Status::Error) {
      next.setError(source.error_);
    } else {
      passValue(source, next);
    }
  }

  // Runs `produce` (which returns U or Future<U>) and settles `next` with its outcome.
  template <typename U, typename Produce>
  static void deliver(Promise<U>& next, Produce&& produce) {
    using R = decltype(produce());
    try {
      if constexpr (detail::FutureTraits<std::decay_t<R>>::kIsFuture) {
        std::decay_t<R> inner = produce();
        inner.forwardTo(next);
      } else if constexpr (std::is_void_v<R>) {
        produce();
        next.setValue();
      } else {
        next.setValue(produce());
      }
    } catch (...) {
      next.setError(std::current_exception());
    }
  }

  // Settles `next` with this future's outcome, and makes cancelling `next` cancel this.
  void forwardTo(Promise<T>& next) {
    auto& source = checked("forward");
    if (source.status_ != Status::Pending) {  // Fast path: no extra hop through the loop.
      passOutcome(source, next);
      state_ = {};
      return;
    }
    detail::StateRef<T> sourceRef = std::move(state_);
    next.onCancel([sourceRef] { sourceRef->cancel(); });
    source.setContinuation(
        [sourceRef, p = std::move(next)]() mutable { passOutcome(*sourceRef, p); });
  }

  // The one primitive behind then/recover/finally: run `step(source, next)` on the loop once this
  // future settles, and return next's future. Cancelling next cancels this.
  template <typename U, typename Step>
  Future<U> chain(Step&& step) {
    auto& source = checked("then");
    Promise<U> next(source.loop());
    Future<U> result = next.future();
    detail::StateRef<T> sourceRef = std::move(state_);
    next.onCancel([ref = sourceRef] { ref->cancel(); });
    source.setContinuation(
        [sourceRef, next = std::move(next), step = std::forward<Step>(step)]() mutable {
          sourceRef->observed_ = true;
          step(*sourceRef, next);
        });
    return result;
  }

  detail::StateRef<T> state_;
};

namespace detail {

struct FutureAccess {
  template <typename T>
  static Future<T> adopt(StateRef<T> state) {
    return Future<T>(std::move(state));
  }
  template <typename T>
  static StateRef<T> take(Future<T>& future, const char* operation) {
    future.checked(operation);
    return std::move(future.state_);
  }
  template <typename T>
  static void passOutcome(State<T>& source, Promise<T>& next) {
    Future<T>::passOutcome(source, next);
  }
};

}  // namespace detail

// A settled future on the calling thread's dispatcher. One allocation: the common return of a
// handler that finished synchronously.
template <typename T, typename... A>
Future<T> makeReadyFuture(A&&... args) {
  auto* state = new detail::State<T>(detail::currentDispatcher());
  state->succeed(std::forward<A>(args)...);
  return detail::FutureAccess::adopt(detail::StateRef<T>(state));
}

inline Future<void> makeReadyFuture() {
  return makeReadyFuture<void>();
}

template <typename T>
Future<T> makeErrorFuture(std::exception_ptr error) {
  Promise<T> p;
  Future<T> f = p.future();
  p.setError(std::move(error));
  return f;
}

template <typename T, typename E>
Future<T> makeErrorFuture(E&& exception) {
  return makeErrorFuture<T>(std::make_exception_ptr(std::forward<E>(exception)));
}

}  // namespace snow

#include "snow/core/future_combinators.h"  // IWYU pragma: export
