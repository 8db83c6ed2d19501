#pragma once

// A small network of namespaces for the gossip reliability tests: node i lives in its own
// network namespace with one interface (10.X.Y.Z/16) whose other end is on a bridge in the
// test's namespace. An nftables rule in each node's namespace drops a share of the packets it
// receives (`tc netem` would do too, but kernels built without sch_netem exist: ours is one);
// moving the bridge ends of half the nodes to a second bridge partitions the network in two, and
// moving them back heals it, at once and without the nodes noticing anything but lost packets.
//
// Needs root, iproute2 (`ip`), nftables (`nft`) and the veth and bridge drivers. Every
// name carries the test process's pid, and the destructor removes what it made (namespaces
// take their interfaces with them). Loop-thread only, like runProgram.

#include <cstdint>
#include <string>
#include <vector>

#include "snow/core/dispatcher.h"

namespace snow::testing {

class NetnsLab {
 public:
  NetnsLab(Dispatcher& loop, int nodes);
  ~NetnsLab();
  NetnsLab(const NetnsLab&) = delete;
  NetnsLab& operator=(const NetnsLab&) = delete;

  // The namespace of node i, for `ip netns exec`.
  [[nodiscard]] const std::string& ns(int i) const { return namespaces_.at(i); }
  // Node i's address.
  [[nodiscard]] std::string address(int i) const;
  // The command line prefix that runs a program inside node i's namespace.
  [[nodiscard]] std::vector<std::string> exec(int i) const;

  // Every node drops `percent` of the packets that reach it, at random.
  void loss(int percent);
  // Packets dropped so far by loss(), over every node.
  [[nodiscard]] uint64_t dropped();
  // Nodes [0, split) stay on the first bridge, the rest move to the second; heal() undoes it.
  void partition(int split);
  void heal();

 private:
  std::string run(const std::vector<std::string>& args, bool mustSucceed = true);

  Dispatcher& loop_;
  std::string tag_;
  int subnet_;
  std::vector<std::string> namespaces_;
  std::vector<std::string> links_;  // The bridge-side end of each node's link.
  std::string bridgeA_;
  std::string bridgeB_;
};

}  // namespace snow::testing
