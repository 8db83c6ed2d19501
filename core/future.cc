#include "snow/core/future.h"

#include <spdlog/spdlog.h>

namespace snow {

std::string describe(const std::exception_ptr& error) {
  if (!error) {
    return "no error";
  }
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown error (not a std::exception)";
  }
}

namespace detail {
namespace {

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kRecycle = false;
#else
constexpr bool kRecycle = true;
#endif

constexpr std::size_t kGranule = 16;
constexpr std::size_t kClasses = 16;  // Blocks up to 256 bytes are recycled.
constexpr uint32_t kMaxCachedPerClass = 4096;

struct FreeBlock {
  FreeBlock* next;
};

// Trivially destructible, so that the hot path reads it without a TLS guard; the Reaper below
// empties it at thread exit and is touched only on the slow path.
struct StateCache {
  FreeBlock* heads[kClasses];
  uint32_t counts[kClasses];
};

constinit __attribute__((tls_model("initial-exec"))) thread_local StateCache tStateCache{};

struct Reaper {
  Reaper() = default;
  Reaper(const Reaper&) = delete;
  Reaper& operator=(const Reaper&) = delete;
  ~Reaper() {
    for (FreeBlock*& head : tStateCache.heads) {
      while (head != nullptr) {
        ::operator delete(std::exchange(head, head->next));
      }
    }
  }
};

void armReaper() {
  static thread_local Reaper reaper;
}

std::size_t sizeClass(std::size_t size) {
  return (size + kGranule - 1) / kGranule - 1;
}

}  // namespace

void* allocateState(std::size_t size) {
  const std::size_t cls = sizeClass(size);
  if (!kRecycle || cls >= kClasses) {
    return ::operator new(size);
  }
  StateCache& cache = tStateCache;
  if (FreeBlock* block = cache.heads[cls]) {
    cache.heads[cls] = block->next;
    --cache.counts[cls];
    return block;
  }
  armReaper();
  return ::operator new((cls + 1) * kGranule);  // Round up: blocks of a class are interchangeable.
}

void deallocateState(void* block, std::size_t size) noexcept {
  const std::size_t cls = sizeClass(size);
  if (kRecycle && cls < kClasses) {
    StateCache& cache = tStateCache;
    if (cache.counts[cls] < kMaxCachedPerClass) {
      cache.heads[cls] = ::new (block) FreeBlock{cache.heads[cls]};
      ++cache.counts[cls];
      return;
    }
  }
  ::operator delete(block);
}

Dispatcher& currentDispatcher() {
  Dispatcher* loop = Dispatcher::current();
  if (loop == nullptr) {
    throw std::logic_error(
        "no dispatcher on this thread: create promises on a loop thread or pass the Dispatcher");
  }
  return *loop;
}

void throwOffLoopThread(const Dispatcher& loop, const char* operation) {
  throw std::logic_error(std::string("Future::") + operation + " called off the loop thread of '" +
                         loop.name() + "'");
}

void reportUnobserved(const std::exception_ptr& error, const std::string& label) noexcept {
  try {
    if (label.empty()) {
      spdlog::warn("unobserved rejection: {}", describe(error));
    } else {
      spdlog::warn("unobserved rejection of {}: {}", label, describe(error));
    }
  } catch (...) {  // Logging must not throw out of a destructor.
  }
}

}  // namespace detail

Future<void> repeat(UniqueFunction<Future<Step>()> body) {
  struct Rounds {
    explicit Rounds(UniqueFunction<Future<Step>()> b) : body(std::move(b)) {}
    UniqueFunction<Future<Step>()> body;
    Promise<void> promise;
    detail::StateRef<Step> current;

    static void next(const std::shared_ptr<Rounds>& self) {
      Future<Step> round;
      try {
        round = self->body();
      } catch (...) {
        self->promise.setError(std::current_exception());
        return;
      }
      self->current = detail::FutureAccess::take(round, "repeat");
      self->current->setContinuation([self] {
        auto& state = *self->current;
        state.observed_ = true;
        if (self->promise.isSettled()) {
          return;
        }
        if (state.status_ == detail::StateBase::Status::Error) {
          self->promise.setError(state.error_);
        } else if (*state.value_ == Step::Stop) {
          self->promise.setValue();
        } else {
          next(self);
        }
      });
    }
  };
  auto rounds = std::make_shared<Rounds>(std::move(body));
  Future<void> done = rounds->promise.future();
  Rounds* raw = rounds.get();
  rounds->promise.onCancel([raw] {
    if (raw->current) {
      raw->current->cancel();
    }
  });
  Rounds::next(rounds);
  return done;
}

}  // namespace snow
