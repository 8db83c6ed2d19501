#pragma once

// The worker: the jobs this node builds and runs through its Docker engine.
//
// A job arrives as a checked build context (context.h) and a spec; the worker builds the image,
// creates the container named "snow-<job id>" with the labels snow.job, snow.node and snow.name
// (and the job's own), starts it and waits for it. The engine is the source of truth: the
// container's name makes a second container for one job impossible on one engine (a repeated
// run() of a known job id is answered with the job as it is), and adopt() rebuilds the table
// from the labels after a restart.
//
// Watchers (Attach, Logs) get the build's output as it comes, every state change, and the
// container's output; a job's last watcher event is its terminal state.
//
// Contract:
//   - Thread: the loop thread, for everything; futures settle on it.
//   - Ownership: the Worker borrows the engine and the loop, which outlive it. Destroying it
//     cancels what it waits on; containers keep running (adopt() finds them again).
//   - Errors: run() rejects with rpc::RpcError (RESOURCE_EXHAUSTED over max_jobs); a build or
//     engine failure does not reject anything: the job becomes FAILED with the error and the
//     build log's tail in Job.error.

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <opentracing/tracer.h>

#include "snow/containers/v1/containers.pb.h"
#include "snow/core/dispatcher.h"
#include "snow/core/future.h"
#include "snow/rpc/services.h"

#include "docker.h"
#include "job_id.h"

namespace snow::containers {

namespace pb = ::snow::containers::v1;

struct WorkerSettings {
  std::string nodeId;
  uint32_t maxJobs = 64;
  uint32_t buildLogLines = 200;
  // Called on the loop when a job ended (active() fell), so that the node can advertise its new
  // load at once rather than at its next periodic look. Must not destroy the Worker.
  std::function<void()> onJobEnded;
};

// Labels every container of a job carries.
inline constexpr const char* kJobLabel = "snow.job";
inline constexpr const char* kNodeLabel = "snow.node";
inline constexpr const char* kNameLabel = "snow.name";

class Worker {
 public:
  Worker(Dispatcher& loop, DockerEngine& engine, opentracing::Tracer& tracer,
         WorkerSettings settings);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Starts building `context` (a checked tar) as job `spec.job_id()`; resolves with the job as
  // soon as it is accepted, before the build. `parent`: the span the job's spans are children of.
  Future<pb::Job> run(const pb::JobSpec& spec, std::string context,
                      const opentracing::SpanContext* parent);

  // Finds the containers this node ran before a restart (by their snow.node label).
  Future<void> adopt();

  // The job, or nullptr.
  [[nodiscard]] const pb::Job* find(const std::string& jobId) const;
  [[nodiscard]] std::vector<pb::Job> jobs() const;
  // Jobs building, starting or running: what the placement policy counts.
  [[nodiscard]] uint32_t active() const;

  // Streams the job's progress to `stream`: the build output so far, the state, then whatever
  // follows; with `logs`, the container's output too. Resolves when the job ended and its
  // output was written, or when the client went away.
  Future<void> attach(const std::string& jobId, bool logs, const rpc::ServerStreamPtr& stream);
  // The container's output (all of it so far; with `follow`, until it ends).
  Future<void> logs(const std::string& jobId, bool follow, const rpc::ServerStreamPtr& stream);
  // Stops the container (10 s, then SIGKILL); resolves with the job.
  Future<pb::Job> stop(const std::string& jobId);
  // Stops and removes the container, forgets the job; images stay for the build cache.
  Future<pb::Job> remove(const std::string& jobId);

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace snow::containers
