#include "containers/dockerd.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;  // NOLINT(readability-identifier-naming): POSIX names it.

namespace snow::containers::testing {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr const char* kBusybox = "/bin/busybox";
// How often start() asks whether dockerd answers, and stop() whether it exited.
constexpr auto kPollInterval = std::chrono::milliseconds(20);
constexpr auto kStopTimeout = std::chrono::seconds(20);

std::string findDockerd() {
  std::vector<std::string> candidates = {"/usr/sbin/dockerd", "/usr/bin/dockerd"};
  if (const char* path = std::getenv("PATH")) {
    std::stringstream dirs(path);
    for (std::string dir; std::getline(dirs, dir, ':');) {
      if (!dir.empty()) {
        candidates.push_back(dir + "/dockerd");
      }
    }
  }
  for (const std::string& candidate : candidates) {
    if (::access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
  }
  return "";
}

std::string readWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw std::runtime_error("cannot read " + path);
  }
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// True when the engine at `socket` answers GET /_ping with 200 (one try, short timeouts).
bool answersPing(const std::string& socket) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return false;
  }
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, socket.c_str(), sizeof(address.sun_path) - 1);
  const timeval timeout{.tv_sec = 1, .tv_usec = 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  bool ok = false;
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) == 0) {
    const std::string request = "GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n";
    if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
        static_cast<ssize_t>(request.size())) {
      char buffer[64] = {};
      const ssize_t n = ::recv(fd, buffer, sizeof(buffer) - 1, 0);
      ok = n > 0 &&
           std::string_view(buffer, static_cast<size_t>(n)).find(" 200 ") != std::string_view::npos;
    }
  }
  ::close(fd);
  return ok;
}

// The mount points under `root` (dockerd's overlay and shm mounts it failed to undo).
std::vector<std::string> mountsUnder(const std::string& root) {
  std::vector<std::string> mounts;
  std::ifstream in("/proc/self/mountinfo");
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::string id, parent, device, source, point;
    fields >> id >> parent >> device >> source >> point;
    if (point.starts_with(root + "/")) {
      mounts.push_back(point);
    }
  }
  // Deepest first.
  std::sort(mounts.begin(), mounts.end(),
            [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  return mounts;
}

// The exit status of `pid` once it exited, polling until `deadline`; -1 when it is still running.
int reapBy(pid_t pid, Clock::time_point deadline) {
  while (true) {
    int status = 0;
    const pid_t reaped = ::waitpid(pid, &status, WNOHANG);
    if (reaped == pid || (reaped < 0 && errno == ECHILD)) {
      return status;
    }
    if (Clock::now() >= deadline) {
      return -1;
    }
    std::this_thread::sleep_for(kPollInterval);
  }
}

}  // namespace

std::string missingPrerequisites() {
  std::string missing;
  if (::geteuid() != 0) {
    missing += "root (the suite runs dockerd and containers; uid is " +
               std::to_string(::geteuid()) + "); ";
  }
  if (findDockerd().empty()) {
    missing += "dockerd (not in /usr/sbin, /usr/bin or PATH; Debian: apt-get install docker.io); ";
  }
  if (::access(kBusybox, X_OK) != 0) {
    missing += std::string(kBusybox) + " (the test images' only binary; Debian: apt-get install " +
               "busybox-static); ";
  }
  if (!missing.empty()) {
    missing = "the Docker tests need " + missing.substr(0, missing.size() - 2);
  }
  return missing;
}

std::unique_ptr<TestDockerd> TestDockerd::start(const std::vector<std::string>& storageDrivers,
                                                std::chrono::milliseconds timeout) {
  if (std::string missing = missingPrerequisites(); !missing.empty()) {
    throw std::runtime_error(missing);
  }
  const std::string dockerd = findDockerd();
  std::string pattern = "/tmp/snow-dockerd-XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) {
    throw std::runtime_error("mkdtemp " + pattern + ": " + std::strerror(errno));
  }
  std::unique_ptr<TestDockerd> d(new TestDockerd());
  d->root_ = pattern;
  d->socket_ = d->root_ + "/docker.sock";

  // dockerd looks for containerd, runc and docker-init on PATH.
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    if (!std::string_view(*e).starts_with("PATH=")) {
      env.emplace_back(*e);
    }
  }
  env.emplace_back("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
  std::vector<char*> envp;
  envp.reserve(env.size() + 1);
  for (std::string& e : env) {
    envp.push_back(e.data());
  }
  envp.push_back(nullptr);

  std::string failures;
  for (const std::string& driver : storageDrivers) {
    d->driver_ = driver;
    d->log_ = d->root_ + "/dockerd-" + driver + ".log";
    std::vector<std::string> args = {dockerd,
                                     "--data-root=" + d->root_ + "/data-" + driver,
                                     "--exec-root=" + d->root_ + "/exec",
                                     "--pidfile=" + d->root_ + "/dockerd.pid",
                                     "--host=unix://" + d->socket_,
                                     "--iptables=false",
                                     "--ip-forward=false",
                                     "--ip-masq=false",
                                     "--bridge=none",
                                     "--storage-driver=" + driver};
    std::vector<char*> argv;
    argv.reserve(args.size() + 1);
    for (std::string& a : args) {
      argv.push_back(a.data());
    }
    argv.push_back(nullptr);

    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attributes;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, d->log_.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                     0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    posix_spawnattr_init(&attributes);
    // Its own session: stop() can kill the whole group (containerd) if it must.
    posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSID);
    pid_t pid = -1;
    const int rc =
        ::posix_spawn(&pid, dockerd.c_str(), &actions, &attributes, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attributes);
    if (rc != 0) {
      throw std::runtime_error("cannot start " + dockerd + ": " + std::strerror(rc));
    }
    d->pid_ = pid;

    const auto deadline = Clock::now() + timeout;
    bool exited = false;
    while (Clock::now() < deadline) {
      if (answersPing(d->socket_)) {
        return d;
      }
      int status = 0;
      if (::waitpid(pid, &status, WNOHANG) == pid) {
        exited = true;
        break;
      }
      std::this_thread::sleep_for(kPollInterval);
    }
    failures += "with --storage-driver=" + driver +
                (exited ? ", dockerd exited" : ", dockerd did not answer /_ping in time") +
                "; its log ends:\n" + d->logTail() + "\n";
    if (!exited) {
      d->stop();
    }
    d->pid_ = -1;
    std::error_code ignored;
    for (const std::string& mount : mountsUnder(d->root_)) {
      ::umount2(mount.c_str(), MNT_DETACH);
    }
    fs::remove_all(d->root_ + "/exec", ignored);
    fs::remove(d->socket_, ignored);
  }
  throw std::runtime_error("dockerd (" + dockerd + ") did not start " + failures);
}

