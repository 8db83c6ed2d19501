#include "worker.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <utility>

#include <fmt/format.h>
#include <google/protobuf/util/time_util.h>

#include "snow/core/future_combinators.h"
#include "snow/rpc/status.h"

namespace snow::containers {

namespace {

using google::protobuf::Timestamp;

Timestamp now() {
  // Not TimeUtil::GetCurrentTime: it has whole-second resolution.
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count();
  return google::protobuf::util::TimeUtil::NanosecondsToTimestamp(ns);
}

bool isTerminal(pb::JobState state) {
  return state == pb::EXITED || state == pb::FAILED || state == pb::LOST || state == pb::REMOVED;
}

pb::JobEvent stateEvent(const pb::Job& job) {
  pb::JobEvent event;
  *event.mutable_state() = job;
  return event;
}

}  // namespace

// One watcher of a job: an Attach or a Logs stream.
struct Watcher {
  rpc::ServerStreamPtr stream;
  bool logs = false;     // Wants the container's output.
  bool progress = true;  // Wants the build output and state changes (Attach).
  bool follow = true;    // Stays until the job ends (Logs without --follow: no).
  Future<void> output;   // The container's output, while it is followed.
  bool outputDone = false;
  // Bytes of stdout and stderr written to the stream (index 1 and 2), and whether the output was
  // followed while the container ran: then one more read once it ended (see readRest).
  std::array<uint64_t, 3> written{};
  bool readRestAtEnd = false;
  bool terminalSeen = false;  // The job ended; its last state waits for the output to end.
  std::unique_ptr<Promise<void>> done;
  Future<void> gone;  // The client went away.
};

struct Job {
  pb::Job job;
  std::deque<std::string> buildLog;
  std::vector<std::shared_ptr<Watcher>> watchers;
  Future<void> task;      // Build, create, start, wait: cancelled by stop() before the start.
  bool removing = false;  // remove() cleans up: the cancelled task must not, too.
  std::unique_ptr<opentracing::Span> span;
};

class Worker::Impl {
 public:
  Impl(Dispatcher& loop, DockerEngine& engine, opentracing::Tracer& tracer, WorkerSettings settings)
      : loop_(loop), engine_(engine), tracer_(tracer), settings_(std::move(settings)) {}

  ~Impl() {
    for (auto& [id, job] : jobs_) {
      if (job->task.valid()) {
        job->task.cancel();
      }
      for (auto& watcher : job->watchers) {
        if (watcher->output.valid()) {
          watcher->output.cancel();
        }
      }
    }
  }

