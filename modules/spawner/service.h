#pragma once

// One supervised service: its process, its restarts, its stop, its output.
//
// The life of a run: spawn (state STARTING) -> stayed up ready_after (RUNNING) -> ended. What
// follows an end depends on why it ended and on the restart policy: a stop that was asked for
// leaves it STOPPED; otherwise ALWAYS (or ON_FAILURE after a failure) restarts it: the first
// restart in a row at once, each further one after a backoff delay (initial, times multiplier,
// up to max), and a run that stayed up reset_after starts the row afresh. max_restarts failed
// runs in a row give up (FAILED). Whatever a run leaves behind in its process group and cgroup is
// killed when its main process ends, so that the next run starts alone (its sockets included).
//
// Thread: loop thread. Ownership: shared (the module, and the loop callbacks through weak
// references: a removed service's callbacks do nothing). The module must stop() a service and
// wait for it before dropping it; a Service destroyed with a process still running SIGKILLs it.
// Errors: spawn failures are not thrown: they are logged, kept (last_error), and handled as a
// failed run.

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <spdlog/logger.h>
#include <sys/types.h>

#include "snow/core/backoff.h"
#include "snow/core/dispatcher.h"
#include "snow/core/event.h"
#include "snow/core/future.h"
#include "snow/core/net.h"
#include "snow/core/process.h"
#include "snow/posix/file_descriptor.h"

#include "cgroups.h"
#include "definition.h"
#include "output.h"

namespace snow::spawner {

// A listening socket the spawner holds for a service (a resource of the configuration
// generation, so that a reload keeping the address keeps the socket). Blocking, as systemd hands
// sockets over: the child decides.
class ServiceSocket : public Resource {
 public:
  static std::shared_ptr<ServiceSocket> open(posix::Posix& os, const SocketDefinition& socket);
  [[nodiscard]] int fd() const noexcept { return listener_->fd(); }
  [[nodiscard]] std::string address() const { return listener_->local().toString(); }

 private:
  std::shared_ptr<net::Listener> listener_;
};

enum class Lifecycle { Spawned, Ready, Exited, Restarted, GaveUp };

// What a service needs from its module.
struct ServiceEnvironment {
  Dispatcher& loop;
  posix::Posix& os;
  ChildReaper& children;
  spdlog::logger& log;
  Cgroups* cgroups = nullptr;  // Null: process groups only.
  int devNull = -1;            // The children's stdin.
  UniqueFunction<void(Lifecycle, std::shared_ptr<pb::ServiceEvent>)> lifecycle;
};

class Service : public std::enable_shared_from_this<Service> {
 public:
  Service(ServiceEnvironment& environment, Definition definition,
          std::vector<std::shared_ptr<ServiceSocket>> sockets, std::string origin);
  ~Service();
  Service(const Service&) = delete;
  Service& operator=(const Service&) = delete;

  // Runs it (now, or at once after a stop in progress), forgetting earlier failures.
  void start();
  // Stops it: stop_signal to its process group, SIGKILL after stop_timeout. Settles once nothing
  // of it runs. It stays stopped until start().
  Future<void> stop();

  [[nodiscard]] const Definition& definition() const noexcept { return definition_; }
  [[nodiscard]] const std::string& name() const noexcept { return definition_.name; }
  [[nodiscard]] const std::string& origin() const noexcept { return origin_; }
  [[nodiscard]] pid_t pid() const noexcept { return pid_; }
  [[nodiscard]] pb::ServiceStatus::State state() const noexcept { return state_; }
  [[nodiscard]] pb::ServiceStatus status() const;
  [[nodiscard]] const std::shared_ptr<LogRing>& logs() const noexcept { return logs_; }

 private:
  void spawnOnce();
  void onExit(pid_t pid, const ExitStatus& status);
  void runEnded(bool failed, Duration uptime, const std::string& how);
  void becomeReady();
  void restartNow(Duration delay);
  void killEverything(int signal, bool mainAlive = true);
  void setState(pb::ServiceStatus::State state);
  void settleStops();
  void emit(Lifecycle what, const std::string& status = "", Duration uptime = Duration(0),
            Duration delay = Duration(0));
  void onLine(pb::LogLine::Stream stream, std::string_view text);

  ServiceEnvironment& env_;
  Definition definition_;
  std::vector<std::shared_ptr<ServiceSocket>> sockets_;
  std::string origin_;

  pb::ServiceStatus::State state_ = pb::ServiceStatus::STOPPED;
  std::chrono::system_clock::time_point since_ = std::chrono::system_clock::now();
  bool wanted_ = false;  // Should be running: false after stop(), or once the policy says so.
  pid_t pid_ = 0;
  MonotonicTime startedAt_{};
  uint32_t restarts_ = 0;
  uint32_t failedInARow_ = 0;
  bool immediateRestart_ = true;
  Backoff backoff_;
  MonotonicTime restartAt_{};
  Duration backoffDelay_{0};
  std::string lastExit_;
  std::string lastError_;

  TimerPtr readyTimer_;
  TimerPtr restartTimer_;
  TimerPtr killTimer_;
  std::vector<Promise<void>> stopWaiters_;

  std::shared_ptr<LogRing> logs_;
  std::unique_ptr<OutputPipe> stdout_;
  std::unique_ptr<OutputPipe> stderr_;
  posix::FileDescriptor cgroup_;  // The service's cgroup directory, for spawn().
  bool cgroupPrepared_ = false;

  // What spawn() reads, built once: argv and envp as C arrays over strings kept here.
  std::vector<std::string> envStrings_;
  std::vector<char*> argv_;
  std::vector<char*> envp_;
  std::string listenPid_;  // "LISTEN_PID=" and room for the pid, written by the child.
  std::vector<int> passFds_;
};

}  // namespace snow::spawner
