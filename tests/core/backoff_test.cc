// Backoff: exponential growth, the cap, the jitter bounds and reset (backoff.h).

#include "snow/core/backoff.h"

#include <chrono>
#include <set>

#include <gtest/gtest.h>

namespace snow {
namespace {

using std::chrono::milliseconds;

double ms(Duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

TEST(BackoffTest, WithoutJitterGrowsByTheMultiplierUpToTheCap) {
  Backoff backoff({.initial = milliseconds(100),
                   .multiplier = 2.0,
                   .jitter = 0.0,
                   .max = milliseconds(1000),
                   .minConnectTimeout = milliseconds(1)},
                  1);
  const double expected[] = {100, 200, 400, 800, 1000, 1000, 1000};
  for (double want : expected) {
    EXPECT_DOUBLE_EQ(ms(backoff.next()), want);
  }
}

TEST(BackoffTest, ResetStartsAgainFromTheInitialDelay) {
  Backoff backoff({.initial = milliseconds(50), .multiplier = 3.0, .jitter = 0.0}, 7);
  EXPECT_DOUBLE_EQ(ms(backoff.next()), 50);
  EXPECT_DOUBLE_EQ(ms(backoff.next()), 150);
  EXPECT_DOUBLE_EQ(ms(backoff.next()), 450);
  backoff.reset();
  EXPECT_DOUBLE_EQ(ms(backoff.next()), 50);
  EXPECT_DOUBLE_EQ(ms(backoff.next()), 150);
}

TEST(BackoffTest, JitterSpreadsEachDelayWithinItsBoundsAroundTheUnjitteredOne) {
  const BackoffPolicy policy{
      .initial = milliseconds(1000), .multiplier = 1.6, .jitter = 0.2, .max = milliseconds(5000)};
  Backoff backoff(policy, 12345);
  std::set<Duration::rep> distinct;
  double unjittered = 1000;
  for (int i = 0; i < 200; ++i) {
    const Duration d = backoff.next();
    distinct.insert(d.count());
    EXPECT_GE(ms(d), unjittered * 0.8 - 1e-6) << "attempt " << i;
    EXPECT_LE(ms(d), unjittered * 1.2 + 1e-6) << "attempt " << i;
    unjittered = std::min(unjittered * 1.6, 5000.0);
  }
  // Jitter really spreads: not one value repeated, and the capped delays vary too.
  EXPECT_GT(distinct.size(), 150U);
}

TEST(BackoffTest, TheSameSeedGivesTheSameDelaysAndAnotherSeedOthers) {
  const BackoffPolicy policy;  // gRPC's defaults.
  Backoff a(policy, 99);
  Backoff b(policy, 99);
  Backoff c(policy, 100);
  bool anyDifferent = false;
  for (int i = 0; i < 10; ++i) {
    const Duration da = a.next();
    EXPECT_EQ(da, b.next());
    anyDifferent = anyDifferent || da != c.next();
  }
  EXPECT_TRUE(anyDifferent);
}

TEST(BackoffTest, DefaultsAreGrpcsConnectionBackoff) {
  const BackoffPolicy policy;
  EXPECT_EQ(policy.initial, std::chrono::seconds(1));
  EXPECT_DOUBLE_EQ(policy.multiplier, 1.6);
  EXPECT_DOUBLE_EQ(policy.jitter, 0.2);
  EXPECT_EQ(policy.max, std::chrono::seconds(120));
  EXPECT_EQ(policy.minConnectTimeout, std::chrono::seconds(20));
  Backoff backoff(policy, 3);
  const double first = ms(backoff.next());
  EXPECT_GE(first, 800);
  EXPECT_LE(first, 1200);
}

TEST(BackoffTest, AnOutOfRangeJitterIsClampedToTheDelayItself) {
  Backoff backoff({.initial = milliseconds(100), .multiplier = 1.0, .jitter = 5.0}, 11);
  for (int i = 0; i < 100; ++i) {
    const double d = ms(backoff.next());
    EXPECT_GE(d, 0);  // Never negative, whatever the configuration says.
    EXPECT_LE(d, 200);
  }
}

}  // namespace
}  // namespace snow
