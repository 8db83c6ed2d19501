#pragma once

// The event-tree benchmark body shared by core_bench (noop tracer) and tracing_bench (each
// tracer): per iteration, raise `batch` root events whose handler settles at once, and run the
// loop until all have settled. One item is one event: raise, dispatch, handler, settle, span.

#include <vector>

#include <benchmark/benchmark.h>

#include "snow/core/dispatcher.h"
#include "snow/core/event.h"
#include "snow/core/future.h"

namespace snow::bench {

inline void raiseAndSettleBursts(benchmark::State& state, Dispatcher& loop, EventTree& tree,
                                 EventType type) {
  const auto batch = static_cast<int>(state.range(0));
  int handled = 0;
  auto registration = tree.on(type, [&handled](const EventPtr&) {
    ++handled;
    return makeReadyFuture<MessagePtr>(nullptr);
  });
  std::vector<Future<MessagePtr>> results;
  results.reserve(batch);
  for (auto _ : state) {
    for (int i = 0; i < batch; ++i) {
      results.push_back(tree.raise(type));
    }
    while (tree.liveEvents() > 0) {
      loop.run(RunMode::NonBlock);
    }
    results.clear();
  }
  if (handled != static_cast<int>(state.iterations()) * batch) {
    state.SkipWithError("not every event was handled");
  }
  state.SetItemsProcessed(state.iterations() * batch);
}

}  // namespace snow::bench
