#include "cgroups.h"

#include <cerrno>
#include <csignal>
#include <cstring>
#include <sstream>

#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "snow/posix/checked_posix.h"
#include "snow/posix/files.h"

namespace snow::spawner {
namespace {

// FNV-1a: a short, stable directory name for an instance.
uint64_t fnv1a(std::string_view text) {
  uint64_t hash = 0xcbf29ce484222325ULL;
  for (const char c : text) {
    hash = (hash ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
  }
  return hash;
}

// Where cgroup v2 is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid systems), from
// /proc/self/mountinfo: "... mount-point options - cgroup2 source options".
std::string cgroup2Mount(posix::Posix& os) {
  std::istringstream lines(posix::readFile(os, "/proc/self/mountinfo").value);
  std::string line;
  while (std::getline(lines, line)) {
    const size_t dash = line.find(" - cgroup2 ");
    if (dash == std::string::npos) {
      continue;
    }
    std::istringstream fields(line.substr(0, dash));
    std::string id, parent, device, root, mountPoint;
    fields >> id >> parent >> device >> root >> mountPoint;
    return mountPoint;
  }
  return "";
}

// The daemon's own cgroup v2 path ("0::/system.slice/snow-core.service").
std::string ownCgroup(posix::Posix& os) {
  std::istringstream lines(posix::readFile(os, "/proc/self/cgroup").value);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.starts_with("0::")) {
      return line.substr(3);
    }
  }
  return "";
}

}  // namespace

std::unique_ptr<Cgroups> Cgroups::open(posix::Posix& os, const std::string& setting,
                                       const std::string& instance, std::string* why) {
  std::string base = setting;
  if (setting.empty() || setting == "auto") {
    const std::string mount = cgroup2Mount(os);
    if (mount.empty()) {
      *why = "no cgroup v2 hierarchy is mounted";
      return nullptr;
    }
    const std::string own = ownCgroup(os);
    base = mount + (own == "/" ? "" : own);
  }
  const std::string root = fmt::format("{}/snow-spawner.{:016x}", base, fnv1a(instance));
  auto made = posix::tolerant([&] { return os.mkdir(root.c_str(), 0755); });
  if (!made.ok() && made.errnum != EEXIST) {
    *why = fmt::format("cannot make {}: {}", root, std::strerror(made.errnum));
    return nullptr;
  }
  struct stat st {};
  if (auto r = posix::tolerant([&] { return os.stat((root + "/cgroup.procs").c_str(), &st); });
      !r.ok()) {
    *why = fmt::format("{} is not a cgroup v2 directory", root);
    if (made.ok()) {
      (void)posix::tolerant([&] { return os.rmdir(root.c_str()); });
    }
    return nullptr;
  }
  return std::make_unique<Cgroups>(os, root);
}

Cgroups::~Cgroups() {
  // Empty service cgroups were removed as their services went; the root goes when it is empty.
  (void)posix::tolerant([&] { return os_.rmdir(root_.c_str()); });
}

std::vector<pid_t> Cgroups::pids(const std::string& service) const {
  std::vector<pid_t> out;
  std::istringstream in(
      posix::readFile(os_, fmt::format("{}/{}/cgroup.procs", root_, service)).value);
  pid_t pid = 0;
  while (in >> pid) {
    out.push_back(pid);
  }
  return out;
}

std::vector<std::string> Cgroups::cleanUp() {
  std::vector<std::string> found;
  auto entries = posix::tolerant([&] { return os_.readDirectory(root_.c_str()); });
  for (const auto& entry : entries.value) {
    if (entry.type != DT_DIR) {
      continue;
    }
    const size_t count = killAll(entry.name);
    if (count > 0) {
      found.push_back(fmt::format("{}: {} process{}", entry.name, count, count == 1 ? "" : "es"));
    }
    remove(entry.name);
  }
  return found;
}

posix::FileDescriptor Cgroups::prepare(const std::string& service, std::string* why) {
  const std::string dir = fmt::format("{}/{}", root_, service);
  if (auto r = posix::tolerant([&] { return os_.mkdir(dir.c_str(), 0755); });
      !r.ok() && r.errnum != EEXIST) {
    *why = fmt::format("cannot make {}: {}", dir, std::strerror(r.errnum));
    return {};
  }
  posix::FileDescriptor directory(posix::tolerant([&] {
                                    return os_.open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC,
                                                    0);
                                  }).value);
  if (!directory) {
    *why = fmt::format("cannot open {}", dir);
  }
  return directory;
}

size_t Cgroups::killAll(const std::string& service) {
  // Not cgroup.kill: on Linux 6.18 (at least) a cgroup once killed that way kills every child
  // later cloned into it with CLONE_INTO_CGROUP (its kill sequence never matches the fork's
  // again), so the service's next run would die at birth. Each pid instead, a few passes to
  // catch what forked meanwhile.
  size_t killed = 0;
  for (int pass = 0; pass < 4; ++pass) {
    const std::vector<pid_t> found = pids(service);
    if (found.empty()) {
      break;
    }
    if (pass == 0) {
      killed = found.size();
    }
    for (const pid_t pid : found) {
      (void)posix::tolerant([&] { return os_.kill(pid, SIGKILL); });
    }
  }
  return killed;
}

void Cgroups::remove(const std::string& service) {
  const std::string dir = fmt::format("{}/{}", root_, service);
  if (auto r = posix::tolerant([&] { return os_.rmdir(dir.c_str()); });
      !r.ok() && r.errnum != ENOENT) {
    spdlog::debug("cannot remove {}: {}", dir, std::strerror(r.errnum));
  }
}

}  // namespace snow::spawner
