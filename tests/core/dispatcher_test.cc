#include "snow/core/dispatcher.h"

#include <atomic>
#include <csignal>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "snow/posix/active.h"
#include "snow/posix/file_descriptor.h"

#include "support/await.h"
#include "support/log_capture.h"

namespace snow {
namespace {

using std::chrono::milliseconds;
using testing::awaitCondition;
using ::testing::ElementsAre;

class DispatcherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    posixLayer_ = posix::makeDefaultPosix();
    injector_ = std::make_unique<posix::ScopedInjector>(*posixLayer_);
  }

  posix::PosixPtr posixLayer_;
  std::unique_ptr<posix::ScopedInjector> injector_;
  DispatcherPtr loop_ = makeDispatcher("test");
};

TEST_F(DispatcherTest, IsCurrentOnItsThreadOnly) {
  EXPECT_EQ(Dispatcher::current(), loop_.get());
  EXPECT_TRUE(loop_->isLoopThread());
  bool elsewhere = true;
  std::thread([&] {
    elsewhere = loop_->isLoopThread() || Dispatcher::current() != nullptr;
  }).join();
  EXPECT_FALSE(elsewhere);
}

// Rule 1.
TEST_F(DispatcherTest, ScheduledCallbacksRunInOrderAndNeverInline) {
  std::vector<int> order;
  loop_->schedule([&] {
    order.push_back(1);
    loop_->schedule([&] { order.push_back(3); });
  });
  loop_->schedule([&] { order.push_back(2); });
  EXPECT_TRUE(order.empty());
  ASSERT_TRUE(awaitCondition(*loop_, [&] { return order.size() == 3; }));
  EXPECT_THAT(order, ElementsAre(1, 2, 3));
}

// Rule 1: a self-rescheduling callback must not starve timers.
TEST_F(DispatcherTest, RescheduledWorkDoesNotStarveTimers) {
  bool timerFired = false;
  int spins = 0;
  std::function<void()> again = [&] {
    ++spins;
    if (!timerFired) {
      loop_->schedule([&] { again(); });
    }
  };
  TimerPtr timer = loop_->createTimer([&] { timerFired = true; });
  timer->enable(milliseconds(1));
  loop_->schedule([&] { again(); });
  ASSERT_TRUE(awaitCondition(*loop_, [&] { return timerFired; }));
  EXPECT_GT(spins, 0);
}

// Rule 2.
TEST_F(DispatcherTest, PostedCallbacksKeepPerThreadOrderAndWakeTheLoop) {
  constexpr int kPerThread = 1000;
  std::vector<int> seenA;
  std::vector<int> seenB;
  auto producer = [&](std::vector<int>& sink) {
    return std::thread([&] {
      for (int i = 0; i < kPerThread; ++i) {
        loop_->post([&sink, i] { sink.push_back(i); });
      }
    });
  };
  std::thread a = producer(seenA);
  std::thread b = producer(seenB);
  const bool done = loop_->runUntil(
      [&] { return seenA.size() == kPerThread && seenB.size() == kPerThread; }, testing::kDeadline);
  a.join();
  b.join();
  ASSERT_TRUE(done);
  for (int i = 0; i < kPerThread; ++i) {
    ASSERT_EQ(seenA[i], i);
    ASSERT_EQ(seenB[i], i);
  }
}

TEST_F(DispatcherTest, ExitFromAnotherThreadStopsRun) {
  std::thread stopper([&] { loop_->exit(); });
  loop_->run(RunMode::UntilExit);  // Returns only if exit() woke it.
  stopper.join();
  SUCCEED();
}

// Rule 3.
TEST_F(DispatcherTest, TimersFireInDeadlineOrder) {
  std::vector<int> order;
  TimerPtr late = loop_->createTimer([&] { order.push_back(30); });
  TimerPtr early = loop_->createTimer([&] { order.push_back(10); });
  TimerPtr middle = loop_->createTimer([&] { order.push_back(20); });
  const auto start = loop_->now();
  late->enable(milliseconds(30));
  early->enable(milliseconds(10));
  middle->enable(milliseconds(20));
  EXPECT_TRUE(late->enabled());
  ASSERT_TRUE(awaitCondition(*loop_, [&] { return order.size() == 3; }));
  EXPECT_THAT(order, ElementsAre(10, 20, 30));
  EXPECT_GE(loop_->now() - start, milliseconds(30));
  EXPECT_FALSE(late->enabled());
}

