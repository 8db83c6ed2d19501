// The container runner across three daemons on loopback that share the suite's dockerd (each
// container labelled with its worker): placement by the policy, --node pinning and labels, a job
// run through another node, a worker SIGKILLed mid-build (the job finishes elsewhere, with
// exactly one container), a worker dying under a running container (reported lost), and a
// stranger on TCP refused.

#include <csignal>
#include <regex>
#include <set>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "daemon/daemon_process.h"
#include "runner_test.h"
#include "support/await.h"
#include "support/files.h"

namespace snow::containers::testing {
namespace {

using namespace std::chrono_literals;
using ::snow::testing::awaitPolled;
using ::snow::testing::DaemonProcess;
using ::snow::testing::runProgram;
using ::snow::testing::writeFile;
using ::testing::HasSubstr;

struct Node {
  std::string name;
  std::string id;
  std::string portal;  // Its portal address, once started.
  std::string config;
  std::unique_ptr<DaemonProcess> process;
};

class ContainersClusterTest : public RunnerTest {
 protected:
  ContainersClusterTest() : RunnerTest("snow-containers-cluster") {}

  void TearDown() override {
    for (auto& node : nodes_) {
      node.process.reset();
    }
    RunnerTest::TearDown();
  }

  // Node `index`, with `containers` extra lines (indented by 4) under modules.containers.
  Node& start(size_t index, const std::string& containers = "") {
    if (nodes_.size() <= index) {
      nodes_.resize(index + 1);
    }
    Node& node = nodes_[index];
    node.name = fmt::format("n{}", index);
    node.config = dir_.file(node.name + ".yaml");
    const std::string seeds = index == 0 ? "[]" : fmt::format("[\"{}\"]", nodes_[0].portal);
    writeFile(node.config,
              fmt::format("daemon:\n  key_directory: {}\n"
                          "rpc:\n  unix_socket: {}\n  listen: 127.0.0.1:0\n"
                          "modules:\n"
                          "  portal:\n    listen: 127.0.0.1:0\n    cluster_secret: s3cret\n"
                          "    handshake_timeout: 1s\n"
                          "  gossip:\n    seeds: {}\n    sync_interval: 500ms\n"
                          "    rejoin_interval: 500ms\n    suspicion_timeout: 1s\n"
                          "  containers:\n    docker_socket: {}\n{}",
                          dir_.file(node.name + "-keys"), socket(index), seeds,
                          dockerd().socketPath(), containers));
    node.process = std::make_unique<DaemonProcess>(
        *loop_, std::vector<std::string>{"--modules", SNOW_PLUGIN_DIR, "--config", node.config},
        std::vector<std::string>{});
    EXPECT_NE(node.process->waitForLog("gossip: node "), std::string::npos) << node.process->log();
    std::smatch m;
    static const std::regex started(R"(gossip: node ([0-9a-f]{32}) at (\S+) )");
    if (std::regex_search(node.process->log(), m, started)) {
      node.id = m[1];
      node.portal = m[2];
    }
    return node;
  }

  std::string socket(size_t index) const { return dir_.file(fmt::format("n{}.sock", index)); }

  std::pair<int, std::string> snowctl(size_t via, std::vector<std::string> args) {
    args.insert(args.begin(), {"--node", "unix:" + socket(via)});
    return runProgram(*loop_, SNOWCTL, args);
  }

  // Waits until node `via` sees `workers` live members advertising the container capability.
  void awaitWorkers(size_t via, int workers) {
    std::string json;
    EXPECT_TRUE(awaitPolled(
        *loop_,
        [&] {
          json = snowctl(via, {"--json", "gossip", "members"}).second;
          int seen = 0;
          static const std::regex worker(R"("status":"ALIVE"[^}]*"containers":"worker")");
          for (std::sregex_iterator it(json.begin(), json.end(), worker), end; it != end; ++it) {
            ++seen;
          }
          return seen == workers;
        },
        20s, 100ms))
        << json;
  }

  // What node `via` knows of `id`'s advertised load ("containers.jobs"), "" when nothing.
  std::string advertisedJobs(size_t via, const std::string& id) {
    auto [code, out] = snowctl(via, {"--json", "gossip", "members"});
    if (code != 0) {
      ADD_FAILURE() << out;
      return "";
    }
    for (const auto& member :
         nlohmann::json::parse(out).value("members", nlohmann::json::array())) {
      if (member.value("node_id", "") == id) {
        return member.value("metadata", nlohmann::json::object()).value("containers.jobs", "");
      }
    }
    return "";
  }

