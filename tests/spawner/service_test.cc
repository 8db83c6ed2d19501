// The supervisor in-process, with real children (snow_spawner_child, /bin/sh): restart policy and
// backoff, stops and grace periods, sockets, output capture, reaping, cgroups.

#include "service.h"

#include <atomic>
#include <csignal>
#include <fstream>
#include <set>
#include <thread>

#include <dirent.h>
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "snow/core/process.h"
#include "snow/posix/active.h"
#include "snow/posix/file_descriptor.h"

#include "cgroups.h"
#include "definition.h"
#include "processes.h"
#include "support/await.h"
#include "support/files.h"

namespace snow::testing {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
namespace pb = spawner::pb;
using spawner::Lifecycle;

// This process's children: {living, zombies}.
std::pair<int, int> children() {
  std::pair<int, int> out{0, 0};
  const std::string self = std::to_string(getpid());
  DIR* proc = opendir("/proc");
  while (dirent* entry = readdir(proc)) {
    if (entry->d_name[0] < '0' || entry->d_name[0] > '9') {
      continue;
    }
    std::ifstream in(std::string("/proc/") + entry->d_name + "/stat");
    std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const size_t paren = all.rfind(')');
    if (paren == std::string::npos) {
      continue;
    }
    std::istringstream fields(all.substr(paren + 2));
    std::string state, ppid;
    fields >> state >> ppid;
    if (ppid == self) {
      (state == "Z" ? out.second : out.first) += 1;
    }
  }
  closedir(proc);
  return out;
}

class ServiceTest : public ::testing::Test {
 protected:
  ServiceTest() : os_(posix::makeDefaultPosix()), injected_(*os_) {
    environment_ = std::make_unique<spawner::ServiceEnvironment>(spawner::ServiceEnvironment{
        *loop_, *os_, reaper_, *spdlog::default_logger(), nullptr, devNull_.get(),
        [this](Lifecycle what, const std::shared_ptr<pb::ServiceEvent>& event) {
          lifecycle_.push_back({what, *event, loop_->now()});
        }});
  }

  static pb::ServiceSpec child(const std::vector<std::string>& args) {
    pb::ServiceSpec spec;
    spec.set_command(SNOW_SPAWNER_CHILD);
    for (const auto& a : args) {
      spec.add_args(a);
    }
    spec.mutable_ready_after()->set_nanos(1000000);
    return spec;
  }

  static pb::ServiceSpec shell(const std::string& script) {
    pb::ServiceSpec spec;
    spec.set_command("/bin/sh");
    spec.add_args("-c");
    spec.add_args(script);
    spec.mutable_ready_after()->set_nanos(1000000);
    return spec;
  }

  std::shared_ptr<spawner::Service> make(
      const pb::ServiceSpec& spec,
      std::vector<std::shared_ptr<spawner::ServiceSocket>> sockets = {},
      const std::string& name = "svc") {
    return std::make_shared<spawner::Service>(
        *environment_, spawner::define(*os_, name, spec, 100, name), std::move(sockets), "config");
  }

  size_t count(Lifecycle what) const {
    return static_cast<size_t>(std::count_if(lifecycle_.begin(), lifecycle_.end(),
                                             [&](const auto& e) { return e.what == what; }));
  }

  std::vector<std::string> lines(const spawner::Service& service) const {
    std::vector<std::string> out;
    for (const auto& line : service.logs()->last(100000)) {
      out.push_back(line.text());
    }
    return out;
  }

  struct Seen {
    Lifecycle what;
    pb::ServiceEvent event;
    MonotonicTime at;
  };

