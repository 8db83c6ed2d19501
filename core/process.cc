#include "snow/core/process.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <csignal>
#include <stdexcept>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>

namespace snow {
namespace {

struct NamedSignal {
  int number;
  std::string_view name;
};

// The signals a supervisor is asked about, by their names without "SIG".
constexpr std::array<NamedSignal, 31> kSignals{{
    {SIGHUP, "HUP"},   {SIGINT, "INT"},       {SIGQUIT, "QUIT"}, {SIGILL, "ILL"},
    {SIGTRAP, "TRAP"}, {SIGABRT, "ABRT"},     {SIGBUS, "BUS"},   {SIGFPE, "FPE"},
    {SIGKILL, "KILL"}, {SIGUSR1, "USR1"},     {SIGSEGV, "SEGV"}, {SIGUSR2, "USR2"},
    {SIGPIPE, "PIPE"}, {SIGALRM, "ALRM"},     {SIGTERM, "TERM"}, {SIGSTKFLT, "STKFLT"},
    {SIGCHLD, "CHLD"}, {SIGCONT, "CONT"},     {SIGSTOP, "STOP"}, {SIGTSTP, "TSTP"},
    {SIGTTIN, "TTIN"}, {SIGTTOU, "TTOU"},     {SIGURG, "URG"},   {SIGXCPU, "XCPU"},
    {SIGXFSZ, "XFSZ"}, {SIGVTALRM, "VTALRM"}, {SIGPROF, "PROF"}, {SIGWINCH, "WINCH"},
    {SIGIO, "IO"},     {SIGPWR, "PWR"},       {SIGSYS, "SYS"},
}};

}  // namespace

ExitStatus ExitStatus::fromWaitStatus(int status) noexcept {
  ExitStatus out;
  if (WIFSIGNALED(status)) {
    out.signal = WTERMSIG(status);
    out.coreDumped = WCOREDUMP(status);
  } else {
    out.code = WEXITSTATUS(status);
  }
  return out;
}

std::string ExitStatus::describe() const {
  if (signal == 0) {
    return fmt::format("exited with code {}", code);
  }
  return fmt::format("killed by {}{}", signalName(signal), coreDumped ? " (core dumped)" : "");
}

std::string signalName(int signal) {
  for (const auto& s : kSignals) {
    if (s.number == signal) {
      return fmt::format("SIG{}", s.name);
    }
  }
  return fmt::format("signal {}", signal);
}

int signalNumber(std::string_view name) noexcept {
  std::string upper;
  for (const char c : name) {
    upper += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  }
  std::string_view bare = upper;
  if (bare.starts_with("SIG")) {
    bare.remove_prefix(3);
  }
  for (const auto& s : kSignals) {
    if (s.name == bare) {
      return s.number;
    }
  }
  int number = 0;
  for (const char c : name) {
    if (c < '0' || c > '9' || number > 64) {
      return 0;
    }
    number = number * 10 + (c - '0');
  }
  return number >= 1 && number <= 64 ? number : 0;
}

ChildReaper::ChildReaper(Dispatcher& loop, posix::Posix& os)
    : loop_(loop), os_(os), onChild_(loop.listenForSignal(SIGCHLD, [this] { reapNow(); })) {}

ChildReaper::~ChildReaper() = default;

Future<ExitStatus> ChildReaper::watch(pid_t pid) {
  if (pid <= 0) {
    throw std::invalid_argument(fmt::format("cannot watch pid {}", pid));
  }
  auto [it, added] = watched_.try_emplace(pid, loop_);
  if (!added) {
    throw std::invalid_argument(fmt::format("pid {} is watched already", pid));
  }
  return it->second.future();
}

void ChildReaper::reapOrphans(bool on) {
  reapOrphans_ = on;
  if (on) {
    loop_.schedule([this] { reapNow(); });  // Orphans that ended before anyone listened.
  }
}

void ChildReaper::reapNow() {
  int status = 0;
  if (reapOrphans_) {
    // One waitpid per ended child, whoever it belongs to: SIGCHLDs merge, so one signal may stand
    // for many children.
    for (;;) {
      const auto r = os_.waitpid(-1, &status, WNOHANG);
      if (!r.ok() || r.value <= 0) {
        return;  // 0: the others still run; ECHILD: no children at all.
      }
      settle(r.value, status);
    }
  }
  std::vector<std::pair<pid_t, int>> ended;
  for (const auto& watched : watched_) {
    const auto r = os_.waitpid(watched.first, &status, WNOHANG);
    if (r.ok() && r.value == watched.first) {
      ended.emplace_back(watched.first, status);
    }
  }
  for (const auto& [pid, endStatus] : ended) {
    settle(pid, endStatus);
  }
}

void ChildReaper::settle(pid_t pid, int status) {
  auto it = watched_.find(pid);
  if (it == watched_.end()) {
    ++orphansReaped_;
    spdlog::debug("reaped orphan pid {}: {}", pid, ExitStatus::fromWaitStatus(status).describe());
    return;
  }
  Promise<ExitStatus> promise = std::move(it->second);
  watched_.erase(it);
  promise.setValue(ExitStatus::fromWaitStatus(status));
}

}  // namespace snow
