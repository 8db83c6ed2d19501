#include "daemon_process.h"

#include <algorithm>
#include <csignal>
#include <cstring>
#include <stdexcept>
#include <system_error>

#include <fcntl.h>
#include <fmt/format.h>
#include <spawn.h>
#include <sys/wait.h>

#include "snow/posix/active.h"

extern char** environ;

namespace snow::testing {

DaemonProcess::DaemonProcess(Dispatcher& loop, const std::string& program,
                             const std::vector<std::string>& args,
                             const std::vector<std::string>& extraEnvironment)
    : loop_(loop) {
  auto& os = posix::active();
  int fds[2];
  if (auto r = os.pipe2(fds, O_CLOEXEC); !r.ok()) {
    throw std::system_error(r.errnum, std::system_category(), "pipe2");
  }
  posix::FileDescriptor reader(fds[0]);
  posix::FileDescriptor writer(fds[1]);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, writer.get(), STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, writer.get(), STDERR_FILENO);
  std::vector<std::string> argv{program};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> cargv;
  for (auto& a : argv) {
    cargv.push_back(a.data());
  }
  cargv.push_back(nullptr);
  std::vector<std::string> environment = extraEnvironment;
  // Every daemon gets its own control socket unless the test chose one, so that tests run side
  // by side (and beside a real daemon on this machine).
  const bool chosen = std::any_of(environment.begin(), environment.end(),
                                  [](const auto& e) { return e.starts_with("SNOW_RPC_SOCKET="); });
  if (chosen) {
    for (const auto& e : environment) {
      if (e.starts_with("SNOW_RPC_SOCKET=")) {
        socketPath_ = e.substr(std::strlen("SNOW_RPC_SOCKET="));
      }
    }
  } else {
    static int counter = 0;
    socketPath_ = fmt::format("/tmp/snow-test-{}-{}/rpc.sock", os.getpid().value, ++counter);
    environment.push_back("SNOW_RPC_SOCKET=" + socketPath_);
  }
  std::vector<char*> cenv;
  for (auto& e : environment) {
    cenv.push_back(e.data());
  }
  for (char** e = environ; *e != nullptr; ++e) {
    cenv.push_back(*e);
  }
  cenv.push_back(nullptr);
  auto spawned = os.posixSpawn(program.c_str(), &actions, nullptr, cargv.data(), cenv.data());
  posix_spawn_file_actions_destroy(&actions);
  if (!spawned.ok()) {
    throw std::system_error(spawned.errnum, std::system_category(), "posix_spawn " + program);
  }
  pid_ = spawned.value;
  writer.reset();  // Only the child writes: EOF on the pipe means it exited.
  os.fcntl(reader.get(), F_SETFL, O_NONBLOCK);
  output_ = std::move(reader);
  watch_ = loop_.createFileEvent(
      output_.get(), [this](uint32_t) { readAvailable(); }, FileReady::kRead);
}

DaemonProcess::~DaemonProcess() {
  watch_.reset();
  if (pid_ > 0 && exitCode_ < 0) {
    (void)posix::active().kill(pid_, SIGKILL);
    int status = 0;
    (void)posix::active().waitpid(pid_, &status, 0);
  }
}

void DaemonProcess::readAvailable() {
  char buffer[8192];
  for (;;) {
    auto r = posix::active().read(output_.get(), buffer, sizeof(buffer));
    if (!r.ok()) {
      return;  // EAGAIN.
    }
    if (r.value == 0) {
      closed_ = true;
      watch_.reset();
      return;
    }
    log_.append(buffer, static_cast<size_t>(r.value));
  }
}

size_t DaemonProcess::waitForLog(const std::string& text, size_t from,
                                 std::chrono::milliseconds deadline) {
  size_t found = std::string::npos;
  loop_.runUntil(
      [&] {
        found = log_.find(text, std::min(from, log_.size()));
        return found != std::string::npos || closed_;
      },
      deadline);
  return found;
}

void DaemonProcess::signal(int sig) {
  (void)posix::active().kill(pid_, sig);
}

int DaemonProcess::waitForExit(std::chrono::milliseconds deadline) {
  if (exitCode_ >= 0) {
    return exitCode_;
  }
  // The child closes its output when it exits: wait for that on the loop, then reap it.
  if (!loop_.runUntil([&] { return closed_; }, deadline)) {
    return -1;
  }
  int status = 0;
  auto r = posix::active().waitpid(pid_, &status, 0);
  if (!r.ok()) {
    return -1;
  }
  exitCode_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return exitCode_;
}

std::pair<int, std::string> runDaemon(Dispatcher& loop, const std::vector<std::string>& args) {
  DaemonProcess daemon(loop, args);
  const int code = daemon.waitForExit();
  return {code, daemon.log()};
}

std::pair<int, std::string> runProgram(Dispatcher& loop, const std::string& program,
                                       const std::vector<std::string>& args,
                                       const std::vector<std::string>& extraEnvironment) {
  DaemonProcess process(loop, program, args, extraEnvironment);
  const int code = process.waitForExit();
  return {code, process.log()};
}

}  // namespace snow::testing