  Future<pb::Job> run(const pb::JobSpec& spec, std::string context,
                      const opentracing::SpanContext* parent) {
    if (auto it = jobs_.find(spec.job_id()); it != jobs_.end()) {
      return makeReadyFuture<pb::Job>(it->second->job);  // A retried forward: the same job.
    }
    if (active() >= settings_.maxJobs) {
      throw rpc::RpcError(rpc::Code::ResourceExhausted,
                          fmt::format("node {} runs {} jobs, its limit (max_jobs)",
                                      settings_.nodeId, settings_.maxJobs));
    }
    auto job = std::make_shared<Job>();
    pb::Job& j = job->job;
    j.set_job_id(spec.job_id());
    j.set_name(spec.name());
    j.set_node(settings_.nodeId);
    *j.mutable_labels() = spec.labels();
    *j.mutable_created() = now();
    j.set_placements(1);
    job->span =
        tracer_.StartSpan("containers.job " + spec.job_id(), {opentracing::ChildOf(parent)});
    jobs_[spec.job_id()] = job;
    setState(*job, pb::BUILDING);

    BuildOptions build;
    build.dockerfile = spec.dockerfile().empty() ? "Dockerfile" : spec.dockerfile();
    // No job label on the image: the same context must give the same image, from the cache.
    ContainerSpec container;
    container.name = containerName(spec.job_id());
    container.labels = {spec.labels().begin(), spec.labels().end()};
    container.labels[kJobLabel] = spec.job_id();
    container.labels[kNodeLabel] = settings_.nodeId;
    container.labels[kNameLabel] = spec.name();
    for (const auto& [key, value] : spec.env()) {
      container.env.push_back(fmt::format("{}={}", key, value));
    }
    if (!spec.command().empty()) {
      container.cmd = std::vector<std::string>(spec.command().begin(), spec.command().end());
    }

    const opentracing::SpanContext* span = &job->span->context();
    job->task =
        engine_
            .build(
                std::move(context), build,
                [this, weak = std::weak_ptr<Job>(job)](std::string_view line) {
                  if (auto alive = weak.lock()) {
                    buildLine(*alive, std::string(line));
                  }
                },
                span)
            .then([this, job, container = std::move(container), span](std::string image) mutable {
              job->job.set_image(image);
              setState(*job, pb::STARTING);
              container.image = std::move(image);
              return engine_.createContainer(container, span);
            })
            .then([this, job, span](std::string id) {
              job->job.set_container_id(id);
              return engine_.start(id, span);
            })
            .then([this, job, span] {
              setState(*job, pb::RUNNING);
              return engine_.wait(job->job.container_id(), WaitCondition::NotRunning, span);
            })
            .then([this, job](int64_t code) {
              job->job.set_exit_code(code);
              setState(*job, pb::EXITED);
            })
            .recover([this, job](const std::exception_ptr& error) {
              if (isTerminal(job->job.state()) || job->removing) {  // Stopped or removed.
                return;
              }
              try {
                std::rethrow_exception(error);
              } catch (const DockerError& e) {
                // A build's own error without the engine's copy of the log's tail: fail() adds
                // the tail this worker kept, as it does for every failure while building.
                fail(*job, job->job.state() == pb::BUILDING && e.status() != 0
                               ? "the build failed: " + e.message()
                               : std::string(e.what()));
              } catch (const std::exception& e) {
                fail(*job, e.what());
              }
            });
    return makeReadyFuture<pb::Job>(j);
  }

  Future<void> adopt() {
    return engine_.list({{kNodeLabel, settings_.nodeId}}, true, nullptr)
        .then([this](std::vector<ContainerSummary> found) {
          std::vector<Future<void>> inspections;
          for (auto& summary : found) {
            const auto label = summary.labels.find(kJobLabel);
            if (label == summary.labels.end() || !isJobId(label->second) ||
                jobs_.contains(label->second)) {
              continue;
            }
            auto job = std::make_shared<Job>();
            pb::Job& j = job->job;
            j.set_job_id(label->second);
            j.set_node(settings_.nodeId);
            j.set_container_id(summary.id);
            j.set_image(summary.image);
            j.set_placements(1);
            for (const auto& [key, value] : summary.labels) {
              if (key == kNameLabel) {
                j.set_name(value);
              } else if (key != kJobLabel && key != kNodeLabel) {
                (*j.mutable_labels())[key] = value;
              }
            }
            *j.mutable_created() =
                google::protobuf::util::TimeUtil::SecondsToTimestamp(summary.created);
            jobs_[j.job_id()] = job;
            inspections.push_back(
                engine_.inspect(summary.id, nullptr)
                    .then([this, job](const ContainerState& state) { readopt(*job, state); })
                    .recover([this, job](const std::exception_ptr& error) {
                      fail(*job, describe(error));
                    }));
          }
          return all(std::move(inspections));
        });
  }

  [[nodiscard]] const pb::Job* find(const std::string& jobId) const {
    auto it = jobs_.find(jobId);
    return it == jobs_.end() ? nullptr : &it->second->job;
  }

  [[nodiscard]] std::vector<pb::Job> jobs() const {
    std::vector<pb::Job> out;
    out.reserve(jobs_.size());
    for (const auto& [id, job] : jobs_) {
      out.push_back(job->job);
    }
    return out;
  }

  [[nodiscard]] uint32_t active() const {
    uint32_t n = 0;
    for (const auto& [id, job] : jobs_) {
      n += isTerminal(job->job.state()) ? 0 : 1;
    }
    return n;
  }

