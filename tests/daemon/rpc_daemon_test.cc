// The RPC layer between real daemons: snowctl against a running node, events dispatched from one
// node to another, and the reliability test of the RPC issue (the receiving node killed and
// restarted while a steady stream of dispatched events flows).

#include <csignal>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "snow/core/dispatcher.h"
#include "snow/posix/active.h"
#include "snow/rpc/client.h"
#include "snow/rpc/node.h"
#include "snow/rpc/v1/node.pb.h"

#include "daemon/daemon_process.h"
#include "greeter.pb.h"
#include "support/await.h"
#include "support/files.h"

namespace snow::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class RpcDaemonTest : public ::testing::Test {
 protected:
  RpcDaemonTest() : os_(posix::makeDefaultPosix()), injected_(*os_) {}

  // A daemon with the relay plugin, serving on `dir/<name>.sock`, with `modules` as the relay
  // module's section and `rpcExtra` appended to the rpc section.
  std::unique_ptr<DaemonProcess> startNode(const std::string& name, const std::string& relay,
                                           const std::string& rpcExtra = "") {
    const std::string config = dir_.file(name + ".yaml");
    writeFile(config, fmt::format("rpc:\n  unix_socket: {}\n{}modules:\n  relay:\n{}",
                                  dir_.file(name + ".sock"), rpcExtra, relay));
    auto node = std::make_unique<DaemonProcess>(
        *loop_, std::vector<std::string>{"--modules", SNOW_RPC_TEST_PLUGINS, "--config", config},
        std::vector<std::string>{"SNOW_RPC_SOCKET=" + dir_.file(name + ".sock")});
    EXPECT_NE(node->waitForLog("ready:"), std::string::npos) << node->log();
    return node;
  }

  std::pair<int, std::string> snowctl(const std::vector<std::string>& args) {
    return runProgram(*loop_, SNOWCTL, args);
  }

  posix::PosixPtr os_;
  posix::ScopedInjector injected_;
  DispatcherPtr loop_ = makeDispatcher("test");
  TempDir dir_{"snow-rpc-test"};
};

// ---- snowctl -----------------------------------------------------------------------------------

TEST_F(RpcDaemonTest, SnowctlStatusModulesPingAndReloadAgainstARunningDaemon) {
  DaemonProcess daemon(*loop_, {"--modules", SNOW_GREETER_PLUGIN_DIR});
  ASSERT_NE(daemon.waitForLog("ready:"), std::string::npos) << daemon.log();
  const std::string node = daemon.node();
  // The node id the daemon logged at start (its key's hash, 32 hex digits) names it everywhere.
  const size_t named = daemon.log().find("node id ");
  ASSERT_NE(named, std::string::npos);
  const std::string nodeId = daemon.log().substr(named + 8, 32);

  auto [statusCode, status] = snowctl({"--node", node, "status"});
  EXPECT_EQ(statusCode, 0) << status;
  EXPECT_THAT(status, HasSubstr("node       " + nodeId));
  EXPECT_THAT(status, HasSubstr("generation 1 from built-in"));
  EXPECT_THAT(status, HasSubstr("listening  " + node));

  auto [modulesCode, modules] = snowctl({"--node", node, "modules"});
  EXPECT_EQ(modulesCode, 0) << modules;
  EXPECT_THAT(modules, ::testing::ContainsRegex("greeter +1\\.0\\.0"));

  auto [pingCode, ping] = snowctl({"--node", node, "ping", "-c", "2"});
  EXPECT_EQ(pingCode, 0) << ping;
  EXPECT_THAT(ping, HasSubstr("reply from " + nodeId));

  auto [reloadCode, reload] = snowctl({"--node", node, "reload"});
  EXPECT_EQ(reloadCode, 0) << reload;
  EXPECT_THAT(reload, HasSubstr("generation 2 is current"));

  auto [jsonCode, json] = snowctl({"--node", node, "--json", "status"});
  EXPECT_EQ(jsonCode, 0) << json;
  EXPECT_THAT(json, HasSubstr("\"node_id\":\"" + nodeId + "\""));
  EXPECT_THAT(json, HasSubstr("\"generation\":\"2\""));
}

