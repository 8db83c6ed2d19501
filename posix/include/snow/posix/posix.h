#pragma once

// The only door to the operating system.
//
// Every system call snow-core makes goes through `snow::posix::Posix`, one virtual method per
// call, so that calls can be mocked in tests (tests/mocks/mock_posix.h), checked (CheckedPosix
// turns a failure into std::system_error naming the call and its argument), decorated (LoggingPosix
// traces every call) and audited (tests/tools/direct_call_check fails the suite when code outside
// posix/ calls the OS directly).
//
// Contract of every method:
//   - Thread: any thread. Implementations hold no mutable state.
//   - Errors: never throws (except CheckedPosix, see checked_posix.h). A failure is reported as
//     `errnum != 0` with `errnum` holding the errno the call set; `value` is then what the OS
//     returned (usually -1).
//   - Ownership: file descriptors returned belong to the caller (wrap them in
//     posix::FileDescriptor).

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <dirent.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>

namespace snow::posix {

// The outcome of one system call: the value it returned and the errno it set (0 on success).
template <typename T>
struct Result {
  T value{};
  int errnum = 0;

  [[nodiscard]] bool ok() const noexcept { return errnum == 0; }
};

// One directory entry as readDirectory() reports it.
struct DirectoryEntry {
  std::string name;
  unsigned char type = DT_UNKNOWN;  // DT_REG, DT_DIR, DT_LNK, ... as readdir(3) reports it.
};

// An account as the user database (getpwnam_r, getgrouplist) describes it.
struct UserRecord {
  uid_t uid = 0;
  gid_t gid = 0;  // The primary group.
  std::string home;
  std::string shell;
  std::vector<gid_t> groups;  // Every group the user is in, the primary one included.
};

// What spawn() sets up in the child before it executes `path`. Every step runs in the child
// between clone() and execve(), with async-signal-safe system calls only, in this order: every
// signal's disposition back to default; joining the cgroup (cgroupFd, when clone3 could not start
// it there); setsid (newSession);
// chdir (cwd); the resource limits; stdin/stdout/stderr and passFds placed at 0, 1, 2 and 3, 4, ...
// with every other descriptor closed; setgroups, setresgid, setresuid (setIds); the parent-death
// signal (after the ids, which would clear it); LISTEN_PID; an empty signal mask; execve.
struct SpawnRequest {
  struct Limit {
    int resource = 0;  // RLIMIT_NOFILE, RLIMIT_CORE, ...
    rlimit value{};
  };

  const char* path = nullptr;   // Executed as given: no PATH search.
  char* const* argv = nullptr;  // Null-terminated.
  char* const* envp = nullptr;  // Null-terminated.
  const char* cwd = nullptr;    // Null: the parent's.
  bool newSession = true;       // Its own session and process group (pgid = sid = pid).
  // An open cgroup v2 directory: the child starts there (clone3's CLONE_INTO_CGROUP, so nothing
  // it ever starts is outside, and no migration is paid: moving a process costs ~15 ms on some
  // kernels). Kernels without it: the child moves itself first thing. -1: the parent's cgroup.
  int cgroupFd = -1;
  int stdinFd = -1;  // -1: the parent's stdin, stdout, stderr.
  int stdoutFd = -1;
  int stderrFd = -1;
  std::span<const int> passFds;  // Placed at 3, 4, ...; the child closes every other fd.
  std::span<const Limit> limits;
  bool setIds = false;  // Take uid, gid and groups.
  uid_t uid = 0;
  gid_t gid = 0;
  std::span<const gid_t> groups;
  int parentDeathSignal = 0;  // PR_SET_PDEATHSIG: sent when the spawning thread ends; 0: none.
  // An envp entry "LISTEN_PID=" followed by 20 spaces, owned by the caller: the child writes its
  // own pid there (systemd's socket-activation protocol needs the pid before exec).
  char* listenPidEntry = nullptr;
  // Out: the step that failed ("execve", "setresuid", ...), when spawn() fails in the child.
  const char** failedStep = nullptr;
};

class Posix {
 public:
  virtual ~Posix() = default;