  Future<void> watch(const std::string& jobId, bool progress, bool logs, bool follow,
                     const rpc::ServerStreamPtr& stream) {
    auto job = get(jobId);
    auto watcher = std::make_shared<Watcher>();
    watcher->stream = stream;
    watcher->progress = progress;
    watcher->logs = logs;
    watcher->follow = follow;
    watcher->done = std::make_unique<Promise<void>>(loop_);
    Future<void> done = watcher->done->future();
    if (progress) {
      for (const auto& line : job->buildLog) {
        pb::JobEvent event;
        event.set_build_line(line);
        stream->write(event);
      }
      stream->write(stateEvent(job->job));
    }
    job->watchers.push_back(watcher);
    watcher->gone = stream->closed().then([this, job, weak = std::weak_ptr<Watcher>(watcher)] {
      if (auto w = weak.lock()) {
        finish(*job, w);
      }
    });
    // Only once the container has started: following a created container's logs ends at once,
    // with nothing, and its output would be lost. setState(RUNNING) starts it otherwise.
    const pb::JobState state = job->job.state();
    if (logs && !job->job.container_id().empty() && (state == pb::RUNNING || isTerminal(state))) {
      followOutput(job, watcher);
    }
    if (isTerminal(job->job.state()) || !follow) {
      watcher->terminalSeen = true;
      if (!logs || job->job.container_id().empty()) {
        finish(*job, watcher);
      }
    }
    return done;
  }

  Future<pb::Job> stop(const std::string& jobId) {
    auto job = get(jobId);
    if (isTerminal(job->job.state())) {
      return makeReadyFuture<pb::Job>(job->job);
    }
    if (job->job.state() != pb::RUNNING) {  // Not started: it never will be.
      job->task.cancel();
      fail(*job, "stopped before it started");
      return cleanUp(job).then([job] { return job->job; });
    }
    const SpanParent span = job->span ? &job->span->context() : nullptr;
    return engine_.stop(job->job.container_id(), 10, span)
        .then([this, job, span] {
          // Answered with the end, not with RUNNING: the task's own wait may not have heard yet.
          return engine_.wait(job->job.container_id(), WaitCondition::NotRunning, span);
        })
        .then([this, job](int64_t code) {
          if (!isTerminal(job->job.state())) {
            job->job.set_exit_code(code);
            setState(*job, pb::EXITED);
          }
          return job->job;
        });
  }

  Future<pb::Job> remove(const std::string& jobId) {
    auto job = get(jobId);
    job->removing = true;
    if (job->task.valid() && !isTerminal(job->job.state())) {
      job->task.cancel();
    }
    return cleanUp(job).then([this, job] {
      setState(*job, pb::REMOVED);
      jobs_.erase(job->job.job_id());
      return job->job;
    });
  }

 private:
  std::shared_ptr<Job> get(const std::string& jobId) {
    auto it = jobs_.find(jobId);
    if (it == jobs_.end()) {
      throw rpc::RpcError(rpc::Code::NotFound,
                          fmt::format("no job {} on node {}", jobId, settings_.nodeId));
    }
    return it->second;
  }

  // Removes the job's container, if it has one. A container already gone is not an error.
  Future<void> cleanUp(const std::shared_ptr<Job>& job) {
    const std::string name = job->job.container_id().empty() ? containerName(job->job.job_id())
                                                             : job->job.container_id();
    return engine_.remove(name, true, job->span ? &job->span->context() : nullptr)
        .recover([](const std::exception_ptr& error) {
          try {
            std::rethrow_exception(error);
          } catch (const DockerError& e) {
            if (!e.notFound()) {
              throw;
            }
          }
        });
  }