TEST_F(RpcDaemonTest, SnowctlWithoutADaemonFailsWithOneLineAndExitCodeOne) {
  auto [code, output] = snowctl({"--node", "unix:" + dir_.file("nobody.sock"), "status"});
  EXPECT_EQ(code, 1);
  EXPECT_THAT(output, ::testing::StartsWith("snowctl: cannot get the node's status: "));
  EXPECT_THAT(output, HasSubstr("UNAVAILABLE"));
  EXPECT_THAT(output, HasSubstr("is snow-core running"));
  EXPECT_EQ(std::count(output.begin(), output.end(), '\n'), 1) << output;
}

TEST_F(RpcDaemonTest, SnowctlUsageErrorsExitTwo) {
  EXPECT_EQ(snowctl({"frobnicate"}).first, 2);
  EXPECT_EQ(snowctl({"ping", "--count", "0"}).first, 2);
  auto [code, help] = snowctl({"--help"});
  EXPECT_EQ(code, 0);
  EXPECT_THAT(help, HasSubstr("events"));
}

TEST_F(RpcDaemonTest, SnowctlReloadReportsARefusedConfiguration) {
  const std::string config = dir_.file("node.yaml");
  writeFile(config, "daemon:\n  stop_timeout: 5s\n");
  DaemonProcess daemon(*loop_, {"--config", config});
  ASSERT_NE(daemon.waitForLog("ready:"), std::string::npos) << daemon.log();
  writeFile(config, "deamon:\n  stop_timeout: 5s\n");
  auto [code, output] = snowctl({"--node", daemon.node(), "reload"});
  EXPECT_EQ(code, 1);
  EXPECT_THAT(output, HasSubstr("FAILED_PRECONDITION"));
  EXPECT_THAT(output, HasSubstr("did you mean 'daemon'?"));
}

TEST_F(RpcDaemonTest, AModuleServesItsOwnServiceBesideTheNodeService) {
  DaemonProcess daemon(*loop_, {"--modules", SNOW_GREETER_PLUGIN_DIR});
  ASSERT_NE(daemon.waitForLog("ready:"), std::string::npos) << daemon.log();
  rpc::Client client(*loop_, rpc::ClientOptions{});
  example::v1::GreetRequest request;
  request.set_name("ada");
  auto reply = client.call<example::v1::GreetReply>(daemon.node(), "/snow.example.v1.Greeter/Greet",
                                                    request);
  ASSERT_TRUE(await(*loop_, reply));
  ASSERT_TRUE(reply.hasValue()) << errorOf(reply);
  EXPECT_EQ(reply.value()->text(), "hello, ada");

  // A method nobody registered is refused by name.
  auto missing = client.call<example::v1::GreetReply>(daemon.node(),
                                                      "/snow.example.v1.Greeter/Shout", request);
  ASSERT_TRUE(await(*loop_, missing));
  EXPECT_THAT(errorOf(missing), HasSubstr("UNIMPLEMENTED: this node serves no method "
                                          "/snow.example.v1.Greeter/Shout"));
}

TEST_F(RpcDaemonTest, CheckConfigFindsBadRpcSettingsBeforeStarting) {
  const std::string config = dir_.file("node.yaml");
  writeFile(config, fmt::format("rpc:\n  listen: 127.0.0.1:notaport\n  peers: [nowhere]\n"
                                "  tls:\n    ca_file: {}\n",
                                dir_.file("missing-ca.pem")));
  auto [code, log] = runDaemon(*loop_, {"--config", config, "--check-config"});
  EXPECT_EQ(code, 1) << log;
  EXPECT_THAT(log, HasSubstr("rpc.listen:"));
  EXPECT_THAT(log, HasSubstr("rpc.peers: 'nowhere': expected unix:/path/to/socket or host:port"));
  EXPECT_THAT(log,
              HasSubstr("rpc.tls.ca_file: cannot read the ca_file " + dir_.file("missing-ca.pem")));
  EXPECT_THAT(log, HasSubstr("rpc.tls: serving TLS on rpc.listen needs cert_file and key_file"));
}

// ---- Events across nodes -----------------------------------------------------------------------

TEST_F(RpcDaemonTest, ATcpListenerWithoutClientCertificatesIsWarnedAboutAtStart) {
  auto open = startNode("a", "    {}\n", "  listen: 127.0.0.1:0\n");
  EXPECT_THAT(open->log(), HasSubstr("rpc.listen 127.0.0.1:0: callers on TCP are not "
                                     "authenticated; anyone who can connect may call"));
  auto local = startNode("b", "    {}\n");
  EXPECT_THAT(local->log(), Not(HasSubstr("not authenticated"))) << "a unix socket is 0600";
}

