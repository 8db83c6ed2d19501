// The daemon as operators run it: real snow-core processes, real plugin files, real sockets.

#include <atomic>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include <arpa/inet.h>
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "snow/core/dispatcher.h"
#include "snow/core/module.h"
#include "snow/posix/active.h"

#include "daemon_process.h"

namespace snow::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class DaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = fs::temp_directory_path() / "snow-daemon-test-XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    plugins_ = dir_ / "plugins";
    fs::create_directory(plugins_);
    fs::permissions(dir_, fs::perms(0755));
    fs::permissions(plugins_, fs::perms(0755));
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Copies a built plugin into the test's plugin directory under `name`.
  void addPlugin(const fs::path& built, const std::string& name) {
    fs::copy_file(built, plugins_ / name);
    fs::permissions(plugins_ / name, fs::perms(0755));
  }
  void addTestPlugin(const std::string& name) {
    addPlugin(fs::path(SNOW_TEST_PLUGINS) / name, name);
  }
  void addGreeter() { addPlugin(SNOW_GREETER_PLUGIN, "greeter.so"); }

  std::string writeConfig(const std::string& text, const std::string& name = "snow.yaml") {
    std::ofstream(dir_ / name) << text;
    return dir_ / name;
  }

  std::vector<std::string> args(const std::string& config) {
    return {"--modules", plugins_, "--config", config};
  }

  // The refusal line for a plugin directory holding what the test put there.
  std::string refusal() {
    auto [code, log] = runDaemon(*loop_, args(writeConfig("modules: {}\n")));
    EXPECT_EQ(code, 1) << log;
    return log;
  }

  posix::PosixPtr layer_ = posix::makeDefaultPosix();
  posix::ScopedInjector injector_{*layer_};
  DispatcherPtr loop_ = makeDispatcher("daemon-test");
  fs::path dir_;
  fs::path plugins_;
};

// ---- Plugins -----------------------------------------------------------------------------------

TEST_F(DaemonTest, AGoodPluginLoadsAndTheDaemonSaysSoAndIsReady) {
  addGreeter();
  DaemonProcess daemon(*loop_, args(writeConfig("modules:\n  greeter:\n    greeting: hi\n")));
  ASSERT_NE(daemon.waitForLog("ready: 1 module started (greeter)"), std::string::npos)
      << daemon.log();
  EXPECT_THAT(daemon.log(),
              HasSubstr("module greeter 1.0.0 loaded from " + (plugins_ / "greeter.so").string()));
  daemon.signal(SIGTERM);
  EXPECT_EQ(daemon.waitForExit(), 0) << daemon.log();
}

TEST_F(DaemonTest, AFileThatIsNoSharedObjectIsRefused) {
  std::ofstream(plugins_ / "notes.so") << "just text\n";
  fs::permissions(plugins_ / "notes.so", fs::perms(0644));
  EXPECT_THAT(refusal(), HasSubstr("notes.so: not a shared object (no ELF header)"));
}

TEST_F(DaemonTest, ASharedObjectWithoutDescriptorIsRefused) {
  addTestPlugin("no_descriptor.so");
  EXPECT_THAT(refusal(),
              HasSubstr("no_descriptor.so: no snow_plugin_descriptor: not a snow-core plugin"));
}

TEST_F(DaemonTest, APluginWithAnUnresolvedSymbolIsRefusedWithTheLinkersWords) {
  addTestPlugin("unresolved.so");
  EXPECT_THAT(refusal(), HasSubstr("unresolved.so: cannot be loaded: " +
                                   (plugins_ / "unresolved.so").string() +
                                   ": undefined symbol: snowTestNowhere"));
}

TEST_F(DaemonTest, APluginForAnotherApiVersionIsRefused) {
  addTestPlugin("old_api.so");
  EXPECT_THAT(refusal(), HasSubstr(fmt::format("old_api.so: built for plugin API 0, this snow-core "
                                               "speaks {}",
                                               kPluginApiVersion)));
}

TEST_F(DaemonTest, APluginOfAnotherAbiIsRefused) {
  addTestPlugin("other_abi.so");
  EXPECT_THAT(refusal(),
              HasSubstr("other_abi.so: ABI mismatch: the plugin was built as "
                        "'snow-core 0.0.1; g++ 99.0; libstdc++ cxx11-abi 0; C++ 201703'"));
}