  void readopt(Job& job, const ContainerState& state) {
    if (state.running) {
      setState(job, pb::RUNNING);
      auto shared = jobs_.at(job.job.job_id());
      job.task = engine_.wait(job.job.container_id(), WaitCondition::NotRunning, nullptr)
                     .then([this, shared](int64_t code) {
                       shared->job.set_exit_code(code);
                       setState(*shared, pb::EXITED);
                     })
                     .recover([this, shared](const std::exception_ptr& error) {
                       if (!isTerminal(shared->job.state()) && !shared->removing) {
                         fail(*shared, describe(error));
                       }
                     });
    } else if (state.status == "created") {
      // Made, never started: the daemon stopped in between. Nothing ran; say so.
      fail(job, "the node restarted between creating and starting the container");
    } else {
      job.job.set_exit_code(state.exitCode);
      setState(job, pb::EXITED);
    }
  }

  void buildLine(Job& job, std::string line) {
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) {
      line.pop_back();
    }
    pb::JobEvent event;
    event.set_build_line(line);
    for (const auto& watcher : job.watchers) {
      if (watcher->progress) {
        watcher->stream->write(event);
      }
    }
    job.buildLog.push_back(std::move(line));
    while (job.buildLog.size() > settings_.buildLogLines) {
      job.buildLog.pop_front();
    }
  }

  void fail(Job& job, const std::string& why) {
    std::string error = why;
    if (!job.buildLog.empty() && job.job.state() == pb::BUILDING) {
      error += "\nthe build's last lines:";
      const size_t from = job.buildLog.size() > 20 ? job.buildLog.size() - 20 : 0;
      for (size_t i = from; i < job.buildLog.size(); ++i) {
        error += "\n  " + job.buildLog[i];
      }
    }
    job.job.set_error(error);
    if (job.span) {
      job.span->SetTag("error", true);
      job.span->Log({{"event", "error"}, {"message", why}});
    }
    setState(job, pb::FAILED);
    // Nothing left behind: a failed job's container goes (its image stays, for the cache).
    if (jobs_.contains(job.job.job_id())) {
      cleanUp(jobs_.at(job.job.job_id())).detach();
    }
  }

  void setState(Job& job, pb::JobState state) {
    job.job.set_state(state);
    *job.job.mutable_changed() = now();
    const pb::JobEvent event = stateEvent(job.job);
    const bool terminal = isTerminal(state);
    if (terminal && job.span) {
      job.span->SetTag("job.state", pb::JobState_Name(state));
      job.span->Finish();
      job.span.reset();
    }
    if (terminal && settings_.onJobEnded) {
      settings_.onJobEnded();
    }
    // Copied: finish() takes watchers out of the list.
    const auto watchers = job.watchers;
    for (const auto& watcher : watchers) {
      if (state == pb::RUNNING && watcher->logs && !watcher->output.valid()) {
        followOutput(jobs_.at(job.job.job_id()), watcher);
      }
      if (!terminal) {
        if (watcher->progress) {
          watcher->stream->write(event);
        }
        continue;
      }
      watcher->terminalSeen = true;
      if (!watcher->logs || !watcher->output.valid()) {
        finish(job, watcher);
      } else if (watcher->outputDone) {
        readRest(jobs_.at(job.job.job_id()), watcher);
      }
    }
  }

  void followOutput(const std::shared_ptr<Job>& job, const std::shared_ptr<Watcher>& watcher) {
    watcher->readRestAtEnd = watcher->follow && !isTerminal(job->job.state());
    std::weak_ptr<Watcher> weak = watcher;
    watcher->output = readOutput(*job, watcher, watcher->follow, {})
                          .whenSettled([this, job, weak](const Future<void>& outcome) {
                            (void)outcome.hasError();
                            auto w = weak.lock();
                            if (!w) {
                              return;
                            }
                            w->outputDone = true;
                            if (w->terminalSeen) {
                              readRest(job, w);
                            }
                          });
  }

