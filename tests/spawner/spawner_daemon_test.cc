// The spawner in real daemons, driven by snowctl as an operator would: the commands, reloads,
// the daemon's death by SIGKILL, a socket-activated service restarted under load, and the
// configuration errors verify() reports.

#include <atomic>
#include <csignal>
#include <fstream>
#include <map>
#include <regex>
#include <thread>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "snow/posix/active.h"

#include "daemon/daemon_process.h"
#include "processes.h"
#include "support/await.h"
#include "support/files.h"

namespace snow::testing {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;

struct Row {
  std::string state;
  pid_t pid = 0;
  std::string sockets;
};

class SpawnerDaemonTest : public ::testing::Test {
 protected:
  SpawnerDaemonTest() : os_(posix::makeDefaultPosix()), injected_(*os_) {}

  // The configuration: `services` is the YAML under modules.spawner.services, indented by 6.
  std::string config(const std::string& services, const std::string& extra = "") {
    std::string path = dir_.file("snow.yaml");
    writeFile(path,
              fmt::format("rpc:\n  unix_socket: {}\nmodules:\n  spawner:\n{}    services:\n{}",
                          dir_.file("rpc.sock"), extra, services));
    return path;
  }

  static std::string service(const std::string& name, const std::string& args,
                             const std::string& more = "") {
    return fmt::format("      {}:\n        command: {}\n        args: [{}]\n{}", name,
                       SNOW_SPAWNER_CHILD, args, more);
  }

  std::unique_ptr<DaemonProcess> start(const std::string& configPath) {
    auto daemon = std::make_unique<DaemonProcess>(
        *loop_, std::vector<std::string>{"--modules", SNOW_PLUGIN_DIR, "--config", configPath},
        std::vector<std::string>{"SNOW_RPC_SOCKET=" + dir_.file("rpc.sock")});
    EXPECT_NE(daemon->waitForLog("ready:"), std::string::npos) << daemon->log();
    return daemon;
  }

  std::pair<int, std::string> snowctl(std::vector<std::string> args) {
    args.insert(args.begin(), {"--node", "unix:" + dir_.file("rpc.sock")});
    return runProgram(*loop_, SNOWCTL, args);
  }

