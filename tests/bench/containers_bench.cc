// The container runner (issue 10) against the Docker CLI, in one run on one private dockerd:
//
//   e2e         `snowctl run DIR` end to end, pinned (--node) to the node snowctl talks to
//               ("snow local") and to another node ("snow forwarded": snowctl -> n0 -> n1),
//               against `docker build DIR` + `docker run --network none --rm IMAGE`, each
//               uncached and cached, --runs times, interleaved. Median, p90, ratio to the CLI,
//               and where the time goes (milestones from the output's timestamps and from
//               `docker events`).
//   upload      a context of --upload-mib MiB of random bytes plus the busybox Dockerfile:
//               a plain loopback copy of the same bytes (TCP on 127.0.0.1, and a unix socket)
//               against `snowctl run` (time until the job is accepted, i.e. the Submit upload
//               is done, and until the build's first step) and `docker build` (time until its
//               first step: the engine has the whole context then).
//   concurrent  --jobs attached `snowctl run` at once through n0 (placement spreads them over
//               the three workers), against as many `docker run --rm` of the built image, and
//               as many `docker build` + `docker run` (the like-for-like peer): wall time until
//               all exited, jobs per worker and the order they were placed in, CPU time of the
//               clients, the daemons and dockerd. Before that, a placement check: --jobs jobs
//               that stay active (`sleep 60`) submitted one at a time, then all at once, counted
//               per worker.
//
// The cluster: a private dockerd (tests/containers/dockerd.h) and three snow-core daemons with
// the portal, gossip and containers plugins on loopback, all three workers of that dockerd, as
// containers_cluster_test.cc starts them.
//
// Cache states. The runner and the CLI both use the engine's legacy builder (POST /build; the CLI
// runs with DOCKER_BUILDKIT=0, as the Debian CLI 20.10 does by default), whose build cache is the
// chain of intermediate images. "Uncached" runs start from an engine without any image or
// container: before each one, `docker image prune -a -f` and `docker builder prune -f` (both
// outside the timed interval), and the run is checked to have printed no "Using cache". "Cached"
// runs follow a build of the same context and are checked to have printed "Using cache".
//
// Run as root (dockerd): build/release/tests/bench/snow_containers_bench [--runs 10] (--help).
// Tests and harnesses call the OS directly (tests/tools/direct_call_check.h exempts tests/).

#include <algorithm>
#include <atomic>
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
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <spawn.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "containers/dockerd.h"

extern char** environ;  // NOLINT(readability-identifier-naming): POSIX names it.

#ifndef SNOW_DAEMON
#define SNOW_DAEMON ""
#endif
#ifndef SNOWCTL
#define SNOWCTL ""
#endif
#ifndef SNOW_PLUGIN_DIR
#define SNOW_PLUGIN_DIR ""
#endif
// The shared libraries the daemon, snowctl and the plugins load from the build tree.
#ifndef SNOW_BUILD_LIBS
#define SNOW_BUILD_LIBS ""
#endif

namespace {

namespace fs = std::filesystem;
using snow::containers::testing::jsonString;
using snow::containers::testing::TestDockerd;

constexpr int64_t kMs = 1000000;
constexpr const char* kGreeting = "hello from the bench";
constexpr const char* kCliImage = "snow-bench-cli";
constexpr size_t kNodes = 3;

struct Interrupted {};
volatile sig_atomic_t gInterrupted = 0;

void onInterrupt(int /*signal*/) {
  gInterrupted = 1;
}

void checkInterrupted() {
  if (gInterrupted != 0) {
    throw Interrupted{};
  }
}

std::string errnoText(const std::string& what, int err = errno) {
  return what + ": " + std::strerror(err);
}

int64_t clockNs(clockid_t clock) {
  timespec ts{};
  clock_gettime(clock, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}
int64_t nowNs() {
  return clockNs(CLOCK_MONOTONIC);
}
int64_t realNs() {
  return clockNs(CLOCK_REALTIME);
}

void sleepMs(int ms) {
  timespec ts{ms / 1000, static_cast<long>(ms % 1000) * kMs};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

std::string fmtMs(int64_t ns) {
  if (ns < 0) {
    return "-";
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.0f", static_cast<double>(ns) / kMs);
  return buf;
}

std::string fmtDouble(double value, const char* format = "%.2f") {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, value);
  return buf;
}

std::string readFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

void writeFile(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out) {
    throw std::runtime_error("cannot write " + path.string());
  }
}

std::string tail(const std::string& text, size_t lines) {
  size_t at = text.size();
  for (size_t n = 0; n <= lines && at != std::string::npos && at > 0; ++n) {
    at = text.rfind('\n', at - 1);
  }
  return at == std::string::npos ? text : text.substr(at + 1);
}

std::string loadAverage() {
  std::string text = readFile("/proc/loadavg");
  std::istringstream in(text);
  std::string a;
  std::string b;
  std::string c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

// ---------------------------------------------------------------------------------------------
// Programs run to completion, their output timestamped line by line

struct Command {
  std::vector<std::string> argv;
  std::vector<std::string> env;  // "NAME=value", over this process's environment
};

struct Line {
  int64_t ns = 0;  // Since the start of the run it belongs to (monotonic).
  std::string text;
};

// One program's run: stdout and stderr merged, each line with the time it was read.
struct Outcome {
  int64_t startNs = 0;      // Monotonic, just before posix_spawn.
  int64_t startRealNs = 0;  // The same instant on CLOCK_REALTIME (docker events' clock).
  int64_t endNs = 0;        // Monotonic, once reaped.
  int code = -1;            // Exit status; 128 + signal when killed.
  int64_t cpuNs = 0;        // Its user + system CPU time (wait4's rusage).
  std::vector<Line> lines;

  [[nodiscard]] int64_t wallNs() const { return endNs - startNs; }
  // When the first line containing `needle` was read (ns since the start), or -1.
  [[nodiscard]] int64_t lineAt(std::string_view needle) const {
    for (const auto& line : lines) {
      if (line.text.find(needle) != std::string::npos) {
        return line.ns;
      }
    }
    return -1;
  }
  [[nodiscard]] bool has(std::string_view needle) const { return lineAt(needle) >= 0; }
  // When the line `text` exactly was read, or -1: the container's own output, not the build's
  // echo of the Dockerfile's CMD, which contains it.
  [[nodiscard]] int64_t exactLineAt(std::string_view text) const {
    for (const auto& line : lines) {
      if (line.text == text) {
        return line.ns;
      }
    }
    return -1;
  }
  [[nodiscard]] std::string text() const {
    std::string out;
    for (const auto& line : lines) {
      out += line.text + "\n";
    }
    return out;
  }
};

std::vector<char*> environmentWith(const std::vector<std::string>& extra) {
  std::vector<char*> env;
  for (const auto& e : extra) {
    env.push_back(const_cast<char*>(e.c_str()));
  }
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string_view entry(*e);
    const bool overridden = std::any_of(extra.begin(), extra.end(), [&](const std::string& x) {
      return entry.substr(0, entry.find('=')) == std::string_view(x).substr(0, x.find('='));
    });
    if (!overridden) {
      env.push_back(*e);
    }
  }
  env.push_back(nullptr);
  return env;
}

std::vector<char*> argvOf(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const auto& a : args) {
    argv.push_back(const_cast<char*>(a.c_str()));
  }
  argv.push_back(nullptr);
  return argv;
}

int exitCodeOf(int status) {
  if (WIFEXITED(status)) {
    return WEXITSTATUS(status);
  }
  return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : -1;
}

// Runs `commands` at once (spawned one after another, as fast as posix_spawn goes) and waits for
// all; kills them all and throws after `timeoutMs`.
std::vector<Outcome> runConcurrently(const std::vector<Command>& commands, int timeoutMs) {
  struct Running {
    pid_t pid = -1;
    int fd = -1;
    std::string partial;
    Outcome out;
  };
  std::vector<Running> running(commands.size());
  auto killAll = [&] {
    for (auto& r : running) {
      if (r.pid > 0) {
        kill(r.pid, SIGKILL);
        waitpid(r.pid, nullptr, 0);
        r.pid = -1;
      }
      if (r.fd >= 0) {
        close(r.fd);
        r.fd = -1;
      }
    }
  };
  for (size_t i = 0; i < commands.size(); ++i) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
      killAll();
      throw std::runtime_error(errnoText("pipe2"));
    }
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&actions, fds[1], STDERR_FILENO);
    auto argv = argvOf(commands[i].argv);
    auto env = environmentWith(commands[i].env);
    Running& r = running[i];
    r.out.startRealNs = realNs();
    r.out.startNs = nowNs();
    const int err = posix_spawn(&r.pid, argv[0], &actions, nullptr, argv.data(), env.data());
    posix_spawn_file_actions_destroy(&actions);
    close(fds[1]);
    if (err != 0) {
      close(fds[0]);
      r.pid = -1;
      killAll();
      throw std::runtime_error(errnoText("posix_spawn " + commands[i].argv[0], err));
    }
    r.fd = fds[0];
    fcntl(r.fd, F_SETFL, O_NONBLOCK);
  }
  const int64_t deadline = nowNs() + int64_t{timeoutMs} * kMs;
  char buffer[65536];
  for (;;) {
    std::vector<pollfd> pfds;
    std::vector<size_t> index;
    for (size_t i = 0; i < running.size(); ++i) {
      if (running[i].fd >= 0) {
        pfds.push_back({running[i].fd, POLLIN, 0});
        index.push_back(i);
      }
    }
    if (pfds.empty()) {
      break;
    }
    if (gInterrupted != 0) {
      killAll();
      throw Interrupted{};
    }
    if (nowNs() > deadline) {
      std::string which;
      for (size_t i : index) {
        which += "\n  " + commands[i].argv[0] + " " +
                 (commands[i].argv.size() > 1 ? commands[i].argv[1] : "") + ":\n" +
                 tail(running[i].out.text() + running[i].partial, 8);
      }
      killAll();
      throw std::runtime_error("still running after " + std::to_string(timeoutMs / 1000) +
                               " s:" + which);
    }
    const int ready = poll(pfds.data(), pfds.size(), 100);
    if (ready < 0 && errno != EINTR) {
      killAll();
      throw std::runtime_error(errnoText("poll"));
    }
    for (size_t k = 0; ready > 0 && k < pfds.size(); ++k) {
      if (pfds[k].revents == 0) {
        continue;
      }
      Running& r = running[index[k]];
      for (;;) {
        const ssize_t n = read(r.fd, buffer, sizeof buffer);
        if (n > 0) {
          const int64_t at = nowNs() - r.out.startNs;
          r.partial.append(buffer, static_cast<size_t>(n));
          size_t from = 0;
          for (size_t end; (end = r.partial.find_first_of("\r\n", from)) != std::string::npos;
               from = end + 1) {
            if (end > from) {
              r.out.lines.push_back({at, r.partial.substr(from, end - from)});
            }
          }
          r.partial.erase(0, from);
          continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
          break;
        }
        // End of output: the program exited (none of them leaves a child holding the pipe).
        if (!r.partial.empty()) {
          r.out.lines.push_back({nowNs() - r.out.startNs, r.partial});
          r.partial.clear();
        }
        close(r.fd);
        r.fd = -1;
        int status = 0;
        rusage usage{};
        while (wait4(r.pid, &status, 0, &usage) < 0 && errno == EINTR) {
        }
        r.out.endNs = nowNs();
        r.out.code = exitCodeOf(status);
        r.out.cpuNs = (int64_t{usage.ru_utime.tv_sec} + usage.ru_stime.tv_sec) * 1000000000 +
                      (int64_t{usage.ru_utime.tv_usec} + usage.ru_stime.tv_usec) * 1000;
        r.pid = -1;
        break;
      }
    }
  }
  std::vector<Outcome> outcomes;
  outcomes.reserve(running.size());
  for (auto& r : running) {
    outcomes.push_back(std::move(r.out));
  }
  return outcomes;
}