TEST_F(DaemonTest, ADuplicateModuleNameIsRefusedNamingBothFiles) {
  addGreeter();
  addTestPlugin("duplicate.so");  // Also registers "greeter"; loads first (name order).
  EXPECT_THAT(refusal(), HasSubstr("module 'greeter' is registered twice: by " +
                                   (plugins_ / "duplicate.so").string() + " and by " +
                                   (plugins_ / "greeter.so").string()));
}

TEST_F(DaemonTest, AGroupWritablePluginIsRefused) {
  addGreeter();
  fs::permissions(plugins_ / "greeter.so", fs::perms(0775));
  EXPECT_THAT(refusal(), HasSubstr("greeter.so: the file is group- or world-writable (mode 775)"));
}

TEST_F(DaemonTest, AWorldWritablePluginDirectoryIsRefused) {
  addGreeter();
  fs::permissions(plugins_, fs::perms(0777));
  EXPECT_THAT(refusal(), HasSubstr(plugins_.string() + ": the plugin directory is group- or "
                                                       "world-writable (mode 777)"));
}

TEST_F(DaemonTest, TwoPluginsEmbeddingTheSameProtoFileAreExplained) {
  addTestPlugin("alpha.so");
  addPlugin(fs::path(SNOW_TEST_PLUGINS) / "alpha.so", "copy.so");  // Same generated .proto.
  EXPECT_THAT(refusal(), HasSubstr("copy.so: its static initialisation failed"));
}

TEST_F(DaemonTest, WithSkipABadPluginIsLoggedAndTheOthersLoad) {
  addGreeter();
  addTestPlugin("old_api.so");
  DaemonProcess daemon(*loop_, args(writeConfig("daemon:\n  plugin_errors: SKIP\n")));
  ASSERT_NE(daemon.waitForLog("ready: 1 module started (greeter)"), std::string::npos)
      << daemon.log();
  EXPECT_THAT(daemon.log(), HasSubstr("plugin skipped: " + (plugins_ / "old_api.so").string() +
                                      ": built for plugin API 0"));
  daemon.signal(SIGTERM);
  EXPECT_EQ(daemon.waitForExit(), 0);
}

// ---- Configuration -----------------------------------------------------------------------------

TEST_F(DaemonTest, ABrokenConfigIsRefusedAtStartWithFileAndKeyPath) {
  addGreeter();
  const std::string config = writeConfig("modules:\n  greeter:\n    greting: hi\n  nosuch: {}\n");
  auto [code, log] = runDaemon(*loop_, args(config));
  EXPECT_EQ(code, 1);
  EXPECT_THAT(log, HasSubstr(config + ":3:5: modules.greeter.greting: unknown key (did you mean "
                                      "'greeting'?)"));
  EXPECT_THAT(log, HasSubstr(config + ": modules.nosuch: no module named 'nosuch' is loaded "
                                      "(loaded: greeter)"));
  EXPECT_THAT(log, HasSubstr("cannot start"));
}

TEST_F(DaemonTest, CheckConfigExitsZeroForAValidConfigAndOneOtherwise) {
  addGreeter();
  auto [good, goodLog] =
      runDaemon(*loop_, {"--modules", plugins_, "--config",
                         writeConfig("modules: {greeter: {greeting: hi}}\n"), "--check-config"});
  EXPECT_EQ(good, 0) << goodLog;
  EXPECT_THAT(goodLog, HasSubstr("configuration OK"));
  EXPECT_THAT(goodLog, ::testing::Not(HasSubstr("ready")))
      << "--check-config must not start modules";

  auto [bad, badLog] = runDaemon(
      *loop_, {"--modules", plugins_, "--config",
               writeConfig("modules: {greeter: {listen: 'not an address'}}\n", "bad.yaml"),
               "--check-config"});
  EXPECT_EQ(bad, 1);
  EXPECT_THAT(badLog, HasSubstr("module 'greeter' refused the configuration (verify): invalid "
                                "address 'not an address'"));
}

// ---- Reloads -----------------------------------------------------------------------------------

int connectTo(uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    const int error = errno;
    ::close(fd);
    errno = error;
    return -1;
  }
  timeval timeout{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  return fd;
}