  // `snowctl --json ps`, by service name.
  std::map<std::string, Row> ps() {
    auto [code, json] = snowctl({"--json", "ps"});
    EXPECT_EQ(code, 0) << json;
    std::map<std::string, Row> rows;
    static const std::regex entry(
        R"re("name":"([^"]+)","state":"([A-Z]+)","pid":(\d+).*?"sockets":\[([^\]]*)\])re");
    for (std::sregex_iterator it(json.begin(), json.end(), entry), end; it != end; ++it) {
      rows[(*it)[1]] = Row{(*it)[2], std::stoi((*it)[3]), (*it)[4]};
    }
    return rows;
  }

  // Waits until every named service is RUNNING; returns the rows.
  std::map<std::string, Row> awaitRunning(const std::vector<std::string>& names) {
    std::map<std::string, Row> rows;
    EXPECT_TRUE(awaitPolled(
        *loop_,
        [&] {
          rows = ps();
          return std::all_of(names.begin(), names.end(), [&](const std::string& n) {
            return rows.contains(n) && rows[n].state == "RUNNING";
          });
        },
        20s, 50ms))
        << snowctl({"ps"}).second;
    return rows;
  }

  posix::PosixPtr os_;
  posix::ScopedInjector injected_;
  DispatcherPtr loop_ = makeDispatcher("test");
  TempDir dir_{"snow-spawner-daemon"};
};

TEST_F(SpawnerDaemonTest, SnowctlListsStopsStartsRestartsAndShowsLogsAndEvents) {
  auto daemon = start(config(service("chatty", "chatter, '3'",
                                     "        ready_after: 10ms\n"
                                     "        restart: never\n") +
                             service("idle", "ignore-term",
                                     "        ready_after: 10ms\n"
                                     "        stop_timeout: 200ms\n")));
  auto rows = awaitRunning({"idle"});
  const pid_t idle = rows["idle"].pid;

  auto [psCode, table] = snowctl({"ps"});
  EXPECT_EQ(psCode, 0);
  EXPECT_THAT(table, HasSubstr("NAME"));
  EXPECT_THAT(table, ::testing::ContainsRegex("idle +running +" + std::to_string(idle)));
  EXPECT_THAT(table, ::testing::ContainsRegex("chatty +exited .*exited with code 0"));

  auto [logsCode, logs] = snowctl({"logs", "chatty", "-n", "3"});
  EXPECT_EQ(logsCode, 0);
  // -n 3: the last three lines; the 20,000 x's without a newline came in two pieces.
  const std::vector<size_t> sizes = {6, 16384, 20000 - 16384};
  size_t at = 0;
  for (const size_t size : sizes) {
    const size_t end = logs.find('\n', at);
    ASSERT_NE(end, std::string::npos) << logs.substr(0, 200);
    EXPECT_EQ(end - at, size);
    at = end + 1;
  }
  EXPECT_EQ(logs.substr(0, 7), "line 2\n");

  auto [stopCode, stopped] = snowctl({"stop", "idle"});
  EXPECT_EQ(stopCode, 0) << stopped;
  EXPECT_THAT(stopped, HasSubstr("idle: stopped, last killed by SIGKILL"));
  EXPECT_TRUE(gone(idle));
  EXPECT_EQ(ps()["idle"].state, "STOPPED");

  auto [startCode, started] = snowctl({"start", "idle"});
  EXPECT_EQ(startCode, 0) << started;
  EXPECT_THAT(started, HasSubstr("idle: starting, pid "));
  const pid_t second = awaitRunning({"idle"})["idle"].pid;
  EXPECT_NE(second, idle);

  auto [restartCode, restarted] = snowctl({"restart", "idle"});
  EXPECT_EQ(restartCode, 0) << restarted;
  EXPECT_NE(awaitRunning({"idle"})["idle"].pid, second);

  // Following the logs: a new line reaches the follower.
  DaemonProcess follower(*loop_, SNOWCTL,
                         {"--node", "unix:" + dir_.file("rpc.sock"), "logs", "idle", "-f"}, {});
  ASSERT_NE(follower.waitForLog("ignoring SIGTERM"), std::string::npos) << follower.log();
  const size_t seen = follower.log().size();
  auto [again, _] = snowctl({"restart", "idle"});
  EXPECT_EQ(again, 0);
  ASSERT_NE(follower.waitForLog("ignoring SIGTERM", seen), std::string::npos) << follower.log();
  follower.signal(SIGINT);
  EXPECT_EQ(follower.waitForExit(), 0);

  // Run-time services: submit, refuse a clash, remove.
  auto [submitCode, submitted] =
      snowctl({"submit", "extra", "--env", "A=1", "--", "/bin/sleep", "1000"});
  EXPECT_EQ(submitCode, 0) << submitted;
  EXPECT_THAT(submitted, HasSubstr("extra: starting, pid"));
  auto [clashCode, clash] = snowctl({"submit", "idle", "--", "/bin/true"});
  EXPECT_EQ(clashCode, 1);
  EXPECT_THAT(clash, HasSubstr("ALREADY_EXISTS: a service 'idle' exists already (config)"));
  auto [removeConfigCode, removeConfig] = snowctl({"remove", "idle"});
  EXPECT_EQ(removeConfigCode, 1);
  EXPECT_THAT(removeConfig, HasSubstr("comes from the configuration"));
  auto [removeCode, removed] = snowctl({"remove", "extra"});
  EXPECT_EQ(removeCode, 0) << removed;
  EXPECT_FALSE(ps().contains("extra"));
  auto [missingCode, missing] = snowctl({"stop", "nobody"});
  EXPECT_EQ(missingCode, 1);
  EXPECT_THAT(missing, HasSubstr("NOT_FOUND: no service 'nobody' (services: chatty, idle)"));

  // The lifecycle is in the event tree.
  auto [eventsCode, events] = snowctl({"events", "--type", "spawner.", "--recent", "256"});
  EXPECT_EQ(eventsCode, 0);
  for (const char* type : {"spawner.spawned(", "spawner.ready(", "spawner.exited("}) {
    EXPECT_THAT(events, HasSubstr(type));
  }
}

TEST_F(SpawnerDaemonTest, AReloadThatChangesOneOfThreeServicesLeavesTheOtherTwoPidsUntouched) {
  const std::string common = "        ready_after: 10ms\n";
  auto daemon =
      start(config(service("a", "ignore-term", common) +
                   service("b", "ignore-term", common + "        stop_timeout: 100ms\n") +
                   service("c", "serve",
                           common + "        sockets: [{address: "
                                    "'127.0.0.1:0'}]\n") +
                   service("gone", "ignore-term", common + "        stop_timeout: 100ms\n")));
  auto before = awaitRunning({"a", "b", "c", "gone"});

  // b changes (an environment variable), gone goes, d comes.
  config(service("a", "ignore-term", common) +
         service("b", "ignore-term",
                 common + "        stop_timeout: 100ms\n        env: {CHANGED: 'yes'}\n") +
         service("c", "serve", common + "        sockets: [{address: '127.0.0.1:0'}]\n") +
         service("d", "ignore-term", common));
  auto [code, reloaded] = snowctl({"reload"});
  ASSERT_EQ(code, 0) << reloaded;
  auto after = awaitRunning({"a", "b", "c", "d"});
  EXPECT_EQ(after["a"].pid, before["a"].pid) << "unchanged: same process";
  EXPECT_EQ(after["c"].pid, before["c"].pid) << "unchanged: same process";
  EXPECT_EQ(after["c"].sockets, before["c"].sockets) << "and the same socket";
  EXPECT_NE(after["b"].pid, before["b"].pid) << "changed: restarted";
  EXPECT_FALSE(after.contains("gone"));
  EXPECT_TRUE(gone(before["gone"].pid));
  EXPECT_TRUE(gone(before["b"].pid));
  EXPECT_NE(daemon->waitForLog("1 of its 1 resources inherited from generation 1"),
            std::string::npos)
      << daemon->log();
}

TEST_F(SpawnerDaemonTest, SigkillOfTheDaemonLeavesNoUnsupervisedChildRunning) {
  const std::string path = config(service(
      "runaway", fmt::format("escape, '{}'", dir_.file("escaped")), "        ready_after: 10ms\n"));
  auto daemon = start(path);
  const pid_t main = awaitRunning({"runaway"})["runaway"].pid;
  ASSERT_TRUE(awaitPolled(*loop_, [&] { return !readFile(dir_.file("escaped")).empty(); }));
  const pid_t escaped = std::stoi(readFile(dir_.file("escaped")));
  const bool cgroups = daemon->log().find("one cgroup per service under") != std::string::npos;

  daemon->signal(SIGKILL);
  EXPECT_EQ(daemon->waitForExit(), 128 + SIGKILL);
  // The service's main process follows its supervisor at once (parent-death signal)...
  EXPECT_TRUE(awaitPolled(
      *loop_, [&] { return gone(main); }, 5s))
      << "pid " << main << " outlived the daemon, state " << processState(main);
  if (!cgroups) {
    GTEST_SKIP() << "no writable cgroup v2: what left the process group is not tracked";
  }
  // ...and what escaped its process group is found in its cgroup by the next start.
  EXPECT_FALSE(gone(escaped)) << "the grandchild left the group, only the cgroup knows it";
  auto next = start(path);
  EXPECT_NE(next->waitForLog("killed what a previous run left in its cgroup: runaway: 1 process"),
            std::string::npos)
      << next->log();
  EXPECT_TRUE(awaitPolled(
      *loop_, [&] { return gone(escaped); }, 5s));
}

TEST_F(SpawnerDaemonTest, ASocketActivatedServiceKeepsAcceptingWhileSnowctlRestartsIt) {
  auto daemon = start(config(service("web", "serve",
                                     "        ready_after: 10ms\n"
                                     "        sockets: [{address: "
                                     "'127.0.0.1:0'}]\n")));
  const Row row = awaitRunning({"web"})["web"];
  const std::string address = row.sockets.substr(1, row.sockets.size() - 2);  // Unquoted.
  const auto port = static_cast<uint16_t>(std::stoi(address.substr(address.rfind(':') + 1)));

  ConnectLoop client(port);
  pid_t pid = row.pid;
  for (int i = 0; i < 3; ++i) {
    auto [code, output] = snowctl({"restart", "web"});
    EXPECT_EQ(code, 0) << output;
    const pid_t next = awaitRunning({"web"})["web"].pid;
    EXPECT_NE(next, pid);
    pid = next;
    const int before = client.answered();
    ASSERT_TRUE(awaitPolled(*loop_, [&] { return client.answered() > before + 10; }));
  }
  client.stop();
  EXPECT_EQ(client.refused(), 0) << "the spawner held the socket while the service was away";
}

TEST_F(SpawnerDaemonTest, CheckConfigNamesWhatCannotWorkBeforeAnythingStarts) {
  const int busy = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in any{};
  any.sin_family = AF_INET;
  any.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(busy, reinterpret_cast<sockaddr*>(&any), sizeof(any)), 0);
  ASSERT_EQ(::listen(busy, 1), 0);
  socklen_t length = sizeof(any);
  ASSERT_EQ(::getsockname(busy, reinterpret_cast<sockaddr*>(&any), &length), 0);
  const std::string path = config(
      "      web:\n        command: /no/such/program\n        user: no-such-user-here\n"
      "        sockets: [{address: '127.0.0.1:" +
      std::to_string(ntohs(any.sin_port)) + "'}]\n" +
      "      typo:\n        command: /bin/true\n        restart: sometimes\n");
  auto [code, log] =
      runDaemon(*loop_, {"--modules", SNOW_PLUGIN_DIR, "--config", path, "--check-config"});
  ::close(busy);
  EXPECT_EQ(code, 1) << log;
  EXPECT_THAT(log, HasSubstr("modules.spawner.services.typo.restart"));
  EXPECT_THAT(log, HasSubstr("sometimes"));
  // The decoder refuses the enum first; fix it and verify() speaks.
  const std::string fixed = config(
      "      web:\n        command: /no/such/program\n        user: no-such-user-here\n"
      "        sockets: [{address: '127.0.0.1:" +
      std::to_string(ntohs(any.sin_port)) + "'}]\n");
  const int again = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_EQ(::bind(again, reinterpret_cast<sockaddr*>(&any), sizeof(any)), 0);
  ASSERT_EQ(::listen(again, 1), 0);
  auto [code2, log2] =
      runDaemon(*loop_, {"--modules", SNOW_PLUGIN_DIR, "--config", fixed, "--check-config"});
  ::close(again);
  EXPECT_EQ(code2, 1) << log2;
  EXPECT_THAT(log2, HasSubstr("modules.spawner.services.web.command: /no/such/program: No such "
                              "file or directory"));
  EXPECT_THAT(log2, HasSubstr("modules.spawner.services.web.user: no user 'no-such-user-here'"));
  EXPECT_THAT(log2, HasSubstr("modules.spawner.services.web.sockets[0]: cannot listen on "
                              "127.0.0.1:"));
  EXPECT_THAT(log2, HasSubstr("Address already in use"));
}

}  // namespace
}  // namespace snow::testing