Outcome runOne(const Command& command, int timeoutMs) {
  return runConcurrently({command}, timeoutMs).front();
}

// A long-running process (a daemon, `docker events`), its output appended to `log`, in a
// process group of its own.
pid_t spawnToLog(const std::vector<std::string>& args, const std::vector<std::string>& extraEnv,
                 const fs::path& log) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(),
                                   O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
  auto argv = argvOf(args);
  auto env = environmentWith(extraEnv);
  pid_t pid = -1;
  const int err = posix_spawn(&pid, argv[0], &actions, &attr, argv.data(), env.data());
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&actions);
  if (err != 0) {
    throw std::runtime_error(errnoText("posix_spawn " + args[0], err));
  }
  return pid;
}

// SIGTERM, up to `graceMs` to exit, then SIGKILL to its group; reaped.
void stopProcess(pid_t pid, int graceMs) {
  if (pid <= 0) {
    return;
  }
  kill(pid, SIGTERM);
  for (int waited = 0; waited < graceMs; waited += 10) {
    if (waitpid(pid, nullptr, WNOHANG) == pid) {
      return;
    }
    sleepMs(10);
  }
  std::fprintf(stderr, "warning: pid %d ignored SIGTERM for %d ms; killing it\n", pid, graceMs);
  kill(-pid, SIGKILL);
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
}

// ---------------------------------------------------------------------------------------------
// Options

struct Options {
  int runs = 10;
  int uploadRuns = 3;
  int uploadMib = 150;
  int jobs = 20;
  int batchRuns = 3;
  std::set<std::string> only;  // e2e, upload, concurrent; empty: all
  fs::path daemon = SNOW_DAEMON;
  fs::path snowctl = SNOWCTL;
  fs::path plugins = SNOW_PLUGIN_DIR;
  fs::path docker = "/usr/bin/docker";
  std::string jsonPath;
  bool keepTemp = false;
  bool snapshot = true;
  int timeoutMs = 180000;

  [[nodiscard]] bool wants(const std::string& part) const {
    return only.empty() || only.count(part) != 0;
  }
};

void usage(const char* argv0) {
  std::printf(
      "usage: %s [options]   (as root: it starts a private dockerd)\n"
      "  --runs N          end-to-end runs per variant and cache state (default 10)\n"
      "  --upload-runs N   runs of the big-context upload per peer (default 3)\n"
      "  --upload-mib M    size of the big context's random file, MiB (default 150)\n"
      "  --jobs N          jobs submitted at once in the concurrent part (default 20)\n"
      "  --batch-runs N    repetitions of the concurrent part per peer (default 3)\n"
      "  --only LIST       comma-separated subset of e2e, upload, concurrent (default: all)\n"
      "  --daemon PATH     snow-core (default %s)\n"
      "  --snowctl PATH    snowctl (default %s)\n"
      "  --plugins DIR     the plugin directory (default %s)\n"
      "  --docker PATH     the Docker CLI (default /usr/bin/docker)\n"
      "  --json FILE       also write every figure as JSON to FILE\n"
      "  --timeout-s N     give up on one run (or batch) after N s (default 180)\n"
      "  --keep-temp       keep the temporary directory (configurations, daemon logs)\n"
      "  --no-snapshot     run the binaries where they are (default: copies of snow-core,\n"
      "                    snowctl, the three plugins and the build's libraries in the\n"
      "                    temporary directory, so that a rebuild during the run changes\n"
      "                    nothing)\n",
      argv0, SNOW_DAEMON, SNOWCTL, SNOW_PLUGIN_DIR);
}

int parsePositive(const std::string& flag, const char* value) {
  char* end = nullptr;
  const long n = std::strtol(value, &end, 10);
  if (*end != '\0' || n <= 0 || n > 100000) {
    throw std::runtime_error(flag + ": expected a positive number, got '" + value + "'");
  }
  return static_cast<int>(n);
}

Options parseOptions(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) {
        throw std::runtime_error(arg + ": expected a value");
      }
      return argv[++i];
    };
    if (arg == "--help" || arg == "-h") {
      usage(argv[0]);
      std::exit(0);
    } else if (arg == "--runs") {
      o.runs = parsePositive(arg, value());
    } else if (arg == "--upload-runs") {
      o.uploadRuns = parsePositive(arg, value());
    } else if (arg == "--upload-mib") {
      o.uploadMib = parsePositive(arg, value());
    } else if (arg == "--jobs") {
      o.jobs = parsePositive(arg, value());
    } else if (arg == "--batch-runs") {
      o.batchRuns = parsePositive(arg, value());
    } else if (arg == "--timeout-s") {
      o.timeoutMs = parsePositive(arg, value()) * 1000;
    } else if (arg == "--daemon") {
      o.daemon = value();
    } else if (arg == "--snowctl") {
      o.snowctl = value();
    } else if (arg == "--plugins") {
      o.plugins = value();
    } else if (arg == "--docker") {
      o.docker = value();
    } else if (arg == "--json") {
      o.jsonPath = value();
    } else if (arg == "--keep-temp") {
      o.keepTemp = true;
    } else if (arg == "--no-snapshot") {
      o.snapshot = false;
    } else if (arg == "--only") {
      std::stringstream list(value());
      for (std::string part; std::getline(list, part, ',');) {
        if (part != "e2e" && part != "upload" && part != "concurrent") {
          throw std::runtime_error("--only: no part '" + part + "' (e2e, upload, concurrent)");
        }
        o.only.insert(part);
      }
    } else {
      throw std::runtime_error("unknown argument '" + arg + "' (see --help)");
    }
  }
  for (const auto& [what, path] : {std::pair<const char*, const fs::path&>{"--daemon", o.daemon},
                                   {"--snowctl", o.snowctl},
                                   {"--docker", o.docker}}) {
    if (path.empty() || access(path.c_str(), X_OK) != 0) {
      throw std::runtime_error(std::string(what) + ": '" + path.string() +
                               "' is not an executable file");
    }
  }
  for (const char* plugin : {"containers.so", "gossip.so", "portal.so"}) {
    if (!fs::exists(o.plugins / plugin)) {
      throw std::runtime_error("--plugins: no " + (o.plugins / plugin).string());
    }
  }
  return o;
}

