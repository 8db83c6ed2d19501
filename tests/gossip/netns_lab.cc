#include "netns_lab.h"

#include <stdexcept>

#include <fmt/format.h>
#include <unistd.h>

#include "daemon/daemon_process.h"

namespace snow::testing {

NetnsLab::NetnsLab(Dispatcher& loop, int nodes)
    : loop_(loop), tag_(std::to_string(::getpid() % 100000)), subnet_(::getpid() % 200 + 20) {
  bridgeA_ = "sgb" + tag_ + "a";
  bridgeB_ = "sgb" + tag_ + "b";
  for (const auto& bridge : {bridgeA_, bridgeB_}) {
    run({"ip", "link", "del", bridge}, false);  // A leftover of a killed run with this pid.
    run({"ip", "link", "add", bridge, "type", "bridge"});
    run({"ip", "link", "set", bridge, "up"});
  }
  for (int i = 0; i < nodes; ++i) {
    const std::string ns = fmt::format("sg{}-{}", tag_, i);
    const std::string link = fmt::format("sgv{}x{}", tag_, i);
    run({"ip", "netns", "del", ns}, false);
    run({"ip", "netns", "add", ns});
    namespaces_.push_back(ns);
    run({"ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns});
    links_.push_back(link);
    run({"ip", "link", "set", link, "master", bridgeA_, "up"});
    run({"ip", "-n", ns, "addr", "add", address(i) + "/16", "dev", "eth0"});
    run({"ip", "-n", ns, "link", "set", "eth0", "up"});
    run({"ip", "-n", ns, "link", "set", "lo", "up"});
  }
}

NetnsLab::~NetnsLab() {
  for (const auto& ns : namespaces_) {
    run({"ip", "netns", "del", ns}, false);
  }
  for (const auto& bridge : {bridgeA_, bridgeB_}) {
    run({"ip", "link", "del", bridge}, false);
  }
}

std::string NetnsLab::address(int i) const {
  return fmt::format("10.{}.{}.{}", subnet_, (i + 1) / 250, (i + 1) % 250 + 1);
}

std::vector<std::string> NetnsLab::exec(int i) const {
  return {"ip", "netns", "exec", namespaces_.at(i)};
}

void NetnsLab::loss(int percent) {
  for (const auto& ns : namespaces_) {
    const std::vector<std::string> nft{"ip", "netns", "exec", ns, "nft"};
    auto inside = [&](std::vector<std::string> words) {
      std::vector<std::string> command = nft;
      command.insert(command.end(), words.begin(), words.end());
      run(command);
    };
    inside({"add", "table", "inet", "lab"});
    inside({"add", "chain", "inet", "lab", "in", "{ type filter hook input priority 0; }"});
    inside({"flush", "chain", "inet", "lab", "in"});
    inside({"add", "rule", "inet", "lab", "in", "numgen", "random", "mod", "100", "<",
            std::to_string(percent), "counter", "drop"});
  }
}

uint64_t NetnsLab::dropped() {
  uint64_t total = 0;
  for (const auto& ns : namespaces_) {
    const std::string listing =
        run({"ip", "netns", "exec", ns, "nft", "list", "chain", "inet", "lab", "in"});
    const size_t at = listing.find("packets ");
    if (at != std::string::npos) {
      total += std::stoull(listing.substr(at + 8));
    }
  }
  return total;
}

void NetnsLab::partition(int split) {
  for (size_t i = static_cast<size_t>(split); i < links_.size(); ++i) {
    run({"ip", "link", "set", links_[i], "master", bridgeB_});
  }
}

void NetnsLab::heal() {
  for (const auto& link : links_) {
    run({"ip", "link", "set", link, "master", bridgeA_});
  }
}

std::string NetnsLab::run(const std::vector<std::string>& args, bool mustSucceed) {
  auto [code, out] = runProgram(loop_, "/usr/bin/env", args);
  if (code != 0 && mustSucceed) {
    throw std::runtime_error(fmt::format("{}: exit {}: {}", fmt::join(args, " "), code, out));
  }
  return out;
}

}  // namespace snow::testing
