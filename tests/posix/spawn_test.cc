// RealPosix::spawn (posix.h: SpawnRequest) with real children: each step of the request as the
// child sees it (reported by a shell through a pipe), failures named by their step, and no
// zombie left behind by a child that never executed.

#include <cerrno>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../../posix/real_posix.h"

namespace snow::posix {
namespace {

using ::testing::HasSubstr;

// Runs `script` with /bin/sh as `request` says (argv and envp filled here, stdout a pipe) and
// returns {exit status, what it printed as "key=value" lines}.
struct ChildRun {
  int status = -1;
  std::map<std::string, std::string> values;
  std::string output;
};

ChildRun runShell(RealPosix& os, const std::string& script, SpawnRequest request,
                  std::vector<char*> environment = {}) {
  std::vector<std::string> args{"/bin/sh", "-c", script};
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (auto& a : args) {
    argv.push_back(a.data());
  }
  argv.push_back(nullptr);
  std::vector<char*> envp = std::move(environment);
  envp.push_back(nullptr);
  int out[2];
  EXPECT_EQ(::pipe2(out, O_CLOEXEC), 0);
  request.path = "/bin/sh";
  request.argv = argv.data();
  request.envp = envp.data();
  request.stdoutFd = out[1];
  const Result<pid_t> pid = os.spawn(request);
  ::close(out[1]);
  ChildRun run;
  if (!pid.ok()) {
    ::close(out[0]);
    ADD_FAILURE() << "spawn failed: errno " << pid.errnum;
    return run;
  }
  char buffer[4096];
  for (ssize_t n; (n = ::read(out[0], buffer, sizeof buffer)) > 0;) {
    run.output.append(buffer, static_cast<size_t>(n));
  }
  ::close(out[0]);
  EXPECT_EQ(::waitpid(pid.value, &run.status, 0), pid.value);
  std::istringstream lines(run.output);
  for (std::string line; std::getline(lines, line);) {
    const size_t eq = line.find('=');
    if (eq != std::string::npos) {
      run.values[line.substr(0, eq)] = line.substr(eq + 1);
    }
  }
  run.values["pid"] = std::to_string(pid.value);
  return run;
}

TEST(SpawnTest, TheChildGetsItsSessionDirectoryLimitsDescriptorsAndListenPid) {
  RealPosix os;
  int sockets[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sockets), 0);
  const int passed[] = {sockets[0]};
  const SpawnRequest::Limit limits[] = {{RLIMIT_NOFILE, {321, 654}}};
  std::string listenPid = "LISTEN_PID=" + std::string(20, ' ');
  SpawnRequest request;
  request.cwd = "/tmp";
  request.passFds = passed;
  request.limits = limits;
  request.listenPidEntry = listenPid.data();
  const std::string script =
      "echo self=$$; echo listen=$LISTEN_PID; echo pgid=$(cut -d' ' -f5 /proc/$$/stat); "
      "echo sid=$(cut -d' ' -f6 /proc/$$/stat); echo cwd=$(pwd); echo nofile=$(ulimit -n); "
      "echo nofilehard=$(ulimit -Hn); echo fds=$(ls /proc/$$/fd | sort -n | tr '\\n' ' '); "
      "echo fd3=$(readlink /proc/$$/fd/3 | cut -c1-7); "
      "grep -E '^Sig(Blk|Ign)' /proc/$$/status | tr -d ':\\t' | sed "
      "'s/^SigBlk/blk=/;s/^SigIgn/ign=/'";
  // Not close-on-exec, and not passed: the child must not have it.
  const int stray = ::dup(sockets[1]);
  ASSERT_GT(stray, 4);
  const ChildRun run = runShell(os, script, request, {listenPid.data()});
  ::close(sockets[0]);
  ::close(sockets[1]);
  ::close(stray);
  ASSERT_TRUE(WIFEXITED(run.status)) << run.output;
  EXPECT_EQ(WEXITSTATUS(run.status), 0) << run.output;
  EXPECT_EQ(run.values.at("self"), run.values.at("pid")) << "the shell is the child itself";
  EXPECT_EQ(run.values.at("listen"), run.values.at("pid")) << run.output;
  EXPECT_EQ(run.values.at("pgid"), run.values.at("pid")) << "its own process group";
  EXPECT_EQ(run.values.at("sid"), run.values.at("pid")) << "its own session";
  EXPECT_EQ(run.values.at("cwd"), "/tmp");
  EXPECT_EQ(run.values.at("nofile"), "321");
  EXPECT_EQ(run.values.at("nofilehard"), "654");
  // 0-2 and the passed socket at 3 (then the shell's own pipe for $(...), if any); not the stray.
  EXPECT_THAT(run.values.at("fds"), ::testing::StartsWith("0 1 2 3 ")) << run.output;
  EXPECT_THAT(" " + run.values.at("fds"),
              ::testing::Not(HasSubstr(" " + std::to_string(stray) + " ")))
      << run.output;
  EXPECT_EQ(run.values.at("fd3"), "socket:");
  EXPECT_EQ(run.values.at("blk"), "0000000000000000") << "no signal blocked";
}

TEST(SpawnTest, IgnoredSignalsAreDefaultAgainInTheChild) {
  RealPosix os;
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  struct sigaction previous {};
  ASSERT_EQ(::sigaction(SIGUSR1, &ignore, &previous), 0);
  const ChildRun run = runShell(
      os, "grep '^SigIgn' /proc/$$/status | tr -d ':\\t' | sed 's/SigIgn/ign=/'", SpawnRequest{});
  ::sigaction(SIGUSR1, &previous, nullptr);
  // The shell ignores nothing of its own when not interactive; SIGUSR1 is bit 9 (0x200).
  const unsigned long ignored = std::stoul(run.values.at("ign"), nullptr, 16);
  EXPECT_EQ(ignored & (1UL << (SIGUSR1 - 1)), 0UL) << run.output;
}

TEST(SpawnTest, UserAndGroupsAreTheRequestedOnes) {
  if (::geteuid() != 0) {
    GTEST_SKIP() << "changing ids needs root";
  }
  RealPosix os;
  const gid_t groups[] = {100, 27};
  SpawnRequest request;
  request.setIds = true;
  request.uid = 65534;
  request.gid = 65534;
  request.groups = groups;
  request.parentDeathSignal = SIGKILL;
  const ChildRun run =
      runShell(os, "echo uid=$(id -u); echo gid=$(id -g); echo groups=$(id -G)", request);
  EXPECT_EQ(run.values.at("uid"), "65534") << run.output;
  EXPECT_EQ(run.values.at("gid"), "65534");
  EXPECT_EQ(run.values.at("groups"), "65534 27 100");
}

TEST(SpawnTest, AFailingStepIsNamedAndLeavesNoChild) {
  RealPosix os;
  std::string arg0 = "/nonexistent/program";
  char* argv[] = {arg0.data(), nullptr};
  char* envp[] = {nullptr};
  const char* step = nullptr;
  SpawnRequest request;
  request.path = arg0.c_str();
  request.argv = argv;
  request.envp = envp;
  request.failedStep = &step;
  const Result<pid_t> missing = os.spawn(request);
  EXPECT_EQ(missing.errnum, ENOENT);
  ASSERT_NE(step, nullptr);
  EXPECT_STREQ(step, "execve");

  request.path = "/bin/true";
  request.cwd = "/nonexistent-directory";
  step = nullptr;
  const Result<pid_t> badCwd = os.spawn(request);
  EXPECT_EQ(badCwd.errnum, ENOENT);
  EXPECT_STREQ(step, "chdir");
  // Both children were reaped by spawn(): none is left to wait for.
  EXPECT_EQ(::waitpid(-1, nullptr, WNOHANG), -1);
  EXPECT_EQ(errno, ECHILD);

  request.argv = nullptr;
  EXPECT_EQ(os.spawn(request).errnum, EINVAL);
}

}  // namespace
}  // namespace snow::posix