// Copies the daemon, snowctl, the three plugins and the build tree's libraries (each under its
// soname) into `dir`, and points `options` at the copies; returns the LD_LIBRARY_PATH entry that
// makes them load the copied libraries (before their RUNPATH, the build tree).
std::string snapshot(Options& options, const fs::path& dir) {
  const fs::path bin = dir / "bin";
  const fs::path plugins = dir / "plugins";
  fs::create_directories(bin);
  fs::create_directories(plugins);
  auto copy = [](const fs::path& from, const fs::path& to) {
    fs::copy_file(from, to, fs::copy_options::overwrite_existing);
    fs::permissions(to, fs::perms(0755));  // The plugin loader refuses group/world-writable.
  };
  copy(options.daemon, bin / "snow-core");
  copy(options.snowctl, bin / "snowctl");
  for (const char* plugin : {"containers.so", "gossip.so", "portal.so"}) {
    copy(options.plugins / plugin, plugins / plugin);
  }
  std::stringstream libs(SNOW_BUILD_LIBS);  // "file=soname|file=soname"
  for (std::string entry; std::getline(libs, entry, '|');) {
    const auto eq = entry.find('=');
    if (eq != std::string::npos) {
      copy(entry.substr(0, eq), bin / entry.substr(eq + 1));
    }
  }
  options.daemon = bin / "snow-core";
  options.snowctl = bin / "snowctl";
  options.plugins = plugins;
  return "LD_LIBRARY_PATH=" + bin.string();
}

// ---------------------------------------------------------------------------------------------
// The cluster: three daemons sharing the private dockerd

struct Daemon {
  std::string name;
  std::string id;
  std::string portal;
  fs::path socket;
  fs::path log;
  pid_t pid = -1;
};

class Cluster {
 public:
  Cluster(fs::path dir, const Options& options, std::string dockerSocket,
          std::vector<std::string> env)
      : dir_(std::move(dir)),
        options_(options),
        dockerSocket_(std::move(dockerSocket)),
        env_(std::move(env)) {}
  ~Cluster() { stop(); }
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  void start() {
    for (size_t i = 0; i < kNodes; ++i) {
      startNode(i);
    }
    awaitWorkers();
  }

  void stop() {
    for (auto& d : daemons_) {
      stopProcess(d.pid, 10000);
      d.pid = -1;
    }
  }

  [[nodiscard]] const Daemon& node(size_t i) const { return daemons_.at(i); }
  [[nodiscard]] std::string nameOf(const std::string& id) const {
    for (const auto& d : daemons_) {
      if (d.id == id) {
        return d.name;
      }
    }
    return id.substr(0, 8);
  }

  [[nodiscard]] Command snowctl(size_t via, std::vector<std::string> args) const {
    args.insert(args.begin(),
                {options_.snowctl.string(), "--node", "unix:" + daemons_.at(via).socket.string()});
    return {args, env_};
  }

 private:
  void startNode(size_t index) {
    Daemon& d = daemons_.emplace_back();
    d.name = "n" + std::to_string(index);
    d.socket = dir_ / (d.name + ".sock");
    d.log = dir_ / (d.name + ".log");
    const fs::path config = dir_ / (d.name + ".yaml");
    const std::string seeds = index == 0 ? "[]" : "[\"" + daemons_[0].portal + "\"]";
    writeFile(config, "daemon:\n  key_directory: " + (dir_ / (d.name + "-keys")).string() +
                          "\nrpc:\n  unix_socket: " + d.socket.string() +
                          "\n  listen: 127.0.0.1:0\n"
                          "modules:\n"
                          "  portal:\n    listen: 127.0.0.1:0\n    cluster_secret: s3cret\n"
                          "    handshake_timeout: 1s\n"
                          "  gossip:\n    seeds: " +
                          seeds +
                          "\n    sync_interval: 500ms\n"
                          "    rejoin_interval: 500ms\n    suspicion_timeout: 1s\n"
                          "  containers:\n    docker_socket: " +
                          dockerSocket_ + "\n");
    d.pid = spawnToLog(
        {options_.daemon.string(), "--modules", options_.plugins.string(), "--config",
         config.string()},
        [&] {
          auto env = env_;
          env.push_back("SNOW_RPC_SOCKET=" + d.socket.string());
          return env;
        }(),
        d.log);
    static const std::regex started(R"(gossip: node ([0-9a-f]{32}) at (\S+) )");
    const int64_t deadline = nowNs() + 30000 * kMs;
    for (;;) {
      checkInterrupted();
      const std::string log = readFile(d.log);
      std::smatch m;
      if (std::regex_search(log, m, started) && log.find("ready:") != std::string::npos) {
        d.id = m[1];
        d.portal = m[2];
        return;
      }
      int status = 0;
      if (waitpid(d.pid, &status, WNOHANG) == d.pid) {
        d.pid = -1;
        throw std::runtime_error(d.name + " exited (status " + std::to_string(exitCodeOf(status)) +
                                 ") while starting; its log ends:\n" + tail(log, 15));
      }
      if (nowNs() > deadline) {
        throw std::runtime_error(d.name + " did not log 'gossip: node' and 'ready:' in 30 s:\n" +
                                 tail(log, 15));
      }
      sleepMs(20);
    }
  }

  // Until n0 sees every node alive and advertising the container capability.
  void awaitWorkers() {
    static const std::regex worker(R"("status":"ALIVE"[^}]*"containers":"worker")");
    const int64_t deadline = nowNs() + 30000 * kMs;
    std::string json;
    for (;;) {
      checkInterrupted();
      json = runOne(snowctl(0, {"--json", "gossip", "members"}), 10000).text();
      const auto seen = std::distance(std::sregex_iterator(json.begin(), json.end(), worker),
                                      std::sregex_iterator());
      if (seen == static_cast<long>(kNodes)) {
        return;
      }
      if (nowNs() > deadline) {
        throw std::runtime_error("n0 does not see three live workers after 30 s: " + json);
      }
      sleepMs(200);
    }
  }

  fs::path dir_;
  const Options& options_;
  std::string dockerSocket_;
  std::vector<std::string> env_;  // For the daemons and snowctl.
  std::vector<Daemon> daemons_;
};

// ---------------------------------------------------------------------------------------------
// Statistics

// Nearest-rank percentile of `values` (any order); -1 when empty.
int64_t percentile(std::vector<int64_t> values, double p) {
  values.erase(std::remove(values.begin(), values.end(), int64_t{-1}), values.end());
  if (values.empty()) {
    return -1;
  }
  std::sort(values.begin(), values.end());
  const auto rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(values.size())));
  return values[std::clamp<size_t>(rank, 1, values.size()) - 1];
}
int64_t median(const std::vector<int64_t>& values) {
  return percentile(values, 50);
}

// ---------------------------------------------------------------------------------------------
// The benchmark

// One end-to-end run, CLI (two programs) or snowctl, on one time line.
struct Run {
  std::string variant;
  int64_t startNs = 0;
  int64_t startRealNs = 0;
  int64_t wallNs = 0;
  int64_t buildExitNs = -1;  // CLI: when `docker build` exited.
  std::vector<Line> lines;   // ns since startNs
  std::string jobId;         // snowctl
  std::string node;          // snowctl: the worker's id
  int64_t clientCpuNs = 0;   // CPU time of snowctl (or of `docker build` + `docker run`)
  // From docker events (ns since startNs): the job's container.
  int64_t createNs = -1;
  int64_t startEventNs = -1;
  int64_t dieNs = -1;
  int64_t destroyNs = -1;

  [[nodiscard]] int64_t lineAt(std::string_view needle) const {
    for (const auto& line : lines) {
      if (line.text.find(needle) != std::string::npos) {
        return line.ns;
      }
    }
    return -1;
  }
  [[nodiscard]] int64_t exactLineAt(std::string_view text) const {
    for (const auto& line : lines) {
      if (line.text == text) {
        return line.ns;
      }
    }
    return -1;
  }
};

struct DockerEvent {
  int64_t realNs = 0;
  std::string type;
  std::string action;
  std::string id;
  std::string name;
  std::string image;
};

struct UploadRow {
  std::string peer;
  std::string measure;  // what the time is until
  std::vector<int64_t> ns;
  uint64_t bytes = 0;
};