TEST_F(RpcDaemonTest, DispatchedEventsKeepTheirParentAndSettleTheSendersEvents) {
  auto receiver = startNode("b", fmt::format("    handled_file: {}\n", dir_.file("handled")));
  // Watch the receiver from before the first event.
  DaemonProcess watcher(
      *loop_, SNOWCTL, {"--node", "unix:" + dir_.file("b.sock"), "events", "-f", "--type", "test."},
      {});
  ASSERT_NE(watcher.waitForLog("following events on unix:" + dir_.file("b.sock")),
            std::string::npos)
      << watcher.log();
  auto sender = startNode("a", fmt::format("    peer: unix:{}\n    count: 20\n    interval: 1ms\n"
                                           "    outcome_file: {}\n",
                                           dir_.file("b.sock"), dir_.file("outcomes")));
  ASSERT_NE(sender->waitForLog("relay: all 20 settled: 20 ok, 0 failed"), std::string::npos)
      << sender->log();

  // "<n> ok <local event id>" and "<n> <remote event id> <remote parent id>".
  std::map<std::string, std::string> localIds;
  for (const auto& line : readLines(dir_.file("outcomes"))) {
    std::istringstream in(line);
    std::string n, ok, id;
    in >> n >> ok >> id;
    EXPECT_EQ(ok, "ok") << line;
    localIds[n] = id;
  }
  const auto handled = readLines(dir_.file("handled"));
  ASSERT_EQ(handled.size(), 20U);
  for (const auto& line : handled) {
    std::istringstream in(line);
    std::string n, id, parent;
    in >> n >> id >> parent;
    EXPECT_EQ(parent, localIds[n]) << "the remote event's parent is the sender's event: " << line;
    EXPECT_NE(id, parent);
  }

  ASSERT_NE(watcher.waitForLog("SUCCEEDED test.work("), std::string::npos) << watcher.log();
  EXPECT_THAT(watcher.log(), HasSubstr("RAISED    test.work("));
  watcher.signal(SIGINT);
  EXPECT_EQ(watcher.waitForExit(), 0) << watcher.log();

  auto [code, recent] = snowctl({"--node", "unix:" + dir_.file("b.sock"), "events"});
  EXPECT_EQ(code, 0);
  EXPECT_THAT(recent, HasSubstr("SUCCEEDED test.work("));
}

TEST_F(RpcDaemonTest, ADispatchToANodeWithoutAHandlerFailsClearly) {
  auto receiver = startNode("b", "    {}\n");
  auto sender = startNode("a", fmt::format("    peer: unix:{}\n    count: 1\n    timeout: 5s\n"
                                           "    outcome_file: {}\n",
                                           dir_.file("b.sock"), dir_.file("outcomes")));
  ASSERT_NE(sender->waitForLog("relay: all 1 settled: 0 ok, 1 failed"), std::string::npos)
      << sender->log();
  const auto outcomes = readLines(dir_.file("outcomes"));
  ASSERT_EQ(outcomes.size(), 1U);
  EXPECT_THAT(outcomes[0], HasSubstr("NOT_FOUND"));
  EXPECT_THAT(outcomes[0], HasSubstr("has no handler for event type 'test.work'"));
}

// ---- Reliability -------------------------------------------------------------------------------

