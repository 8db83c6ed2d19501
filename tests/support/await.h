#pragma once

// Future-aware waiting for tests: run the loop until a future settles, with a deadline, instead
// of sleeping.

#include <chrono>

#include <gtest/gtest.h>

#include "snow/core/dispatcher.h"
#include "snow/core/future.h"

namespace snow::testing {

inline constexpr Duration kDeadline = std::chrono::seconds(10);

// Runs `loop` until `future` settles; fails the test (and returns false) at the deadline.
template <typename T>
[[nodiscard]] bool await(Dispatcher& loop, const Future<T>& future, Duration deadline = kDeadline) {
  const bool settled = loop.runUntil([&] { return future.isReady(); }, deadline);
  EXPECT_TRUE(settled) << "future did not settle within the deadline";
  return settled;
}

// Runs `loop` until `condition` holds; fails the test at the deadline.
template <typename F>
[[nodiscard]] bool awaitCondition(Dispatcher& loop, F condition, Duration deadline = kDeadline) {
  const bool met = loop.runUntil(std::move(condition), deadline);
  EXPECT_TRUE(met) << "condition not met within the deadline";
  return met;
}

// Runs `loop` until `condition` holds, checking it every `interval` as well: for conditions that
// another thread makes true, which wakes no loop. Fails the test at the deadline.
template <typename F>
[[nodiscard]] bool awaitPolled(Dispatcher& loop, F condition, Duration deadline = kDeadline,
                               Duration interval = std::chrono::milliseconds(5)) {
  TimerPtr tick;
  tick = loop.createTimer([&] { tick->enable(interval); });
  tick->enable(interval);
  return awaitCondition(loop, std::move(condition), deadline);
}

// The message of a rejected future's error ("" when it did not reject).
template <typename T>
std::string errorOf(const Future<T>& future) {
  return future.hasError() ? describe(future.error()) : std::string();
}

}  // namespace snow::testing