// Rule 3.
TEST_F(DispatcherTest, ZeroTimerRunsAfterAlreadyScheduledWork) {
  std::vector<std::string> order;
  loop_->schedule([&] { order.emplace_back("scheduled"); });
  TimerPtr timer = loop_->createTimer([&] { order.emplace_back("timer"); });
  timer->enable(Duration::zero());
  ASSERT_TRUE(awaitCondition(*loop_, [&] { return order.size() == 2; }));
  EXPECT_THAT(order, ElementsAre("scheduled", "timer"));
}

TEST_F(DispatcherTest, DisabledAndDestroyedTimersDoNotFire) {
  int fired = 0;
  TimerPtr disabled = loop_->createTimer([&] { ++fired; });
  TimerPtr destroyed = loop_->createTimer([&] { ++fired; });
  TimerPtr witness = loop_->createTimer([&] { fired += 100; });
  disabled->enable(milliseconds(1));
  destroyed->enable(milliseconds(1));
  witness->enable(milliseconds(10));
  disabled->disable();
  destroyed.reset();
  ASSERT_TRUE(awaitCondition(*loop_, [&] { return fired >= 100; }));
  EXPECT_EQ(fired, 100);
}

TEST_F(DispatcherTest, FileEventsReportReadinessOfARealPipe) {
  int fds[2];
  ASSERT_TRUE(posix::active().pipe2(fds, O_NONBLOCK | O_CLOEXEC).ok());
  posix::FileDescriptor reader(fds[0]);
  posix::FileDescriptor writer(fds[1]);
  std::string received;
  FileEventPtr watch = loop_->createFileEvent(
      reader.get(),
      [&](uint32_t ready) {
        ASSERT_NE(ready & FileReady::kRead, 0U);
        char buf[64];
        auto r = posix::active().read(reader.get(), buf, sizeof(buf));
        if (r.ok()) {
          received.append(buf, static_cast<size_t>(r.value));
        }
      },
      FileReady::kRead);
  ASSERT_TRUE(posix::active().write(writer.get(), "hello", 5).ok());
  ASSERT_TRUE(awaitCondition(*loop_, [&] { return received == "hello"; }));

  watch->setEnabled(0);  // Paused: further data must not be delivered.
  ASSERT_TRUE(posix::active().write(writer.get(), "!", 1).ok());
  loop_->run(RunMode::NonBlock);
  EXPECT_EQ(received, "hello");
  watch->setEnabled(FileReady::kRead);
  ASSERT_TRUE(awaitCondition(*loop_, [&] { return received == "hello!"; }));
}

// Rule 4.
TEST_F(DispatcherTest, SignalsArriveAsLoopCallbacks) {
  std::thread::id handledOn;
  SignalEventPtr watch =
      loop_->listenForSignal(SIGUSR1, [&] { handledOn = std::this_thread::get_id(); });
  auto& os = posix::active();
  ASSERT_TRUE(os.kill(os.getpid().value, SIGUSR1).ok());
  ASSERT_TRUE(awaitCondition(*loop_, [&] { return handledOn != std::thread::id(); }));
  EXPECT_EQ(handledOn, std::this_thread::get_id());
}

// Rule 6.
TEST_F(DispatcherTest, DeferredDeleteWaitsForTheCurrentCallback) {
  struct Tracked : DeferredDeletable {
    explicit Tracked(bool& flag) : destroyed(flag) {}
    ~Tracked() override { destroyed = true; }
    bool& destroyed;
  };
  bool destroyed = false;
  bool destroyedDuringCallback = true;
  auto object = std::make_unique<Tracked>(destroyed);
  loop_->schedule([&] {
    loop_->deferredDelete(std::move(object));
    destroyedDuringCallback = destroyed;
  });
  ASSERT_TRUE(awaitCondition(*loop_, [&] { return destroyed; }));
  EXPECT_FALSE(destroyedDuringCallback);
}

// Rule 7.
TEST_F(DispatcherTest, ThrowingCallbackIsLoggedAndTheLoopGoesOn) {
  testing::LogCapture log;
  bool after = false;
  loop_->schedule([] { throw std::runtime_error("handler blew up"); });
  loop_->schedule([&] { after = true; });
  ASSERT_TRUE(awaitCondition(*loop_, [&] { return after; }));
  EXPECT_TRUE(log.contains("handler blew up")) << log.text();
}

TEST_F(DispatcherTest, QueuedCallbacksAreDestroyedWithTheDispatcher) {
  auto token = std::make_shared<int>(0);
  std::weak_ptr<int> watch = token;
  loop_->schedule([t = std::move(token)] {});
  loop_->post([t = watch.lock()] {});
  loop_.reset();
  EXPECT_TRUE(watch.expired());
}

}  // namespace
}  // namespace snow