  posix::PosixPtr os_;
  posix::ScopedInjector injected_;
  DispatcherPtr loop_ = makeDispatcher("test");
  ChildReaper reaper_{*loop_, *os_};
  posix::FileDescriptor devNull_{::open("/dev/null", O_RDWR | O_CLOEXEC)};
  std::unique_ptr<spawner::ServiceEnvironment> environment_;
  std::vector<Seen> lifecycle_;
  TempDir dir_{"snow-spawner-test"};
};

TEST(ExitStatusTest, DecodesWaitStatusesAndNamesSignals) {
  EXPECT_EQ(ExitStatus::fromWaitStatus(3 << 8).describe(), "exited with code 3");
  EXPECT_TRUE(ExitStatus::fromWaitStatus(0).success());
  EXPECT_EQ(ExitStatus::fromWaitStatus(SIGKILL).describe(), "killed by SIGKILL");
  EXPECT_EQ(ExitStatus::fromWaitStatus(SIGSEGV | 0x80).describe(),
            "killed by SIGSEGV (core dumped)");
  EXPECT_EQ(signalNumber("TERM"), SIGTERM);
  EXPECT_EQ(signalNumber("sigusr1"), SIGUSR1);
  EXPECT_EQ(signalNumber("9"), SIGKILL);
  EXPECT_EQ(signalNumber("TERMINATE"), 0);
  EXPECT_EQ(signalNumber("65"), 0);
  EXPECT_EQ(signalName(42), "signal 42");
}

TEST_F(ServiceTest, TheChildGetsItsEnvironmentDirectoryOwnSessionAndNoStrayDescriptors) {
  auto spec = child({"env"});
  (*spec.mutable_env())["GREETING"] = "hello world";
  spec.set_working_directory(dir_.path());
  spec.set_restart(pb::ServiceSpec::NEVER);
  auto service = make(spec);
  service->start();
  const pid_t pid = service->pid();
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(
      awaitCondition(*loop_, [&] { return service->state() == pb::ServiceStatus::EXITED; }));
  const auto out = lines(*service);
  EXPECT_THAT(out, ::testing::Contains("env GREETING=hello world"));
  EXPECT_THAT(out, ::testing::Contains(HasSubstr("env PATH=/usr/local/sbin:")));
  EXPECT_THAT(out, ::testing::Contains("cwd " + dir_.path()));
  EXPECT_THAT(out, ::testing::Contains("fds 0 1 2"));
  EXPECT_THAT(out, ::testing::Contains(fmt::format("pgid {0} sid {0} pid {0}", pid)));
  EXPECT_EQ(service->status().last_exit(), "exited with code 0");
  EXPECT_EQ(count(Lifecycle::Spawned), 1U);
  EXPECT_EQ(count(Lifecycle::Exited), 1U);
  EXPECT_EQ(count(Lifecycle::Restarted), 0U);
}

TEST_F(ServiceTest, ACrashLoopIsThrottledByTheBackoff) {
  auto spec = shell("exit 1");
  spec.mutable_backoff()->mutable_initial()->set_nanos(50'000'000);
  spec.mutable_backoff()->set_multiplier(2);
  spec.mutable_backoff()->mutable_max()->set_nanos(400'000'000);
  auto service = make(spec);
  service->start();
  ASSERT_TRUE(awaitCondition(*loop_, [&] {
    return count(Lifecycle::Spawned) >= 7 && service->state() == pb::ServiceStatus::BACKOFF;
  }));
  std::vector<MonotonicTime> spawns;
  for (const auto& e : lifecycle_) {
    if (e.what == Lifecycle::Spawned) {
      spawns.push_back(e.at);
    }
  }
  // Immediate first restart, then 50, 100, 200, 400, 400 ms (each within 10% jitter).
  const std::vector<Duration> least = {0ms, 45ms, 90ms, 180ms, 360ms, 360ms};
  for (size_t i = 1; i < 7; ++i) {
    EXPECT_GE(spawns[i] - spawns[i - 1], least[i - 1]) << "restart " << i;
  }
  EXPECT_LT(spawns[1] - spawns[0], 50ms) << "the first restart waits for nothing";
  EXPECT_EQ(service->state(), pb::ServiceStatus::BACKOFF);
  EXPECT_TRUE(service->status().has_next_restart_in());
  ASSERT_TRUE(await(*loop_, service->stop()));
  EXPECT_EQ(service->state(), pb::ServiceStatus::STOPPED);
}

TEST_F(ServiceTest, GivesUpAfterMaxRestartsFailedRunsInARow) {
  auto spec = shell("exit 7");
  spec.set_max_restarts(3);
  spec.mutable_backoff()->mutable_initial()->set_nanos(1'000'000);
  auto service = make(spec);
  service->start();
  ASSERT_TRUE(
      awaitCondition(*loop_, [&] { return service->state() == pb::ServiceStatus::FAILED; }));
  EXPECT_EQ(count(Lifecycle::Spawned), 3U);
  ASSERT_EQ(count(Lifecycle::GaveUp), 1U);
  EXPECT_THAT(lifecycle_.back().event.status(), HasSubstr("3 runs in a row"));
  EXPECT_THAT(lifecycle_.back().event.status(), HasSubstr("exited with code 7"));
  // start() forgets the failures.
  service->start();
  EXPECT_EQ(count(Lifecycle::Spawned), 4U);
  ASSERT_TRUE(await(*loop_, service->stop()));
}

TEST_F(ServiceTest, OnFailureRestartsFailuresButNotASuccess) {
  auto ok = shell("exit 0");
  ok.set_restart(pb::ServiceSpec::ON_FAILURE);
  auto fine = make(ok, {}, "fine");
  fine->start();
  ASSERT_TRUE(awaitCondition(*loop_, [&] { return fine->state() == pb::ServiceStatus::EXITED; }));
  EXPECT_EQ(fine->status().restarts(), 0U);

  auto bad = shell("exit 1");
  bad.set_restart(pb::ServiceSpec::ON_FAILURE);
  bad.set_max_restarts(2);
  bad.mutable_backoff()->mutable_initial()->set_nanos(1'000'000);
  auto failing = make(bad, {}, "failing");
  failing->start();
  ASSERT_TRUE(
      awaitCondition(*loop_, [&] { return failing->state() == pb::ServiceStatus::FAILED; }));
  EXPECT_EQ(failing->status().restarts(), 1U);
}

TEST_F(ServiceTest, AChildThatIgnoresSigtermIsKilledAfterItsGracePeriod) {
  auto spec = child({"ignore-term"});
  spec.mutable_stop_timeout()->set_nanos(300'000'000);
  auto service = make(spec);
  service->start();
  ASSERT_TRUE(awaitCondition(*loop_, [&] {
    return service->logs()->size() == 1 && service->state() == pb::ServiceStatus::RUNNING;
  }));
  const pid_t pid = service->pid();
  const MonotonicTime asked = loop_->now();
  auto stopped = service->stop();
  EXPECT_EQ(service->state(), pb::ServiceStatus::STOPPING);
  ASSERT_TRUE(await(*loop_, stopped));
  const Duration took = loop_->now() - asked;
  EXPECT_GE(took, 300ms) << "SIGTERM was ignored: only SIGKILL after the grace period ends it";
  EXPECT_LT(took, 3s);
  EXPECT_EQ(service->status().last_exit(), "killed by SIGKILL");
  EXPECT_EQ(service->state(), pb::ServiceStatus::STOPPED);
  EXPECT_TRUE(gone(pid));
  EXPECT_EQ(count(Lifecycle::Restarted), 0U) << "a stop that was asked for is not a crash";
}

TEST_F(ServiceTest, AThousandShortLivedChildrenAreReapedWithNoZombieLeft) {
  // As the daemon is: a subreaper that also buries its children's orphans.
  ASSERT_EQ(::prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  reaper_.reapOrphans(true);
  auto spec = shell("/bin/true & exit 0");  // Each run leaves an orphan behind, too.
  spec.mutable_backoff()->mutable_reset_after()->set_nanos(1);  // Every restart immediate.
  spec.mutable_ready_after()->set_nanos(1);
  auto service = make(spec);
  service->start();
  ASSERT_TRUE(awaitCondition(
      *loop_, [&] { return count(Lifecycle::Exited) >= 1000; }, 60s));
  ASSERT_TRUE(await(*loop_, service->stop()));
  ASSERT_TRUE(awaitPolled(*loop_, [] { return children() == std::pair<int, int>{0, 0}; }));
  EXPECT_GE(count(Lifecycle::Spawned), 1000U);
  EXPECT_EQ(reaper_.watching(), 0U);
  EXPECT_GT(reaper_.orphansReaped(), 0U) << "the grandchildren were buried by the subreaper";
}

TEST_F(ServiceTest, ASocketActivatedChildKeepsAcceptingWhileItIsKilledAndRestarted) {
  spawner::SocketDefinition socket;
  socket.address = net::Address::parse("127.0.0.1:0");
  socket.name = "http";
  auto listening = spawner::ServiceSocket::open(*os_, socket);
  const auto port = static_cast<uint16_t>(
      std::stoi(listening->address().substr(listening->address().rfind(':') + 1)));
  auto spec = child({"serve"});
  spec.add_sockets()->set_address("127.0.0.1:0");
  auto service = make(spec, {listening});
  service->start();
  ASSERT_TRUE(awaitCondition(*loop_, [&] { return service->logs()->size() >= 1; }));
  ASSERT_THAT(lines(*service).front(), HasSubstr("serving as"));

  // A client connects over and over while the child is killed five times.
  ConnectLoop client(port);
  for (int kill = 0; kill < 5; ++kill) {
    const pid_t pid = service->pid();
    const int before = client.answered();
    ASSERT_TRUE(awaitPolled(*loop_, [&] { return client.answered() > before + 20; }));
    ASSERT_EQ(::kill(pid, SIGKILL), 0);
    ASSERT_TRUE(awaitCondition(*loop_, [&] {
      return service->pid() != pid && service->state() == pb::ServiceStatus::RUNNING;
    }));
  }
  const int before = client.answered();
  ASSERT_TRUE(awaitPolled(*loop_, [&] { return client.answered() > before + 20; }));
  client.stop();
  EXPECT_EQ(client.refused(), 0) << "the socket stayed open and listening through every restart";
  EXPECT_GE(client.answers().size(), 6U) << "answers came from every one of the six children";
  EXPECT_EQ(count(Lifecycle::Restarted), 5U);
  ASSERT_TRUE(await(*loop_, service->stop()));
}

TEST_F(ServiceTest, OutputIsCutIntoLinesAndTheLastOnesAreKept) {
  auto spec = child({"chatter", "3000"});
  spec.set_restart(pb::ServiceSpec::NEVER);
  spec.set_log_lines(100);
  auto service = make(spec);
  service->start();
  ASSERT_TRUE(
      awaitCondition(*loop_, [&] { return service->state() == pb::ServiceStatus::EXITED; }));
  const auto out = lines(*service);
  ASSERT_EQ(out.size(), 100U);
  // 20,000 x's without a newline: one piece at the 16 KiB cut, the rest flushed at the exit.
  EXPECT_EQ(out[99], std::string(20000 - spawner::kMaxLineBytes, 'x'));
  EXPECT_EQ(out[98], std::string(spawner::kMaxLineBytes, 'x'));
  EXPECT_EQ(out[97], "line 2999");
  EXPECT_EQ(out[0], "line 2902");
}

TEST_F(ServiceTest, AFailingSpawnNamesTheStepAndANeverServiceEndsFailed) {
  const std::string gone = dir_.file("gone");
  ASSERT_EQ(::mkdir(gone.c_str(), 0755), 0);
  auto spec = shell("true");
  spec.set_working_directory(gone);
  spec.set_restart(pb::ServiceSpec::NEVER);
  auto service = make(spec);  // Checked while the directory exists...
  ASSERT_EQ(::rmdir(gone.c_str()), 0);
  service->start();  // ...and gone by the time it runs.
  EXPECT_EQ(service->state(), pb::ServiceStatus::FAILED);
  EXPECT_THAT(service->status().last_error(), HasSubstr("chdir /bin/sh: No such file"));
  EXPECT_EQ(count(Lifecycle::Spawned), 0U);
}

TEST_F(ServiceTest, StopKillsWhatLeftTheProcessGroupThroughTheServicesCgroup) {
  std::string why;
  auto cgroups = spawner::Cgroups::open(*os_, "auto", dir_.path(), &why);
  if (!cgroups) {
    GTEST_SKIP() << "no writable cgroup v2 here: " << why;
  }
  environment_->cgroups = cgroups.get();
  auto service = make(child({"escape", dir_.file("escaped")}));
  service->start();
  ASSERT_TRUE(awaitCondition(*loop_, [&] { return service->logs()->size() >= 1; }));
  const pid_t escaped = std::stoi(readFile(dir_.file("escaped")));
  EXPECT_NE(::getpgid(escaped), service->pid()) << "it left the process group";
  ASSERT_TRUE(await(*loop_, service->stop()));
  ASSERT_TRUE(awaitPolled(*loop_, [&] { return gone(escaped); }));
  service.reset();
}

TEST(DefinitionTest, EveryProblemIsNamedWithItsField) {
  auto os = posix::makeDefaultPosix();
  posix::ScopedInjector injected(*os);
  TempDir dir("snow-definition-test");
  writeFile(dir.file("script"), "#!/bin/sh\n");
  ASSERT_EQ(::chmod(dir.file("script").c_str(), 0644), 0);  // Not executable.
  pb::ServiceSpec spec;
  spec.set_command(dir.file("script"));
  spec.set_user("no-such-user-here");
  spec.set_group("no-such-group-here");
  (*spec.mutable_limits())["nofile"] = "lots";
  (*spec.mutable_limits())["files"] = "10";
  (*spec.mutable_env())["LISTEN_FDS"] = "3";
  spec.set_stop_signal("TERMINATE");
  spec.set_working_directory("relative");
  spec.add_sockets()->set_address("nowhere");
  try {
    (void)spawner::define(*os, "web", spec, 0, "modules.spawner.services.web");
    FAIL() << "define() accepted a broken spec";
  } catch (const std::invalid_argument& e) {
    const std::string what = e.what();
    EXPECT_THAT(what, HasSubstr("services.web.command: " + dir.file("script") +
                                " is not executable (mode 644)"));
    EXPECT_THAT(what, HasSubstr("services.web.user: no user 'no-such-user-here'"));
    EXPECT_THAT(what, HasSubstr("services.web.group: no group 'no-such-group-here'"));
    EXPECT_THAT(what, HasSubstr("services.web.limits.nofile: 'lots' is not a limit"));
    EXPECT_THAT(what, HasSubstr("services.web.limits: no limit 'files'; known: as, core"));
    EXPECT_THAT(what, HasSubstr("services.web.env.LISTEN_FDS: LISTEN_* variables are set by"));
    EXPECT_THAT(what, HasSubstr("services.web.stop_signal: 'TERMINATE' is not a signal"));
    EXPECT_THAT(what, HasSubstr("services.web.working_directory: 'relative' is not an absolute"));
    EXPECT_THAT(what, HasSubstr("services.web.sockets[0].address: "));
  }

  pb::ServiceSpec missing;
  missing.set_command("no-such-program-anywhere");
  EXPECT_THAT([&] { (void)spawner::define(*os, "x", missing, 0, "x"); },
              ::testing::ThrowsMessage<std::invalid_argument>(
                  HasSubstr("x.command: 'no-such-program-anywhere' is not found in PATH")));
  pb::ServiceSpec found;
  found.set_command("sh");
  found.set_user("0");
  (*found.mutable_limits())["nofile"] = "1024:4096";
  const auto d = spawner::define(*os, "ok", found, 0, "ok");
  EXPECT_THAT(d.program, ::testing::EndsWith("/sh"));
  EXPECT_TRUE(d.setIds);
  EXPECT_EQ(d.uid, 0U);
  ASSERT_EQ(d.limits.size(), 1U);
  EXPECT_EQ(d.limits[0].value.rlim_cur, 1024U);
  EXPECT_EQ(d.limits[0].value.rlim_max, 4096U);
  EXPECT_FALSE(spawner::validServiceName("../etc"));
  EXPECT_TRUE(spawner::validServiceName("web-1@eu.a_b"));
}

}  // namespace
}  // namespace snow::testing
