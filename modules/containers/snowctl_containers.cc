// snowctl's container commands (docs/containers.md):
//
//   snowctl run [-f DOCKERFILE] [--name N] [--env K=V]... [--label K=V]... [--node ID]
//                   [--detach] DIR [--] [COMMAND ARGS...]
//   snowctl containers
//   snowctl logs JOB [-f]     (the spawner's verbs: a job id makes them ours, snowctl.h SharedVerb)
//   snowctl stop JOB
//   snowctl rm JOB

#include <array>
#include <cstdio>
#include <deque>
#include <span>

#include <fmt/format.h>

#include "snow/containers/v1/containers.pb.h"
#include "snow/core/identity.h"
#include "snow/posix/active.h"

#include "context.h"
#include "job_id.h"
#include "snowctl.h"

namespace snowctl {
namespace {

namespace cp = snow::containers::v1;

constexpr std::string_view kMethod = "/snow.containers.v1.Containers/";
// Chunks of the context as sent: well under gRPC's 4 MiB message limit.
constexpr size_t kChunkBytes = size_t{1} << 20;
// What snowctl packs at most; the receiving node's own limit may be lower and is checked there.
constexpr uint64_t kMaxContextBytes = uint64_t{4} << 30;
// `docker run`'s exit code when the daemon could not run the container.
constexpr int kCannotRun = 125;
// A job removed while it ran: its container was killed, as `docker run` reports SIGKILL.
constexpr int kRemoved = 137;

std::string method(std::string_view name) {
  return std::string(kMethod) + std::string(name);
}

struct RunOptions {
  std::string dir;
  std::string dockerfile;
  std::string name;
  std::vector<std::string> env;
  std::vector<std::string> labels;
  std::string node;
  bool detach = false;
  std::vector<std::string> command;
  std::vector<std::string> afterMark;  // The command when it follows a `--` (see addCommands).
  std::string job;
};

RunOptions& options() {
  static RunOptions o;
  return o;
}

std::string stateName(cp::JobState state) {
  std::string name = cp::JobState_Name(state);
  for (auto& c : name) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return name;
}

// "K=V" pairs into `out`; false (after saying which) when one is not.
bool pairs(const std::vector<std::string>& in, const char* option,
           google::protobuf::Map<std::string, std::string>& out) {
  for (const auto& pair : in) {
    const size_t equals = pair.find('=');
    if (equals == std::string::npos || equals == 0) {
      fmt::print(stderr, "snowctl: {}: '{}' is not NAME=value\n", option, pair);
      return false;
    }
    out[pair.substr(0, equals)] = pair.substr(equals + 1);
  }
  return true;
}

std::string newJobId(snow::posix::Posix& os) {
  std::array<uint8_t, 16> bytes{};
  auto r = os.getrandom(bytes.data(), bytes.size(), 0);
  if (!r.ok() || static_cast<size_t>(r.value) != bytes.size()) {
    throw std::runtime_error("getrandom failed");
  }
  return snow::toHex(bytes);
}

// A W3C traceparent for the calls of one `snowctl run`, so that the nodes' spans of the job (the
// receiving node's, the worker's, the Docker API calls) are one trace whose id snowctl prints.
std::string newTraceparent(snow::posix::Posix& os, std::string* traceId) {
  std::array<uint8_t, 24> bytes{};
  auto r = os.getrandom(bytes.data(), bytes.size(), 0);
  if (!r.ok() || static_cast<size_t>(r.value) != bytes.size()) {
    throw std::runtime_error("getrandom failed");
  }
  *traceId = snow::toHex(std::span(bytes).first(16));
  return fmt::format("00-{}-{}-01", *traceId, snow::toHex(std::span(bytes).subspan(16)));
}

// Follows the job until it ends: build output and notices to stderr, the container's output to
// stdout and stderr, as `docker run` does; returns the container's exit code.
int attach(Ctl& ctl, const std::string& job, const std::string& traceparent) {
  cp::AttachRequest request;
  request.set_job_id(job);
  request.set_logs(true);
  snow::rpc::CallOptions callOptions;
  callOptions.timeout = snow::Duration(0);
  callOptions.metadata = {{"traceparent", traceparent}};
  int code = kCannotRun;
  snow::Future<void> done = ctl.client().stream(
      ctl.options().node, method("Attach"), request, cp::JobEvent::default_instance(),
      [&code](const snow::MessagePtr& message) {
        const auto& event = static_cast<const cp::JobEvent&>(*message);
        switch (event.what_case()) {
          case cp::JobEvent::kBuildLine:
            fmt::print(stderr, "{}\n", event.build_line());
            break;
          case cp::JobEvent::kStdout:
            std::fwrite(event.stdout().data(), 1, event.stdout().size(), stdout);
            std::fflush(stdout);
            break;
          case cp::JobEvent::kStderr:
            std::fwrite(event.stderr().data(), 1, event.stderr().size(), stderr);
            break;
          case cp::JobEvent::kNotice:
            fmt::print(stderr, "snowctl: {}\n", event.notice());
            break;
          case cp::JobEvent::kState: {
            const cp::Job& state = event.state();
            if (state.state() == cp::EXITED) {
              code = static_cast<int>(state.exit_code());
            } else if (state.state() == cp::REMOVED) {
              fmt::print(stderr, "snowctl: job {} was removed\n", state.job_id());
              code = kRemoved;
            } else if (state.state() == cp::FAILED || state.state() == cp::LOST) {
              fmt::print(stderr, "snowctl: job {} {}: {}\n", state.job_id(),
                         stateName(state.state()), state.error());
            }
            break;
          }
          default:
            break;
        }
      },
      callOptions);
  if (ctl.runStream(done, "cannot follow the job") != 0) {
    return kCannotRun;
  }
  return code;
}

int run(Ctl& ctl) {
  const RunOptions& o = options();
  cp::JobSpec spec;
  spec.set_name(o.name);
  spec.set_node(o.node);
  spec.set_dockerfile(o.dockerfile.empty() ? "Dockerfile" : o.dockerfile);
  if (!pairs(o.env, "--env", *spec.mutable_env()) ||
      !pairs(o.labels, "--label", *spec.mutable_labels())) {
    return 2;
  }
  for (const auto& word : o.command) {
    spec.add_command(word);
  }
  snow::posix::Posix& os = snow::posix::active();
  auto chunks = std::make_shared<std::deque<std::string>>();
  std::string traceId;
  std::string traceparent;
  try {
    spec.set_job_id(newJobId(os));
    traceparent = newTraceparent(os, &traceId);
    std::string pending;
    const auto packed = snow::containers::packContext(
        os, o.dir, o.dockerfile, kMaxContextBytes, [&](std::string_view bytes) {
          pending.append(bytes);
          while (pending.size() >= kChunkBytes) {
            chunks->push_back(pending.substr(0, kChunkBytes));
            pending.erase(0, kChunkBytes);
          }
        });
    if (!pending.empty()) {
      chunks->push_back(std::move(pending));
    }
    spec.set_dockerfile(packed.dockerfile);
    spec.set_context_bytes(packed.bytes);
  } catch (const std::exception& e) {
    fmt::print(stderr, "snowctl: run: {}\n", e.what());
    return kCannotRun;
  }
  auto first = std::make_shared<cp::SubmitChunk>();
  *first->mutable_spec() = spec;
  bool sentSpec = false;
  snow::rpc::CallOptions callOptions;
  callOptions.timeout = std::chrono::minutes(10);  // A big context on a slow link.
  callOptions.metadata = {{"traceparent", traceparent}};
  auto reply =
      ctl.awaitReply(ctl.client().upload<cp::SubmitReply>(
                         ctl.options().node, method("Submit"),
                         [first, chunks, sentSpec]() mutable {
                           if (!sentSpec) {
                             sentSpec = true;
                             return snow::makeReadyFuture<snow::MessagePtr>(first);
                           }
                           if (chunks->empty()) {
                             return snow::makeReadyFuture<snow::MessagePtr>(nullptr);
                           }
                           auto chunk = std::make_shared<cp::SubmitChunk>();
                           chunk->set_context(std::move(chunks->front()));
                           chunks->pop_front();
                           return snow::makeReadyFuture<snow::MessagePtr>(std::move(chunk));
                         },
                         callOptions),
                     "cannot submit the job", callOptions.timeout);
  if (!reply) {
    return kCannotRun;
  }
  if (o.detach) {
    fmt::print("{}\n", reply->job_id());
    return 0;
  }
  fmt::print(stderr, "snowctl: job {} on node {} (trace {})\n", reply->job_id(), reply->node(),
             traceId);
  return attach(ctl, reply->job_id(), traceparent);
}

int containers(Ctl& ctl) {
  auto list = ctl.call<cp::ListRequest, cp::JobList>(method("List"), {}, "cannot list the jobs");
  if (!list) {
    return 1;
  }
  if (ctl.options().json) {
    fmt::print("{}\n", toJson(*list));
    return 0;
  }
  fmt::print("{:<32}  {:<12}  {:<11}  {:<19}  {:<8}  {}\n", "JOB", "NODE", "STATE", "IMAGE", "AGE",
             "NAME");
  for (const auto& job : list->jobs()) {
    std::string state = stateName(job.state());
    if (job.state() == cp::EXITED) {
      state += fmt::format(" ({})", job.exit_code());
    }
    fmt::print("{:<32}  {:<12}  {:<11}  {:<19}  {:<8}  {}\n", job.job_id(),
               job.node().substr(0, 12), state, job.image().substr(0, 19), age(job.created()),
               job.name());
  }
  for (const auto& node : list->unreachable()) {
    fmt::print(stderr, "snowctl: node {} did not answer: its jobs are missing\n", node);
  }
  return 0;
}

// The container's output: all of it so far, and with `follow` what comes until it ends.
int logs(Ctl& ctl, const std::string& job, bool follow) {
  cp::LogsRequest request;
  request.set_job_id(job);
  request.set_follow(follow);
  snow::rpc::CallOptions callOptions;
  callOptions.timeout = follow ? snow::Duration(0) : ctl.timeout();
  snow::Future<void> done = ctl.client().stream(
      ctl.options().node, method("Logs"), request, cp::JobEvent::default_instance(),
      [](const snow::MessagePtr& message) {
        const auto& event = static_cast<const cp::JobEvent&>(*message);
        if (event.has_stdout()) {
          std::fwrite(event.stdout().data(), 1, event.stdout().size(), stdout);
          std::fflush(stdout);
        } else if (event.has_stderr()) {
          std::fwrite(event.stderr().data(), 1, event.stderr().size(), stderr);
        }
      },
      callOptions);
  return ctl.runStream(done, "cannot read the job's output");
}

int stop(Ctl& ctl, const std::string& job) {
  cp::JobRef request;
  request.set_job_id(job);
  auto stopped = ctl.call<cp::JobRef, cp::Job>(method("Stop"), request, "cannot stop the job",
                                               std::chrono::seconds(60));
  if (!stopped) {
    return 1;
  }
  if (ctl.options().json) {
    fmt::print("{}\n", toJson(*stopped));
  } else {
    fmt::print("{}: {}\n", stopped->job_id(), stateName(stopped->state()));
  }
  return 0;
}

int remove(Ctl& ctl) {
  cp::JobRef request;
  request.set_job_id(options().job);
  auto job = ctl.call<cp::JobRef, cp::Job>(method("Remove"), request, "cannot remove the job",
                                           std::chrono::seconds(60));
  if (!job) {
    return 1;
  }
  if (ctl.options().json) {
    fmt::print("{}\n", toJson(*job));
  } else {
    fmt::print("{}: removed\n", job->job_id());
  }
  return 0;
}

void addCommands(CLI::App& app, std::vector<Command>& commands) {
  RunOptions& o = options();
  CLI::App* runCommand = app.add_subcommand(
      "run", "build DIR on a worker of the cluster and run it, as docker build + docker run");
  runCommand->add_option("dir", o.dir, "the build context (a directory with a Dockerfile)")
      ->required();
  runCommand->add_option("-f,--file", o.dockerfile, "the Dockerfile, relative to DIR");
  runCommand->add_option("--name", o.name, "a name for the job");
  // One value per -e and -l, so that DIR and the command after them are not taken as values.
  runCommand->add_option("--env,-e", o.env, "NAME=value for the container (repeatable)")
      ->allow_extra_args(false);
  runCommand
      ->add_option("--label,-l", o.labels,
                   "NAME=value: a worker must advertise it; also a container label")
      ->allow_extra_args(false);
  runCommand->add_option("--node", o.node, "run on this node (its id)");
  runCommand->add_flag("-d,--detach", o.detach, "print the job id and return");
  // Everything after DIR is the container's command, options and `--` included, as `docker run
  // IMAGE COMMAND...` takes it: the first word after DIR makes CLI11 put it and all that follows
  // into remaining() (prefix command), so a `-d` in the command is not --detach.
  runCommand->prefix_command();
  // A `--` before the command (`run DIR -- CMD`, `run -- DIR CMD`): CLI11 keeps the `--` in
  // remaining() and reads what follows as positionals; this one takes them, in order, but only
  // after that mark (a positional that fails validation falls through to remaining()).
  runCommand->validate_positionals();
  runCommand->add_option("command", o.afterMark, "the container's command and its arguments")
      ->check(
          [runCommand](const std::string&) -> std::string {
            const auto before = runCommand->remaining();
            return !before.empty() && before.front() == "--" ? "" : "not after --";
          },
          "")
      ->expected(1, -1)
      ->allow_extra_args();
  runCommand->footer(
      "After DIR, or after a -- (DIR -- COMMAND...): the container's command and its arguments,\n"
      "which override the image's CMD. From the command's first word on, everything is the\n"
      "command's: a -d there is not --detach.");
  commands.push_back({runCommand, [runCommand](Ctl& ctl) {
                        RunOptions& chosen = options();
                        chosen.command = runCommand->remaining();
                        if (!chosen.command.empty() && chosen.command.front() == "--") {
                          chosen.command.erase(chosen.command.begin());
                        }
                        chosen.command.insert(chosen.command.begin(), chosen.afterMark.begin(),
                                              chosen.afterMark.end());
                        return run(ctl);
                      }});
  commands.push_back(
      {app.add_subcommand("containers", "every job of the cluster: node, state, image, age"),
       containers});
  // `snowctl logs JOB [-f]` and `snowctl stop JOB`: the verbs are the spawner's; a job id is ours.
  auto isJob = [](const std::string& argument) { return snow::containers::isJobId(argument); };
  sharedVerbs().push_back({"logs", isJob, [](Ctl& ctl, const std::string& job, bool follow) {
                             return logs(ctl, job, follow);
                           }});
  sharedVerbs().push_back(
      {"stop", isJob, [](Ctl& ctl, const std::string& job, bool) { return stop(ctl, job); }});
  CLI::App* rmCommand = app.add_subcommand("rm", "stop and remove a job's container");
  rmCommand->add_option("job", o.job, "the job id")->required();
  commands.push_back({rmCommand, remove});
}

SNOWCTL_COMMANDS(addCommands);  // NOLINT(cert-err58-cpp): at start-up, as CLI11's statics.

}  // namespace
}  // namespace snowctl
