#pragma once

// Child processes: how they ended, and reaping them from the loop.
//
// A process has one reaper: whoever calls waitpid() for a child gets its status, and nobody else
// can. So every module that starts children (posix::Posix::spawn) hands them to the one
// ChildReaper of the process (StaticContext::children()) and gets the exit status as a future.
// The reaper waits for SIGCHLD on the loop, never blocks, and reaps every child that ended in one
// pass. In the daemon it also reaps orphans: the daemon is a child subreaper
// (PR_SET_CHILD_SUBREAPER), so the children of a service that outlive it become the daemon's
// children, and the reaper buries them so that no zombie is left (reapOrphans()).
//
// Contract:
//   - Thread: loop thread (the Dispatcher's), for every method.
//   - Ownership: the reaper keeps a promise per watched child; destroying the reaper breaks them
//     (BrokenPromise), so nothing waits forever.
//   - Errors: watch() throws std::invalid_argument for a pid that is already watched or not
//     positive.

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>

#include <sys/types.h>

#include "snow/core/dispatcher.h"
#include "snow/core/future.h"
#include "snow/posix/posix.h"

namespace snow {

// How a child ended, decoded from waitpid()'s status.
struct ExitStatus {
  int code = 0;    // The exit code, when it exited (signal == 0).
  int signal = 0;  // The signal that killed it; 0 when it exited.
  bool coreDumped = false;

  static ExitStatus fromWaitStatus(int status) noexcept;
  [[nodiscard]] bool success() const noexcept { return signal == 0 && code == 0; }
  [[nodiscard]] bool exited() const noexcept { return signal == 0; }
  // "exited with code 3", "killed by SIGKILL", "killed by SIGSEGV (core dumped)".
  [[nodiscard]] std::string describe() const;
};

// "SIGTERM" for SIGTERM, "signal 42" for one without a name.
std::string signalName(int signal);
// The signal called `name` ("TERM", "SIGTERM", "sigterm", or a number), or 0 for none.
int signalNumber(std::string_view name) noexcept;

class ChildReaper {
 public:
  ChildReaper(Dispatcher& loop, posix::Posix& os);
  ~ChildReaper();
  ChildReaper(const ChildReaper&) = delete;
  ChildReaper& operator=(const ChildReaper&) = delete;

  // The exit status of `pid`, a child of this process that nobody reaped yet. Call it in the same
  // loop callback that started the child: the reaper only reaps watched children (or, with
  // reapOrphans(), every child), so a child that ends before watch() is still found.
  Future<ExitStatus> watch(pid_t pid);

  // Also reap children nobody watches, counting them (the subreaper's duty). Off by default so
  // that a process with other ways of waiting (tests) keeps its children's statuses.
  void reapOrphans(bool on);

  // Reaps every child that has ended. The SIGCHLD handler calls it; tests may too.
  void reapNow();

  [[nodiscard]] size_t watching() const noexcept { return watched_.size(); }
  [[nodiscard]] uint64_t orphansReaped() const noexcept { return orphansReaped_; }

 private:
  void settle(pid_t pid, int status);

  Dispatcher& loop_;
  posix::Posix& os_;
  SignalEventPtr onChild_;
  std::unordered_map<pid_t, Promise<ExitStatus>> watched_;
  bool reapOrphans_ = false;
  uint64_t orphansReaped_ = 0;
};

}  // namespace snow