// CPU time spent during one upload run, per process (ns).
struct CpuRow {
  std::string peer;
  std::map<std::string, std::vector<int64_t>> byProcess;  // "client", "n0", "n1", "dockerd"
};

// User + system CPU time of a running process so far, from /proc (10 ms resolution).
int64_t processCpuNs(pid_t pid) {
  const std::string stat = readFile("/proc/" + std::to_string(pid) + "/stat");
  const auto paren = stat.rfind(')');
  if (paren == std::string::npos) {
    return 0;
  }
  std::istringstream fields(stat.substr(paren + 2));
  std::string field;
  int64_t utime = 0;
  int64_t stime = 0;
  for (int i = 3; i <= 15 && fields >> field; ++i) {  // Fields 14 and 15: utime, stime.
    if (i == 14) {
      utime = std::strtoll(field.c_str(), nullptr, 10);
    } else if (i == 15) {
      stime = std::strtoll(field.c_str(), nullptr, 10);
    }
  }
  return (utime + stime) * (1000000000 / sysconf(_SC_CLK_TCK));
}

struct Batch {
  std::string peer;
  int64_t wallNs = 0;
  std::vector<int64_t> jobNs;
  std::map<std::string, int> perNode;
  std::string order;  // snowctl: the workers in the order the jobs were accepted
  int failed = 0;
  int64_t clientCpuNs = 0;   // All the clients together.
  int64_t daemonCpuNs = 0;   // n0 + n1 + n2.
  int64_t dockerdCpuNs = 0;  // dockerd itself (not containerd, the shims, runc).
};

class Bench {
 public:
  Bench(Options options, fs::path dir) : options_(std::move(options)), dir_(std::move(dir)) {}
  ~Bench() {
    // After a failure: what run() did not stop. The members then stop the daemons, and dockerd
    // last (removing its directory, images and containers included).
    stopProcess(events_, 2000);
  }
  Bench(const Bench&) = delete;
  Bench& operator=(const Bench&) = delete;

  int run(const std::string& commandLine);

 private:
  // ---- Docker CLI ----
  [[nodiscard]] Command docker(std::vector<std::string> args) const {
    args.insert(args.begin(), options_.docker.string());
    return {args,
            {"DOCKER_HOST=unix://" + dockerd_->socketPath(), "DOCKER_BUILDKIT=0",
             "DOCKER_CONFIG=" + (dir_ / "docker-config").string()}};
  }
  Outcome dockerChecked(std::vector<std::string> args) {
    Outcome out = runOne(docker(args), options_.timeoutMs);
    if (out.code != 0) {
      std::string joined;
      for (const auto& a : args) {
        joined += " " + a;
      }
      throw std::runtime_error("docker" + joined + " failed (" + std::to_string(out.code) + "):\n" +
                               tail(out.text(), 10));
    }
    return out;
  }

  // Every container and image gone: the next build starts without a cache. Not timed.
  void clearEngine() {
    removeJobs();
    const std::string left = dockerChecked({"ps", "-aq"}).text();
    std::istringstream ids(left);
    for (std::string id; std::getline(ids, id);) {
      dockerChecked({"rm", "-f", id});
    }
    dockerChecked({"image", "prune", "-a", "-f"});
    dockerChecked({"builder", "prune", "-f"});
    const std::string images = dockerChecked({"images", "-aq"}).text();
    if (!images.empty()) {
      throw std::runtime_error("images left after pruning: " + images);
    }
  }

  // The jobs of earlier runs removed through the runner (`snowctl rm`, all at once).
  void removeJobs() {
    if (jobsToRemove_.empty()) {
      return;
    }
    std::vector<Command> commands;
    for (const auto& job : jobsToRemove_) {
      commands.push_back(cluster_->snowctl(0, {"rm", job}));
    }
    const auto outcomes = runConcurrently(commands, options_.timeoutMs);
    for (size_t i = 0; i < outcomes.size(); ++i) {
      if (outcomes[i].code != 0) {
        std::fprintf(stderr, "warning: snowctl rm %s: %s", jobsToRemove_[i].c_str(),
                     tail(outcomes[i].text(), 3).c_str());
        (void)runOne(docker({"rm", "-f", "snow-" + jobsToRemove_[i]}), options_.timeoutMs);
      }
    }
    jobsToRemove_.clear();
  }

  // ---- Runs ----
  Run cliRun(const fs::path& context, const std::string& variant) {
    Outcome build = runOne(docker({"build", "--network", "none", "-t", kCliImage, context}),
                           options_.timeoutMs);
    if (build.code != 0) {
      throw std::runtime_error("docker build failed:\n" + tail(build.text(), 10));
    }
    Outcome run =
        runOne(docker({"run", "--network", "none", "--rm", kCliImage}), options_.timeoutMs);
    if (run.code != 0 || run.exactLineAt(kGreeting) < 0) {
      throw std::runtime_error("docker run failed (" + std::to_string(run.code) + "):\n" +
                               tail(run.text(), 10));
    }
    Run r;
    r.variant = variant;
    r.startNs = build.startNs;
    r.startRealNs = build.startRealNs;
    r.wallNs = run.endNs - build.startNs;
    r.buildExitNs = build.wallNs();
    r.clientCpuNs = build.cpuNs + run.cpuNs;
    r.lines = build.lines;
    for (auto line : run.lines) {
      line.ns += run.startNs - build.startNs;
      r.lines.push_back(std::move(line));
    }
    return r;
  }

  Run snowRun(const fs::path& context, const std::string& variant, const std::string& pin) {
    std::vector<std::string> args = {"run"};
    if (!pin.empty()) {
      args.insert(args.end(), {"--node", pin});
    }
    args.push_back(context.string());
    Outcome out = runOne(cluster_->snowctl(0, args), options_.timeoutMs);
    return snowRunOf(out, variant);
  }

  Run snowRunOf(const Outcome& out, const std::string& variant) {
    static const std::regex accepted(R"(snowctl: job ([0-9a-f]{32}) on node ([0-9a-f]{32}))");
    Run r;
    r.variant = variant;
    r.startNs = out.startNs;
    r.startRealNs = out.startRealNs;
    r.wallNs = out.wallNs();
    r.clientCpuNs = out.cpuNs;
    r.lines = out.lines;
    const std::string text = out.text();
    std::smatch m;
    if (std::regex_search(text, m, accepted)) {
      r.jobId = m[1];
      r.node = m[2];
      jobsToRemove_.push_back(r.jobId);
    }
    if (out.code != 0 || out.exactLineAt(kGreeting) < 0 || r.jobId.empty()) {
      throw std::runtime_error("snowctl run (" + variant + ") failed (" + std::to_string(out.code) +
                               "):\n" + tail(text, 15));
    }
    return r;
  }

  void checkCache(const Run& r, bool cached) {
    const bool hit = r.lineAt("Using cache") >= 0;
    if (hit != cached) {
      std::string text;
      for (const auto& line : r.lines) {
        text += line.text + "\n";
      }
      throw std::runtime_error(r.variant + ": expected " +
                               (cached ? "a cached build" : "a build without cache") +
                               ", the output says otherwise:\n" + tail(text, 15));
    }
  }

  // ---- Parts ----
  std::map<std::string, int> placementCheck(bool atOnce);
  void endToEnd();
  void upload();
  void concurrent();
  void readEvents();

  // ---- Contexts ----
  void writeContexts();

  // ---- Report ----
  void report(const std::string& commandLine);
  void writeJson(const std::string& commandLine);

  Options options_;
  fs::path dir_;
  std::unique_ptr<TestDockerd> dockerd_;
  std::unique_ptr<Cluster> cluster_;
  pid_t events_ = -1;
  fs::path small_;
  fs::path big_;
  uint64_t smallBytes_ = 0;
  uint64_t bigBytes_ = 0;
  std::vector<std::string> jobsToRemove_;

  std::string engineVersion_;
  std::string loadStart_;
  std::string loadEnd_;
  std::vector<std::pair<std::string, std::string>> loads_;  // At the start of each part.
  std::string sharedCacheNote_;
  std::vector<std::string> variants_;
  std::map<std::string, std::vector<Run>> runs_;
  std::vector<UploadRow> uploads_;
  std::vector<CpuRow> cpu_;
  std::vector<Batch> batches_;
  std::vector<std::pair<std::string, std::map<std::string, int>>> placements_;
};

void fillRandom(const fs::path& path, uint64_t bytes) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    throw std::runtime_error(errnoText("open " + path.string()));
  }
  std::vector<char> buffer(size_t{1} << 20);
  for (uint64_t done = 0; done < bytes;) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(buffer.size(), bytes - done));
    for (size_t got = 0; got < n;) {
      const ssize_t r = getrandom(buffer.data() + got, n - got, 0);
      if (r < 0 && errno != EINTR) {
        close(fd);
        throw std::runtime_error(errnoText("getrandom"));
      }
      got += r > 0 ? static_cast<size_t>(r) : 0;
    }
    if (write(fd, buffer.data(), n) != static_cast<ssize_t>(n)) {
      close(fd);
      throw std::runtime_error(errnoText("write " + path.string()));
    }
    done += n;
  }
  close(fd);
}

