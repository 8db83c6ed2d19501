#pragma once

// One cgroup (v2) per service, under a directory that belongs to one spawner instance.
//
// Why: a process group is left by any process that calls setsid(), and nothing is left behind
// when the daemon is SIGKILLed. A cgroup holds everything a service ever started, so a stop kills
// all of it, and leftovers of a daemon that was killed are found at its next start
// and stopped (cleanUp). No controllers are enabled: the cgroups only group processes.
//
// Thread: loop thread. Errors: open() returns null and says why when cgroups cannot be used;
// the other methods log and carry on (a cgroup is a safety net, not a condition for running).

#include <memory>
#include <string>
#include <vector>

#include "snow/posix/file_descriptor.h"
#include "snow/posix/posix.h"

namespace snow::spawner {

class Cgroups {
 public:
  // `setting` is the configuration's: "auto" (or ""), or the directory to use. `instance` tells
  // this spawner's directory from another daemon's on the same machine (the configuration file's
  // name: a restarted daemon finds its own leftovers, not its neighbours').
  static std::unique_ptr<Cgroups> open(posix::Posix& os, const std::string& setting,
                                       const std::string& instance, std::string* why);

  Cgroups(posix::Posix& os, std::string root) : os_(os), root_(std::move(root)) {}
  ~Cgroups();
  Cgroups(const Cgroups&) = delete;
  Cgroups& operator=(const Cgroups&) = delete;

  [[nodiscard]] const std::string& root() const noexcept { return root_; }

  // Kills what earlier runs of this spawner left in their service cgroups and removes them.
  // Returns "name: N processes" for each cgroup that still held processes.
  std::vector<std::string> cleanUp();

  // The cgroup of `service`, made if needed; returns its directory opened for spawn().
  posix::FileDescriptor prepare(const std::string& service, std::string* why);

  // SIGKILLs every process in the service's cgroup; returns how many were there.
  size_t killAll(const std::string& service);
  // Removes the (empty) cgroup of `service`.
  void remove(const std::string& service);

 private:
  [[nodiscard]] std::vector<pid_t> pids(const std::string& service) const;

  posix::Posix& os_;
  std::string root_;
};

}  // namespace snow::spawner
