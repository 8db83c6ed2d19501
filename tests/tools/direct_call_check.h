#pragma once

// Finds direct operating-system calls in C++ source text.
//
// snow-core reaches the OS only through snow::posix::Posix (posix/), so that every call can be
// mocked, checked and traced. This scanner lets the test suite enforce that: it reports calls of
// the functions in kOsFunctions made anywhere outside posix/ and tests/.
//
// It is a lexical scanner, not a compiler: small, fast and good enough for code written in this
// project's style. The rules:
//   1. Comments, string literals (raw ones too) and character literals are blanked first, so
//      `"open("` and `// write(` are never calls.
//   2. A candidate is a name of kOsFunctions as a whole word followed by optional whitespace and
//      `(`: `reopen(` and `open_count` are not candidates.
//   3. Member calls are not OS calls: a name preceded by `.` or `->` is ignored.
//   4. Qualified names: `::open(` (global) and `std::signal(` (std's C functions are the OS too)
//      are calls; `snow::posix::open(`, `posix::open(`, `Foo<T>::open(` name something of ours
//      and are ignored.
//   5. Declarations are not calls: a name whose preceding token is an identifier (`int open(`,
//      `Result<int> open(`), `>`, `*` or `&` is taken for a declaration or definition and ignored,
//      except after the expression keywords `return`, `co_return`, `co_await`, `co_yield`,
//      `throw`, `else`, `do`, `case`, `new`, `not`, `and`, `or`. Anything else before the name
//      (start of text, `(`, `,`, `=`, `;`, `{`, `}`, `)`, `!`, `&&`, `||`, `?`, `:`, ...) makes
//      it a call.
//
// Known limits (accepted for the sake of a small tool):
//   - `a > read(fd)`, `a * read(fd)` and `a & read(fd)` look like declarations and are missed; so
//     is a call through a function pointer (`auto f = &::open;` has no `(` after the name).
//   - A class calling its own member named like an OS function without `this->` (e.g. `write(x)`
//     inside a method) is reported; write `this->write(x)` or pick another name. So is gmock's
//     `EXPECT_CALL(posix, close(fd))`, which is one reason tests/ is not scanned.
//   - `using ::open;` followed by `open(` in a scope, or macros that paste a name together, hide a
//     call; a macro body such as `#define X ::close(` is reported where it is defined.
//   - Only the functions listed below are known; std::filesystem, std::fstream, std::thread and
//     other library code that reaches the OS on its own is not this tool's concern.
//
// Thread: all functions are pure (scanTree reads files). Errors: scanTree throws
// std::filesystem::filesystem_error when the tree cannot be read.

#include <array>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace snow::tools {

// The OS functions a call of which outside posix/ is an offence, by area.
inline constexpr auto kOsFunctions = std::to_array<std::string_view>(
    {// Files and descriptors.
     "open", "openat", "creat", "close", "read", "write", "pread", "pwrite", "readv", "writev",
     "lseek", "pipe", "pipe2", "dup", "dup2", "dup3", "fcntl", "ioctl", "stat", "fstat", "lstat",
     "fstatat", "unlink", "unlinkat", "rename", "renameat", "mkdir", "mkdirat", "rmdir", "chmod",
     "fchmod", "chown", "fchown", "lchown", "symlink", "readlink", "ftruncate", "fsync",
     "fdatasync", "chdir", "fchdir", "umask", "mkdtemp", "mkstemp", "opendir", "readdir",
     "closedir", "sendfile", "memfd_create", "inotify_init", "inotify_init1", "inotify_add_watch",
     // Sockets.
     "socket", "socketpair", "bind", "listen", "accept", "accept4", "connect", "shutdown", "send",
     "sendto", "sendmsg", "recv", "recvfrom", "recvmsg", "getsockname", "getpeername", "setsockopt",
     "getsockopt",
     // Processes.
     "fork", "vfork", "clone", "execve", "execv", "execvp", "execvpe", "execl", "execlp", "execle",
     "fexecve", "posix_spawn", "posix_spawnp", "kill", "killpg", "waitpid", "wait", "wait4",
     "waitid", "prctl", "setsid", "setpgid", "getpid", "getppid", "getuid", "geteuid", "getgid",
     "getegid", "getrlimit", "setrlimit", "system", "popen",
     // Signals.
     "signal", "sigaction", "sigprocmask", "pthread_sigmask", "raise", "sigwait", "sigsuspend",
     "sigtimedwait", "signalfd",
     // Event notification and memory.
     "mmap", "munmap", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait",
     "poll", "ppoll", "select", "pselect", "eventfd", "timerfd_create",
     // Time and randomness.
     "clock_gettime", "clock_nanosleep", "gettimeofday", "time", "nanosleep", "sleep", "usleep",
     "getrandom",
     // Dynamic loading.
     "dlopen", "dlsym", "dlclose",
     // Environment.
     "getenv", "secure_getenv", "setenv", "unsetenv", "putenv", "clearenv"});

// One call found: the 1-based line and the function called.
struct DirectCall {
  int line = 0;
  std::string function;

  friend bool operator==(const DirectCall&, const DirectCall&) = default;
};

// `source` with comments, string literals and character literals replaced by spaces (the quotes
// themselves are kept), newlines preserved so that line numbers still match.
std::string blankCommentsAndLiterals(std::string_view source);

// The direct OS calls in `source`, in order, by the rules above.
std::vector<DirectCall> findDirectCalls(std::string_view source);

// One offence of a source tree: `file` is relative to the scanned root.
struct Offence {
  std::string file;
  DirectCall call;
};

// Scans every .h/.cc/.cpp/.inc file under `root`, except the top-level directories named in
// `excludedTopLevel`, hidden directories (.git, .cache) and build trees (any directory holding a
// CMakeCache.txt). Offences are sorted by file, then line.
std::vector<Offence> scanTree(const std::filesystem::path& root,
                              const std::vector<std::string>& excludedTopLevel);

// "core/loop.cc:42: close(" lines, one per offence, for a test failure message.
std::string formatOffences(const std::vector<Offence>& offences);

}  // namespace snow::tools
