#pragma once

// The bridge from a gRPC completion queue to the loop (private to rpc/).
//
// One thread blocks in CompletionQueue::Next() and only hands what it got to the loop: it drains
// whatever else is ready without blocking and posts the whole batch as one callback, so a burst
// of completions costs one wake-up of the loop, not one each. Every tag is a Completion, run on
// the loop thread. The one exception is Completion::arrived(), see there.
//
// Shutdown: the owner first makes gRPC finish or cancel every operation (Server::Shutdown,
// ClientContext::TryCancel), then calls shutdown(): the queue drains, the thread ends, and the
// returned future resolves on the loop after every completion posted before has run. stopNow()
// is the blocking form for destructors: after it, completions still queued on the loop are
// dropped (the owner frees their objects itself).

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <grpcpp/completion_queue.h>
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#endif

#include "snow/core/dispatcher.h"
#include "snow/core/future.h"

namespace snow::rpc::detail {

class Completion {
 public:
  // Runs on the pump thread as the operation completes, before complete() is posted, when the
  // operation was started with withArrival(this) as its tag. Only for starting the next gRPC
  // operation of an object the loop leaves alone until complete() runs: when that operation
  // completes at once, it rides in the same batch and saves a round trip through the loop (two
  // thread wake-ups). Not called once the pump is shutting down, when no operation may start.
  virtual void arrived(bool /*ok*/) {}
  virtual void complete(bool ok) = 0;

 protected:
  ~Completion() = default;
};

// The tag that makes the pump call `completion`'s arrived(): its address with the low bit set
// (a Completion is pointer-aligned). The pump touches no other tag's object, which stays the
// loop's alone. Call it on the loop thread, after the object is ready, right before the start.
inline void* withArrival(Completion* completion) {
#if defined(__SANITIZE_THREAD__)
  // gRPC orders the start before the completion, but ThreadSanitizer cannot see that inside an
  // uninstrumented gRPC: declare the hand-off to the pump thread (CompletionPump::arrive).
  __tsan_release(completion);
#endif
  return static_cast<char*>(static_cast<void*>(completion)) + 1;  // Never dereferenced.
}

// A Completion that calls a member function: `CompletionOf<Call, &Call::onRead> read_{this};`.
template <typename T, void (T::*Fn)(bool)>
class CompletionOf final : public Completion {
 public:
  explicit CompletionOf(T* self) : self_(self) {}
  void complete(bool ok) override { (self_->*Fn)(ok); }

 private:
  T* self_;
};

class CompletionPump {
 public:
  CompletionPump(Dispatcher& loop, grpc::CompletionQueue& queue, std::string threadName);
  ~CompletionPump();
  CompletionPump(const CompletionPump&) = delete;
  CompletionPump& operator=(const CompletionPump&) = delete;

  Future<void> shutdown();
  void stopNow();

 private:
  void run();
  Completion* arrive(void* tag, bool ok);
  void stopArrivals();

  struct Shared {  // Loop thread only.
    bool open = true;
    std::unique_ptr<Promise<void>> drained;
  };
  Dispatcher& loop_;
  grpc::CompletionQueue& queue_;
  std::shared_ptr<Shared> shared_ = std::make_shared<Shared>();
  std::string threadName_;
  std::thread thread_;
  bool shutDown_ = false;
  // Set before the queue shuts down, under the mutex arrive() holds while it starts operations.
  std::mutex closingMutex_;
  bool closing_ = false;
};

}  // namespace snow::rpc::detail
