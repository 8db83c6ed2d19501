#pragma once

// Combinators over futures: within (timeout), all, any, repeat. Included by future.h.
// Same contract as future.h: loop thread only; inputs are consumed.

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "snow/core/future.h"

namespace snow {

template <typename T>
Future<T> Future<T>::within(Duration timeout, std::string what) {
  struct Race {
    explicit Race(Dispatcher& loop) : promise(loop) {}
    Promise<T> promise;
    detail::StateRef<T> source;
    TimerPtr timer;
  };
  Dispatcher& owner = checked("within").loop();
  auto race = std::make_shared<Race>(owner);
  race->source = std::move(state_);
  Future<T> result = race->promise.future();
  // Raw pointers are safe: the timer and the cancel hook live inside (or settle with) the race,
  // and the race lives until the source's continuation has run.
  Race* raw = race.get();
  race->timer = owner.createTimer([raw, what = std::move(what), timeout] {
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count();
    raw->promise.reject(TimeoutError(what + " timed out after " + std::to_string(ms) + " ms"));
    raw->source->cancel();
  });
  race->timer->enable(timeout);
  race->promise.onCancel([raw] { raw->source->cancel(); });
  race->source->setContinuation([race] {
    race->timer.reset();
    if (race->promise.isSettled()) {
      race->source->observed_ = true;  // The timeout won; the late outcome is not news.
    } else {
      detail::FutureAccess::passOutcome(*race->source, race->promise);
    }
  });
  return result;
}

namespace detail {

// Shared bookkeeping of all() and any(): the inputs' states, so that the losers can be cancelled.
template <typename T, typename Out>
struct Gather {
  explicit Gather(Dispatcher& loop) : promise(loop) {}
  Promise<Out> promise;
  std::vector<StateRef<T>> inputs;
  std::vector<std::optional<Stored<T>>> values;
  size_t remaining = 0;

  void cancelPending() {
    for (auto& input : inputs) {
      if (input->pending()) {
        input->cancel();
      }
    }
  }

  // Attaches `onInput(gather, index)` to every input; cancelling the output cancels them.
  template <typename OnInput>
  static Future<Out> start(std::vector<Future<T>>& futures, const char* operation,
                           OnInput onInput) {
    Dispatcher& loop = futures.empty() ? currentDispatcher() : futures.front().loop();
    auto gather = std::make_shared<Gather>(loop);
    Future<Out> result = gather->promise.future();
    gather->remaining = futures.size();
    gather->values.resize(futures.size());
    for (auto& future : futures) {
      gather->inputs.push_back(FutureAccess::take(future, operation));
    }
    Gather* raw = gather.get();
    gather->promise.onCancel([raw] { raw->cancelPending(); });
    for (size_t i = 0; i < gather->inputs.size(); ++i) {
      gather->inputs[i]->setContinuation([gather, i, onInput]() mutable {
        gather->inputs[i]->observed_ = true;
        if (!gather->promise.isSettled()) {
          onInput(*gather, i);
        }
      });
    }
    return result;
  }
};

}  // namespace detail

// Resolves with every value, in input order, once all resolved; rejects with the first error and
// cancels the inputs still pending. An empty input resolves at once (on the current loop).
template <typename T>
auto all(std::vector<Future<T>> futures) {
  using Out = std::conditional_t<std::is_void_v<T>, void, std::vector<T>>;
  using G = detail::Gather<T, Out>;
  if (futures.empty()) {
    if constexpr (std::is_void_v<T>) {
      return makeReadyFuture();
    } else {
      return makeReadyFuture<Out>();
    }
  }
  auto finish = [](G& g) {
    if constexpr (std::is_void_v<T>) {
      g.promise.setValue();
    } else {
      std::vector<T> values;
      values.reserve(g.values.size());
      for (auto& v : g.values) {
        values.push_back(std::move(*v));
      }
      g.promise.setValue(std::move(values));
    }
  };
  return G::start(futures, "all", [finish](G& g, size_t i) {
    auto& input = *g.inputs[i];
    if (input.status_ == detail::StateBase::Status::Error) {
      g.promise.setError(input.error_);
      g.cancelPending();
      return;
    }
    g.values[i] = std::move(input.value_);
    if (--g.remaining == 0) {
      finish(g);
    }
  });
}

// Resolves with the first value and cancels the rest; rejects with the last error when every
// input failed; rejects with std::invalid_argument when there is no input.
template <typename T>
Future<T> any(std::vector<Future<T>> futures) {
  if (futures.empty()) {
    return makeErrorFuture<T>(std::invalid_argument("any() of no futures"));
  }
  using G = detail::Gather<T, T>;
  return G::start(futures, "any", [](G& g, size_t i) {
    auto& input = *g.inputs[i];
    if (input.status_ == detail::StateBase::Status::Value) {
      detail::FutureAccess::passOutcome(input, g.promise);
      g.cancelPending();
    } else if (--g.remaining == 0) {
      g.promise.setError(input.error_);
    }
  });
}

// What a repeat() body asks for next.
enum class Step { Continue, Stop };

// Runs `body` again each time the future it returned resolves with Step::Continue; resolves when
// it returns Step::Stop, rejects with the first error (or exception thrown by body). The first
// round runs inside repeat(); every later one starts from the loop's queue, so a loop of any
// length runs in constant stack (the reason this
// exists: recursive then() chains overflow, see Mesos MESOS-9024). Cancelling the returned future
// cancels the round in flight and stops.
Future<void> repeat(UniqueFunction<Future<Step>()> body);

}  // namespace snow
