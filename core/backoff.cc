#include "snow/core/backoff.h"

#include <algorithm>

namespace snow {

Duration Backoff::next() {
  const auto initial = static_cast<double>(policy_.initial.count());
  const auto max = static_cast<double>(policy_.max.count());
  current_ = current_ == 0 ? initial : std::min(current_ * policy_.multiplier, max);
  const double jitter = std::clamp(policy_.jitter, 0.0, 1.0);
  std::uniform_real_distribution<double> spread(1.0 - jitter, 1.0 + jitter);
  return Duration(static_cast<Duration::rep>(current_ * spread(random_)));
}

}  // namespace snow
