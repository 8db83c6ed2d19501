// Restart latency of process supervisors (the spawner module's issue): how long from a service's
// death to its replacement running, side by side in one run, for
//   bare        a posix_spawn + waitpid loop (this binary, re-executed with --bare-supervisor):
//               the baseline, the least any supervisor can do
//   snow-core   the daemon with the spawner module, twice: cgroup: auto and cgroup: none
//   runit       runsv on a service directory
//   s6          s6-supervise on a service directory
//   supervisord supervisord -n with a generated configuration
// Peers that are not installed (no binary on PATH) are skipped with a note; they are not project
// dependencies.
//
// The service is snow_restart_probe: its first act is reading CLOCK_MONOTONIC, which it writes
// with its pid as one fixed-size record into a FIFO that this harness reads. One measurement:
// t0 = CLOCK_MONOTONIC, SIGKILL the current probe, block reading the FIFO until a record from
// another pid arrives; latency = that record's time - t0. Before each kill the probe must have
// been up for the supervisor's minimum uptime, so that the measurement sees its restart and not
// its throttling of children that die young: runsv sleeps 1 s after a child that lived under
// 1 s; s6-supervise 2.11 restarts 1 s after a death, or 1 s after the service's readiness
// notification if it gave one (so the probe gives one); the spawner backs off unless the child
// outlived backoff.reset_after, which the generated configuration sets to 50ms. supervisord,
// with startsecs=0, does not back off, but only acts on a death at its next 1 s poll tick.
//
// The numbers are only meaningful on an idle machine: with both cores busy, a woken process
// waits for the scheduler tick (4 ms here), and every supervisor's latency becomes ~4 ms.
//
// Run: build/release/tests/bench/snow_restart_bench [--iterations 200] [--peer-iterations 20]
//      (--help for the rest). Run it as the user who will run the daemon (root for cgroup: auto).

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

#ifndef SNOW_RESTART_PROBE
#define SNOW_RESTART_PROBE ""
#endif
#ifndef SNOW_BUILD_DIR
#define SNOW_BUILD_DIR ""
#endif

namespace {

namespace fs = std::filesystem;

constexpr size_t kRecordSize = 32;  // snow_restart_probe's "%10d %20lld\n"
constexpr int64_t kMs = 1000000;

// A problem of one supervisor's run: reported in its row, the other supervisors still run.
struct SupervisorError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// A problem of the harness itself: the run stops and the exit status is 1.
struct HarnessError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct Interrupted {};

volatile sig_atomic_t gInterrupted = 0;

void onInterrupt(int) {
  gInterrupted = 1;
}

void checkInterrupted() {
  if (gInterrupted) {
    throw Interrupted{};
  }
}

std::string errnoText(const std::string& what, int err = errno) {
  return what + ": " + std::strerror(err);
}

int64_t nowNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

// Waits (outside any measured interval) until CLOCK_MONOTONIC reaches `deadlineNs`.
void sleepUntil(int64_t deadlineNs) {
  const timespec ts{static_cast<time_t>(deadlineNs / 1000000000),
                    static_cast<long>(deadlineNs % 1000000000)};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
    checkInterrupted();
  }
}

void sleepMs(int ms) {
  sleepUntil(nowNs() + ms * kMs);
}

std::string formatMs(int64_t ns) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", static_cast<double>(ns) / kMs);
  return buf;
}

std::string findOnPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    const std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
    if (access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
  }
  return {};
}

// The upstream version of a Debian package ("2.1.2-54" -> "2.1.2"), or "" without dpkg.
std::string packageVersion(const std::string& package) {
  if (findOnPath("dpkg-query").empty()) {
    return {};
  }
  const std::string command = "dpkg-query -W -f='${Version}' " + package + " 2>/dev/null";
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) {
    return {};
  }
  char buf[128] = {};
  const size_t n = std::fread(buf, 1, sizeof buf - 1, pipe);
  pclose(pipe);
  std::string version(buf, n);
  if (auto colon = version.find(':'); colon != std::string::npos) {
    version.erase(0, colon + 1);
  }
  if (auto dash = version.rfind('-'); dash != std::string::npos) {
    version.erase(dash);
  }
  return version;
}

