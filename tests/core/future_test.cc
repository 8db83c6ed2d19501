#include "snow/core/future.h"

#include <atomic>
#include <stdexcept>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "support/await.h"
#include "support/log_capture.h"

namespace snow {
namespace {

using testing::await;
using testing::errorOf;
using ::testing::HasSubstr;

class FutureTest : public ::testing::Test {
 protected:
  DispatcherPtr loop_ = makeDispatcher("test");
};

TEST_F(FutureTest, ThenChainsValuesAndFlattensFutures) {
  Promise<int> p;
  Future<std::string> f = p.future()
                              .then([](int v) { return v * 2; })
                              .then([](int v) { return makeReadyFuture<int>(v + 1); })
                              .then([](int v) { return std::to_string(v); });
  p.setValue(20);
  ASSERT_TRUE(await(*loop_, f));
  EXPECT_EQ(f.value(), "41");
}

TEST_F(FutureTest, VoidFuturesChain) {
  int steps = 0;
  Future<void> f = makeReadyFuture().then([&] { ++steps; }).then([&] {
    ++steps;
    return makeReadyFuture();
  });
  ASSERT_TRUE(await(*loop_, f));
  EXPECT_TRUE(f.hasValue());
  EXPECT_EQ(steps, 2);
}

TEST_F(FutureTest, ContinuationsNeverRunInline) {
  bool ran = false;
  Promise<int> p;
  Future<void> f = p.future().then([&](int) { ran = true; });
  p.setValue(1);
  EXPECT_FALSE(ran) << "setValue ran the continuation inline";
  Future<void> g = makeReadyFuture<int>(1).then([&](int) { ran = true; });
  EXPECT_FALSE(ran) << "then() on a ready future ran inline";
  ASSERT_TRUE(await(*loop_, f));
  ASSERT_TRUE(await(*loop_, g));
  EXPECT_TRUE(ran);
}

TEST_F(FutureTest, ErrorsSkipThenAndReachRecover) {
  bool skipped = true;
  Future<int> f = makeErrorFuture<int>(std::runtime_error("disk on fire"))
                      .then([&](int v) {
                        skipped = false;
                        return v;
                      })
                      .recover([](const std::exception_ptr& e) {
                        return describe(e) == "disk on fire" ? 7 : -1;
                      });
  ASSERT_TRUE(await(*loop_, f));
  EXPECT_TRUE(skipped);
  EXPECT_EQ(f.value(), 7);
}

TEST_F(FutureTest, ThrowingContinuationRejects) {
  Future<int> f =
      makeReadyFuture<int>(1).then([](int) -> int { throw std::invalid_argument("bad"); });
  ASSERT_TRUE(await(*loop_, f));
  EXPECT_EQ(errorOf(f), "bad");
  EXPECT_THROW((void)f.value(), std::invalid_argument);
}

TEST_F(FutureTest, FinallyRunsOnBothPathsAndPassesTheOutcome) {
  int runs = 0;
  Future<int> ok = makeReadyFuture<int>(3).finally([&] { ++runs; });
  Future<int> bad = makeErrorFuture<int>(std::runtime_error("x")).finally([&] { ++runs; });
  ASSERT_TRUE(await(*loop_, ok));
  ASSERT_TRUE(await(*loop_, bad));
  EXPECT_EQ(runs, 2);
  EXPECT_EQ(ok.value(), 3);
  EXPECT_EQ(errorOf(bad), "x");
}

TEST_F(FutureTest, DroppedPromiseBreaks) {
  Future<int> f;
  {
    Promise<int> p;
    f = p.future();
  }
  ASSERT_TRUE(await(*loop_, f));
  EXPECT_THROW((void)f.value(), BrokenPromise);
}

TEST_F(FutureTest, APromiseWhoseFutureWasNeverTakenDiesQuietly) {
  testing::LogCapture log;
  { Promise<int> unused; }
  loop_->run(RunMode::NonBlock);
  EXPECT_EQ(log.text(), "");
}

TEST_F(FutureTest, UnobservedRejectionIsLoggedWithItsLabel) {
  testing::LogCapture log;
  {
    Promise<int> p;
    p.setLabel("event disk.check(abc-1)");
    Future<int> f = p.future();
    p.reject(std::runtime_error("nobody listened"));
    ASSERT_TRUE(await(*loop_, f));
  }  // f dies here, never observed.
  EXPECT_THAT(log.text(),
              HasSubstr("unobserved rejection of event disk.check(abc-1): nobody listened"));
}

TEST_F(FutureTest, ObservedRejectionIsNotLogged) {
  testing::LogCapture log;
  {
    Future<int> f = makeErrorFuture<int>(std::runtime_error("seen"));
    ASSERT_TRUE(await(*loop_, f));
    EXPECT_EQ(errorOf(f), "seen");
    Future<int> g =
        makeErrorFuture<int>(std::runtime_error("handled")).recover([](auto) { return 0; });
    ASSERT_TRUE(await(*loop_, g));
    makeErrorFuture<int>(std::runtime_error("detached")).detach();
  }
  EXPECT_THAT(log.text(), ::testing::Not(HasSubstr("unobserved")));
}

TEST_F(FutureTest, SettlingFromAnotherThreadRunsContinuationOnTheLoop) {
  Promise<int> p;
  std::thread::id continuationThread;
  Future<int> f = p.future().then([&](int v) {
    continuationThread = std::this_thread::get_id();
    return v + 1;
  });
  std::thread producer([p = std::move(p)]() mutable { p.setValue(41); });
  ASSERT_TRUE(await(*loop_, f));
  producer.join();
  EXPECT_EQ(f.value(), 42);
  EXPECT_EQ(continuationThread, std::this_thread::get_id());
}

TEST_F(FutureTest, DroppingAPromiseOnAnotherThreadBreaksIt) {
  Promise<int> p;
  Future<int> f = p.future();
  std::thread([p = std::move(p)] {}).join();
  ASSERT_TRUE(await(*loop_, f));
  EXPECT_THROW((void)f.value(), BrokenPromise);
}

TEST_F(FutureTest, UsingAFutureOffItsLoopThreadThrows) {
  Future<int> f = makeReadyFuture<int>(1);
  std::string error;
  std::thread([&] {
    try {
      (void)f.isReady();
    } catch (const std::logic_error& e) {
      error = e.what();
    }
  }).join();
  EXPECT_THAT(error, HasSubstr("off the loop thread of 'test'"));
}

TEST_F(FutureTest, CancelRunsTheProducersHookAndRejects) {
  Promise<int> p;
  bool hookRan = false;
  p.onCancel([&] { hookRan = true; });
  Future<int> f = p.future();
  f.cancel();
  EXPECT_TRUE(hookRan);
  EXPECT_TRUE(p.isCancelled());
  p.setValue(5);  // The producer did not know yet: ignored, no throw.
  ASSERT_TRUE(await(*loop_, f));
  EXPECT_THROW((void)f.value(), Cancelled);
}

TEST_F(FutureTest, CancellingADerivedFutureCancelsTheSource) {
  Promise<int> p;
  bool hookRan = false;
  p.onCancel([&] { hookRan = true; });
  Future<int> derived = p.future().then([](int v) { return v; }).then([](int v) { return v; });
  derived.cancel();
  ASSERT_TRUE(await(*loop_, derived));
  EXPECT_TRUE(hookRan) << "cancellation did not flow up to the producer";
  EXPECT_THROW((void)derived.value(), Cancelled);
}

TEST_F(FutureTest, CancellingAFlattenedFutureCancelsTheInnerOne) {
  Promise<int> inner;
  bool innerCancelled = false;
  inner.onCancel([&] { innerCancelled = true; });
  Future<int> innerFuture = inner.future();
  Future<int> outer = makeReadyFuture().then([&] { return std::move(innerFuture); });
  ASSERT_TRUE(loop_->runUntil([&] { return !innerFuture.valid(); }, testing::kDeadline));
  outer.cancel();
  EXPECT_TRUE(innerCancelled);
}

TEST_F(FutureTest, AllCollectsValuesInInputOrder) {
  Promise<int> a;
  Promise<int> b;
  std::vector<Future<int>> inputs;
  inputs.push_back(a.future());
  inputs.push_back(b.future());
  auto f = all(std::move(inputs));
  b.setValue(2);
  a.setValue(1);
  ASSERT_TRUE(await(*loop_, f));
  EXPECT_EQ(f.value(), (std::vector<int>{1, 2}));
}

TEST_F(FutureTest, AllFailsFastAndCancelsThePending) {
  Promise<int> slow;
  bool slowCancelled = false;
  slow.onCancel([&] { slowCancelled = true; });
  std::vector<Future<int>> inputs;
  inputs.push_back(slow.future());
  inputs.push_back(makeErrorFuture<int>(std::runtime_error("one failed")));
  auto f = all(std::move(inputs));
  ASSERT_TRUE(await(*loop_, f));
  EXPECT_EQ(errorOf(f), "one failed");
  EXPECT_TRUE(slowCancelled);
}

TEST_F(FutureTest, AllOfNothingResolves) {
  auto f = all(std::vector<Future<void>>{});
  ASSERT_TRUE(await(*loop_, f));
  EXPECT_TRUE(f.hasValue());
}

TEST_F(FutureTest, AnyTakesTheFirstValueAndCancelsTheRest) {
  Promise<int> slow;
  bool slowCancelled = false;
  slow.onCancel([&] { slowCancelled = true; });
  std::vector<Future<int>> inputs;
  inputs.push_back(slow.future());
  inputs.push_back(makeErrorFuture<int>(std::runtime_error("lost")));
  inputs.push_back(makeReadyFuture<int>(9));
  Future<int> f = any(std::move(inputs));
  ASSERT_TRUE(await(*loop_, f));
  EXPECT_EQ(f.value(), 9);
  EXPECT_TRUE(slowCancelled);
}

TEST_F(FutureTest, AnyRejectsWhenAllFail) {
  std::vector<Future<int>> inputs;
  inputs.push_back(makeErrorFuture<int>(std::runtime_error("first")));
  inputs.push_back(makeErrorFuture<int>(std::runtime_error("last")));
  Future<int> f = any(std::move(inputs));
  ASSERT_TRUE(await(*loop_, f));
  EXPECT_EQ(errorOf(f), "last");
  Future<int> none = any(std::vector<Future<int>>{});
  ASSERT_TRUE(await(*loop_, none));
  EXPECT_THROW((void)none.value(), std::invalid_argument);
}

TEST_F(FutureTest, WithinTimesOutAndCancelsTheSource) {
  Promise<int> never;
  bool cancelled = false;
  never.onCancel([&] { cancelled = true; });
  Future<int> f = never.future().within(std::chrono::milliseconds(20), "slow lookup");
  ASSERT_TRUE(await(*loop_, f));
  EXPECT_THROW((void)f.value(), TimeoutError);
  EXPECT_EQ(errorOf(f), "slow lookup timed out after 20 ms");
  EXPECT_TRUE(cancelled);
}

TEST_F(FutureTest, WithinPassesAnEarlyValue) {
  Future<int> f = makeReadyFuture<int>(4).within(std::chrono::seconds(5));
  ASSERT_TRUE(await(*loop_, f));
  EXPECT_EQ(f.value(), 4);
}

TEST_F(FutureTest, RepeatRunsManyRoundsInConstantStack) {
  int rounds = 0;
  // Deep enough that a recursive chain would overflow an 8 MiB stack.
  Future<void> f = repeat(
      [&] { return makeReadyFuture<Step>(++rounds < 200000 ? Step::Continue : Step::Stop); });
  ASSERT_TRUE(await(*loop_, f, std::chrono::seconds(60)));
  EXPECT_TRUE(f.hasValue());
  EXPECT_EQ(rounds, 200000);
}

TEST_F(FutureTest, RepeatStopsOnTheFirstError) {
  int rounds = 0;
  Future<void> f = repeat([&]() -> Future<Step> {
    if (++rounds == 3) {
      throw std::runtime_error("round 3 broke");
    }
    return makeReadyFuture<Step>(Step::Continue);
  });
  ASSERT_TRUE(await(*loop_, f));
  EXPECT_EQ(errorOf(f), "round 3 broke");
  EXPECT_EQ(rounds, 3);
}

TEST_F(FutureTest, CancellingRepeatCancelsTheRoundInFlight) {
  Promise<Step> round;
  bool roundCancelled = false;
  round.onCancel([&] { roundCancelled = true; });
  Future<Step> first = round.future();
  Future<void> f = repeat([&] { return std::move(first); });
  f.cancel();
  ASSERT_TRUE(await(*loop_, f));
  EXPECT_TRUE(roundCancelled);
  EXPECT_THROW((void)f.value(), Cancelled);
}

}  // namespace
}  // namespace snow
