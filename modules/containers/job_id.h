#pragma once

// A job's id: 32 lower-case hex digits (128 random bits), minted by snowctl so that a retried
// submission is the same job, or by the receiving node when the client sent none. Any thread.

#include <string>

namespace snow::containers {

inline bool isJobId(const std::string& id) {
  if (id.size() != 32) {
    return false;
  }
  for (const char c : id) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return false;
    }
  }
  return true;
}

// "snow-<job id>": the one container of a job on an engine (Docker refuses a second name).
inline std::string containerName(const std::string& jobId) {
  return "snow-" + jobId;
}

}  // namespace snow::containers