TestDockerd::~TestDockerd() {
  stop();
  for (const std::string& mount : mountsUnder(root_)) {
    ::umount2(mount.c_str(), MNT_DETACH);
  }
  std::error_code ignored;
  fs::remove_all(root_, ignored);
}

void TestDockerd::stop() {
  if (pid_ <= 0) {
    return;
  }
  ::kill(pid_, SIGTERM);
  if (reapBy(pid_, Clock::now() + kStopTimeout) < 0) {
    ADD_FAILURE() << "dockerd (pid " << pid_ << ") ignored SIGTERM for 20 s; killing it. Its log:\n"
                  << logTail();
    ::kill(-pid_, SIGKILL);
    (void)reapBy(pid_, Clock::now() + kStopTimeout);
  }
  pid_ = -1;
}

std::string TestDockerd::logTail(size_t lines) const {
  std::ifstream in(log_);
  std::deque<std::string> tail;
  for (std::string line; std::getline(in, line);) {
    tail.push_back(std::move(line));
    if (tail.size() > lines) {
      tail.pop_front();
    }
  }
  std::string text;
  for (const std::string& line : tail) {
    text += line + "\n";
  }
  return text;
}

std::string jsonString(const std::string& text) {
  std::string out = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += ' ';
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string busyboxDockerfile(const std::vector<std::string>& cmd, const std::string& extra) {
  std::string dockerfile = "FROM scratch\nCOPY busybox /bin/busybox\n";
  if (!extra.empty()) {
    dockerfile += extra;
    if (!extra.ends_with('\n')) {
      dockerfile += '\n';
    }
  }
  std::string array;
  for (const std::string& arg : cmd) {
    array += (array.empty() ? "" : ", ") + jsonString(arg);
  }
  dockerfile += "CMD [" + array + "]\n";
  return dockerfile;
}

void writeBusyboxContext(const std::string& dir, const std::vector<std::string>& cmd,
                         const std::string& extra) {
  std::ofstream(dir + "/Dockerfile", std::ios::binary | std::ios::trunc)
      << busyboxDockerfile(cmd, extra);
  fs::copy_file(kBusybox, dir + "/busybox", fs::copy_options::overwrite_existing);
  fs::permissions(dir + "/busybox", fs::perms(0755));
}

std::string busyboxContextTar(const std::vector<std::string>& cmd, const std::string& extra) {
  return makeTar(
      {{"Dockerfile", busyboxDockerfile(cmd, extra)}, {"busybox", readWholeFile(kBusybox)}});
}

std::string makeTar(const std::vector<std::pair<std::string, std::string>>& files) {
  constexpr size_t kBlock = 512;
  std::string tar;
  for (const auto& [name, content] : files) {
    if (name.size() >= 100) {
      throw std::invalid_argument("makeTar: name too long for ustar: " + name);
    }
    std::string header(kBlock, '\0');
    const auto field = [&header](size_t offset, size_t width, const std::string& value) {
      header.replace(offset, std::min(value.size(), width), value.substr(0, width));
    };
    const auto octal = [](uint64_t value, int digits) {
      char text[24];
      std::snprintf(text, sizeof(text), "%0*llo", digits, static_cast<unsigned long long>(value));
      return std::string(text);
    };
    field(0, 100, name);
    field(100, 8, octal(0755, 7));
    field(108, 8, octal(0, 7));
    field(116, 8, octal(0, 7));
    field(124, 12, octal(content.size(), 11));
    field(136, 12, octal(0, 11));
    field(148, 8, std::string(8, ' '));  // The checksum counts its own field as spaces.
    header[156] = '0';                   // A regular file.
    field(257, 6, std::string("ustar\0", 6));
    field(263, 2, "00");
    unsigned int sum = 0;
    for (const char c : header) {
      sum += static_cast<unsigned char>(c);
    }
    field(148, 8, octal(sum, 6) + std::string("\0 ", 2));
    tar += header;
    tar += content;
    tar.append((kBlock - content.size() % kBlock) % kBlock, '\0');
  }
  tar.append(2 * kBlock, '\0');
  return tar;
}

void DockerdTest::SetUpTestSuite() {
  startError_.clear();
  try {
    dockerd_ = TestDockerd::start();
  } catch (const std::exception& e) {
    startError_ = e.what();
  }
}

void DockerdTest::TearDownTestSuite() {
  dockerd_.reset();
}

void DockerdTest::SetUp() {
  ASSERT_TRUE(dockerd_ != nullptr) << "no dockerd for this suite: " << startError_;
}

}  // namespace snow::containers::testing