  // Files and descriptors.
  virtual Result<int> open(const char* path, int flags, mode_t mode) = 0;
  virtual Result<int> close(int fd) = 0;
  virtual Result<ssize_t> read(int fd, void* buf, size_t count) = 0;
  virtual Result<ssize_t> write(int fd, const void* buf, size_t count) = 0;
  virtual Result<ssize_t> readv(int fd, const struct iovec* iov, int iovcnt) = 0;
  virtual Result<ssize_t> writev(int fd, const struct iovec* iov, int iovcnt) = 0;
  virtual Result<int> pipe2(int fds[2], int flags) = 0;
  virtual Result<int> dup(int fd) = 0;
  virtual Result<int> dup3(int oldfd, int newfd, int flags) = 0;
  virtual Result<int> fcntl(int fd, int cmd, long arg) = 0;
  virtual Result<int> fstat(int fd, struct stat* out) = 0;
  virtual Result<int> stat(const char* path, struct stat* out) = 0;
  virtual Result<int> lstat(const char* path, struct stat* out) = 0;
  // The target of the symbolic link `path`, as readlink(2) places it in `buf`: at most `size`
  // bytes, not NUL-terminated; `value` is the number of bytes placed (equal to `size` when the
  // target may have been cut short). EINVAL: `path` is not a symbolic link.
  virtual Result<ssize_t> readlink(const char* path, char* buf, size_t size) = 0;
  virtual Result<int> unlink(const char* path) = 0;
  virtual Result<int> rename(const char* from, const char* to) = 0;
  virtual Result<int> mkdir(const char* path, mode_t mode) = 0;
  virtual Result<int> rmdir(const char* path) = 0;
  virtual Result<int> chmod(const char* path, mode_t mode) = 0;
  // Creates a fresh directory (mode 0700) by replacing the trailing "XXXXXX" of `pathTemplate` in
  // place; `value` is `pathTemplate` on success and nullptr on failure.
  virtual Result<char*> mkdtemp(char* pathTemplate) = 0;
  // opendir + readdir + closedir in one call, because a half-read DIR* must never escape posix/.
  // "." and ".." are left out.
  virtual Result<std::vector<DirectoryEntry>> readDirectory(const char* path) = 0;

  // Sockets.
  virtual Result<int> socket(int domain, int type, int protocol) = 0;
  virtual Result<int> socketpair(int domain, int type, int protocol, int fds[2]) = 0;
  virtual Result<int> bind(int fd, const struct sockaddr* addr, socklen_t len) = 0;
  virtual Result<int> listen(int fd, int backlog) = 0;
  virtual Result<int> accept4(int fd, struct sockaddr* addr, socklen_t* len, int flags) = 0;
  virtual Result<int> connect(int fd, const struct sockaddr* addr, socklen_t len) = 0;
  virtual Result<int> shutdown(int fd, int how) = 0;
  virtual Result<int> getsockname(int fd, struct sockaddr* addr, socklen_t* len) = 0;
  virtual Result<int> getpeername(int fd, struct sockaddr* addr, socklen_t* len) = 0;
  virtual Result<int> setsockopt(int fd, int level, int name, const void* value, socklen_t len) = 0;
  virtual Result<int> getsockopt(int fd, int level, int name, void* value, socklen_t* len) = 0;

  // Processes and signals.
  virtual Result<pid_t> getpid() = 0;
  virtual Result<int> kill(pid_t pid, int sig) = 0;
  virtual Result<pid_t> waitpid(pid_t pid, int* status, int options) = 0;
  // posix_spawn(3) reports its error as the return value, not errno; the result normalises that
  // to errnum like every other call.
  virtual Result<pid_t> posixSpawn(const char* path, const posix_spawn_file_actions_t* actions,
                                   const posix_spawnattr_t* attrs, char* const argv[],
                                   char* const envp[]) = 0;
  // Starts a child as `request` says (see SpawnRequest) without fork(): clone(CLONE_VM |
  // CLONE_VFORK), so the cost does not grow with the parent's memory. Returns the child's pid
  // once it executed the program. When a step in the child fails, the child is reaped, errnum is
  // that step's errno and *request.failedStep names it. The child is a child like any other:
  // SIGCHLD and waitpid() report its exit.
  virtual Result<pid_t> spawn(const SpawnRequest& request) = 0;
  virtual Result<int> sigprocmask(int how, const sigset_t* set, sigset_t* old) = 0;
  virtual Result<int> prctl(int option, unsigned long arg2) = 0;

  // Identity and environment. getenv() of an unset name is not a failure: value is nullptr and
  // errnum 0. lookupUser() and lookupGroup() take a name or a decimal id; one that the user
  // database does not know fails with ENOENT. access() checks against the real uid, as
  // access(2) does.
  virtual Result<uid_t> geteuid() = 0;
  virtual Result<const char*> getenv(const char* name) = 0;
  virtual Result<UserRecord> lookupUser(const char* nameOrId) = 0;
  virtual Result<gid_t> lookupGroup(const char* nameOrId) = 0;
  virtual Result<int> access(const char* path, int mode) = 0;

  // Time and randomness.
  virtual Result<int> clockGettime(clockid_t clock, struct timespec* out) = 0;
  virtual Result<ssize_t> getrandom(void* buf, size_t count, unsigned int flags) = 0;

  // Dynamic loading. dlopen(3) and friends report errors through dlerror(), not errno: a failed
  // dlopen() has errnum ENOEXEC and puts dlerror()'s text into *error (when error is not null);
  // a missing symbol has errnum ENOENT.
  virtual Result<void*> dlopen(const char* path, int flags, std::string* error) = 0;
  virtual Result<void*> dlsym(void* handle, const char* symbol) = 0;
  virtual Result<int> dlclose(void* handle) = 0;
};

using PosixPtr = std::unique_ptr<Posix>;

}  // namespace snow::posix
