// One `snowctl run` is one trace: two daemons export to the independent OTLP receiver; the job is
// received by one and run by the other, and every span of it (both nodes' RPC server spans, the
// worker's job span, the Docker API calls) carries the trace id snowctl printed.

#include <regex>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "daemon/daemon_process.h"
#include "runner_test.h"
#include "support/await.h"
#include "support/files.h"
#include "tracing/otlp_receiver.h"

namespace snow::containers::testing {
namespace {

using ::snow::testing::DaemonProcess;
using ::snow::testing::OtlpReceiver;
using ::snow::testing::ReceivedSpan;
using ::snow::testing::runProgram;
using ::snow::testing::writeFile;
using ::testing::HasSubstr;

class ContainersTraceTest : public RunnerTest {
 protected:
  ContainersTraceTest() : RunnerTest("snow-containers-trace") {}

  std::unique_ptr<DaemonProcess> start(const std::string& name, const std::string& seed,
                                       const std::string& containers) {
    const std::string config = dir_.file(name + ".yaml");
    writeFile(config, fmt::format("daemon:\n  key_directory: {}\n"
                                  "rpc:\n  unix_socket: {}\n  listen: 127.0.0.1:0\n"
                                  "tracing:\n  service_name: snow-{}\n  batch_delay: 20ms\n"
                                  "  otlp:\n    endpoint: {}\n"
                                  "modules:\n"
                                  "  portal:\n    listen: 127.0.0.1:0\n    cluster_secret: s3cret\n"
                                  "  gossip:\n    seeds: [{}]\n    sync_interval: 500ms\n"
                                  "    rejoin_interval: 500ms\n"
                                  "  containers:\n    docker_socket: {}\n{}",
                                  dir_.file(name + "-keys"), dir_.file(name + ".sock"), name,
                                  receiver_.endpoint(), seed, dockerd().socketPath(), containers));
    auto daemon = std::make_unique<DaemonProcess>(
        *loop_, std::vector<std::string>{"--modules", SNOW_PLUGIN_DIR, "--config", config},
        std::vector<std::string>{});
    EXPECT_NE(daemon->waitForLog("gossip: node "), std::string::npos) << daemon->log();
    return daemon;
  }

  OtlpReceiver receiver_{*loop_};
};

TEST_F(ContainersTraceTest, OneRunIsOneTraceAcrossTheReceivingNodeTheWorkerAndDocker) {
  auto a = start("a", "", "    worker: false\n");
  std::smatch m;
  const std::string log = a->log();
  ASSERT_TRUE(std::regex_search(log, m, std::regex(R"(gossip: node [0-9a-f]{32} at (\S+) )")));
  auto b = start("b", "\"" + m[1].str() + "\"", "");
  const std::string ctx = context("ctx", {"/bin/busybox", "echo", "traced"});

  // Until b advertises itself to a, a has no worker to place on.
  std::pair<int, std::string> run;
  ASSERT_TRUE(snow::testing::awaitPolled(
      *loop_,
      [&] {
        run = runProgram(*loop_, SNOWCTL, {"--node", "unix:" + dir_.file("a.sock"), "run", ctx});
        return run.first != 125 || run.second.find("no live worker") == std::string::npos;
      },
      std::chrono::seconds(20), std::chrono::milliseconds(200)))
      << run.second;
  ASSERT_EQ(run.first, 0) << run.second;
  EXPECT_THAT(run.second, HasSubstr("traced"));
  std::smatch t;
  ASSERT_TRUE(std::regex_search(run.second, t, std::regex(R"(\(trace ([0-9a-f]{32})\))")))
      << run.second;
  const std::string trace = t[1];

  const std::vector<std::string> wanted = {"snow.containers.v1.Containers/Submit",
                                           "containers.job",
                                           "docker POST /build",
                                           "docker POST /containers/create",
                                           "docker POST /containers/{id}/start",
                                           "docker POST /containers/{id}/wait"};
  auto inTrace = [&] {
    std::vector<ReceivedSpan> out;
    for (const auto& span : receiver_.spans()) {
      if (span.traceId == trace) {
        out.push_back(span);
      }
    }
    return out;
  };
  auto has = [&](const std::vector<ReceivedSpan>& spans, const std::string& name,
                 const std::string& service) {
    return std::any_of(spans.begin(), spans.end(), [&](const ReceivedSpan& s) {
      return s.name.starts_with(name) && s.resource.at("service.name") == service;
    });
  };
  EXPECT_TRUE(snow::testing::awaitCondition(
      *loop_,
      [&] {
        const auto spans = inTrace();
        return has(spans, wanted[0], "snow-a") &&
               std::all_of(wanted.begin(), wanted.end(),
                           [&](const std::string& name) { return has(spans, name, "snow-b"); });
      },
      std::chrono::seconds(20)))
      << receiver_.log();
  // One tree: every span but the receiving node's server span has its parent in the trace.
  const auto spans = inTrace();
  for (const auto& span : spans) {
    if (span.parentSpanId.empty()) {
      ADD_FAILURE() << "a root span in the trace: " << span.name;
    }
  }
}

}  // namespace
}  // namespace snow::containers::testing