// Sends a line, returns the answer line.
std::string ask(int fd, const std::string& line) {
  const std::string out = line + "\n";
  if (::write(fd, out.data(), out.size()) != static_cast<ssize_t>(out.size())) {
    return "<write failed>";
  }
  std::string answer;
  char c = 0;
  while (::read(fd, &c, 1) == 1 && c != '\n') {
    answer += c;
  }
  return answer;
}

uint16_t listeningPort(const std::string& log) {
  std::smatch match;
  if (!std::regex_search(log, match,
                         std::regex("greeter: listening on 127\\.0\\.0\\.1:([0-9]+)"))) {
    return 0;
  }
  return static_cast<uint16_t>(std::stoi(match[1]));
}

// The inode of the socket listening on 127.0.0.1:port, from /proc/net/tcp: the same inode after a
// reload means the very same socket.
std::string listeningInode(uint16_t port) {
  std::ifstream table("/proc/net/tcp");
  std::string line;
  char local[32];
  std::snprintf(local, sizeof(local), "0100007F:%04X", port);
  while (std::getline(table, line)) {
    std::istringstream fields(line);
    std::string slot, localAddress, remote, state, queues, timer, retransmits, uid, timeout, inode;
    fields >> slot >> localAddress >> remote >> state >> queues >> timer >> retransmits >> uid >>
        timeout >> inode;
    if (localAddress == local && state == "0A") {
      return inode;
    }
  }
  return "";
}

TEST_F(DaemonTest, AReloadKeepingTheAddressKeepsTheSocketAndItsConnections) {
  addGreeter();
  const std::string config =
      writeConfig("modules:\n  greeter:\n    greeting: hello\n    listen: 127.0.0.1:0\n");
  DaemonProcess daemon(*loop_, args(config));
  ASSERT_NE(daemon.waitForLog("ready: 1 module started"), std::string::npos) << daemon.log();
  const uint16_t port = listeningPort(daemon.log());
  ASSERT_NE(port, 0) << daemon.log();
  const std::string inodeBefore = listeningInode(port);
  ASSERT_FALSE(inodeBefore.empty());

  const int client = connectTo(port);
  ASSERT_GE(client, 0);
  EXPECT_EQ(ask(client, "ada"), "hello, ada");

  // Connect over and over while the reload runs: not one attempt may be refused.
  std::atomic<bool> reloading{true};
  std::atomic<int> attempts{0};
  std::atomic<int> refused{0};
  std::atomic<int> lastError{0};
  std::thread prober([&] {
    while (reloading) {
      const int fd = connectTo(port);
      ++attempts;
      if (fd < 0) {
        lastError = errno;
        ++refused;
      } else {
        // Reset, not FIN: a closed probe must not sit in TIME_WAIT holding its port, or a slow
        // reload (a sanitizer build on a busy machine) runs the prober out of ephemeral ports and
        // connect() fails with EADDRNOTAVAIL, which is not the refusal this test looks for.
        const linger reset{1, 0};
        ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
        ::close(fd);
      }
      loop_->post([] {});  // Wakes the test loop, which checks the attempt count.
    }
  });
  writeConfig("modules:\n  greeter:\n    greeting: welcome back\n    listen: 127.0.0.1:0\n");
  const size_t mark = daemon.log().size();
  daemon.signal(SIGHUP);
  const bool reloaded = daemon.waitForLog("configuration generation 2", mark) != std::string::npos;
  // Keep probing a little past the switch, on the loop, not by sleeping.
  const int seen = attempts;
  loop_->runUntil([&] { return attempts >= seen + 50; }, std::chrono::seconds(5));
  reloading = false;
  prober.join();
  ASSERT_TRUE(reloaded) << daemon.log();
  EXPECT_THAT(daemon.log(), HasSubstr("1 of its 1 resources inherited from generation 1"));

  EXPECT_EQ(refused.load(), 0) << "of " << attempts.load() << " connection attempts, the last "
                               << std::strerror(lastError.load());
  EXPECT_GT(attempts.load(), 50);
  EXPECT_EQ(listeningInode(port), inodeBefore) << "the listening socket was reopened";
  EXPECT_EQ(ask(client, "ada"), "welcome back, ada")
      << "the connection made before the reload must still work, with the new greeting\n"
      << daemon.log();
  ::close(client);
  daemon.signal(SIGTERM);
  EXPECT_EQ(daemon.waitForExit(), 0) << daemon.log();
}