  // Docker ends a followed log stream when the container stops, which can be before its log
  // driver has written the last output (a short-lived container's, a last line without a
  // newline): `docker logs` shows it afterwards, the follower never got it. So once the job has
  // ended and the followed stream too, the log is read once more, whole, and what the watcher
  // has not had yet (past the bytes of each stream it was written) goes to it; then its stream
  // ends. By then the job's end was reported by the engine's wait, which returns only after the
  // container's output streams were drained into the log.
  void readRest(const std::shared_ptr<Job>& job, const std::shared_ptr<Watcher>& watcher) {
    if (!watcher->readRestAtEnd) {
      finish(*job, watcher);
      return;
    }
    watcher->readRestAtEnd = false;
    std::weak_ptr<Watcher> weak = watcher;
    watcher->output = readOutput(*job, watcher, false, watcher->written)
                          .whenSettled([this, job, weak](const Future<void>& outcome) {
                            (void)outcome.hasError();
                            if (auto w = weak.lock()) {
                              finish(*job, w);
                            }
                          });
  }

  // The container's output to the watcher's stream, leaving out the first skip[s] bytes of
  // stream s (1 stdout, 2 stderr), counting what it writes in watcher->written.
  Future<void> readOutput(const Job& job, const std::shared_ptr<Watcher>& watcher, bool follow,
                          std::array<uint64_t, 3> skip) {
    std::weak_ptr<Watcher> weak = watcher;
    return engine_.logs(
        job.job.container_id(), follow,
        [weak, skip](int stream, std::string_view bytes) mutable {
          auto w = weak.lock();
          const size_t index = stream == 2 ? 2 : 1;
          const uint64_t skipped = std::min<uint64_t>(skip[index], bytes.size());
          skip[index] -= skipped;
          bytes.remove_prefix(skipped);
          if (!w || bytes.empty()) {
            return;
          }
          w->written[index] += bytes.size();
          pb::JobEvent event;
          if (index == 2) {
            event.set_stderr(std::string(bytes));
          } else {
            event.set_stdout(std::string(bytes));
          }
          w->stream->write(event);
        },
        nullptr);
  }

  // The watcher's stream ends: with the job's last state when it wants progress.
  void finish(Job& job, const std::shared_ptr<Watcher>& watcher) {
    auto it = std::find(job.watchers.begin(), job.watchers.end(), watcher);
    if (it == job.watchers.end()) {
      return;
    }
    job.watchers.erase(it);
    if (watcher->progress && isTerminal(job.job.state())) {
      watcher->stream->write(stateEvent(job.job));
    }
    if (watcher->output.valid() && !watcher->outputDone) {
      watcher->output.cancel();
    }
    watcher->done->setValue();
  }

  Dispatcher& loop_;
  DockerEngine& engine_;
  opentracing::Tracer& tracer_;
  WorkerSettings settings_;
  std::map<std::string, std::shared_ptr<Job>> jobs_;
};

Worker::Worker(Dispatcher& loop, DockerEngine& engine, opentracing::Tracer& tracer,
               WorkerSettings settings)
    : impl_(std::make_unique<Impl>(loop, engine, tracer, std::move(settings))) {}
Worker::~Worker() = default;

Future<pb::Job> Worker::run(const pb::JobSpec& spec, std::string context,
                            const opentracing::SpanContext* parent) {
  return impl_->run(spec, std::move(context), parent);
}
Future<void> Worker::adopt() {
  return impl_->adopt();
}
const pb::Job* Worker::find(const std::string& jobId) const {
  return impl_->find(jobId);
}
std::vector<pb::Job> Worker::jobs() const {
  return impl_->jobs();
}
uint32_t Worker::active() const {
  return impl_->active();
}
Future<void> Worker::attach(const std::string& jobId, bool logs,
                            const rpc::ServerStreamPtr& stream) {
  return impl_->watch(jobId, true, logs, true, stream);
}
Future<void> Worker::logs(const std::string& jobId, bool follow,
                          const rpc::ServerStreamPtr& stream) {
  return impl_->watch(jobId, false, true, follow, stream);
}
Future<pb::Job> Worker::stop(const std::string& jobId) {
  return impl_->stop(jobId);
}
Future<pb::Job> Worker::remove(const std::string& jobId) {
  return impl_->remove(jobId);
}

}  // namespace snow::containers