uint64_t treeBytes(const fs::path& dir) {
  uint64_t bytes = 0;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (entry.is_regular_file()) {
      bytes += entry.file_size();
    }
  }
  return bytes;
}

void Bench::writeContexts() {
  const std::vector<std::string> cmd = {"/bin/busybox", "echo", kGreeting};
  small_ = dir_ / "context";
  fs::create_directories(small_);
  snow::containers::testing::writeBusyboxContext(small_.string(), cmd);
  smallBytes_ = treeBytes(small_);
  if (options_.wants("upload")) {
    big_ = dir_ / "big-context";
    fs::create_directories(big_);
    snow::containers::testing::writeBusyboxContext(big_.string(), cmd);
    fillRandom(big_ / "random.bin", uint64_t(options_.uploadMib) << 20);
    bigBytes_ = treeBytes(big_);
  }
}

// ---- Part 1: end to end ---------------------------------------------------------------------

void Bench::endToEnd() {
  const std::string local = cluster_->node(0).id;
  const std::string other = cluster_->node(1).id;
  variants_ = {"cli uncached", "snow local uncached", "snow forwarded uncached",
               "cli cached",   "snow local cached",   "snow forwarded cached"};

  // Does a CLI build warm the cache for the runner (same context, same engine)?
  clearEngine();
  (void)cliRun(small_, "probe");
  {
    Run probe = snowRun(small_, "probe", local);
    sharedCacheNote_ = probe.lineAt("Using cache") >= 0
                           ? "a CLI build of the context warms the cache for snowctl run (same "
                             "tar metadata): yes"
                           : "a CLI build of the context warms the cache for snowctl run: NO (its "
                             "first run after a CLI build rebuilt)";
  }

  for (int i = 0; i < options_.runs; ++i) {
    std::fprintf(stderr, "e2e: round %d of %d\n", i + 1, options_.runs);
    // Each uncached run starts from an empty engine; the cached run of the same peer follows it.
    clearEngine();
    Run r = cliRun(small_, "cli uncached");
    checkCache(r, false);
    runs_[r.variant].push_back(std::move(r));
    r = cliRun(small_, "cli cached");
    checkCache(r, true);
    runs_[r.variant].push_back(std::move(r));

    for (const auto& [pin, where] : {std::pair{local, "local"}, std::pair{other, "forwarded"}}) {
      clearEngine();
      r = snowRun(small_, std::string("snow ") + where + " uncached", pin);
      checkCache(r, false);
      runs_[r.variant].push_back(std::move(r));
      removeJobs();
      r = snowRun(small_, std::string("snow ") + where + " cached", pin);
      checkCache(r, true);
      runs_[r.variant].push_back(std::move(r));
      removeJobs();
    }
    checkInterrupted();
  }
}

// ---- Part 2: context upload -----------------------------------------------------------------

// A plain copy of `files` through a loopback socket: a thread reads and discards, this thread
// reads the files and writes them, 1 MiB at a time. Returns ns from the first read of a file
// until the reader has every byte.
int64_t loopbackCopy(const std::vector<fs::path>& files, bool unixSocket, const fs::path& dir) {
  const int family = unixSocket ? AF_UNIX : AF_INET;
  const int listener = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listener < 0) {
    throw std::runtime_error(errnoText("socket"));
  }
  sockaddr_storage address{};
  socklen_t length = 0;
  const fs::path path = dir / "copy.sock";
  if (unixSocket) {
    auto* un = reinterpret_cast<sockaddr_un*>(&address);
    un->sun_family = AF_UNIX;
    std::strncpy(un->sun_path, path.c_str(), sizeof(un->sun_path) - 1);
    length = sizeof(sockaddr_un);
    unlink(path.c_str());
  } else {
    auto* in = reinterpret_cast<sockaddr_in*>(&address);
    in->sin_family = AF_INET;
    in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    length = sizeof(sockaddr_in);
  }
  if (bind(listener, reinterpret_cast<sockaddr*>(&address), length) != 0 ||
      listen(listener, 1) != 0 ||
      getsockname(listener, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    close(listener);
    throw std::runtime_error(errnoText("bind/listen"));
  }
  std::atomic<uint64_t> received{0};
  std::atomic<int64_t> doneNs{0};
  std::thread reader([&] {
    const int fd = accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      return;
    }
    std::vector<char> buffer(size_t{1} << 20);
    uint64_t total = 0;
    for (;;) {
      const ssize_t n = read(fd, buffer.data(), buffer.size());
      if (n > 0) {
        total += static_cast<uint64_t>(n);
      } else if (n == 0 || errno != EINTR) {
        break;
      }
    }
    doneNs = nowNs();
    received = total;
    close(fd);
  });
  const int64_t start = nowNs();
  const int out = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  uint64_t sent = 0;
  bool ok = out >= 0 && connect(out, reinterpret_cast<sockaddr*>(&address), length) == 0;
  std::vector<char> buffer(size_t{1} << 20);
  for (const auto& file : files) {
    const int in = ok ? open(file.c_str(), O_RDONLY | O_CLOEXEC) : -1;
    ok = ok && in >= 0;
    while (ok) {
      const ssize_t n = read(in, buffer.data(), buffer.size());
      if (n <= 0) {
        ok = n == 0;
        break;
      }
      for (ssize_t put = 0; ok && put < n;) {
        const ssize_t w = write(out, buffer.data() + put, static_cast<size_t>(n - put));
        ok = w > 0;
        put += w > 0 ? w : 0;
      }
      sent += static_cast<uint64_t>(n);
    }
    if (in >= 0) {
      close(in);
    }
  }
  if (out >= 0) {
    close(out);
  }
  if (!ok) {
    shutdown(listener, SHUT_RDWR);  // A reader still in accept() returns.
  }
  reader.join();
  close(listener);
  if (unixSocket) {
    unlink(path.c_str());
  }
  if (!ok || received != sent) {
    throw std::runtime_error("loopback copy failed: sent " + std::to_string(sent) + ", received " +
                             std::to_string(received.load()));
  }
  return doneNs - start;
}

void Bench::upload() {
  const std::string local = cluster_->node(0).id;
  const std::string other = cluster_->node(1).id;
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(big_)) {
    files.push_back(entry.path());
  }
  auto row = [&](const std::string& peer, const std::string& measure) -> UploadRow& {
    for (auto& u : uploads_) {
      if (u.peer == peer && u.measure == measure) {
        return u;
      }
    }
    return uploads_.emplace_back(UploadRow{peer, measure, {}, bigBytes_});
  };
  // The big context's build hits the cache (only busybox is copied), for both: what differs
  // between the peers is the upload. (The CLI's and the runner's caches are separate.)
  (void)dockerChecked({"build", "--network", "none", "-t", kCliImage, small_});
  (void)snowRun(small_, "warm", local);
  removeJobs();
  for (int i = 0; i < options_.uploadRuns; ++i) {
    std::fprintf(stderr, "upload: round %d of %d (%.0f MiB)\n", i + 1, options_.uploadRuns,
                 static_cast<double>(bigBytes_) / (1 << 20));
    row("loopback TCP copy", "all bytes received").ns.push_back(loopbackCopy(files, false, dir_));
    row("unix socket copy", "all bytes received").ns.push_back(loopbackCopy(files, true, dir_));

    auto sample = [&] {
      return std::map<std::string, int64_t>{{"n0", processCpuNs(cluster_->node(0).pid)},
                                            {"n1", processCpuNs(cluster_->node(1).pid)},
                                            {"dockerd", processCpuNs(dockerd_->pid())}};
    };
    auto cpuRow = [&](const std::string& peer, const std::map<std::string, int64_t>& before,
                      int64_t client) {
      CpuRow* c = nullptr;
      for (auto& existing : cpu_) {
        c = existing.peer == peer ? &existing : c;
      }
      if (c == nullptr) {
        c = &cpu_.emplace_back(CpuRow{peer, {}});
      }
      const auto after = sample();
      c->byProcess["client"].push_back(client);
      for (const auto& [process, ns] : after) {
        c->byProcess[process].push_back(ns - before.at(process));
      }
    };
    auto before = sample();
    Outcome cli =
        runOne(docker({"build", "--network", "none", "-t", kCliImage, big_}), options_.timeoutMs);
    cpuRow("docker build", before, cli.cpuNs);
    if (cli.code != 0 || !cli.has("Step 1/")) {
      throw std::runtime_error("docker build (big context) failed:\n" + tail(cli.text(), 10));
    }
    row("docker build", "Step 1 (engine has the context)").ns.push_back(cli.lineAt("Step 1/"));
    row("docker build", "exit").ns.push_back(cli.wallNs());

    for (const auto& [pin, where] : {std::pair{local, "local"}, std::pair{other, "forwarded"}}) {
      before = sample();
      Run r = snowRun(big_, std::string("snow ") + where, pin);
      const std::string peer = std::string("snowctl run, ") + where;
      cpuRow(peer, before, r.clientCpuNs);
      row(peer, "job accepted (Submit upload done)").ns.push_back(r.lineAt("snowctl: job "));
      row(peer, "Step 1 (engine has the context)").ns.push_back(r.lineAt("Step 1/"));
      row(peer, "exit").ns.push_back(r.wallNs);
      removeJobs();
    }
    checkInterrupted();
  }
}