std::string lastLines(const fs::path& file, size_t count) {
  std::ifstream in(file);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) {
    lines.push_back(line);
  }
  std::string out;
  for (size_t i = lines.size() > count ? lines.size() - count : 0; i < lines.size(); ++i) {
    out += "\n    | " + lines[i];
  }
  return out.empty() ? "\n    | (no output)" : out;
}

bool fileContains(const fs::path& file, const std::string& needle) {
  std::ifstream in(file);
  std::stringstream text;
  text << in.rdbuf();
  return text.str().find(needle) != std::string::npos;
}

std::string quoteArg(const std::string& arg) {
  if (!arg.empty() && arg.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                            "0123456789-_./=:,+@%") == std::string::npos) {
    return arg;
  }
  std::string out = "'";
  for (char c : arg) {
    out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  }
  return out + "'";
}

// ---------------------------------------------------------------------------------------------
// Processes

// Starts `argv` in a process group of its own (a terminal's ^C reaches only this harness, which
// then tears everything down), stdin from /dev/null, stdout and stderr appended to `log`.
pid_t spawnProcess(const std::vector<std::string>& argv, const std::vector<std::string>& extraEnv,
                   const fs::path& log) {
  std::vector<char*> cargv;
  for (const auto& a : argv) {
    cargv.push_back(const_cast<char*>(a.c_str()));
  }
  cargv.push_back(nullptr);
  std::vector<char*> cenv;
  for (const auto& e : extraEnv) {
    cenv.push_back(const_cast<char*>(e.c_str()));
  }
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string_view entry(*e);
    const bool overridden = std::any_of(extraEnv.begin(), extraEnv.end(), [&](const auto& x) {
      return entry.substr(0, entry.find('=')) == std::string_view(x).substr(0, x.find('='));
    });
    if (!overridden) {
      cenv.push_back(*e);
    }
  }
  cenv.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(),
                                   O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigset_t defaults;
  sigemptyset(&none);
  sigemptyset(&defaults);
  for (int sig : {SIGINT, SIGTERM, SIGPIPE, SIGCHLD, SIGHUP}) {
    sigaddset(&defaults, sig);
  }
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr,
                           POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  pid_t pid = -1;
  const int err = posix_spawn(&pid, argv[0].c_str(), &actions, &attr, cargv.data(), cenv.data());
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&actions);
  if (err != 0) {
    throw SupervisorError(errnoText("posix_spawn " + argv[0], err));
  }
  return pid;
}

// This process's children, zombies excepted. The harness is a child subreaper, so a killed
// supervisor's services end up here instead of with init.
std::vector<pid_t> ownChildren() {
  std::vector<pid_t> children;
  const pid_t self = getpid();
  DIR* proc = opendir("/proc");
  if (proc == nullptr) {
    return children;
  }
  while (dirent* entry = readdir(proc)) {
    char* end = nullptr;
    const long pid = std::strtol(entry->d_name, &end, 10);
    if (pid <= 0 || *end != '\0') {
      continue;
    }
    std::ifstream stat(std::string("/proc/") + entry->d_name + "/stat");
    std::string text;
    std::getline(stat, text);
    const auto paren = text.rfind(')');
    if (paren == std::string::npos) {
      continue;
    }
    std::istringstream rest(text.substr(paren + 1));
    char state = 0;
    long ppid = 0;
    if (rest >> state >> ppid && ppid == self && state != 'Z') {
      children.push_back(static_cast<pid_t>(pid));
    }
  }
  closedir(proc);
  return children;
}

