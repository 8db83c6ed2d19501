// A broadcast is one trace across the nodes that relayed it: four daemons export their spans to
// the independent OTLP receiver (tests/tracing/otlp_receiver.h), one message is published, and
// every relay's span hangs below the span of the node it came from.

#include <algorithm>
#include <map>
#include <regex>
#include <set>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "snow/posix/active.h"

#include "daemon/daemon_process.h"
#include "support/await.h"
#include "support/files.h"
#include "tracing/otlp_receiver.h"

namespace snow::testing {
namespace {

using namespace std::chrono_literals;

TEST(GossipTraceTest, ABroadcastIsOneTraceAcrossEveryRelay) {
  auto os = posix::makeDefaultPosix();
  posix::ScopedInjector injected(*os);
  DispatcherPtr loop = makeDispatcher("gossip-trace-test");
  TempDir dir("snow-gossip-trace-test");
  OtlpReceiver receiver(*loop);

  constexpr int kNodes = 4;
  std::vector<std::unique_ptr<DaemonProcess>> nodes;
  std::map<std::string, std::string> serviceOf;  // node id -> its service name
  std::string seed;
  for (int i = 0; i < kNodes; ++i) {
    const std::string name = fmt::format("g{}", i);
    const std::string config = dir.file(name + ".yaml");
    writeFile(config, fmt::format("daemon:\n  key_directory: {}\nrpc:\n  unix_socket: {}\n"
                                  "tracing:\n  service_name: {}\n  batch_delay: 20ms\n  otlp:\n"
                                  "    endpoint: {}\nmodules:\n  portal:\n    listen: 127.0.0.1:0\n"
                                  "    cluster_secret: trace\n  gossip:\n    seeds: [{}]\n",
                                  dir.file(name + "-keys"), dir.file(name + ".sock"), name,
                                  receiver.endpoint(), seed.empty() ? "" : "\"" + seed + "\""));
    nodes.push_back(std::make_unique<DaemonProcess>(
        *loop, std::vector<std::string>{"--modules", SNOW_GOSSIP_TEST_PLUGINS, "--config", config},
        std::vector<std::string>{}));
    ASSERT_NE(nodes.back()->waitForLog("gossip: node "), std::string::npos) << nodes.back()->log();
    static const std::regex started(R"(gossip: node ([0-9a-f]{32}) at (\S+) )");
    std::smatch m;
    const std::string log = nodes.back()->log();
    ASSERT_TRUE(std::regex_search(log, m, started));
    serviceOf[m[1]] = name;
    if (seed.empty()) {
      seed = m[2];
    }
  }
  for (auto& node : nodes) {
    ASSERT_NE(node->waitForLog(fmt::format("gossip: members: {} alive", kNodes)), std::string::npos)
        << node->log();
  }

  auto [code, out] =
      runProgram(*loop, SNOW_SNOWCTL,
                 {"--node", "unix:" + dir.file("g0.sock"), "gossip", "publish", "traced", "hello"});
  ASSERT_EQ(code, 0) << out;

  // The publish is a root span on g0; every node's handling of the message is in its trace.
  std::string traceId;
  std::vector<ReceivedSpan> trace;
  auto complete = [&] {
    trace.clear();
    traceId.clear();
    const auto spans = receiver.spans();
    for (const auto& span : spans) {
      if (span.name == "gossip.publish" && span.resource.at("service.name") == "g0") {
        traceId = span.traceId;
      }
    }
    std::set<std::string> relayedBy;
    for (const auto& span : spans) {
      if (!traceId.empty() && span.traceId == traceId) {
        trace.push_back(span);
        // g0 may hear its own message back (a duplicate, before the tree is pruned).
        if (span.name == "gossip.push" && span.resource.at("service.name") != "g0") {
          relayedBy.insert(span.resource.at("service.name"));
        }
      }
    }
    // Nodes export on their own schedules: a child may arrive before its parent.
    std::set<std::string> ids;
    for (const auto& span : trace) {
      ids.insert(span.spanId);
    }
    const bool parentsArrived = std::all_of(trace.begin(), trace.end(), [&](const auto& span) {
      return span.parentSpanId.empty() || ids.contains(span.parentSpanId);
    });
    return relayedBy.size() == kNodes - 1 && parentsArrived;
  };
  ASSERT_TRUE(awaitPolled(*loop, complete, 20s, 50ms)) << [&] {
    std::string seen = "trace " + traceId + ":";
    for (const auto& span : trace) {
      seen += fmt::format("\n  {} on {} ({} <- {})", span.name, span.resource.at("service.name"),
                          span.spanId, span.parentSpanId);
    }
    return seen;
  }();

  std::map<std::string, const ReceivedSpan*> byId;
  for (const auto& span : trace) {
    byId[span.spanId] = &span;
  }
  for (const auto& span : trace) {
    if (span.name == "gossip.publish") {
      EXPECT_EQ(span.parentSpanId, "");
      continue;
    }
    ASSERT_TRUE(byId.contains(span.parentSpanId)) << span.json;
    const ReceivedSpan& parent = *byId.at(span.parentSpanId);
    if (span.name == "gossip.push") {
      // Received from another node: its parent is that node's send.
      EXPECT_EQ(parent.name, "portal.broadcast") << span.json;
      EXPECT_NE(parent.resource.at("service.name"), span.resource.at("service.name"));
      EXPECT_EQ(span.flags & 0x300U, 0x300U) << "its parent is remote";
    } else {
      EXPECT_EQ(span.name, "portal.broadcast");
      EXPECT_EQ(parent.resource.at("service.name"), span.resource.at("service.name"));
    }
  }
  EXPECT_EQ(serviceOf.size(), static_cast<size_t>(kNodes));
}

}  // namespace
}  // namespace snow::testing