// ---- Part 3: many jobs at once --------------------------------------------------------------

void Bench::concurrent() {
  // Built and cached for both: each snowctl job's build is a cache hit, as is each CLI build.
  (void)dockerChecked({"build", "--network", "none", "-t", kCliImage, small_});
  (void)snowRun(small_, "warm", "");
  removeJobs();
  const auto jobs = static_cast<size_t>(options_.jobs);
  auto daemonsCpu = [&] {
    int64_t ns = 0;
    for (size_t i = 0; i < kNodes; ++i) {
      ns += processCpuNs(cluster_->node(i).pid);
    }
    return ns;
  };
  int64_t daemonsBefore = 0;
  int64_t dockerdBefore = 0;
  auto mark = [&] {
    daemonsBefore = daemonsCpu();
    dockerdBefore = processCpuNs(dockerd_->pid());
  };
  auto batchOf = [&](const std::string& peer, const std::vector<Outcome>& outcomes) {
    Batch b;
    b.peer = peer;
    b.daemonCpuNs = daemonsCpu() - daemonsBefore;
    b.dockerdCpuNs = processCpuNs(dockerd_->pid()) - dockerdBefore;
    int64_t first = outcomes.front().startNs;
    int64_t last = 0;
    for (const auto& o : outcomes) {
      first = std::min(first, o.startNs);
      last = std::max(last, o.endNs);
      b.jobNs.push_back(o.wallNs());
      b.clientCpuNs += o.cpuNs;
      if (o.code != 0 || o.exactLineAt(kGreeting) < 0) {
        ++b.failed;
        std::fprintf(stderr, "%s: a job failed (%d):\n%s", peer.c_str(), o.code,
                     tail(o.text(), 6).c_str());
      }
    }
    b.wallNs = last - first;
    return b;
  };
  std::fprintf(stderr, "concurrent: placement check (%zu long jobs)\n", jobs);
  placements_.emplace_back("one at a time", placementCheck(false));
  placements_.emplace_back("all at once", placementCheck(true));
  for (int i = 0; i < options_.batchRuns; ++i) {
    std::fprintf(stderr, "concurrent: round %d of %d (%zu jobs)\n", i + 1, options_.batchRuns,
                 jobs);
    {
      std::vector<Command> commands(jobs, cluster_->snowctl(0, {"run", small_.string()}));
      mark();
      const auto outcomes = runConcurrently(commands, options_.timeoutMs);
      Batch b = batchOf("snowctl run (attached) via n0", outcomes);
      static const std::regex accepted(R"(snowctl: job ([0-9a-f]{32}) on node ([0-9a-f]{32}))");
      std::vector<std::pair<int64_t, std::string>> placed;
      for (const auto& o : outcomes) {
        const std::string text = o.text();
        std::smatch m;
        if (std::regex_search(text, m, accepted)) {
          jobsToRemove_.push_back(m[1]);
          ++b.perNode[cluster_->nameOf(m[2])];
          placed.emplace_back(o.startNs + o.lineAt("snowctl: job "), cluster_->nameOf(m[2]));
        }
      }
      std::sort(placed.begin(), placed.end());
      for (const auto& [at, node] : placed) {
        b.order += (b.order.empty() ? "" : " ") + node;
      }
      if (!placed.empty()) {
        b.order += " (accepted between " + fmtMs(placed.front().first - outcomes.front().startNs) +
                   " and " + fmtMs(placed.back().first - outcomes.front().startNs) + " ms)";
      }
      batches_.push_back(std::move(b));
      removeJobs();
    }
    {
      std::vector<Command> commands(jobs, docker({"run", "--network", "none", "--rm", kCliImage}));
      mark();
      batches_.push_back(
          batchOf("docker run --rm (image built)", runConcurrently(commands, options_.timeoutMs)));
    }
    {
      // The like-for-like peer of `snowctl run`: each one builds (a cache hit) and runs.
      const std::string d = options_.docker.string();
      const std::string line = d + " build -q --network none -t " + kCliImage + " " +
                               small_.string() + " >/dev/null && " + d +
                               " run --network none --rm " + kCliImage;
      Command c = docker({});
      c.argv = {"/bin/sh", "-c", line};
      std::vector<Command> commands(jobs, c);
      mark();
      batches_.push_back(
          batchOf("docker build + docker run --rm", runConcurrently(commands, options_.timeoutMs)));
    }
    checkInterrupted();
  }
}

// Places --jobs jobs that stay active (`sleep 60`), one after another or all at once, and counts
// them per worker once every container exists; then removes them. One at a time, the policy
// (fewest jobs first) should spread them evenly.
std::map<std::string, int> Bench::placementCheck(bool atOnce) {
  std::vector<Command> commands(
      static_cast<size_t>(options_.jobs),
      cluster_->snowctl(0, {"run", "-d", "--", small_.string(), "/bin/busybox", "sleep", "60"}));
  std::vector<Outcome> outcomes;
  if (atOnce) {
    outcomes = runConcurrently(commands, options_.timeoutMs);
  } else {
    for (const auto& c : commands) {
      outcomes.push_back(runOne(c, options_.timeoutMs));
    }
  }
  std::set<std::string> jobs;
  for (const auto& o : outcomes) {
    const std::string id = o.lines.empty() ? "" : o.lines.front().text;
    if (o.code != 0 || id.size() != 32) {
      throw std::runtime_error("snowctl run -d failed (" + std::to_string(o.code) + "):\n" +
                               tail(o.text(), 6));
    }
    jobs.insert(id);
    jobsToRemove_.push_back(id);
  }
  std::map<std::string, int> perNode;
  const int64_t deadline = nowNs() + 60000 * kMs;
  for (;;) {
    perNode.clear();
    const std::string listed = dockerChecked({"ps", "--filter", "label=snow.job", "--format",
                                              R"({{.Label "snow.job"}} {{.Label "snow.node"}})"})
                                   .text();
    std::istringstream rows(listed);
    size_t found = 0;
    for (std::string job, node; rows >> job >> node;) {
      if (jobs.count(job) != 0) {
        ++found;
        ++perNode[cluster_->nameOf(node)];
      }
    }
    if (found == jobs.size()) {
      break;
    }
    if (nowNs() > deadline) {
      throw std::runtime_error("placement check: only " + std::to_string(found) + " of " +
                               std::to_string(jobs.size()) + " containers running after 60 s");
    }
    sleepMs(200);
  }
  removeJobs();
  return perNode;
}

// ---- Docker events: the job's container, on each run's time line ---------------------------

void Bench::readEvents() {
  std::vector<DockerEvent> events;
  std::istringstream in(readFile(dir_ / "events.log"));
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    DockerEvent e;
    std::string ns;
    fields >> ns >> e.type >> e.action >> e.id >> e.name >> e.image;
    if (ns.empty() || e.type != "container") {
      continue;
    }
    e.realNs = std::strtoll(ns.c_str(), nullptr, 10);
    events.push_back(std::move(e));
  }
  for (auto& [variant, runs] : runs_) {
    for (auto& r : runs) {
      const int64_t from = r.startRealNs;
      const int64_t to = r.startRealNs + r.wallNs + 500 * kMs;
      std::string id;
      for (const auto& e : events) {
        if (e.realNs < from || e.realNs > to) {
          continue;
        }
        if (id.empty() && e.action == "create" &&
            (r.jobId.empty() ? e.image == kCliImage : e.name == "snow-" + r.jobId)) {
          id = e.id;
        }
        if (id.empty() || e.id != id) {
          continue;
        }
        const int64_t at = e.realNs - from;
        if (e.action == "create") {
          r.createNs = at;
        } else if (e.action == "start") {
          r.startEventNs = at;
        } else if (e.action == "die") {
          r.dieNs = at;
        } else if (e.action == "destroy" && r.jobId.empty()) {
          r.destroyNs = at;  // The CLI's --rm; a job's container goes later, by `snowctl rm`.
        }
      }
    }
  }
}