// Sleeps outside any measured interval, through signals (tear-down must finish even after ^C).
void pauseMs(int ms) {
  timespec ts{0, static_cast<long>(ms) * kMs};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

// Reaps whatever of this process's children has exited; returns those still alive.
std::vector<pid_t> reapAndListChildren() {
  while (waitpid(-1, nullptr, WNOHANG) > 0) {
  }
  return ownChildren();
}

// Stops the supervisor `pid`: with `gracefulMs`, SIGTERM and up to that long to exit, and then up
// to 1 s for what it ran to go too; then SIGKILL to it and its process group, and to every process
// reparented to this harness, all reaped. Returns what a graceful stop left behind, if anything.
std::string tearDown(pid_t pid, int gracefulMs) {
  std::string note;
  if (pid > 0) {
    bool exited = false;
    if (gracefulMs > 0 && kill(pid, SIGTERM) == 0) {
      for (int waited = 0; waited < gracefulMs && !exited; waited += 5) {
        exited = waitpid(pid, nullptr, WNOHANG) == pid;
        if (!exited) {
          pauseMs(5);
        }
      }
      if (!exited) {
        note = "did not exit within " + std::to_string(gracefulMs) + " ms of SIGTERM";
      }
    }
    if (exited) {
      std::vector<pid_t> left = reapAndListChildren();
      for (int waited = 0; waited < 1000 && !left.empty(); waited += 5) {
        pauseMs(5);
        left = reapAndListChildren();
      }
      if (!left.empty()) {
        note = std::to_string(left.size()) + " process(es) still running 1 s after it exited " +
               "on SIGTERM (first: pid " + std::to_string(left[0]) + ")";
      }
    }
    kill(-pid, SIGKILL);
    if (!exited) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
  for (int waited = 0;; waited += 2) {
    const auto children = reapAndListChildren();
    if (children.empty()) {
      break;
    }
    if (waited > 5000) {
      std::fprintf(stderr, "warning: %zu process(es) would not die, first pid %d\n",
                   children.size(), children[0]);
      break;
    }
    for (pid_t child : children) {
      kill(child, SIGKILL);
    }
    pauseMs(2);
  }
  return note;
}

// --bare-supervisor PROBE FIFO: the baseline supervisor, a posix_spawn + waitpid loop.
int bareSupervisor(const char* probe, const char* fifo) {
  char* argv[] = {const_cast<char*>(probe), const_cast<char*>(fifo), nullptr};
  for (;;) {
    pid_t pid = -1;
    if (const int err = posix_spawn(&pid, probe, nullptr, nullptr, argv, environ); err != 0) {
      std::fprintf(stderr, "bare supervisor: posix_spawn %s: %s\n", probe, std::strerror(err));
      return 1;
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) != 0) {
      std::fprintf(stderr, "bare supervisor: the probe exited with status %d\n",
                   WEXITSTATUS(status));
      return 1;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The probe's records

struct Record {
  pid_t pid = 0;
  int64_t ns = 0;
};

class RecordFifo {
 public:
  explicit RecordFifo(fs::path path) : path_(std::move(path)) {
    if (mkfifo(path_.c_str(), 0600) != 0) {
      throw HarnessError(errnoText("mkfifo " + path_.string()));
    }
    // Read and write: never EOF when a probe closes its end, and opening does not block.
    fd_ = open(path_.c_str(), O_RDWR | O_CLOEXEC);
    if (fd_ < 0) {
      throw HarnessError(errnoText("open " + path_.string()));
    }
  }
  ~RecordFifo() { close(fd_); }
  RecordFifo(const RecordFifo&) = delete;
  RecordFifo& operator=(const RecordFifo&) = delete;

  const fs::path& path() const { return path_; }

  // The next record, blocking in poll() for at most `timeoutMs` (0: only one already there).
  std::optional<Record> next(int timeoutMs) {
    pollfd pfd{fd_, POLLIN, 0};
    const int ready = poll(&pfd, 1, timeoutMs);
    if (ready < 0 && errno == EINTR) {
      checkInterrupted();
      return std::nullopt;  // another signal: the caller's loop asks again
    }
    if (ready < 0) {
      throw HarnessError(errnoText("poll " + path_.string()));
    }
    if (ready == 0) {
      return std::nullopt;
    }
    char buf[kRecordSize + 1] = {};
    size_t got = 0;
    while (got < kRecordSize) {
      const ssize_t n = read(fd_, buf + got, kRecordSize - got);
      if (n < 0 && errno == EINTR) {
        continue;
      }
      if (n <= 0) {
        throw HarnessError(errnoText("read " + path_.string()));
      }
      got += static_cast<size_t>(n);
    }
    Record record;
    char* end = nullptr;
    record.pid = static_cast<pid_t>(std::strtol(buf, &end, 10));
    record.ns = std::strtoll(end, &end, 10);
    if (record.pid <= 0 || *end != '\n') {
      throw HarnessError("malformed probe record '" + std::string(buf, kRecordSize) + "'");
    }
    return record;
  }

 private:
  fs::path path_;
  int fd_ = -1;
};

// ---------------------------------------------------------------------------------------------
// Supervisors

struct Options {
  int iterations = 200;
  int peerIterations = 20;
  fs::path buildDir = SNOW_BUILD_DIR;
  fs::path probe = SNOW_RESTART_PROBE;
  std::vector<std::string> only;
  std::vector<std::pair<std::string, int64_t>> uptimes;  // --uptime-ms KEY=MS overrides
  bool keepTemp = false;
  int timeoutMs = 10000;
};

struct Launch {
  std::vector<std::string> argv;
  std::vector<std::string> env;
  std::string readyMarker;  // a line the supervisor's output must contain before measuring
  int gracefulStopMs = 0;   // SIGTERM first, for this long (0: SIGKILL at once)
};

struct Supervisor {
  std::string key;    // for --only
  std::string label;  // in the table
  std::string skip;   // why it does not run, when it does not
  int iterations = 0;
  int64_t minUptimeNs = 0;
  std::string remark;  // how it was set up and what it does, printed under the table
  // Prepares the supervisor's files in `dir` and says how to start it.
  std::function<Launch(const fs::path& dir, const fs::path& fifo)> prepare;
};

struct Result {
  const Supervisor* supervisor = nullptr;
  std::vector<int64_t> latencies;
  std::string error;  // why the run stopped early, if it did
  std::string note;   // something worth knowing that is not an error
};

std::string yamlQuote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
    }
    out += c;
  }
  return out + "\"";
}

void writeFile(const fs::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  if (!out) {
    throw HarnessError("cannot write " + path.string());
  }
}

// runsv and s6-supervise exec ./run without our arguments: the service directory's run is a
// symlink to the probe (no shell in between), which finds its FIFO in $SNOW_PROBE_FIFO. With
// `notifyFd`, the service directory asks for s6's readiness notification on that descriptor.
Launch serviceDirLaunch(const std::string& binary, const fs::path& probe, const fs::path& dir,
                        const fs::path& fifo, int notifyFd = -1) {
  const fs::path service = dir / "probe";
  fs::create_directories(service);
  fs::create_symlink(probe, service / "run");
  Launch launch{{binary, service.string()}, {"SNOW_PROBE_FIFO=" + fifo.string()}, "", 0};
  if (notifyFd >= 0) {
    writeFile(service / "notification-fd", std::to_string(notifyFd) + "\n");
    launch.env.push_back("SNOW_PROBE_NOTIFY_FD=" + std::to_string(notifyFd));
  }
  return launch;
}

std::vector<Supervisor> supervisors(const Options& options) {
  std::vector<Supervisor> list;
  list.reserve(8);  // the references below stay valid
  const fs::path probe = options.probe;

  Supervisor& bare = list.emplace_back();
  bare.key = "bare";
  bare.label = "bare posix_spawn";
  bare.iterations = options.iterations;
  bare.remark =
      "this binary re-executed as a posix_spawn + waitpid loop: the least a supervisor "
      "can do";
  bare.prepare = [probe](const fs::path&, const fs::path& fifo) {
    Launch launch;
    launch.argv = {fs::read_symlink("/proc/self/exe").string(), "--bare-supervisor", probe.string(),
                   fifo.string()};
    return launch;
  };

  const fs::path daemon = options.buildDir / "core" / "snow-core";
  const fs::path plugins = options.buildDir / "plugins";
  std::string snowSkip;
  if (access(daemon.c_str(), X_OK) != 0) {
    snowSkip = "snow-core: daemon not built (" + daemon.string() + ")";
  } else if (!fs::exists(plugins / "spawner.so")) {
    snowSkip = "snow-core: spawner plugin not built (" + (plugins / "spawner.so").string() + ")";
  }
  for (const std::string cgroup : {"auto", "none"}) {
    Supervisor& snow = list.emplace_back();
    snow.key = cgroup == "none" ? "snow-core-nocgroup" : "snow-core";
    snow.label = cgroup == "none" ? "snow-core (no cgroup)" : "snow-core";
    snow.skip = snowSkip;
    snow.iterations = options.iterations;
    snow.minUptimeNs = 60 * kMs;
    snow.remark = "spawner with cgroup: " + cgroup +
                  ", backoff.reset_after 50ms (the first restart after an uptime > 50 ms is "
                  "immediate)";
    snow.prepare = [=](const fs::path& dir, const fs::path& fifo) {
      const fs::path config = dir / "snow-core.yaml";
      std::string yaml;
      yaml += "rpc:\n";
      yaml += "  unix_socket: " + yamlQuote((dir / "rpc.sock").string()) + "\n";
      yaml += "modules:\n";
      yaml += "  spawner:\n";
      yaml += "    cgroup: " + cgroup + "\n";
      yaml += "    services:\n";
      yaml += "      probe:\n";
      yaml += "        command: " + yamlQuote(probe.string()) + "\n";
      yaml += "        args: [" + yamlQuote(fifo.string()) + "]\n";
      yaml += "        restart: always\n";
      yaml += "        backoff: {reset_after: 50ms}\n";
      writeFile(config, yaml);
      Launch launch;
      launch.argv = {daemon.string(), "--modules", plugins.string(), "--config", config.string()};
      launch.readyMarker = "ready:";
      launch.gracefulStopMs = 5000;
      return launch;
    };
  }

  // A peer's label carries its Debian package's version when dpkg knows it.
  auto peer = [&](const char* key, const char* package, const char* binary) -> Supervisor& {
    Supervisor& s = list.emplace_back();
    s.key = key;
    const std::string path = findOnPath(binary);
    const std::string version = path.empty() ? "" : packageVersion(package);
    s.label =
        std::string(package) + " " + (version.empty() ? "" : version + " ") + "(" + binary + ")";
    if (path.empty()) {
      s.skip = std::string(key) + ": not installed (apt-get install " + package + ")";
    }
    s.iterations = options.peerIterations;
    s.minUptimeNs = 1100 * kMs;
    return s;
  };

  Supervisor& runit = peer("runit", "runit", "runsv");
  runit.remark =
      "./run is a symlink to the probe (no shell); runsv sleeps 1 s before "
      "restarting a child that lived under 1 s";
  runit.prepare = [runsv = findOnPath("runsv"), probe](const fs::path& dir, const fs::path& fifo) {
    return serviceDirLaunch(runsv, probe, dir, fifo);
  };

  Supervisor& s6 = peer("s6", "s6", "s6-supervise");
  s6.remark =
      "./run is a symlink to the probe, which signals readiness (notification-fd 3): "
      "without it s6-supervise 2.11 waits 1 s after every death whatever the uptime, "
      "with it 1 s after the last readiness";
  s6.prepare = [binary = findOnPath("s6-supervise"), probe](const fs::path& dir,
                                                            const fs::path& fifo) {
    return serviceDirLaunch(binary, probe, dir, fifo, 3);
  };

  Supervisor& supervisor = peer("supervisord", "supervisor", "supervisord");
  supervisor.remark =
      "startsecs=0, so no backoff; supervisord notices a death only at its next "
      "1 s poll tick";
  supervisor.prepare = [binary = findOnPath("supervisord"), probe](const fs::path& dir,
                                                                   const fs::path& fifo) {
    std::string conf;
    conf += "[supervisord]\n";
    conf += "nodaemon=true\n";
    if (geteuid() == 0) {
      conf += "user=root\n";  // else it complains about running as root
    }
    conf += "logfile=" + (dir / "supervisord.log").string() + "\n";
    conf += "pidfile=" + (dir / "supervisord.pid").string() + "\n";
    conf += "childlogdir=" + dir.string() + "\n";
    conf += "\n";
    conf += "[program:probe]\n";
    conf += "command=" + probe.string() + " " + fifo.string() + "\n";
    conf += "autostart=true\n";
    conf += "autorestart=true\n";
    conf += "startsecs=0\n";
    conf += "startretries=1000000\n";
    conf += "stdout_logfile=NONE\n";
    conf += "stderr_logfile=NONE\n";
    writeFile(dir / "supervisord.conf", conf);
    Launch launch;
    launch.argv = {binary, "-n", "-c", (dir / "supervisord.conf").string()};
    return launch;
  };
  return list;
}

// ---------------------------------------------------------------------------------------------
// Measuring

// Waits for the first record, watching the supervisor: its death ends the wait with its output.
Record firstRecord(RecordFifo& fifo, pid_t supervisor, const fs::path& log, const Launch& launch,
                   int timeoutMs) {
  const int64_t deadline = nowNs() + int64_t{timeoutMs} * 3 * kMs;
  bool ready = launch.readyMarker.empty();
  while (nowNs() < deadline) {
    checkInterrupted();
    int status = 0;
    if (waitpid(supervisor, &status, WNOHANG) == supervisor) {
      throw SupervisorError(std::string("the supervisor ") +
                            (WIFEXITED(status)
                                 ? "exited with status " + std::to_string(WEXITSTATUS(status))
                                 : "was killed by signal " + std::to_string(WTERMSIG(status))) +
                            " before the probe ran; its output:" + lastLines(log, 12));
    }
    if (!ready) {
      // Start-up only: the records wait in the FIFO meanwhile.
      ready = fileContains(log, launch.readyMarker);
      if (!ready) {
        sleepMs(5);
      }
      continue;
    }
    if (auto record = fifo.next(100)) {
      return *record;
    }
  }
  throw SupervisorError(std::string(ready ? "no probe record" : "no '" + launch.readyMarker + "'") +
                        " within " + std::to_string(timeoutMs * 3 / 1000) +
                        " s; the supervisor's output:" + lastLines(log, 12));
}

void measure(const Supervisor& supervisor, const fs::path& dir, const Options& options,
             Result& result) {
  fs::create_directories(dir);
  RecordFifo fifo(dir / "probe.fifo");
  const fs::path log = dir / "output.log";
  const Launch launch = supervisor.prepare(dir, fifo.path());
  const pid_t pid = spawnProcess(launch.argv, launch.env, log);
  try {
    Record current = firstRecord(fifo, pid, log, launch, options.timeoutMs);
    for (int i = 0; i < supervisor.iterations; ++i) {
      sleepUntil(current.ns + supervisor.minUptimeNs);
      checkInterrupted();
      if (auto early = fifo.next(0)) {
        throw SupervisorError("probe " + std::to_string(early->pid) + " appeared while probe " +
                              std::to_string(current.pid) + " was still expected to run");
      }

      const int64_t t0 = nowNs();
      if (kill(current.pid, SIGKILL) != 0) {
        throw SupervisorError(errnoText("kill probe " + std::to_string(current.pid)));
      }
      std::optional<Record> next;
      const int64_t deadline = t0 + int64_t{options.timeoutMs} * kMs;
      while (!next) {
        const int64_t left = (deadline - nowNs()) / kMs;
        if (left <= 0) {
          throw SupervisorError("no replacement " + std::to_string(options.timeoutMs / 1000) +
                                " s after killing probe " + std::to_string(current.pid) +
                                "; the supervisor's output:" + lastLines(log, 12));
        }
        next = fifo.next(static_cast<int>(left));
        if (next && next->pid == current.pid) {
          next.reset();  // cannot happen (one record per probe), but never measure it
        }
      }
      if (next->ns < t0) {
        throw SupervisorError("probe " + std::to_string(next->pid) + " started before probe " +
                              std::to_string(current.pid) + " was killed: two probes running");
      }
      result.latencies.push_back(next->ns - t0);
      current = *next;
    }
  } catch (...) {
    tearDown(pid, launch.gracefulStopMs);
    throw;
  }
  result.note = tearDown(pid, launch.gracefulStopMs);
}

int64_t percentile(const std::vector<int64_t>& sorted, double p) {
  const auto rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size())));
  return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
}

