#include "service.h"

#include <csignal>
#include <cstring>
#include <functional>

#include <fcntl.h>
#include <fmt/format.h>
#include <google/protobuf/util/time_util.h>
#include <sys/prctl.h>

#include "snow/posix/checked_posix.h"

namespace snow::spawner {
namespace {

using google::protobuf::util::TimeUtil;

std::string seconds(Duration d) {
  return fmt::format("{:.3g} s", std::chrono::duration<double>(d).count());
}

google::protobuf::Duration toProto(Duration d) {
  return TimeUtil::NanosecondsToDuration(d.count());
}

google::protobuf::Timestamp toProto(std::chrono::system_clock::time_point t) {
  return TimeUtil::NanosecondsToTimestamp(
      std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count());
}

}  // namespace

std::shared_ptr<ServiceSocket> ServiceSocket::open(posix::Posix& os,
                                                   const SocketDefinition& socket) {
  auto made = std::make_shared<ServiceSocket>();
  made->listener_ = net::Listener::open(os, socket.address, socket.backlog);
  // Handed over blocking, as systemd does: a child that blocks in accept() must not see EAGAIN.
  (void)os.fcntl(made->listener_->fd(), F_SETFL, 0);
  return made;
}

Service::Service(ServiceEnvironment& environment, Definition definition,
                 std::vector<std::shared_ptr<ServiceSocket>> sockets, std::string origin)
    : env_(environment),
      definition_(std::move(definition)),
      sockets_(std::move(sockets)),
      origin_(std::move(origin)),
      backoff_(definition_.backoff, std::hash<std::string>{}(definition_.name)),
      logs_(std::make_shared<LogRing>(definition_.logLines)) {
  stdout_ = std::make_unique<OutputPipe>(
      env_.loop, env_.os, [this](std::string_view line) { onLine(pb::LogLine::STDOUT, line); });
  stderr_ = std::make_unique<OutputPipe>(
      env_.loop, env_.os, [this](std::string_view line) { onLine(pb::LogLine::STDERR, line); });

  for (auto& word : definition_.argv) {
    argv_.push_back(word.data());
  }
  argv_.push_back(nullptr);
  envStrings_ = definition_.env;
  if (!sockets_.empty()) {
    std::string names;
    for (size_t i = 0; i < sockets_.size(); ++i) {
      passFds_.push_back(sockets_[i]->fd());
      names += (i == 0 ? "" : ":") + definition_.sockets[i].name;
    }
    envStrings_.push_back(fmt::format("LISTEN_FDS={}", sockets_.size()));
    envStrings_.push_back("LISTEN_FDNAMES=" + names);
    listenPid_ = "LISTEN_PID=" + std::string(20, ' ');
  }
  for (auto& entry : envStrings_) {
    envp_.push_back(entry.data());
  }
  if (!listenPid_.empty()) {
    envp_.push_back(listenPid_.data());
  }
  envp_.push_back(nullptr);

  readyTimer_ = env_.loop.createTimer([this] { becomeReady(); });
  restartTimer_ = env_.loop.createTimer([this] { restartNow(backoffDelay_); });
  killTimer_ = env_.loop.createTimer([this] {
    if (pid_ != 0) {
      env_.log.warn("service {} (pid {}) did not stop within {} of {}: sending SIGKILL", name(),
                    pid_, seconds(definition_.stopTimeout), signalName(definition_.stopSignal));
      killEverything(SIGKILL);
    }
  });
}

Service::~Service() {
  if (pid_ != 0) {
    killEverything(SIGKILL);  // The module waits for stops; this is the last resort.
  }
  for (auto& waiter : stopWaiters_) {
    waiter.setValue();
  }
  if (env_.cgroups != nullptr && cgroupPrepared_) {
    cgroup_.reset();
    env_.cgroups->remove(name());
  }
}

void Service::start() {
  wanted_ = true;
  failedInARow_ = 0;
  immediateRestart_ = true;
  backoff_.reset();
  switch (state_) {
    case pb::ServiceStatus::STARTING:
    case pb::ServiceStatus::RUNNING:
    case pb::ServiceStatus::STOPPING:  // onExit() sees wanted_ and starts it again.
      return;
    case pb::ServiceStatus::BACKOFF:
      restartTimer_->disable();
      [[fallthrough]];
    default:
      spawnOnce();
  }
}

Future<void> Service::stop() {
  wanted_ = false;
  switch (state_) {
    case pb::ServiceStatus::BACKOFF:
      restartTimer_->disable();
      setState(pb::ServiceStatus::STOPPED);
      return makeReadyFuture();
    case pb::ServiceStatus::STARTING:
    case pb::ServiceStatus::RUNNING:
      readyTimer_->disable();
      setState(pb::ServiceStatus::STOPPING);
      env_.log.info("stopping service {} (pid {}) with {}", name(), pid_,
                    signalName(definition_.stopSignal));
      killEverything(definition_.stopSignal);
      killTimer_->enable(definition_.stopTimeout);
      [[fallthrough]];
    case pb::ServiceStatus::STOPPING: {
      Promise<void> waiter(env_.loop);
      Future<void> done = waiter.future();
      stopWaiters_.push_back(std::move(waiter));
      return done;
    }
    default:
      return makeReadyFuture();
  }
}

void Service::spawnOnce() {
  if (env_.cgroups != nullptr && !cgroupPrepared_) {
    std::string why;
    cgroup_ = env_.cgroups->prepare(name(), &why);
    cgroupPrepared_ = true;
    if (!cgroup_) {
      env_.log.warn("service {} runs without its own cgroup: {}", name(), why);
    }
  }
  posix::SpawnRequest request;
  request.path = definition_.program.c_str();
  request.argv = argv_.data();
  request.envp = envp_.data();
  request.cwd = definition_.workingDirectory.c_str();
  request.newSession = true;
  request.cgroupFd = cgroup_ ? cgroup_.get() : -1;
  request.stdinFd = env_.devNull;
  request.stdoutFd = stdout_->writeFd();
  request.stderrFd = stderr_->writeFd();
  request.passFds = passFds_;
  request.limits = definition_.limits;
  request.setIds = definition_.setIds;
  request.uid = definition_.uid;
  request.gid = definition_.gid;
  request.groups = definition_.groups;
  // Ours dies, its main process dies with us (SIGKILL of the daemon leaves nothing
  // unsupervised; the cgroup catches the rest at the next start).
  request.parentDeathSignal = SIGKILL;
  request.listenPidEntry = listenPid_.empty() ? nullptr : listenPid_.data();
  const char* step = nullptr;
  request.failedStep = &step;
  auto spawned = posix::tolerant([&] { return env_.os.spawn(request); });
  if (!spawned.ok()) {
    lastError_ = fmt::format("{} {}: {}", step != nullptr ? step : "clone", definition_.program,
                             std::strerror(spawned.errnum));
    env_.log.error("cannot start service {}: {}", name(), lastError_);
    if (definition_.restart == pb::ServiceSpec::NEVER) {
      wanted_ = false;
    }
    runEnded(true, Duration(0), lastError_);
    return;
  }
  pid_ = spawned.value;
  startedAt_ = env_.loop.now();
  lastError_.clear();
  setState(pb::ServiceStatus::STARTING);
  std::weak_ptr<Service> self = weak_from_this();
  const pid_t pid = pid_;
  env_.children.watch(pid)
      .then([self, pid](const ExitStatus& status) {
        if (auto service = self.lock()) {
          service->onExit(pid, status);
        }
      })
      .detach();
  env_.log.info("service {} started: pid {}, {}", name(), pid_, definition_.commandLine());
  emit(Lifecycle::Spawned);
  if (definition_.readyAfter <= Duration(0)) {
    becomeReady();
  } else {
    readyTimer_->enable(definition_.readyAfter);
  }
}

void Service::becomeReady() {
  if (state_ == pb::ServiceStatus::STARTING) {
    setState(pb::ServiceStatus::RUNNING);
    emit(Lifecycle::Ready);
  }
}

void Service::onExit(pid_t pid, const ExitStatus& status) {
  if (pid != pid_) {
    return;
  }
  readyTimer_->disable();
  killTimer_->disable();
  // Its last words first, then the news of its end.
  stdout_->drain(true);
  stderr_->drain(true);
  // What the run left behind goes with it: the next run starts alone, its sockets included.
  killEverything(SIGKILL, /*mainAlive=*/false);
  pid_ = 0;
  const Duration uptime = env_.loop.now() - startedAt_;
  lastExit_ = status.describe();
  const bool stopping = state_ == pb::ServiceStatus::STOPPING;
  auto level = stopping || status.success() ? spdlog::level::info : spdlog::level::warn;
  env_.log.log(level, "service {} (pid {}) {} after {}", name(), pid, lastExit_, seconds(uptime));
  emit(Lifecycle::Exited, lastExit_, uptime);
  if (stopping) {
    setState(pb::ServiceStatus::STOPPED);
    settleStops();
    if (wanted_) {
      start();  // start() came while it was stopping.
    }
    return;
  }
  const bool again = definition_.restart == pb::ServiceSpec::ALWAYS ||
                     (definition_.restart == pb::ServiceSpec::ON_FAILURE && !status.success());
  if (!again) {
    wanted_ = false;
  }
  runEnded(!status.success(), uptime, lastExit_);
}

void Service::runEnded(bool failed, Duration uptime, const std::string& how) {
  (void)failed;
  if (uptime >= definition_.resetAfter) {
    failedInARow_ = 0;
    immediateRestart_ = true;
    backoff_.reset();
  } else {
    ++failedInARow_;
  }
  if (!wanted_) {
    setState(definition_.restart == pb::ServiceSpec::NEVER && !lastError_.empty()
                 ? pb::ServiceStatus::FAILED
                 : pb::ServiceStatus::EXITED);
    return;
  }
  if (definition_.maxRestarts != 0 && failedInARow_ >= definition_.maxRestarts) {
    wanted_ = false;
    setState(pb::ServiceStatus::FAILED);
    const std::string why = fmt::format("{} runs in a row ended within {} (last: {})",
                                        failedInARow_, seconds(definition_.resetAfter), how);
    env_.log.error("service {} gave up: {}", name(), why);
    emit(Lifecycle::GaveUp, why);
    return;
  }
  ++restarts_;
  const Duration delay = immediateRestart_ ? Duration(0) : backoff_.next();
  immediateRestart_ = false;
  if (delay <= Duration(0)) {
    restartNow(delay);
    return;
  }
  setState(pb::ServiceStatus::BACKOFF);
  backoffDelay_ = delay;
  restartAt_ = env_.loop.now() + delay;
  env_.log.info("service {} restarts in {}", name(), seconds(delay));
  restartTimer_->enable(delay);
}

void Service::restartNow(Duration delay) {
  spawnOnce();
  if (pid_ != 0) {
    emit(Lifecycle::Restarted, "", Duration(0), delay);
  }
}

void Service::killEverything(int signal, bool mainAlive) {
  if (pid_ != 0) {
    // Its process group (it is its session's leader), and itself, should it have left the group.
    (void)posix::tolerant([&] { return env_.os.kill(-pid_, signal); });
    if (mainAlive) {
      (void)posix::tolerant([&] { return env_.os.kill(pid_, signal); });
    }
  }
  if (signal == SIGKILL && env_.cgroups != nullptr && cgroup_) {
    env_.cgroups->killAll(name());  // And whatever escaped the group.
  }
}

void Service::setState(pb::ServiceStatus::State state) {
  state_ = state;
  since_ = std::chrono::system_clock::now();
}

void Service::settleStops() {
  auto waiters = std::move(stopWaiters_);
  stopWaiters_.clear();
  for (auto& waiter : waiters) {
    waiter.setValue();
  }
}

void Service::emit(Lifecycle what, const std::string& status, Duration uptime, Duration delay) {
  if (!env_.lifecycle) {
    return;
  }
  auto event = std::make_shared<pb::ServiceEvent>();
  event->set_service(name());
  event->set_pid(pid_);
  event->set_status(status);
  event->set_restarts(restarts_);
  if (uptime > Duration(0)) {
    *event->mutable_uptime() = toProto(uptime);
  }
  if (delay > Duration(0)) {
    *event->mutable_delay() = toProto(delay);
  }
  env_.lifecycle(what, std::move(event));
}

void Service::onLine(pb::LogLine::Stream stream, std::string_view text) {
  env_.log.info("{}[{}]{} {}", name(), pid_, stream == pb::LogLine::STDERR ? " stderr:" : ":",
                text);
  pb::LogLine line;
  *line.mutable_time() = toProto(std::chrono::system_clock::now());
  line.set_service(name());
  line.set_pid(pid_);
  line.set_stream(stream);
  line.set_text(std::string(text));
  logs_->add(std::move(line));
}

pb::ServiceStatus Service::status() const {
  pb::ServiceStatus out;
  out.set_name(name());
  out.set_state(state_);
  out.set_pid(pid_);
  *out.mutable_since() = toProto(since_);
  out.set_restarts(restarts_);
  out.set_last_exit(lastExit_);
  out.set_origin(origin_);
  out.set_command(definition_.commandLine());
  out.set_last_error(lastError_);
  for (const auto& socket : sockets_) {
    out.add_sockets(socket->address());
  }
  if (state_ == pb::ServiceStatus::BACKOFF) {
    *out.mutable_next_restart_in() = toProto(std::max(Duration(0), restartAt_ - env_.loop.now()));
  }
  return out;
}

}  // namespace snow::spawner
