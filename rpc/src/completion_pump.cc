#include "completion_pump.h"

#include <utility>
#include <vector>

#include <grpc/support/time.h>
#include <spdlog/spdlog.h>

namespace snow::rpc::detail {
namespace {

// How many completions one loop callback carries at most: enough to make a burst cheap, few
// enough that one batch does not hold the loop for long.
constexpr size_t kMaxBatch = 64;

struct Ready {
  Completion* completion;
  bool ok;
};

}  // namespace

CompletionPump::CompletionPump(Dispatcher& loop, grpc::CompletionQueue& queue,
                               std::string threadName)
    : loop_(loop), queue_(queue), threadName_(std::move(threadName)) {
  thread_ = std::thread([this] { run(); });
}

CompletionPump::~CompletionPump() {
  stopNow();
}

void CompletionPump::run() {
  std::vector<Ready> batch;
  void* tag = nullptr;
  bool ok = false;
  while (queue_.Next(&tag, &ok)) {
    batch.push_back({arrive(tag, ok), ok});
    while (batch.size() < kMaxBatch &&
           queue_.AsyncNext(&tag, &ok, gpr_time_0(GPR_CLOCK_MONOTONIC)) ==
               grpc::CompletionQueue::GOT_EVENT) {
      batch.push_back({arrive(tag, ok), ok});
    }
    loop_.post([shared = shared_, ready = std::exchange(batch, {})] {
      if (!shared->open) {
        return;
      }
      for (const Ready& r : ready) {
        r.completion->complete(r.ok);
      }
    });
  }
  // The last post: it runs after every batch above (post() keeps order).
  loop_.post([shared = shared_] {
    if (shared->open && shared->drained) {
      shared->drained->setValue();
    }
  });
}

void CompletionPump::stopArrivals() {
  const std::lock_guard lock(closingMutex_);
  closing_ = true;
}

Completion* CompletionPump::arrive(void* tag, bool ok) {
  if ((reinterpret_cast<uintptr_t>(tag) & 1U) == 0) {
    return static_cast<Completion*>(tag);
  }
  auto* completion = static_cast<Completion*>(static_cast<void*>(static_cast<char*>(tag) - 1));
#if defined(__SANITIZE_THREAD__)
  __tsan_acquire(completion);  // See withArrival().
#endif
  const std::lock_guard lock(closingMutex_);
  if (!closing_) {
    completion->arrived(ok);
  }
  return completion;
}

Future<void> CompletionPump::shutdown() {
  if (shutDown_) {
    return makeErrorFuture<void>(std::logic_error("CompletionPump::shutdown() called twice"));
  }
  shutDown_ = true;
  shared_->drained = std::make_unique<Promise<void>>(loop_);
  Future<void> done = shared_->drained->future();
  stopArrivals();
  queue_.Shutdown();
  return done;
}

void CompletionPump::stopNow() {
  if (!shutDown_) {
    shutDown_ = true;
    stopArrivals();
    queue_.Shutdown();
  }
  if (thread_.joinable()) {
    thread_.join();  // Quick: the queue is shut down and its operations were cancelled.
  }
  shared_->open = false;
}

}  // namespace snow::rpc::detail