void printTable(const std::vector<Result>& results, const std::string& commandLine) {
  const Result* bare = nullptr;
  for (const auto& r : results) {
    if (r.supervisor->key == "bare" && !r.latencies.empty()) {
      bare = &r;
    }
  }
  auto sortedOf = [](const Result& r) {
    auto s = r.latencies;
    std::sort(s.begin(), s.end());
    return s;
  };
  std::vector<int64_t> bareSorted = bare != nullptr ? sortedOf(*bare) : std::vector<int64_t>{};

  std::printf("\n%-32s %5s %8s %8s %8s %8s %8s %11s %11s\n", "supervisor", "runs", "up>ms",
              "p50 ms", "p90 ms", "p99 ms", "max ms", "p50 vs bare", "p99 vs bare");
  std::vector<std::string> notes;
  for (const auto& r : results) {
    const Supervisor& s = *r.supervisor;
    if (!s.skip.empty()) {
      notes.push_back(s.skip);
      continue;
    }
    if (!r.error.empty()) {
      notes.push_back(s.label + ": FAILED after " + std::to_string(r.latencies.size()) + " of " +
                      std::to_string(s.iterations) + " restarts: " + r.error);
    }
    if (!r.note.empty()) {
      notes.push_back(s.label + ": " + r.note);
    }
    if (!s.remark.empty()) {
      notes.push_back(s.label + ": " + s.remark);
    }
    if (r.latencies.empty()) {
      std::printf("%-32s %5d %8s %8s %8s %8s %8s %11s %11s\n", s.label.c_str(), 0,
                  std::to_string(s.minUptimeNs / kMs).c_str(), "-", "-", "-", "-", "-", "-");
      continue;
    }
    const auto sorted = sortedOf(r);
    const int64_t p50 = percentile(sorted, 50);
    const int64_t p99 = percentile(sorted, 99);
    std::string vs50 = "-";
    std::string vs99 = "-";
    if (!bareSorted.empty()) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.2fx",
                    static_cast<double>(p50) / static_cast<double>(percentile(bareSorted, 50)));
      vs50 = buf;
      std::snprintf(buf, sizeof buf, "%.2fx",
                    static_cast<double>(p99) / static_cast<double>(percentile(bareSorted, 99)));
      vs99 = buf;
    }
    std::printf("%-32s %5zu %8s %8s %8s %8s %8s %11s %11s\n", s.label.c_str(), sorted.size(),
                std::to_string(s.minUptimeNs / kMs).c_str(), formatMs(p50).c_str(),
                formatMs(percentile(sorted, 90)).c_str(), formatMs(p99).c_str(),
                formatMs(sorted.back()).c_str(), vs50.c_str(), vs99.c_str());
    if (s.key.starts_with("snow-core")) {
      notes.push_back(s.label + ": aim 'first restart within 5 ms p99': " +
                      (p99 <= 5 * kMs ? "met" : "NOT met") + " (p99 " + formatMs(p99) + " ms)");
    }
  }
  std::printf(
      "\nlatency = SIGKILL of the running probe -> the replacement probe's first instruction "
      "(CLOCK_MONOTONIC).\n"
      "up>ms: how long each probe ran before it was killed, so that the supervisor does not "
      "throttle\nthe restart; percentiles are nearest-rank (under 100 runs, p99 = max).\n");
  for (size_t i = 0; i < notes.size(); ++i) {
    if (std::find(notes.begin(), notes.begin() + static_cast<std::ptrdiff_t>(i), notes[i]) ==
        notes.begin() + static_cast<std::ptrdiff_t>(i)) {
      std::printf("note: %s\n", notes[i].c_str());
    }
  }
  std::printf("command: %s\n", commandLine.c_str());
}