  // The snow.node labels of the job's containers on the shared engine.
  std::vector<std::string> containerNodes(const std::string& job) {
    auto [code, out] = docker(
        {"ps", "-a", "--filter", "label=snow.job=" + job, "--format", R"({{.Label "snow.node"}})"});
    EXPECT_EQ(code, 0) << out;
    std::vector<std::string> nodes;
    std::istringstream lines(out);
    for (std::string line; std::getline(lines, line);) {
      nodes.push_back(line);
    }
    return nodes;
  }

  std::string state(size_t via, const std::string& job) {
    auto [code, json] = snowctl(via, {"--json", "containers"});
    std::smatch m;
    std::regex_search(json, m, std::regex("\"job_id\":\"" + job + R"re(".*?"state":"([A-Z]+)")re"));
    return m.empty() ? "" : m[1].str();
  }

  size_t indexOf(const std::string& id) const {
    for (size_t i = 0; i < nodes_.size(); ++i) {
      if (nodes_[i].id == id) {
        return i;
      }
    }
    return nodes_.size();
  }

  std::vector<Node> nodes_;
};

std::vector<std::string> sleeper() {
  return {"/bin/busybox", "sleep", "600"};
}

TEST_F(ContainersClusterTest, JobsSpreadOverTheWorkersAndEveryNodeListsThemAll) {
  start(0);
  start(1);
  start(2);
  awaitWorkers(0, 3);
  const std::string ctx = context("ctx", sleeper());
  std::set<std::string> placedOn;
  std::vector<std::string> jobs;
  for (int i = 0; i < 3; ++i) {
    auto [code, out] = snowctl(0, {"run", "-d", ctx});
    ASSERT_EQ(code, 0) << out;
    jobs.push_back(out.substr(0, 32));
  }
  for (const auto& job : jobs) {
    EXPECT_TRUE(awaitPolled(
        *loop_, [&] { return state(1, job) == "RUNNING"; }, 30s, 100ms))
        << snowctl(1, {"containers"}).second;
    const auto nodes = containerNodes(job);
    ASSERT_EQ(nodes.size(), 1U) << job;
    placedOn.insert(nodes[0]);
  }
  EXPECT_EQ(placedOn.size(), 3U) << "three jobs on three idle workers: one each";
  auto [code, table] = snowctl(2, {"containers"});
  for (const auto& job : jobs) {
    EXPECT_THAT(table, HasSubstr(job)) << "node 2 lists the jobs of every worker";
  }
}

TEST_F(ContainersClusterTest, NodePinningAndLabelsChooseTheWorker) {
  start(0);
  start(1, "    labels:\n      zone: b\n");
  start(2);
  awaitWorkers(0, 3);
  const std::string ctx = context("ctx", {"/bin/busybox", "sh", "-c", "echo ran; exit 4"});

  auto [pinned, out] = snowctl(0, {"run", "--node", nodes_[2].id, ctx});
  EXPECT_EQ(pinned, 4) << out;
  EXPECT_THAT(out, HasSubstr("ran"));
  EXPECT_THAT(out, HasSubstr("on node " + nodes_[2].id));

  // The job's output and its end, asked of a node that neither placed nor ran it.
  std::smatch job;
  const std::string pinnedOutput = out;
  std::regex_search(pinnedOutput, job, std::regex("job ([0-9a-f]{32}) on node"));
  ASSERT_FALSE(job.empty()) << out;
  auto [logs, output] = snowctl(1, {"logs", job[1].str()});
  EXPECT_EQ(logs, 0) << output;
  EXPECT_EQ(output, "ran\n");
  auto [removed, gone] = snowctl(1, {"rm", job[1].str()});
  EXPECT_EQ(removed, 0) << gone;
  EXPECT_TRUE(containerNodes(job[1].str()).empty());

  auto [labelled, said] = snowctl(0, {"run", "--label", "zone=b", ctx});
  EXPECT_EQ(labelled, 4) << said;
  EXPECT_THAT(said, HasSubstr("on node " + nodes_[1].id));

  auto [none, why] = snowctl(0, {"run", "--label", "zone=c", ctx});
  EXPECT_EQ(none, 125) << why;
  EXPECT_THAT(why, HasSubstr("none of the 3 live workers has the labels zone=c"));

  auto [unknown, whom] = snowctl(0, {"run", "--node", std::string(32, 'e'), ctx});
  EXPECT_EQ(unknown, 125);
  EXPECT_THAT(whom, HasSubstr("no node " + std::string(32, 'e') + " in the cluster"));
}

TEST_F(ContainersClusterTest, AWorkerAdvertisesItsLoadAgainAsSoonAsAJobEnds) {
  start(0, "    worker: false\n");
  start(1);
  awaitWorkers(0, 1);
  const std::string ctx = context("ctx", {"/bin/busybox", "sleep", "1"});
  auto [code, out] = snowctl(0, {"run", ctx});
  ASSERT_EQ(code, 0) << out;
  // A job's end changes what placement must know of its worker: the worker advertises it at
  // once, not at its periodic look (every 5 s while nothing changes), which would leave the
  // cluster placing on stale loads after a burst of short jobs.
  std::string jobs;
  EXPECT_TRUE(awaitPolled(
      *loop_,
      [&] {
        jobs = advertisedJobs(0, nodes_[1].id);
        return jobs == "0";
      },
      3s, 50ms))
      << "node 1 still advertises " << jobs << " jobs";
}

TEST_F(ContainersClusterTest, AWorkerKilledMidBuildTheJobFinishesOnAnotherWithOneContainer) {
  start(0, "    worker: false\n");
  start(1);
  start(2);
  awaitWorkers(0, 2);
  // A build step that takes long enough to kill its worker in the middle of it.
  const std::string ctx =
      context("ctx", {"/bin/busybox", "echo", "finished"}, R"(RUN ["/bin/busybox", "sleep", "4"])");
  DaemonProcess run(*loop_, SNOWCTL, {"--node", "unix:" + socket(0), "run", ctx}, {});
  ASSERT_NE(run.waitForLog("Step 3/4 : RUN"), std::string::npos) << run.log();
  std::smatch m;
  const std::string log = run.log();
  ASSERT_TRUE(std::regex_search(log, m, std::regex(R"(job ([0-9a-f]{32}) on node ([0-9a-f]{32}))")))
      << log;
  const std::string job = m[1];
  const size_t first = indexOf(m[2]);
  ASSERT_TRUE(first == 1 || first == 2) << log;
  const size_t other = 3 - first;
  nodes_[first].process->signal(SIGKILL);

  EXPECT_EQ(run.waitForExit(60s), 0) << run.log();
  EXPECT_THAT(run.log(), HasSubstr("placing it again on " + nodes_[other].id));
  EXPECT_THAT(run.log(), HasSubstr("finished"));
  EXPECT_EQ(containerNodes(job), std::vector<std::string>{nodes_[other].id})
      << "exactly one container, on the second worker";
}

TEST_F(ContainersClusterTest, ARunningContainerWhoseWorkerDiedIsReportedLost) {
  start(0, "    worker: false\n");
  start(1);
  awaitWorkers(0, 1);
  const std::string ctx = context("ctx", sleeper());
  auto [code, out] = snowctl(0, {"run", "-d", ctx});
  ASSERT_EQ(code, 0) << out;
  const std::string job = out.substr(0, 32);
  ASSERT_TRUE(awaitPolled(
      *loop_, [&] { return state(0, job) == "RUNNING"; }, 30s, 100ms));
  nodes_[1].process->signal(SIGKILL);
  EXPECT_TRUE(awaitPolled(
      *loop_, [&] { return state(0, job) == "LOST"; }, 20s, 100ms))
      << snowctl(0, {"--json", "containers"}).second;
  auto [listed, table] = snowctl(0, {"containers"});
  EXPECT_THAT(table, ::testing::ContainsRegex(job + " .* lost"));
}

TEST_F(ContainersClusterTest, AStrangerOnTcpIsRefused) {
  Node& node = start(0);
  std::smatch m;
  const std::string log = node.process->log();
  ASSERT_TRUE(std::regex_search(log, m, std::regex(R"(serving RPC on .*?(127\.0\.0\.1:\d+))")))
      << log;
  auto [code, out] = runProgram(*loop_, SNOWCTL, {"--node", m[1].str(), "containers"});
  EXPECT_EQ(code, 1) << out;
  EXPECT_THAT(out, HasSubstr("PERMISSION_DENIED"));
  EXPECT_THAT(out, HasSubstr("only cluster nodes may call the container runner"));
  const std::string ctx = context("ctx", sleeper());
  auto [run, said] = runProgram(*loop_, SNOWCTL, {"--node", m[1].str(), "run", ctx});
  EXPECT_EQ(run, 125) << said;
  EXPECT_THAT(said, HasSubstr("PERMISSION_DENIED"));
}

}  // namespace
}  // namespace snow::containers::testing
