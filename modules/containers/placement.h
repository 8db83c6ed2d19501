#pragma once

// Where a job goes: the placement policy (docs/containers.md, "Placement").
//
// A worker advertises itself through the gossip module's membership metadata (advertised()):
// "containers" = "worker", "containers.rpc" (its RPC address for other nodes), "containers.jobs"
// (jobs building or running), "containers.free_mib" (MemAvailable) and "label.<key>" for each of
// its labels. The policy, in order:
//   1. `--node` pins: that member, if it is alive and a worker; nothing else is tried.
//   2. Otherwise, the live workers carrying every label the job asks for (label.K == V).
//   3. Among them, the fewest jobs (advertised plus those this node placed there since, which
//      the advertisement may not show yet), then the most free memory, then the node id (so
//      that equal nodes are chosen the same way everywhere).
// Pure functions: any thread.

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace snow::containers {

inline constexpr const char* kCapabilityKey = "containers";
inline constexpr const char* kCapabilityWorker = "worker";
inline constexpr const char* kRpcKey = "containers.rpc";
inline constexpr const char* kJobsKey = "containers.jobs";
inline constexpr const char* kFreeKey = "containers.free_mib";
inline constexpr const char* kLabelPrefix = "label.";

// A member as placement sees it.
struct Candidate {
  std::string nodeId;
  bool alive = false;
  std::map<std::string, std::string> metadata;
  uint32_t placedSince = 0;  // Jobs this node sent it that its advertisement may not count yet.
};

struct Placement {
  std::string nodeId;  // Empty when nothing fits: `why` says why.
  std::string why;
};

// `pinned`: --node (empty: any). `labels`: the job's --label pairs. `excluded`: workers not to
// try (one that died with the job).
Placement place(const std::vector<Candidate>& members, const std::string& pinned,
                const std::map<std::string, std::string>& labels,
                const std::set<std::string>& excluded = {});

// The metadata a worker advertises.
std::map<std::string, std::string> advertised(const std::string& rpcAddress, uint32_t jobs,
                                              uint64_t freeMib,
                                              const std::map<std::string, std::string>& labels);

}  // namespace snow::containers