void usage(const char* argv0) {
  std::printf(
      "usage: %s [options]\n"
      "  --iterations N       restarts measured for bare and snow-core (default 200)\n"
      "  --peer-iterations N  restarts for runit, s6, supervisord, which need >1 s each "
      "(default 20)\n"
      "  --only LIST          comma-separated subset of: bare, snow-core, snow-core-nocgroup, "
      "runit,\n"
      "                       s6, supervisord (default: all)\n"
      "  --build-dir DIR      the snow-core build tree with core/snow-core and plugins/ "
      "(default %s)\n"
      "  --probe PATH         snow_restart_probe (default %s)\n"
      "  --uptime-ms S=MS     let supervisor S's probe run MS ms before each kill (defaults: "
      "bare 0,\n"
      "                       snow-core 60, runit, s6 and supervisord 1100)\n"
      "  --timeout-ms N       give up on a restart after N ms (default 10000)\n"
      "  --keep-temp          keep the temporary directory (configurations, logs)\n",
      argv0, SNOW_BUILD_DIR, SNOW_RESTART_PROBE);
}

int parsePositive(const std::string& flag, const char* value) {
  char* end = nullptr;
  const long n = std::strtol(value, &end, 10);
  if (*end != '\0' || n <= 0 || n > 1000000) {
    throw HarnessError(flag + ": expected a positive number, got '" + value + "'");
  }
  return static_cast<int>(n);
}

