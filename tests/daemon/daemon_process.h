#pragma once

// A real snow-core process for tests: spawned with arguments, its log (stderr and stdout) read on
// a test loop, so that tests wait for log lines and exit with deadlines instead of sleeping.

#include <chrono>
#include <string>
#include <vector>

#include <sys/types.h>

#include "snow/core/dispatcher.h"
#include "snow/posix/file_descriptor.h"

namespace snow::testing {

class DaemonProcess {
 public:
  // Starts SNOW_DAEMON with `args`, and this process's environment plus `extraEnvironment`
  // ("NAME=value" entries). `loop` runs while waiting.
  DaemonProcess(Dispatcher& loop, const std::vector<std::string>& args,
                const std::vector<std::string>& extraEnvironment = {})
      : DaemonProcess(loop, SNOW_DAEMON, args, extraEnvironment) {}
  // Any other program (snowctl), the same way.
  DaemonProcess(Dispatcher& loop, const std::string& program, const std::vector<std::string>& args,
                const std::vector<std::string>& extraEnvironment);
  ~DaemonProcess();  // SIGKILLs and reaps it if still running.
  DaemonProcess(const DaemonProcess&) = delete;
  DaemonProcess& operator=(const DaemonProcess&) = delete;

  [[nodiscard]] pid_t pid() const noexcept { return pid_; }
  [[nodiscard]] const std::string& log() const noexcept { return log_; }
  // Its control socket (SNOW_RPC_SOCKET: chosen by the test, or a fresh one under /tmp), and
  // the same as a snowctl --node address.
  [[nodiscard]] const std::string& socketPath() const noexcept { return socketPath_; }
  [[nodiscard]] std::string node() const { return "unix:" + socketPath_; }

  // Waits until the log contains `text` (after byte `from`); returns its offset, or npos at the
  // deadline or when the process closed its output first.
  size_t waitForLog(const std::string& text, size_t from = 0,
                    std::chrono::milliseconds deadline = std::chrono::seconds(20));

  void signal(int sig);

  // Waits for the process to exit; returns its exit code (128 + signal when killed), or -1 at the
  // deadline.
  int waitForExit(std::chrono::milliseconds deadline = std::chrono::seconds(20));

 private:
  void readAvailable();

  Dispatcher& loop_;
  pid_t pid_ = -1;
  posix::FileDescriptor output_;
  FileEventPtr watch_;
  std::string log_;
  std::string socketPath_;
  bool closed_ = false;
  int exitCode_ = -1;
};

// Runs the daemon with `args` to completion; returns {exit code, log}.
std::pair<int, std::string> runDaemon(Dispatcher& loop, const std::vector<std::string>& args);
// Runs `program` with `args` to completion; returns {exit code, stdout and stderr}.
std::pair<int, std::string> runProgram(Dispatcher& loop, const std::string& program,
                                       const std::vector<std::string>& args,
                                       const std::vector<std::string>& extraEnvironment = {});

}  // namespace snow::testing
