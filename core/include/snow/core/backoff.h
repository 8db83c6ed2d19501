#pragma once

// Jittered exponential backoff, for reconnecting to peers and retrying calls.
//
// The n-th delay is min(initial * multiplier^n, max), then spread uniformly over ±jitter of
// itself, so that peers that lost the same node do not come back in lockstep. The defaults are
// gRPC's connection-backoff numbers (initial 1s, multiplier 1.6, jitter 0.2, max 120s, minimum
// connect timeout 20s), which gRPC also applies inside a channel.
//
// Thread: not thread-safe; one Backoff per peer or call.

#include <cstdint>
#include <random>

#include "snow/core/dispatcher.h"

namespace snow {

struct BackoffPolicy {
  Duration initial = std::chrono::seconds(1);
  double multiplier = 1.6;
  double jitter = 0.2;
  Duration max = std::chrono::seconds(120);
  Duration minConnectTimeout = std::chrono::seconds(20);
};

class Backoff {
 public:
  Backoff(BackoffPolicy policy, uint64_t seed) : policy_(policy), random_(seed) {}

  // The delay before the next attempt; grows with every call until reset().
  Duration next();
  // After a success: the next delay is `initial` again.
  void reset() noexcept { current_ = 0; }
  [[nodiscard]] const BackoffPolicy& policy() const noexcept { return policy_; }

 private:
  BackoffPolicy policy_;
  std::mt19937_64 random_;
  double current_ = 0;  // Nanoseconds of the last un-jittered delay; 0 before the first.
};

}  // namespace snow