// ---- Report ----------------------------------------------------------------------------------

std::vector<int64_t> wallsOf(const std::vector<Run>& runs) {
  std::vector<int64_t> ns;
  for (const auto& r : runs) {
    ns.push_back(r.wallNs);
  }
  return ns;
}

double mibPerSecond(uint64_t bytes, int64_t ns) {
  return ns <= 0 ? 0 : static_cast<double>(bytes) / (1 << 20) / (static_cast<double>(ns) / 1e9);
}

void Bench::report(const std::string& commandLine) {
  std::printf("\n== snow_containers_bench: the container runner against the Docker CLI ==\n");
  std::printf("engine: dockerd %s (storage %s), legacy builder; 3 daemons on loopback\n",
              engineVersion_.c_str(), dockerd_->storageDriver().c_str());
  std::printf("load average (1, 5, 15 min): %s at the start", loadStart_.c_str());
  for (const auto& [part, load] : loads_) {
    std::printf(", %s before %s", load.c_str(), part.c_str());
  }
  std::printf(", %s at the end\n", loadEnd_.c_str());

  if (!runs_.empty()) {
    std::printf("\n-- end to end (%d runs each; ms; context %llu bytes) --\n", options_.runs,
                static_cast<unsigned long long>(smallBytes_));
    std::printf("%-26s %8s %8s %8s %8s %12s %10s  %s\n", "variant", "median", "p90", "min", "max",
                "x CLI (med)", "+ms (med)", "aim: <= max(1.05x, +50 ms)");
    for (const auto& v : variants_) {
      const auto walls = wallsOf(runs_[v]);
      const bool cached = v.find("uncached") == std::string::npos;
      const auto& cli = runs_[cached ? "cli cached" : "cli uncached"];
      const int64_t med = median(walls);
      const int64_t cliMed = median(wallsOf(cli));
      std::string ratio = "1.00";
      std::string plus = "-";
      std::string aim = "(the peer)";
      if (v.rfind("snow", 0) == 0) {
        ratio = fmtDouble(static_cast<double>(med) / static_cast<double>(cliMed));
        plus = fmtDouble(static_cast<double>(med - cliMed) / kMs, "%+.0f");
        const int64_t allowed = std::max(cliMed * 105 / 100, cliMed + 50 * kMs);
        aim = med <= allowed ? "met" : "NOT met (allowed " + fmtMs(allowed) + ")";
      }
      std::printf("%-26s %8s %8s %8s %8s %12s %10s  %s\n", v.c_str(), fmtMs(med).c_str(),
                  fmtMs(percentile(walls, 90)).c_str(), fmtMs(percentile(walls, 0)).c_str(),
                  fmtMs(percentile(walls, 100)).c_str(), ratio.c_str(), plus.c_str(), aim.c_str());
    }
    std::printf("p90 ratios (snow p90 / CLI p90):");
    for (const auto& v : variants_) {
      if (v.rfind("snow", 0) == 0) {
        const bool cached = v.find("uncached") == std::string::npos;
        const int64_t cliP90 =
            percentile(wallsOf(runs_[cached ? "cli cached" : "cli uncached"]), 90);
        std::printf(
            " %s %.2f;", v.c_str(),
            static_cast<double>(percentile(wallsOf(runs_[v]), 90)) / static_cast<double>(cliP90));
      }
    }
    std::printf("\nnote: %s\n", sharedCacheNote_.c_str());

    std::printf(
        "\n-- where the time goes: medians, ms since the command started (CLI: since `docker "
        "build` started) --\n");
    struct Milestone {
      const char* name;
      std::function<int64_t(const Run&)> at;
    };
    const std::vector<Milestone> milestones = {
        {"job accepted (snowctl)", [](const Run& r) { return r.lineAt("snowctl: job "); }},
        {"Step 1/ printed", [](const Run& r) { return r.lineAt("Step 1/"); }},
        {"Successfully built", [](const Run& r) { return r.lineAt("Successfully built"); }},
        {"docker build exited", [](const Run& r) { return r.buildExitNs; }},
        {"container create (event)", [](const Run& r) { return r.createNs; }},
        {"container start (event)", [](const Run& r) { return r.startEventNs; }},
        {"container die (event)", [](const Run& r) { return r.dieNs; }},
        {"output line printed", [](const Run& r) { return r.exactLineAt(kGreeting); }},
        {"container destroy (event)", [](const Run& r) { return r.destroyNs; }},
        {"command exited", [](const Run& r) { return r.wallNs; }},
    };
    // Columns: the variants' initials ("snow forwarded uncached": "s-f-u").
    std::printf("%-27s", "milestone");
    for (const auto& v : variants_) {
      std::string initials;
      std::istringstream words(v);
      for (std::string word; words >> word;) {
        initials += (initials.empty() ? "" : "-") + word.substr(0, 1);
      }
      std::printf(" %8s", initials.c_str());
    }
    std::printf("\n");
    for (const auto& m : milestones) {
      std::printf("%-27s", m.name);
      for (const auto& v : variants_) {
        std::vector<int64_t> at;
        for (const auto& r : runs_[v]) {
          at.push_back(m.at(r));
        }
        std::printf(" %8s", fmtMs(median(at)).c_str());
      }
      std::printf("\n");
    }
    std::printf(
        "(c: cli, s-l: snow local, s-f: snow forwarded; u: uncached, c: cached. Events are "
        "docker events' times\nfor the job's container; '-': none, e.g. no create event for "
        "the CLI's build.)\n");
  }

  if (!uploads_.empty()) {
    const double tcp = mibPerSecond(bigBytes_, median(uploads_.front().ns));
    std::printf("\n-- context upload: %.1f MiB (%d runs each; medians) --\n",
                static_cast<double>(bigBytes_) / (1 << 20), options_.uploadRuns);
    std::printf("%-26s %-36s %9s %9s %10s\n", "peer", "time until", "ms", "MiB/s", "x TCP copy");
    for (const auto& u : uploads_) {
      const int64_t med = median(u.ns);
      const double rate = mibPerSecond(u.bytes, med);
      std::printf("%-26s %-36s %9s %9.0f %10.2f\n", u.peer.c_str(), u.measure.c_str(),
                  fmtMs(med).c_str(), rate, rate / tcp);
    }
    for (const auto& u : uploads_) {
      if (u.peer.rfind("snowctl", 0) == 0 && u.measure.rfind("job accepted", 0) == 0) {
        const double ratio = mibPerSecond(u.bytes, median(u.ns)) / tcp;
        std::printf("aim: %s upload >= 0.50x the loopback TCP copy: %s (%.2fx)\n", u.peer.c_str(),
                    ratio >= 0.5 ? "met" : "NOT met", ratio);
      }
    }
    std::printf("CPU ms per run (median; whole run, the container's too): %-8s %8s %8s %8s\n",
                "client", "n0", "n1", "dockerd");
    for (const auto& c : cpu_) {
      std::printf("  %-56s", c.peer.c_str());
      for (const char* process : {"client", "n0", "n1", "dockerd"}) {
        auto it = c.byProcess.find(process);
        std::printf(" %8s", it == c.byProcess.end() ? "-" : fmtMs(median(it->second)).c_str());
      }
      std::printf("\n");
    }
    std::printf(
        "('job accepted': snowctl printed 'job ... on node', i.e. Submit returned: snowctl "
        "started,\npacked and sent the context, the node checked it (and, forwarded, sent it to "
        "the worker).\n'Step 1': the build's first line; the engine has the whole context "
        "then.)\n");
  }

  if (!batches_.empty()) {
    std::printf("\n-- %d jobs at once (%d rounds; ms) --\n", options_.jobs, options_.batchRuns);
    std::printf("%-32s %-22s %8s %8s %8s  %s\n", "peer", "all done, per round", "median", "job p50",
                "job max", "per worker / failures");
    std::map<std::string, std::vector<const Batch*>> byPeer;
    std::vector<std::string> order;
    for (const auto& b : batches_) {
      if (byPeer[b.peer].empty()) {
        order.push_back(b.peer);
      }
      byPeer[b.peer].push_back(&b);
    }
    std::map<std::string, int64_t> medians;
    for (const auto& peer : order) {
      std::vector<int64_t> walls;
      std::vector<int64_t> jobs;
      std::string rounds;
      std::string spread;
      int failed = 0;
      for (const Batch* b : byPeer[peer]) {
        walls.push_back(b->wallNs);
        jobs.insert(jobs.end(), b->jobNs.begin(), b->jobNs.end());
        rounds += (rounds.empty() ? "" : ",") + fmtMs(b->wallNs);
        failed += b->failed;
        if (!b->perNode.empty()) {
          std::string one;
          for (const auto& [node, n] : b->perNode) {
            one += (one.empty() ? "" : " ") + node + ":" + std::to_string(n);
          }
          spread += (spread.empty() ? "" : " | ") + one;
        }
      }
      medians[peer] = median(walls);
      std::printf("%-32s %-22s %8s %8s %8s  %s%s\n", peer.c_str(), rounds.c_str(),
                  fmtMs(medians[peer]).c_str(), fmtMs(median(jobs)).c_str(),
                  fmtMs(percentile(jobs, 100)).c_str(), spread.c_str(),
                  failed != 0 ? (" FAILED " + std::to_string(failed)).c_str() : "");
    }
    std::printf("CPU ms per round (median): %-24s %9s %9s %9s\n", "", "clients", "n0+n1+n2",
                "dockerd");
    for (const auto& peer : order) {
      std::vector<int64_t> clients;
      std::vector<int64_t> daemons;
      std::vector<int64_t> engine;
      for (const Batch* b : byPeer[peer]) {
        clients.push_back(b->clientCpuNs);
        daemons.push_back(b->daemonCpuNs);
        engine.push_back(b->dockerdCpuNs);
      }
      std::printf("  %-48s %9s %9s %9s\n", peer.c_str(), fmtMs(median(clients)).c_str(),
                  fmtMs(median(daemons)).c_str(), fmtMs(median(engine)).c_str());
    }
    for (const auto& b : batches_) {
      if (!b.order.empty()) {
        std::printf("placement order: %s\n", b.order.c_str());
      }
    }
    for (const auto& [how, perNode] : placements_) {
      std::string spread;
      for (const auto& [node, n] : perNode) {
        spread += (spread.empty() ? "" : " ") + node + ":" + std::to_string(n);
      }
      std::printf("placement of %d long jobs (sleep 60) submitted %s: %s\n", options_.jobs,
                  how.c_str(), spread.c_str());
    }
    if (order.size() >= 3) {
      std::printf("ratio snowctl / docker run: %.2f; snowctl / docker build + run: %.2f\n",
                  static_cast<double>(medians[order[0]]) / static_cast<double>(medians[order[1]]),
                  static_cast<double>(medians[order[0]]) / static_cast<double>(medians[order[2]]));
    }
  }
  std::printf("command: %s\n", commandLine.c_str());
}