Options parseOptions(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) {
        throw HarnessError(arg + ": expected a value");
      }
      return argv[++i];
    };
    if (arg == "--help" || arg == "-h") {
      usage(argv[0]);
      std::exit(0);
    } else if (arg == "--iterations") {
      options.iterations = parsePositive(arg, value());
    } else if (arg == "--peer-iterations") {
      options.peerIterations = parsePositive(arg, value());
    } else if (arg == "--timeout-ms") {
      options.timeoutMs = parsePositive(arg, value());
    } else if (arg == "--build-dir") {
      options.buildDir = value();
    } else if (arg == "--probe") {
      options.probe = value();
    } else if (arg == "--uptime-ms") {
      const std::string spec = value();
      const auto eq = spec.find('=');
      char* end = nullptr;
      const long ms = eq == std::string::npos ? -1 : std::strtol(spec.c_str() + eq + 1, &end, 10);
      if (ms < 0 || end == nullptr || *end != '\0') {
        throw HarnessError(arg + ": expected SUPERVISOR=MS, got '" + spec + "'");
      }
      options.uptimes.emplace_back(spec.substr(0, eq), ms * kMs);
    } else if (arg == "--keep-temp") {
      options.keepTemp = true;
    } else if (arg == "--only") {
      std::stringstream list(value());
      for (std::string key; std::getline(list, key, ',');) {
        options.only.push_back(key);
      }
    } else {
      throw HarnessError("unknown argument '" + arg + "' (see --help)");
    }
  }
  if (options.probe.empty() || access(options.probe.c_str(), X_OK) != 0) {
    throw HarnessError("the probe '" + options.probe.string() +
                       "' is not an executable file (--probe)");
  }
  options.probe = fs::absolute(options.probe);
  options.buildDir = fs::absolute(options.buildDir);
  return options;
}

