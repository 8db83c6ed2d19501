#include "real_posix.h"

#include <cerrno>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <unistd.h>

namespace snow::posix {
namespace {

// Wraps the return value of a call that reports failure as -1 + errno. errno is read here, right
// after the call returned and before anything else could overwrite it.
template <typename T>
Result<T> fromReturn(T returned) noexcept {
  return {returned, returned == -1 ? errno : 0};
}

struct DirCloser {
  void operator()(DIR* dir) const noexcept { ::closedir(dir); }
};

}  // namespace

Result<int> RealPosix::open(const char* path, int flags, mode_t mode) {
  return fromReturn(::open(path, flags, mode));
}

Result<int> RealPosix::close(int fd) {
  return fromReturn(::close(fd));
}

Result<ssize_t> RealPosix::read(int fd, void* buf, size_t count) {
  return fromReturn(::read(fd, buf, count));
}

Result<ssize_t> RealPosix::write(int fd, const void* buf, size_t count) {
  return fromReturn(::write(fd, buf, count));
}

Result<ssize_t> RealPosix::readv(int fd, const struct iovec* iov, int iovcnt) {
  return fromReturn(::readv(fd, iov, iovcnt));
}

Result<ssize_t> RealPosix::writev(int fd, const struct iovec* iov, int iovcnt) {
  return fromReturn(::writev(fd, iov, iovcnt));
}

Result<int> RealPosix::pipe2(int fds[2], int flags) {
  return fromReturn(::pipe2(fds, flags));
}

Result<int> RealPosix::dup(int fd) {
  return fromReturn(::dup(fd));
}

Result<int> RealPosix::dup3(int oldfd, int newfd, int flags) {
  return fromReturn(::dup3(oldfd, newfd, flags));
}

Result<int> RealPosix::fcntl(int fd, int cmd, long arg) {
  return fromReturn(::fcntl(fd, cmd, arg));
}

Result<int> RealPosix::fstat(int fd, struct stat* out) {
  return fromReturn(::fstat(fd, out));
}

Result<int> RealPosix::stat(const char* path, struct stat* out) {
  return fromReturn(::stat(path, out));
}

Result<int> RealPosix::lstat(const char* path, struct stat* out) {
  return fromReturn(::lstat(path, out));
}

Result<ssize_t> RealPosix::readlink(const char* path, char* buf, size_t size) {
  return fromReturn(::readlink(path, buf, size));
}

Result<int> RealPosix::unlink(const char* path) {
  return fromReturn(::unlink(path));
}

Result<int> RealPosix::rename(const char* from, const char* to) {
  return fromReturn(::rename(from, to));
}

Result<int> RealPosix::mkdir(const char* path, mode_t mode) {
  return fromReturn(::mkdir(path, mode));
}

Result<int> RealPosix::rmdir(const char* path) {
  return fromReturn(::rmdir(path));
}

Result<int> RealPosix::chmod(const char* path, mode_t mode) {
  return fromReturn(::chmod(path, mode));
}

Result<char*> RealPosix::mkdtemp(char* pathTemplate) {
  char* created = ::mkdtemp(pathTemplate);
  return {created, created == nullptr ? errno : 0};
}

Result<std::vector<DirectoryEntry>> RealPosix::readDirectory(const char* path) {
  const std::unique_ptr<DIR, DirCloser> dir(::opendir(path));
  if (!dir) {
    return {{}, errno};
  }
  std::vector<DirectoryEntry> entries;
  for (;;) {
    // readdir reports both the end and an error as nullptr; only errno tells them apart.
    errno = 0;
    const dirent* entry = ::readdir(dir.get());
    if (entry == nullptr) {
      if (errno != 0) {
        return {std::move(entries), errno};
      }
      break;
    }
    const std::string_view name(entry->d_name);
    if (name != "." && name != "..") {
      entries.push_back({std::string(name), entry->d_type});
    }
  }
  return {std::move(entries), 0};
}

Result<int> RealPosix::socket(int domain, int type, int protocol) {
  return fromReturn(::socket(domain, type, protocol));
}

Result<int> RealPosix::socketpair(int domain, int type, int protocol, int fds[2]) {
  return fromReturn(::socketpair(domain, type, protocol, fds));
}

Result<int> RealPosix::bind(int fd, const struct sockaddr* addr, socklen_t len) {
  return fromReturn(::bind(fd, addr, len));
}

Result<int> RealPosix::listen(int fd, int backlog) {
  return fromReturn(::listen(fd, backlog));
}

Result<int> RealPosix::accept4(int fd, struct sockaddr* addr, socklen_t* len, int flags) {
  return fromReturn(::accept4(fd, addr, len, flags));
}

Result<int> RealPosix::connect(int fd, const struct sockaddr* addr, socklen_t len) {
  return fromReturn(::connect(fd, addr, len));
}

Result<int> RealPosix::shutdown(int fd, int how) {
  return fromReturn(::shutdown(fd, how));
}

Result<int> RealPosix::getsockname(int fd, struct sockaddr* addr, socklen_t* len) {
  return fromReturn(::getsockname(fd, addr, len));
}

Result<int> RealPosix::getpeername(int fd, struct sockaddr* addr, socklen_t* len) {
  return fromReturn(::getpeername(fd, addr, len));
}

Result<int> RealPosix::setsockopt(int fd, int level, int name, const void* value, socklen_t len) {
  return fromReturn(::setsockopt(fd, level, name, value, len));
}

Result<int> RealPosix::getsockopt(int fd, int level, int name, void* value, socklen_t* len) {
  return fromReturn(::getsockopt(fd, level, name, value, len));
}

Result<pid_t> RealPosix::getpid() {
  return {::getpid(), 0};
}

Result<int> RealPosix::kill(pid_t pid, int sig) {
  return fromReturn(::kill(pid, sig));
}

Result<pid_t> RealPosix::waitpid(pid_t pid, int* status, int options) {
  return fromReturn(::waitpid(pid, status, options));
}

Result<pid_t> RealPosix::posixSpawn(const char* path, const posix_spawn_file_actions_t* actions,
                                    const posix_spawnattr_t* attrs, char* const argv[],
                                    char* const envp[]) {
  pid_t pid = -1;
  // posix_spawn returns the error number instead of setting errno.
  const int error = ::posix_spawn(&pid, path, actions, attrs, argv, envp);
  if (error != 0) {
    return {-1, error};
  }
  return {pid, 0};
}

Result<int> RealPosix::sigprocmask(int how, const sigset_t* set, sigset_t* old) {
  return fromReturn(::sigprocmask(how, set, old));
}

Result<int> RealPosix::prctl(int option, unsigned long arg2) {
  return fromReturn(::prctl(option, arg2, 0UL, 0UL, 0UL));
}

Result<int> RealPosix::clockGettime(clockid_t clock, struct timespec* out) {
  return fromReturn(::clock_gettime(clock, out));
}

Result<ssize_t> RealPosix::getrandom(void* buf, size_t count, unsigned int flags) {
  return fromReturn(::getrandom(buf, count, flags));
}

Result<uid_t> RealPosix::geteuid() {
  return {::geteuid(), 0};
}

Result<const char*> RealPosix::getenv(const char* name) {
  return {::getenv(name), 0};
}

namespace {

// A name, or an id written in decimal (as `chown 1000:1000` takes it).
bool parseId(const char* text, unsigned long* out) {
  if (text == nullptr || *text == '\0') {
    return false;
  }
  char* end = nullptr;
  errno = 0;
  *out = std::strtoul(text, &end, 10);
  return errno == 0 && *end == '\0' && *out <= 0xffffffffUL;
}

// Runs a getpw*_r/getgr*_r `call(buffer, size, &found)` with a buffer grown on ERANGE; returns its
// error, ENOENT when there is no such entry.
template <typename Call>
int lookUp(std::vector<char>& buffer, Call call) {
  for (;;) {
    bool found = false;
    const int error = call(buffer.data(), buffer.size(), &found);
    if (error == ERANGE && buffer.size() < (1U << 20)) {
      buffer.resize(buffer.size() * 4);
      continue;
    }
    return error != 0 ? error : found ? 0 : ENOENT;
  }
}

}  // namespace

Result<UserRecord> RealPosix::lookupUser(const char* nameOrId) {
  struct passwd entry {};
  std::vector<char> buffer(4096);
  unsigned long id = 0;
  const bool numeric = parseId(nameOrId, &id);
  const int error = lookUp(buffer, [&](char* data, size_t size, bool* found) {
    struct passwd* result = nullptr;
    const int e = numeric ? ::getpwuid_r(static_cast<uid_t>(id), &entry, data, size, &result)
                          : ::getpwnam_r(nameOrId, &entry, data, size, &result);
    *found = result != nullptr;
    return e;
  });
  if (error != 0) {
    return {{}, error};
  }
  UserRecord record;
  record.uid = entry.pw_uid;
  record.gid = entry.pw_gid;
  record.home = entry.pw_dir != nullptr ? entry.pw_dir : "";
  record.shell = entry.pw_shell != nullptr ? entry.pw_shell : "";
  int count = 16;
  record.groups.resize(static_cast<size_t>(count));
  while (::getgrouplist(entry.pw_name, entry.pw_gid, record.groups.data(), &count) < 0) {
    record.groups.resize(static_cast<size_t>(count));
  }
  record.groups.resize(static_cast<size_t>(count));
  return {std::move(record), 0};
}

Result<gid_t> RealPosix::lookupGroup(const char* nameOrId) {
  struct group entry {};
  std::vector<char> buffer(4096);
  unsigned long id = 0;
  const bool numeric = parseId(nameOrId, &id);
  const int error = lookUp(buffer, [&](char* data, size_t size, bool* found) {
    struct group* result = nullptr;
    const int e = numeric ? ::getgrgid_r(static_cast<gid_t>(id), &entry, data, size, &result)
                          : ::getgrnam_r(nameOrId, &entry, data, size, &result);
    *found = result != nullptr;
    return e;
  });
  return {error == 0 ? entry.gr_gid : 0, error};
}

Result<int> RealPosix::access(const char* path, int mode) {
  return fromReturn(::access(path, mode));
}

Result<void*> RealPosix::dlopen(const char* path, int flags, std::string* error) {
  void* handle = ::dlopen(path, flags);
  if (handle == nullptr) {
    const char* text = ::dlerror();
    if (error != nullptr) {
      *error = text != nullptr ? text : "dlopen failed";
    }
    return {nullptr, ENOEXEC};
  }
  return {handle, 0};
}

Result<void*> RealPosix::dlsym(void* handle, const char* symbol) {
  ::dlerror();  // Clear: a symbol's value may legitimately be null.
  void* address = ::dlsym(handle, symbol);
  if (::dlerror() != nullptr) {
    return {nullptr, ENOENT};
  }
  return {address, 0};
}

Result<int> RealPosix::dlclose(void* handle) {
  if (::dlclose(handle) != 0) {
    return {-1, ELIBBAD};
  }
  return {0, 0};
}

}  // namespace snow::posix