void Bench::writeJson(const std::string& commandLine) {
  std::ostringstream j;
  j << "{\"command\":" << jsonString(commandLine) << ",\"engine\":" << jsonString(engineVersion_)
    << ",\"load_start\":" << jsonString(loadStart_) << ",\"load_end\":" << jsonString(loadEnd_)
    << ",\"e2e\":{";
  bool first = true;
  for (const auto& v : variants_) {
    j << (first ? "" : ",") << jsonString(v) << ":{\"wall_ms\":[";
    first = false;
    bool f = true;
    for (const auto& r : runs_[v]) {
      j << (f ? "" : ",") << fmtDouble(static_cast<double>(r.wallNs) / kMs, "%.1f");
      f = false;
    }
    j << "],\"median_ms\":" << fmtDouble(static_cast<double>(median(wallsOf(runs_[v]))) / kMs)
      << ",\"p90_ms\":" << fmtDouble(static_cast<double>(percentile(wallsOf(runs_[v]), 90)) / kMs)
      << "}";
  }
  j << "},\"upload\":{\"bytes\":" << bigBytes_ << ",\"rows\":[";
  first = true;
  for (const auto& u : uploads_) {
    j << (first ? "" : ",") << "{\"peer\":" << jsonString(u.peer)
      << ",\"until\":" << jsonString(u.measure)
      << ",\"median_ms\":" << fmtDouble(static_cast<double>(median(u.ns)) / kMs)
      << ",\"mib_per_s\":" << fmtDouble(mibPerSecond(u.bytes, median(u.ns)), "%.1f") << "}";
    first = false;
  }
  j << "]},\"concurrent\":[";
  first = true;
  for (const auto& b : batches_) {
    j << (first ? "" : ",") << "{\"peer\":" << jsonString(b.peer) << ",\"jobs\":" << b.jobNs.size()
      << ",\"wall_ms\":" << fmtDouble(static_cast<double>(b.wallNs) / kMs, "%.1f")
      << ",\"failed\":" << b.failed << ",\"cpu_ms\":{\"clients\":" << fmtMs(b.clientCpuNs)
      << ",\"daemons\":" << fmtMs(b.daemonCpuNs) << ",\"dockerd\":" << fmtMs(b.dockerdCpuNs)
      << "},\"per_worker\":{";
    bool f = true;
    for (const auto& [node, n] : b.perNode) {
      j << (f ? "" : ",") << jsonString(node) << ":" << n;
      f = false;
    }
    j << "}}";
    first = false;
  }
  j << "],\"placement_check\":{";
  first = true;
  for (const auto& [how, perNode] : placements_) {
    j << (first ? "" : ",") << jsonString(how) << ":{";
    bool f = true;
    for (const auto& [node, n] : perNode) {
      j << (f ? "" : ",") << jsonString(node) << ":" << n;
      f = false;
    }
    j << "}";
    first = false;
  }
  j << "}}\n";
  writeFile(options_.jsonPath, j.str());
}

int Bench::run(const std::string& commandLine) {
  loadStart_ = loadAverage();
  std::fprintf(stderr, "starting dockerd...\n");
  dockerd_ = TestDockerd::start();
  fs::create_directories(dir_ / "docker-config");
  engineVersion_ = tail(dockerChecked({"version", "--format", "{{.Server.Version}}"}).text(), 1);
  while (!engineVersion_.empty() && engineVersion_.back() == '\n') {
    engineVersion_.pop_back();
  }
  {
    Command events = docker({"events", "--format",
                             "{{.TimeNano}} {{.Type}} {{.Action}} {{.Actor.ID}} "
                             "{{.Actor.Attributes.name}} {{.Actor.Attributes.image}}"});
    events_ = spawnToLog(events.argv, events.env, dir_ / "events.log");
  }
  std::vector<std::string> env;
  if (options_.snapshot) {
    env.push_back(snapshot(options_, dir_));
  }
  std::fprintf(stderr, "starting three daemons...\n");
  cluster_ = std::make_unique<Cluster>(dir_, options_, dockerd_->socketPath(), env);
  int status = 0;
  try {
    cluster_->start();
    writeContexts();
    if (options_.wants("e2e")) {
      loads_.emplace_back("e2e", loadAverage());
      endToEnd();
    }
    if (options_.wants("upload")) {
      loads_.emplace_back("upload", loadAverage());
      upload();
    }
    if (options_.wants("concurrent")) {
      loads_.emplace_back("concurrent", loadAverage());
      concurrent();
    }
    loadEnd_ = loadAverage();
    sleepMs(300);  // The last events reach the log.
    readEvents();
    report(commandLine);
    if (!options_.jsonPath.empty()) {
      writeJson(commandLine);
    }
  } catch (const Interrupted&) {
    std::fprintf(stderr, "interrupted: cleaning up\n");
    status = 130;
  }
  // Clean up: every job through the runner, then every container and image, then the daemons,
  // `docker events` and dockerd (whose directory goes with it).
  gInterrupted = 0;
  try {
    clearEngine();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "warning: cleaning the engine: %s\n", e.what());
  }
  cluster_->stop();
  stopProcess(events_, 2000);
  events_ = -1;
  dockerd_.reset();
  return status;
}

std::string quoteArg(const std::string& arg) {
  if (!arg.empty() && arg.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                            "0123456789-_./=:,+@%") == std::string::npos) {
    return arg;
  }
  return "'" + arg + "'";
}

}  // namespace

int main(int argc, char** argv) {
  std::string commandLine;
  for (int i = 0; i < argc; ++i) {
    commandLine += (i != 0 ? " " : "") + quoteArg(argv[i]);
  }
  fs::path dir;
  Options options;
  try {
    options = parseOptions(argc, argv);
    if (std::string missing = snow::containers::testing::missingPrerequisites(); !missing.empty()) {
      throw std::runtime_error(missing);
    }
    struct sigaction action {};
    action.sa_handler = onInterrupt;  // No SA_RESTART: a blocked poll() returns EINTR.
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, nullptr);
    sigaction(SIGTERM, &action, nullptr);
    std::string pattern = (fs::temp_directory_path() / "snow-containers-bench-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) {
      throw std::runtime_error(errnoText("mkdtemp " + pattern));
    }
    dir = pattern;
    Bench bench(options, dir);
    const int status = bench.run(commandLine);
    if (options.keepTemp) {
      std::printf("temporary files kept in %s\n", dir.c_str());
    } else {
      fs::remove_all(dir);
    }
    return status;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "snow_containers_bench: %s\n", e.what());
    if (!dir.empty()) {
      std::fprintf(stderr, "(its files, daemon logs included, are kept in %s)\n", dir.c_str());
    }
    return 1;
  }
}
