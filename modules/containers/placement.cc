#include "placement.h"

#include <charconv>
#include <tuple>

#include <fmt/format.h>

namespace snow::containers {

namespace {

uint64_t number(const std::map<std::string, std::string>& metadata, const char* key) {
  auto it = metadata.find(key);
  uint64_t value = 0;
  if (it != metadata.end()) {
    std::from_chars(it->second.data(), it->second.data() + it->second.size(), value);
  }
  return value;
}

bool isWorker(const Candidate& c) {
  auto it = c.metadata.find(kCapabilityKey);
  return c.alive && it != c.metadata.end() && it->second == kCapabilityWorker;
}

bool carries(const Candidate& c, const std::map<std::string, std::string>& labels) {
  for (const auto& [key, value] : labels) {
    auto it = c.metadata.find(kLabelPrefix + key);
    if (it == c.metadata.end() || it->second != value) {
      return false;
    }
  }
  return true;
}

}  // namespace

Placement place(const std::vector<Candidate>& members, const std::string& pinned,
                const std::map<std::string, std::string>& labels,
                const std::set<std::string>& excluded) {
  if (!pinned.empty()) {
    for (const auto& c : members) {
      if (c.nodeId != pinned) {
        continue;
      }
      if (!c.alive) {
        return {"", fmt::format("node {} is not alive", pinned)};
      }
      if (!isWorker(c)) {
        return {"", fmt::format("node {} runs no jobs (not a container worker)", pinned)};
      }
      if (excluded.contains(pinned)) {
        return {"", fmt::format("node {} failed this job already", pinned)};
      }
      return {pinned, ""};
    }
    return {"", fmt::format("no node {} in the cluster", pinned)};
  }
  const Candidate* best = nullptr;
  auto key = [](const Candidate& c) {
    // Fewer jobs first, then more free memory (negated), then the id.
    return std::make_tuple(number(c.metadata, kJobsKey) + c.placedSince,
                           -static_cast<int64_t>(number(c.metadata, kFreeKey)), c.nodeId);
  };
  size_t workers = 0;
  for (const auto& c : members) {
    if (!isWorker(c) || excluded.contains(c.nodeId)) {
      continue;
    }
    ++workers;
    if (carries(c, labels) && (best == nullptr || key(c) < key(*best))) {
      best = &c;
    }
  }
  if (best != nullptr) {
    return {best->nodeId, ""};
  }
  if (workers == 0) {
    return {"", "no live worker in the cluster"};
  }
  std::string wanted;
  for (const auto& [k, v] : labels) {
    wanted += fmt::format("{}{}={}", wanted.empty() ? "" : ", ", k, v);
  }
  return {"", fmt::format("none of the {} live workers has the labels {}", workers, wanted)};
}

std::map<std::string, std::string> advertised(const std::string& rpcAddress, uint32_t jobs,
                                              uint64_t freeMib,
                                              const std::map<std::string, std::string>& labels) {
  std::map<std::string, std::string> out{
      {kCapabilityKey, kCapabilityWorker},
      {kRpcKey, rpcAddress},
      {kJobsKey, std::to_string(jobs)},
      {kFreeKey, std::to_string(freeMib)},
  };
  for (const auto& [key, value] : labels) {
    out[kLabelPrefix + key] = value;
  }
  return out;
}

}  // namespace snow::containers
