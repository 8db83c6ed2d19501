#pragma once

// The bridge from a gRPC completion queue to the loop (private to rpc/).
//
// One thread blocks in CompletionQueue::Next() and only hands what it got to the loop: it drains
// whatever else is ready without blocking and posts the whole batch as one callback, so a burst
// of completions costs one wake-up of the loop, not one each. Every tag is a Completion, run on
// the loop thread.
//
// Shutdown: the owner first makes gRPC finish or cancel every operation (Server::Shutdown,
// ClientContext::TryCancel), then calls shutdown(): the queue drains, the thread ends, and the
// returned future resolves on the loop after every completion posted before has run. stopNow()
// is the blocking form for destructors: after it, completions still queued on the loop are
// dropped (the owner frees their objects itself).

#include <memory>
#include <string>
#include <thread>

#include <grpcpp/completion_queue.h>

#include "snow/core/dispatcher.h"
#include "snow/core/future.h"

namespace snow::rpc::detail {

class Completion {
 public:
  virtual void complete(bool ok) = 0;

 protected:
  ~Completion() = default;
};

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
};

}  // namespace snow::rpc::detail