// The RPC issue's test: while the sender dispatches a steady stream of events, the receiver is
// killed (SIGKILL) and restarted ten times. Every event must be handled exactly once, every
// sender-side promise must settle with success, and the sender's loop must keep answering
// pings throughout. Peer health is watched too: the sender sees the receiver go down and up.
TEST_F(RpcDaemonTest, ReceiverKilledAndRestartedTenTimesHandlesEveryEventExactlyOnce) {
  constexpr int kEvents = 1500;
  constexpr int kKills = 10;
  const std::string receiverModule =
      fmt::format("    handled_file: {}\n    handle_delay: 20ms\n", dir_.file("handled"));
  const std::string journal = fmt::format("  dispatch:\n    journal: {}\n", dir_.file("b.journal"));
  auto receiver = startNode("b", receiverModule, journal);
  auto sender = startNode(
      "a",
      fmt::format("    peer: unix:{}\n    count: {}\n    interval: 1ms\n    timeout: 30s\n"
                  "    in_flight: 32\n    outcome_file: {}\n",
                  dir_.file("b.sock"), kEvents, dir_.file("outcomes")),
      fmt::format("  peers: [unix:{}]\n  health: {{interval: 100ms, timeout: 200ms, failures: 1}}\n"
                  "  backoff: {{initial: 20ms, max: 200ms, min_connect_timeout: 1s}}\n",
                  dir_.file("b.sock")));

  // Ping the sender all along: its loop must keep serving while its peer comes and goes.
  rpc::Client client(*loop_, rpc::ClientOptions{});
  Duration slowestPing{0};
  int pingFailures = 0;
  int pings = 0;
  bool pinging = false;
  TimerPtr pingTimer = loop_->createTimer([] {});
  pingTimer = loop_->createTimer([&] {
    if (!pinging) {
      pinging = true;
      const MonotonicTime sent = loop_->now();
      rpc::CallOptions options;
      options.timeout = std::chrono::seconds(2);
      client
          .call<rpc::v1::PingReply>("unix:" + dir_.file("a.sock"), rpc::kPing,
                                    rpc::v1::PingRequest(), options)
          .whenSettled([&, sent](const Future<std::shared_ptr<const rpc::v1::PingReply>>& reply) {
            pinging = false;
            ++pings;
            slowestPing = std::max(slowestPing, loop_->now() - sent);
            if (reply.hasError()) {
              ++pingFailures;
              ADD_FAILURE() << describe(reply.error());
            }
          })
          .detach();
    }
    pingTimer->enable(std::chrono::milliseconds(20));
  });
  pingTimer->enable(std::chrono::milliseconds(20));

  auto handledCount = [&] { return readLines(dir_.file("handled")).size(); };
  std::string receiverLogs;  // Of every receiver run, to count redeliveries.
  for (int kill = 0; kill < kKills; ++kill) {
    // Let some events through, then kill it in the middle of the stream.
    const size_t before = handledCount();
    ASSERT_TRUE(awaitCondition(
        *loop_, [&] { return handledCount() >= before + 40; }, std::chrono::seconds(20)))
        << "kill " << kill << ": the stream does not flow\n"
        << sender->log();
    receiver->signal(SIGKILL);
    ASSERT_EQ(receiver->waitForExit(), 128 + SIGKILL);
    receiverLogs += receiver->log();
    receiver = startNode("b", receiverModule, journal);
  }
  ASSERT_NE(sender->waitForLog(fmt::format("relay: all {} settled", kEvents), 0,
                               std::chrono::seconds(90)),
            std::string::npos)
      << sender->log();
  pingTimer.reset();
  receiverLogs += receiver->log();

  // Every promise settled with success...
  const auto outcomes = readLines(dir_.file("outcomes"));
  ASSERT_EQ(outcomes.size(), static_cast<size_t>(kEvents));
  for (const auto& line : outcomes) {
    EXPECT_THAT(line, HasSubstr(" ok ")) << line;
  }
  EXPECT_THAT(sender->log(), HasSubstr(fmt::format("{} ok, 0 failed", kEvents)));
  // ...and every event was handled exactly once.
  std::map<uint64_t, int> times;
  for (const auto& line : readLines(dir_.file("handled"))) {
    times[std::stoull(line.substr(0, line.find(' ')))]++;
  }
  EXPECT_EQ(times.size(), static_cast<size_t>(kEvents));
  for (const auto& [n, count] : times) {
    EXPECT_EQ(count, 1) << "event " << n << " handled " << count << " times";
  }
  // The sender's loop kept serving: no ping failed, none took long.
  EXPECT_GT(pings, 20);
  EXPECT_EQ(pingFailures, 0);
  EXPECT_LT(slowestPing, std::chrono::milliseconds(500));
  // Health checks saw the receiver go away and come back, as events.
  EXPECT_THAT(sender->log(), HasSubstr(fmt::format("peer unix:{} is down", dir_.file("b.sock"))));
  EXPECT_THAT(sender->log(), HasSubstr(fmt::format("peer unix:{} is up", dir_.file("b.sock"))));
  // Kills landed between handling and answering: those events came back redelivered, and the
  // handler's own record kept them from running twice (without the journal they would have).
  size_t redelivered = 0;
  for (size_t at = 0; (at = receiverLogs.find("relay: redelivered", at)) != std::string::npos;
       ++at) {
    ++redelivered;
  }
  RecordProperty("redelivered", static_cast<int>(redelivered));
  RecordProperty(
      "slowest_ping_ms",
      static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(slowestPing).count()));
}

}  // namespace
}  // namespace snow::testing
