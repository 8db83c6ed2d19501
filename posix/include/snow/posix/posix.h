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
#include <string>
#include <vector>

#include <dirent.h>
#include <signal.h>
#include <spawn.h>
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
  virtual Result<int> sigprocmask(int how, const sigset_t* set, sigset_t* old) = 0;
  virtual Result<int> prctl(int option, unsigned long arg2) = 0;

  // Identity and environment. getenv() of an unset name is not a failure: value is nullptr and
  // errnum 0.
  virtual Result<uid_t> geteuid() = 0;
  virtual Result<const char*> getenv(const char* name) = 0;

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
