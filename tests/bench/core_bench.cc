// The runtime's hot paths against raw libevent, in one run:
//   raw libevent event_active + dispatch of a persistent event  (the baseline)
//   Dispatcher::schedule() and post() callbacks
//   a resolved future's continuation
//   a full event-tree event: create, dispatch to its handler, settle, span (noop tracer)
// Each benchmark processes a burst of N items per iteration (N = 64: a working set that stays in
// cache; N = 1000: one that does not) and reports items/s; the ratio table at the end divides each
// item's cost by raw libevent's for the same N.
//
// Run: build/release/tests/bench/snow_core_bench   (see docs/performance.md)

#include <benchmark/benchmark.h>
#include <event2/event.h>

#include "snow/core/dispatcher.h"
#include "snow/core/event.h"
#include "snow/core/future.h"

#include "event_tree_bench.h"
#include "ratio_reporter.h"

namespace {

void bursts(benchmark::internal::Benchmark* b) {
  b->Arg(64)->Arg(1000);
}

// The baseline: a persistent event whose callback re-activates it until the batch is done, so
// that each item is exactly one event_active plus one dispatch.
void rawLibeventActivate(benchmark::State& state) {
  const auto batch = static_cast<int>(state.range(0));
  event_base* base = event_base_new();
  int remaining = 0;
  struct Ctx {
    event* ev;
    int* remaining;
  } ctx{nullptr, &remaining};
  ctx.ev = event_new(
      base, -1, EV_PERSIST,
      [](evutil_socket_t, short, void* arg) {
        auto* c = static_cast<Ctx*>(arg);
        if (--*c->remaining > 0) {
          event_active(c->ev, 0, 0);
        }
      },
      &ctx);
  for (auto _ : state) {
    remaining = batch;
    event_active(ctx.ev, 0, 0);
    event_base_loop(base, EVLOOP_NONBLOCK);
    if (remaining != 0) {
      state.SkipWithError("batch did not finish in one pass");
    }
  }
  state.SetItemsProcessed(state.iterations() * batch);
  event_free(ctx.ev);
  event_base_free(base);
}
BENCHMARK(rawLibeventActivate)->Apply(bursts);

void runUntilZero(snow::Dispatcher& loop, const int& remaining, benchmark::State& state) {
  while (remaining > 0) {
    loop.run(snow::RunMode::NonBlock);
  }
  (void)state;
}

// A burst of `batch` callbacks handed to the loop through `enqueue` (schedule or post).
void dispatcherBurst(benchmark::State& state, void (snow::Dispatcher::*enqueue)(snow::Callback)) {
  const auto batch = static_cast<int>(state.range(0));
  auto loop = snow::makeDispatcher("bench");
  int remaining = 0;
  for (auto _ : state) {
    remaining = batch;
    for (int i = 0; i < batch; ++i) {
      ((*loop).*enqueue)([&remaining] { --remaining; });
    }
    runUntilZero(*loop, remaining, state);
  }
  state.SetItemsProcessed(state.iterations() * batch);
}

void dispatcherSchedule(benchmark::State& state) {
  dispatcherBurst(state, &snow::Dispatcher::schedule);
}
BENCHMARK(dispatcherSchedule)->Apply(bursts);

void dispatcherPost(benchmark::State& state) {
  dispatcherBurst(state, &snow::Dispatcher::post);
}
BENCHMARK(dispatcherPost)->Apply(bursts);

void resolvedFutureContinuation(benchmark::State& state) {
  const auto batch = static_cast<int>(state.range(0));
  auto loop = snow::makeDispatcher("bench");
  int remaining = 0;
  std::vector<snow::Future<void>> pending;
  pending.reserve(batch);
  for (auto _ : state) {
    remaining = batch;
    for (int i = 0; i < batch; ++i) {
      snow::Promise<int> promise(*loop);
      pending.push_back(promise.future().then([&remaining](int) { --remaining; }));
      promise.setValue(i);
    }
    runUntilZero(*loop, remaining, state);
    pending.clear();
  }
  state.SetItemsProcessed(state.iterations() * batch);
}
BENCHMARK(resolvedFutureContinuation)->Apply(bursts);

void eventTreeEvent(benchmark::State& state) {
  auto loop = snow::makeDispatcher("bench");
  snow::EventTree tree(*loop, nullptr, 1);
  snow::bench::raiseAndSettleBursts(state, *loop, tree, snow::EventType::of("bench.event"));
}
BENCHMARK(eventTreeEvent)->Apply(bursts);

}  // namespace

int main(int argc, char** argv) {
  return snow::bench::runWithRatios(argc, argv, "rawLibeventActivate");  // Same-N baseline.
}