int run(int argc, char** argv) {
  std::string commandLine;
  for (int i = 0; i < argc; ++i) {
    commandLine += (i ? " " : "") + quoteArg(argv[i]);
  }
  const Options options = parseOptions(argc, argv);
  // The probe prefers this variable to its argument; only runsv's and s6-supervise's get it.
  unsetenv("SNOW_PROBE_FIFO");
  unsetenv("SNOW_PROBE_NOTIFY_FD");
  auto all = supervisors(options);
  auto find = [&](const std::string& key, const char* flag) {
    auto it = std::find_if(all.begin(), all.end(), [&](const auto& s) { return s.key == key; });
    if (it == all.end()) {
      throw HarnessError(std::string(flag) + ": no supervisor '" + key + "'");
    }
    return it;
  };
  for (const auto& key : options.only) {
    find(key, "--only");
  }
  for (const auto& [key, ns] : options.uptimes) {
    find(key, "--uptime-ms")->minUptimeNs = ns;
  }

  // Supervisors killed at the end leave their services to this process instead of init, and the
  // tear-down kills and reaps them.
  if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) {
    throw HarnessError(errnoText("prctl(PR_SET_CHILD_SUBREAPER)"));
  }
  struct sigaction action {};
  action.sa_handler = onInterrupt;  // no SA_RESTART: a blocked poll() returns EINTR
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGHUP, &action, nullptr);

  std::string tmpl = (fs::temp_directory_path() / "snow-restart-XXXXXX").string();
  if (mkdtemp(tmpl.data()) == nullptr) {
    throw HarnessError(errnoText("mkdtemp " + tmpl));
  }
  const fs::path tmp = tmpl;

  std::vector<Result> results;
  int status = 0;
  try {
    for (const auto& s : all) {
      if (!options.only.empty() &&
          std::find(options.only.begin(), options.only.end(), s.key) == options.only.end()) {
        continue;
      }
      Result& result = results.emplace_back();
      result.supervisor = &s;
      if (!s.skip.empty()) {
        std::fprintf(stderr, "%s: skipped\n", s.skip.c_str());
        continue;
      }
      std::fprintf(stderr, "%s: %d restarts, %s ms up before each kill...\n", s.label.c_str(),
                   s.iterations, std::to_string(s.minUptimeNs / kMs).c_str());
      try {
        measure(s, tmp / s.key, options, result);
      } catch (const SupervisorError& e) {
        result.error = e.what();
        std::fprintf(stderr, "%s: FAILED: %s\n", s.label.c_str(), e.what());
      }
    }
    printTable(results, commandLine);
  } catch (const Interrupted&) {
    std::fprintf(stderr, "interrupted\n");
    status = 130;
  } catch (...) {
    tearDown(0, 0);
    if (!options.keepTemp) {
      fs::remove_all(tmp);
    }
    throw;
  }
  tearDown(0, 0);
  if (options.keepTemp) {
    std::printf("temporary files kept in %s\n", tmp.c_str());
  } else {
    std::error_code ignored;
    fs::remove_all(tmp, ignored);
  }
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 4 && std::string(argv[1]) == "--bare-supervisor") {
    return bareSupervisor(argv[2], argv[3]);
  }
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "snow_restart_bench: %s\n", e.what());
    return 1;
  }
}