TEST_F(DaemonTest, AReloadWhoseVerifyFailsLeavesTheOldGenerationServing) {
  addGreeter();
  // A port someone else holds: the greeter's verify cannot bind it.
  const int busy = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(busy, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  ASSERT_EQ(::listen(busy, 1), 0);
  socklen_t length = sizeof(address);
  ::getsockname(busy, reinterpret_cast<sockaddr*>(&address), &length);
  const int busyPort = ntohs(address.sin_port);

  const std::string config =
      writeConfig("modules:\n  greeter:\n    greeting: hello\n    listen: 127.0.0.1:0\n");
  DaemonProcess daemon(*loop_, args(config));
  ASSERT_NE(daemon.waitForLog("ready: 1 module started"), std::string::npos) << daemon.log();
  const uint16_t port = listeningPort(daemon.log());
  const int client = connectTo(port);
  ASSERT_GE(client, 0);

  writeConfig("modules:\n  greeter:\n    greeting: changed\n    listen: 127.0.0.1:" +
              std::to_string(busyPort) + "\n");
  const size_t mark = daemon.log().size();
  daemon.signal(SIGHUP);
  ASSERT_NE(daemon.waitForLog("reload refused", mark), std::string::npos) << daemon.log();
  EXPECT_THAT(daemon.log().substr(mark),
              HasSubstr("module 'greeter' refused the configuration (verify): bind"));
  EXPECT_THAT(daemon.log().substr(mark), HasSubstr("Address already in use"));
  EXPECT_THAT(daemon.log().substr(mark), ::testing::Not(HasSubstr("generation 2")));
  EXPECT_EQ(ask(client, "ada"), "hello, ada") << "the old generation must keep serving";
  const int another = connectTo(port);
  EXPECT_GE(another, 0) << "the old listener must still accept";
  ::close(another);
  ::close(client);
  ::close(busy);
  daemon.signal(SIGTERM);
  EXPECT_EQ(daemon.waitForExit(), 0);
}

TEST_F(DaemonTest, AReloadWhoseApplyFailsChangesNothing) {
  addTestPlugin("alpha.so");
  const std::string config = writeConfig("modules:\n  alpha:\n    note: one\n");
  DaemonProcess daemon(*loop_, args(config));
  ASSERT_NE(daemon.waitForLog("ready: 1 module started"), std::string::npos) << daemon.log();
  writeConfig("modules:\n  alpha:\n    note: two\n    fail_apply: true\n");
  size_t mark = daemon.log().size();
  daemon.signal(SIGHUP);
  ASSERT_NE(daemon.waitForLog("reload refused", mark), std::string::npos) << daemon.log();
  EXPECT_THAT(daemon.log().substr(mark),
              HasSubstr("module 'alpha' refused the configuration (apply): told to fail apply"));

  writeConfig("modules:\n  alpha:\n    note: three\n");
  mark = daemon.log().size();
  daemon.signal(SIGHUP);
  ASSERT_NE(daemon.waitForLog("configuration generation 2", mark), std::string::npos)
      << "the failed reload must not have used up generation 2:\n"
      << daemon.log();
  EXPECT_THAT(daemon.log().substr(mark), HasSubstr("apply generation 2 note=three"));
  daemon.signal(SIGTERM);
  EXPECT_EQ(daemon.waitForExit(), 0);
}

TEST_F(DaemonTest, AModuleThatDoesNotStopIsAbandonedAtTheDeadlineAndTheDaemonStillExits) {
  addTestPlugin("alpha.so");
  addTestPlugin("beta.so");
  DaemonProcess daemon(*loop_, args(writeConfig("daemon:\n  stop_timeout: 300ms\n"
                                                "modules:\n  alpha:\n    hang_stop: true\n")));
  ASSERT_NE(daemon.waitForLog("ready: 2 modules started"), std::string::npos) << daemon.log();
  daemon.signal(SIGTERM);
  ASSERT_EQ(daemon.waitForExit(), 0) << daemon.log();
  EXPECT_THAT(daemon.log(), HasSubstr("test module beta: stopped"));
  EXPECT_THAT(daemon.log(),
              ::testing::ContainsRegex("module alpha did not finish stopping cleanly: stopping "
                                       "module 'alpha' timed out after (29[0-9]|300) ms"));
  EXPECT_THAT(daemon.log(), ::testing::Not(HasSubstr("unobserved"))) << "shutdown must be clean";
}

// ---- Readiness ---------------------------------------------------------------------------------

TEST_F(DaemonTest, TellsSystemdItIsReadyOnlyAfterEveryModuleStarted) {
  addTestPlugin("alpha.so");
  addTestPlugin("beta.so");
  // What systemd does for Type=notify: a datagram socket whose path is in NOTIFY_SOCKET.
  const std::string socketPath = dir_ / "notify";
  const int notify = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  ASSERT_GE(notify, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, socketPath.c_str(), sizeof(address.sun_path) - 1);
  ASSERT_EQ(::bind(notify, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  std::string message;
  size_t logWhenNotified = 0;
  DaemonProcess* running = nullptr;
  FileEventPtr watch = loop_->createFileEvent(
      notify,
      [&](uint32_t) {
        char buffer[256];
        const ssize_t n = ::recv(notify, buffer, sizeof(buffer), 0);
        if (n > 0) {
          message.assign(buffer, static_cast<size_t>(n));
          logWhenNotified = running->log().size();
        }
      },
      FileReady::kRead);

  DaemonProcess daemon(*loop_, args(writeConfig("modules: {}\n")), {"NOTIFY_SOCKET=" + socketPath});
  running = &daemon;
  ASSERT_TRUE(loop_->runUntil([&] { return !message.empty(); }, std::chrono::seconds(20)))
      << daemon.log();
  EXPECT_EQ(message, "READY=1");
  // Everything logged before the notification: both modules had started by then.
  const std::string before = daemon.log().substr(0, logWhenNotified);
  EXPECT_THAT(before, HasSubstr("test module alpha: started"));
  EXPECT_THAT(before, HasSubstr("test module beta: started"));
  daemon.signal(SIGTERM);
  EXPECT_EQ(daemon.waitForExit(), 0);
  watch.reset();
  ::close(notify);
}

TEST_F(DaemonTest, WithoutNotifySocketItStartsWithoutComplaint) {
  addTestPlugin("alpha.so");
  DaemonProcess daemon(*loop_, args(writeConfig("modules: {}\n")), {"NOTIFY_SOCKET="});
  ASSERT_NE(daemon.waitForLog("ready: 1 module started"), std::string::npos) << daemon.log();
  EXPECT_THAT(daemon.log(), ::testing::Not(HasSubstr("systemd")));
  daemon.signal(SIGTERM);
  EXPECT_EQ(daemon.waitForExit(), 0);
}

// ---- Stopping ----------------------------------------------------------------------------------

TEST_F(DaemonTest, SigtermDrainsEveryModuleThenStopsThemInReverseLoadOrderAndExitsZero) {
  addTestPlugin("alpha.so");
  addTestPlugin("beta.so");
  DaemonProcess daemon(*loop_, args(writeConfig("modules: {}\n")));
  ASSERT_NE(daemon.waitForLog("ready: 2 modules started (alpha, beta)"), std::string::npos)
      << daemon.log();
  const size_t alphaStarted = daemon.log().find("test module alpha: started");
  const size_t betaStarted = daemon.log().find("test module beta: started");
  EXPECT_LT(alphaStarted, betaStarted) << "modules start in load order";
  daemon.signal(SIGTERM);
  ASSERT_EQ(daemon.waitForExit(), 0) << daemon.log();
  const size_t betaStopped = daemon.log().find("test module beta: stopped");
  const size_t alphaStopped = daemon.log().find("test module alpha: stopped");
  ASSERT_NE(betaStopped, std::string::npos) << daemon.log();
  ASSERT_NE(alphaStopped, std::string::npos) << daemon.log();
  EXPECT_LT(betaStopped, alphaStopped) << "modules stop in reverse load order";
  const size_t betaDrained = daemon.log().find("test module beta: drained");
  const size_t alphaDrained = daemon.log().find("test module alpha: drained");
  ASSERT_NE(alphaDrained, std::string::npos) << daemon.log();
  EXPECT_LT(betaDrained, alphaDrained) << "modules drain in reverse load order";
  EXPECT_LT(alphaDrained, betaStopped) << "every module drains before any stops:\n" << daemon.log();
  EXPECT_THAT(daemon.log(), HasSubstr("SIGTERM received: stopping"));
}

}  // namespace
}  // namespace snow::testing
