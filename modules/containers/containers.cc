// The container runner module: build contexts sent to any node, built and run by a worker's
// Docker engine (docs/containers.md is the operator's manual).
//
// The node snowctl talks to receives the job (Submit: a spec, then the context's tar in chunks,
// checked as it arrives), gives it its id, chooses a worker by the placement policy
// (placement.h) from the gossip module's membership, and runs it itself or forwards it to that
// worker's RPC address. It keeps the context until the job runs and follows the job on the
// worker (an Attach stream), so that when the worker dies before the container started the job
// is placed once more elsewhere, and when it dies later the job is reported LOST.
//
// Between nodes, every call carries the sender's node key and a signature over the method, the
// receiver and the time; a node accepts such a call only from a live member of the cluster (one
// that passed the portal's handshake). Calls without one are accepted only on the owner-only
// control socket.

#include <array>
#include <deque>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <fmt/format.h>

#include "snow/containers/v1/containers.pb.h"
#include "snow/contexts/static_context.h"
#include "snow/core/future_combinators.h"
#include "snow/core/identity.h"
#include "snow/core/module.h"
#include "snow/gossip/v1/gossip.pb.h"
#include "snow/posix/checked_posix.h"
#include "snow/posix/file_descriptor.h"
#include "snow/rpc/node.h"
#include "snow/rpc/status.h"

#include "context.h"
#include "docker.h"
#include "placement.h"
#include "worker.h"

namespace snow::containers {
namespace {

namespace gp = ::snow::gossip::v1;

constexpr std::string_view kService = "/snow.containers.v1.Containers/";
// Context chunks between nodes: well under gRPC's 4 MiB message limit.
constexpr size_t kChunkBytes = size_t{1} << 20;
// A signed call older or newer than this is refused (clocks of a cluster agree that well).
constexpr int64_t kSignatureWindowSeconds = 300;
constexpr std::string_view kKeyHeader = "x-snow-node-key";
constexpr std::string_view kSignatureHeader = "x-snow-signature";
constexpr std::string_view kTimeHeader = "x-snow-time";

std::string method(std::string_view name) {
  return std::string(kService) + std::string(name);
}

struct Settings {
  std::string dockerSocket = "/var/run/docker.sock";
  bool worker = true;
  uint64_t maxContextBytes = uint64_t{256} << 20;
  uint32_t maxJobs = 64;
  uint32_t buildLogLines = 200;
  std::map<std::string, std::string> labels;
};

Settings settingsOf(const pb::ContainersConfig& config) {
  Settings s;
  if (!config.docker_socket().empty()) {
    s.dockerSocket = config.docker_socket();
  }
  s.worker = !config.has_worker() || config.worker();
  if (config.max_context_bytes() != 0) {
    s.maxContextBytes = config.max_context_bytes();
  }
  if (config.max_jobs() != 0) {
    s.maxJobs = config.max_jobs();
  }
  if (config.build_log_lines() != 0) {
    s.buildLogLines = config.build_log_lines();
  }
  s.labels = {config.labels().begin(), config.labels().end()};
  return s;
}

rpc::RpcError invalid(const std::string& why) {
  return {rpc::Code::InvalidArgument, why};
}

bool isTerminal(pb::JobState state) {
  return state == pb::EXITED || state == pb::FAILED || state == pb::LOST || state == pb::REMOVED;
}

// Whether a forward's failure means the worker never took the job: it was full or unreachable.
bool retryable(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const rpc::RpcError& e) {
    return e.code() == rpc::Code::ResourceExhausted || e.code() == rpc::Code::Unavailable;
  } catch (...) {
    return false;
  }
}

int64_t unixSeconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// A job being received: its spec, the checker and the tar so far.
struct Upload {
  pb::JobSpec spec;
  std::unique_ptr<ContextChecker> checker;
  std::string context;
  bool duplicate = false;  // A job id this node knows already.
};

// A client following a job this node placed elsewhere.
struct Relay {
  rpc::ServerStreamPtr stream;
  std::unique_ptr<Promise<void>> done;
};

// A job this node received and sent to another worker.
struct Placed {
  pb::JobSpec spec;
  std::shared_ptr<const std::string> context;  // Until it runs: to place it again.
  pb::Job job;                                 // As the worker last told.
  std::string workerRpc;
  std::set<std::string> failedOn;
  std::deque<std::string> buildLog;
  std::vector<std::shared_ptr<Relay>> relays;
  Future<void> monitor;
  TimerPtr retry;
  bool retried = false;  // The monitor was re-opened once after it broke.
};

class Containers final : public ConfiguredModule<pb::ContainersConfig> {
 public:
  using ConfiguredModule::apply;
  using ConfiguredModule::verify;

  Future<void> verify(const pb::ContainersConfig& config) override {
    const Settings s = settingsOf(config);
    if (s.dockerSocket.front() != '/') {
      return makeErrorFuture<void>(std::invalid_argument(fmt::format(
          "modules.containers.docker_socket: an absolute path, not '{}'", s.dockerSocket)));
    }
    return makeReadyFuture();
  }

  Future<void> apply(const pb::ContainersConfig& config, DynamicContext& next) override {
    pending_[next.generation()] = settingsOf(config);
    return makeReadyFuture();
  }

  void activated(DynamicContext& current) override {
    auto it = pending_.find(current.generation());
    if (it == pending_.end()) {
      return;
    }
    settings_ = std::move(it->second);
    pending_.clear();
  }

  Future<void> start() override {
    auto& context = StaticContext::instance();
    DockerOptions engine;
    engine.socketPath = settings_.dockerSocket;
    engine.tracer = context.tracerPtr();
    engine_ = std::make_unique<DockerEngine>(context.loop(), std::move(engine));
    if (settings_.worker) {
      worker_ = std::make_unique<Worker>(
          context.loop(), *engine_, context.tracer(),
          WorkerSettings{context.nodeId(), settings_.maxJobs, settings_.buildLogLines,
                         // On the next loop turn, once for several jobs ending together; not
                         // once the module stops (the timer is gone then).
                         [this] {
                           if (advertiser_) {
                             advertiser_->enable(Duration(0));
                           }
                         }});
    }
    if (context.hasNode()) {
      serve(context.node().services());
    }
    // Gossip starts after this module (alphabetical order): the first advertisement waits for
    // the loop, and is repeated while gossip has no handler yet.
    advertiser_ = context.loop().createTimer([this] { advertise(); });
    advertiser_->enable(Duration(0));
    if (!worker_) {
      return makeReadyFuture();
    }
    // Docker is the source of truth: what this node ran before a restart is found again. An
    // engine that is down is not fatal: jobs sent here fail with its error until it is up.
    return worker_->adopt()
        .then([this] {
          StaticContext::instance().logger().info(
              "containers: a worker on the Docker engine at {}; {} job(s) found from before",
              settings_.dockerSocket, worker_->jobs().size());
        })
        .recover([](const std::exception_ptr& error) {
          StaticContext::instance().logger().warn(
              "containers: cannot list this node's containers: {}", describe(error));
        });
  }

  Future<void> stop() override {
    rpc_.clear();
    advertiser_.reset();
    for (auto& [id, placed] : placed_) {
      if (placed->monitor.valid()) {
        placed->monitor.cancel();
      }
    }
    placed_.clear();
    worker_.reset();
    engine_.reset();
    return makeReadyFuture();
  }

 private:
  // ---- The cluster -----------------------------------------------------------------------------

  [[nodiscard]] std::string self() const { return StaticContext::instance().nodeId(); }

  // This node's RPC address for other nodes: its first TCP endpoint.
  [[nodiscard]] static std::string rpcAddress() {
    auto& context = StaticContext::instance();
    if (!context.hasNode()) {
      return "";
    }
    for (const auto& endpoint : context.node().endpoints()) {
      if (!endpoint.starts_with("unix:")) {
        return endpoint;
      }
    }
    return "";
  }

  static uint64_t freeMemoryMib() {
    auto& os = StaticContext::instance().posix();
    auto fd = posix::tolerant([&] { return os.open("/proc/meminfo", O_RDONLY | O_CLOEXEC, 0); });
    if (!fd.ok()) {
      return 0;
    }
    posix::FileDescriptor file(fd.value);
    std::array<char, 4096> buffer{};
    auto r = posix::tolerant([&] { return os.read(file.get(), buffer.data(), buffer.size()); });
    if (!r.ok()) {
      return 0;
    }
    const std::string_view text(buffer.data(), static_cast<size_t>(r.value));
    const auto at = text.find("MemAvailable:");
    if (at == std::string_view::npos) {
      return 0;
    }
    return std::strtoull(text.data() + at + 13, nullptr, 10) / 1024;
  }

  std::map<std::string, std::string> ownMetadata() const {
    if (!worker_) {
      return {};
    }
    // Free memory in steps of 64 MiB: every small drift would be news to the whole cluster.
    return advertised(rpcAddress(), worker_->active(), freeMemoryMib() / 64 * 64, settings_.labels);
  }

  // Tells the cluster what this node can take, when it changed; again later while gossip is not
  // there yet (or not at all: then this node places only on itself).
  void advertise() {
    auto metadata = ownMetadata();
    if (metadata.empty() || metadata == advertisedMetadata_) {
      advertiser_->enable(std::chrono::seconds(5));  // Free memory drifts: look again.
      return;
    }
    auto request = std::make_shared<gp::SetMetadata>();
    request->mutable_metadata()->insert(metadata.begin(), metadata.end());
    StaticContext::instance()
        .events()
        .raise(EventType::of("gossip.metadata"), request)
        .then([this, metadata](const MessagePtr&) { advertisedMetadata_ = metadata; })
        .recover([](const std::exception_ptr&) {})  // No gossip (yet): tried again below.
        .detach();
    advertiser_->enable(std::chrono::seconds(1));
  }

  // Every member, as placement sees it; only this node when gossip does not run.
  Future<std::vector<Candidate>> members() {
    return StaticContext::instance()
        .events()
        .raise(EventType::of("gossip.members"))
        .then([this](const MessagePtr& reply) {
          std::vector<Candidate> out;
          const auto* members = dynamic_cast<const gp::Members*>(reply.get());
          if (members != nullptr) {
            for (const auto& m : members->members()) {
              if (m.node_id() == self()) {
                continue;
              }
              Candidate c{m.node_id(),
                          m.status() == gp::Member::ALIVE,
                          {m.metadata().begin(), m.metadata().end()},
                          0};
              auto rpc = c.metadata.find(kRpcKey);
              if (rpc == c.metadata.end() || rpc->second.empty()) {
                c.metadata.erase(kCapabilityKey);  // No rpc.listen: it runs only its own jobs.
              }
              out.push_back(std::move(c));
            }
          }
          return out;
        })
        .recover([](const std::exception_ptr&) { return std::vector<Candidate>{}; })
        .then([this](std::vector<Candidate> out) {
          out.push_back(Candidate{self(), true, ownMetadata(), 0});
          return out;
        });
  }

  // `all` with the jobs this node sent each worker since that worker's last advertisement.
  std::vector<Candidate> withRecent(std::vector<Candidate> all) {
    for (auto& c : all) {
      auto it = placedSince_.find(c.nodeId);
      if (it == placedSince_.end()) {
        continue;
      }
      const auto jobs = c.metadata.find(kJobsKey);
      const std::string advertisedJobs = jobs == c.metadata.end() ? "" : jobs->second;
      if (it->second.advertisedJobs != advertisedJobs) {
        it->second = Recent{0, advertisedJobs};  // Its advertisement caught up: start again.
      }
      c.placedSince = it->second.count;
    }
    return all;
  }

  // The metadata proving this node sends a call to `target`.
  std::vector<std::pair<std::string, std::string>> signedHeaders(std::string_view name,
                                                                 const std::string& target) {
    const auto& identity = StaticContext::instance().identity();
    if (!identity) {
      return {};
    }
    const std::string time = std::to_string(unixSeconds());
    const Signature signature = identity->sign(signedText(name, target, time));
    return {{std::string(kKeyHeader), toHex(identity->publicKey())},
            {std::string(kSignatureHeader), toHex(signature)},
            {std::string(kTimeHeader), time}};
  }

  static std::string signedText(std::string_view name, const std::string& target,
                                const std::string& time) {
    return fmt::format("snow.containers.v1|{}|{}|{}", name, target, time);
  }

  // Resolves when the caller may call `name`: on the control socket anyone who can open it (its
  // owner); on TCP only a live member of the cluster that signed the call for this node.
  Future<void> authorize(const rpc::CallContext& call, std::string_view name) {
    if (call.peer().starts_with("unix:")) {
      return makeReadyFuture();
    }
    auto refuse = [&](const std::string& why) {
      return makeErrorFuture<void>(rpc::RpcError(
          rpc::Code::PermissionDenied,
          fmt::format("{}: over TCP only cluster nodes may call the container runner ({}); "
                      "operators use the node's control socket",
                      name, why)));
    };
    const auto key = fromHex(call.metadata(kKeyHeader));
    const auto signature = fromHex(call.metadata(kSignatureHeader));
    const std::string time(call.metadata(kTimeHeader));
    if (!key || key->size() != kPublicKeyBytes || !signature ||
        signature->size() != kSignatureBytes || time.empty()) {
      return refuse("the call is not signed by a node");
    }
    PublicKey publicKey{};
    std::copy(key->begin(), key->end(), publicKey.begin());
    Signature sig{};
    std::copy(signature->begin(), signature->end(), sig.begin());
    int64_t when = 0;
    try {
      when = std::stoll(time);
    } catch (const std::exception&) {
      return refuse("a malformed time");
    }
    if (std::llabs(unixSeconds() - when) > kSignatureWindowSeconds) {
      return refuse("the signature's time is more than 5 minutes off");
    }
    if (!NodeIdentity::verify(publicKey, signedText(name, self(), time), sig)) {
      return refuse("the signature does not match");
    }
    const std::string signer = NodeIdentity::nodeIdOf(publicKey);
    return members().then([signer, refuse](const std::vector<Candidate>& all) {
      for (const auto& c : all) {
        if (c.nodeId == signer && c.alive) {
          return makeReadyFuture();
        }
      }
      return refuse(fmt::format("node {} is not a live member of this cluster", signer));
    });
  }

  // ---- Receiving ------------------------------------------------------------------------------

  std::string mintJobId() {
    std::array<uint8_t, 16> bytes{};
    auto r = StaticContext::instance().posix().getrandom(bytes.data(), bytes.size(), 0);
    if (!r.ok() || static_cast<size_t>(r.value) != bytes.size()) {
      throw rpc::RpcError(rpc::Code::Internal, "getrandom failed: no job id");
    }
    return toHex(bytes);
  }

  // Checks the spec before a byte of the context is taken.
  void admit(pb::JobSpec& spec) const {
    if (!isJobId(spec.job_id())) {
      throw invalid(fmt::format("job id '{}' is not 32 lower-case hex digits", spec.job_id()));
    }
    if (spec.context_bytes() > settings_.maxContextBytes) {
      throw rpc::RpcError(rpc::Code::ResourceExhausted,
                          fmt::format("the build context is {} bytes, over this node's limit of {} "
                                      "(modules.containers.max_context_bytes)",
                                      spec.context_bytes(), settings_.maxContextBytes));
    }
  }

  Future<MessagePtr> submit(const rpc::CallContext& call, const rpc::ClientStreamPtr& stream) {
    auto upload = std::make_shared<Upload>();
    const opentracing::SpanContext* parent = call.traceParent();
    const bool forwarded = !call.peer().starts_with("unix:");
    return authorize(call, "Submit")
        .then([stream] { return stream->read(); })
        .then([this, upload, stream](const MessagePtr& first) {
          const auto* chunk = dynamic_cast<const pb::SubmitChunk*>(first.get());
          if (chunk == nullptr || !chunk->has_spec()) {
            throw invalid("a Submit stream starts with the job's spec");
          }
          upload->spec = chunk->spec();
          if (upload->spec.job_id().empty()) {
            upload->spec.set_job_id(mintJobId());
          }
          admit(upload->spec);
          if (placed_.contains(upload->spec.job_id()) ||
              (worker_ && worker_->find(upload->spec.job_id()) != nullptr)) {
            upload->duplicate = true;  // A retried submission: the job exists, nothing new runs.
          }
          upload->checker = std::make_unique<ContextChecker>(
              settings_.maxContextBytes,
              upload->spec.dockerfile().empty() ? "Dockerfile" : upload->spec.dockerfile());
          upload->context.reserve(upload->spec.context_bytes());
          return repeat([upload, stream] {
            return stream->read().then([upload](const MessagePtr& next) {
              if (next == nullptr) {
                return Step::Stop;
              }
              const auto* part = dynamic_cast<const pb::SubmitChunk*>(next.get());
              if (part == nullptr || !part->has_context()) {
                throw invalid("after the spec, a Submit stream carries only context chunks");
              }
              try {
                upload->checker->feed(part->context());
              } catch (const ContextError& e) {
                throw invalid(e.what());
              }
              upload->context += part->context();
              return Step::Continue;
            });
          });
        })
        .then([this, upload, parent, forwarded] {
          try {
            upload->checker->finish();
          } catch (const ContextError& e) {
            throw invalid(e.what());
          }
          if (upload->duplicate) {
            const std::string& id = upload->spec.job_id();
            auto it = placed_.find(id);
            return makeReadyFuture<pb::Job>(it != placed_.end() ? it->second->job
                                                                : *worker_->find(id));
          }
          if (forwarded) {  // Placed here by the receiving node: run it, whatever the policy.
            return runHere(*upload, parent);
          }
          return members().then([this, upload, parent](const std::vector<Candidate>& all) {
            return placeAndRun(upload, all, parent);
          });
        })
        .then([](const pb::Job& job) {
          auto reply = std::make_shared<pb::SubmitReply>();
          reply->set_job_id(job.job_id());
          reply->set_node(job.node());
          return MessagePtr(std::move(reply));
        });
  }

  Future<pb::Job> runHere(Upload& upload, const opentracing::SpanContext* parent) {
    if (!worker_) {
      throw rpc::RpcError(
          rpc::Code::FailedPrecondition,
          fmt::format("node {} runs no jobs (modules.containers.worker: false)", self()));
    }
    return worker_->run(upload.spec, std::move(upload.context), parent).then([this](pb::Job job) {
      advertise();
      return job;
    });
  }

  Future<pb::Job> placeAndRun(const std::shared_ptr<Upload>& upload,
                              const std::vector<Candidate>& all,
                              const opentracing::SpanContext* parent) {
    const Placement where = place(withRecent(all), upload->spec.node(),
                                  {upload->spec.labels().begin(), upload->spec.labels().end()});
    if (where.nodeId.empty()) {
      throw rpc::RpcError(
          upload->spec.node().empty() ? rpc::Code::FailedPrecondition : rpc::Code::NotFound,
          where.why);
    }
    if (where.nodeId == self()) {
      return runHere(*upload, parent);
    }
    auto placed = std::make_shared<Placed>();
    placed->spec = upload->spec;
    placed->context = std::make_shared<const std::string>(std::move(upload->context));
    placed->job.set_job_id(upload->spec.job_id());
    placed->job.set_name(upload->spec.name());
    placed->job.set_state(pb::PLACED);
    placed->job.set_placements(1);
    *placed->job.mutable_labels() = upload->spec.labels();
    placed->job.mutable_created()->set_seconds(unixSeconds());
    placed_[placed->job.job_id()] = placed;
    const std::string first = where.nodeId;
    return forward(placed, first, all, parent)
        .recover([this, placed, all, parent, first](const std::exception_ptr& error) {
          // Full (max_jobs) or gone before it took the context: nothing runs there, so another
          // worker may take it, once; a pinned job has no other.
          const Placement other =
              placed->spec.node().empty()
                  ? place(withRecent(all), "",
                          {placed->spec.labels().begin(), placed->spec.labels().end()}, {first})
                  : Placement{};
          if (!retryable(error) || other.nodeId.empty()) {
            placed_.erase(placed->job.job_id());
            std::rethrow_exception(error);
          }
          StaticContext::instance().logger().warn(
              "containers: job {}: worker {} did not take it ({}); placing it on {}",
              placed->job.job_id(), first, describe(error), other.nodeId);
          placed->job.set_placements(2);
          if (other.nodeId == self()) {
            placed_.erase(placed->job.job_id());
            Upload local{placed->spec, nullptr, *placed->context, false};
            return runHere(local, parent);
          }
          return forward(placed, other.nodeId, all, parent)
              .recover([this, placed](const std::exception_ptr& again) -> pb::Job {
                placed_.erase(placed->job.job_id());
                std::rethrow_exception(again);
              });
        });
  }

  // Sends the job to `worker` and follows it there.
  // `parent`: the Submit call's span, so that the worker's spans join the client's trace.
  Future<pb::Job> forward(const std::shared_ptr<Placed>& placed, const std::string& worker,
                          const std::vector<Candidate>& all,
                          const opentracing::SpanContext* parent) {
    std::string rpc;
    for (const auto& c : all) {
      if (c.nodeId == worker) {
        auto it = c.metadata.find(kRpcKey);
        rpc = it == c.metadata.end() ? "" : it->second;
      }
    }
    if (rpc.empty()) {
      throw rpc::RpcError(rpc::Code::FailedPrecondition,
                          fmt::format("worker {} advertises no RPC address (rpc.listen)", worker));
    }
    placed->job.set_node(worker);
    placed->workerRpc = rpc;
    Recent& recent = placedSince_[worker];
    if (recent.count == 0) {
      for (const auto& c : all) {
        if (auto jobs = c.metadata.find(kJobsKey); c.nodeId == worker && jobs != c.metadata.end()) {
          recent.advertisedJobs = jobs->second;
        }
      }
    }
    ++recent.count;
    pb::JobSpec spec = placed->spec;
    spec.set_node(worker);
    auto first = std::make_shared<pb::SubmitChunk>();
    *first->mutable_spec() = spec;
    rpc::CallOptions options;
    options.timeout = std::chrono::minutes(10);
    options.metadata = signedHeaders("Submit", worker);
    options.traceParent = parent;
    auto context = placed->context;
    size_t offset = 0;
    bool sentSpec = false;
    return StaticContext::instance()
        .node()
        .client()
        .upload<pb::SubmitReply>(
            rpc, method("Submit"),
            [first, context, offset, sentSpec]() mutable {
              if (!sentSpec) {
                sentSpec = true;
                return makeReadyFuture<MessagePtr>(first);
              }
              if (offset >= context->size()) {
                return makeReadyFuture<MessagePtr>(nullptr);
              }
              auto chunk = std::make_shared<pb::SubmitChunk>();
              const size_t n = std::min(kChunkBytes, context->size() - offset);
              chunk->set_context(context->substr(offset, n));
              offset += n;
              return makeReadyFuture<MessagePtr>(std::move(chunk));
            },
            options)
        .then([this, placed](const std::shared_ptr<const pb::SubmitReply>&) {
          follow(placed);
          return placed->job;
        });
  }

  // Follows a placed job on its worker: its events go to the relays; a broken stream means
  // the worker is gone (after one retry), and the job is placed again or reported lost.
  void follow(const std::shared_ptr<Placed>& placed) {
    pb::AttachRequest request;
    request.set_job_id(placed->job.job_id());
    request.set_logs(true);
    rpc::CallOptions options;
    options.timeout = Duration(0);
    options.metadata = signedHeaders("Attach", placed->job.node());
    placed->monitor =
        StaticContext::instance()
            .node()
            .client()
            .stream(
                placed->workerRpc, method("Attach"), request, pb::JobEvent::default_instance(),
                [this, weak = std::weak_ptr<Placed>(placed)](const MessagePtr& message) {
                  if (auto p = weak.lock()) {
                    onWorkerEvent(*p, static_cast<const pb::JobEvent&>(*message));
                  }
                },
                options)
            .whenSettled([this, weak = std::weak_ptr<Placed>(placed)](const Future<void>& end) {
              auto p = weak.lock();
              if (!p) {
                (void)end.hasError();
                return;
              }
              const std::string why = end.hasError() ? describe(end.error()) : "";
              onWorkerGone(p, why);
            });
  }

  void onWorkerEvent(Placed& placed, const pb::JobEvent& event) {
    placed.retried = false;
    if (event.has_build_line()) {
      placed.buildLog.push_back(event.build_line());
      while (placed.buildLog.size() > settings_.buildLogLines) {
        placed.buildLog.pop_front();
      }
    } else if (event.has_state()) {
      const uint32_t placements = placed.job.placements();
      placed.job = event.state();
      placed.job.set_placements(placements);
      if (placed.job.state() == pb::RUNNING || isTerminal(placed.job.state())) {
        placed.context.reset();  // It will not be placed again.
      }

      pb::JobEvent copy = event;
      copy.mutable_state()->set_placements(placements);
      relay(placed, copy);
      if (placed.job.state() == pb::REMOVED) {  // Removed through another node: forget it.
        endRelays(placed);
        const std::string id = placed.job.job_id();
        StaticContext::instance().loop().schedule([this, id] { placed_.erase(id); });
      }
      return;
    }
    relay(placed, event);
  }

  void relay(Placed& placed, const pb::JobEvent& event) {
    for (const auto& r : placed.relays) {
      r->stream->write(event);
    }
  }

  void endRelays(Placed& placed) {
    pb::JobEvent last;
    *last.mutable_state() = placed.job;
    for (const auto& r : placed.relays) {
      r->stream->write(last);
      r->done->setValue();
    }
    placed.relays.clear();
  }

  void onWorkerGone(const std::shared_ptr<Placed>& placed, const std::string& why) {
    if (isTerminal(placed->job.state())) {
      endRelays(*placed);
      return;
    }
    const std::string worker = placed->job.node();
    if (!placed->retried) {  // A broken connection is not yet a dead worker: ask once more.
      placed->retried = true;
      placed->retry = StaticContext::instance().loop().createTimer(
          [this, weak = std::weak_ptr<Placed>(placed)] {
            if (auto p = weak.lock()) {
              follow(p);
            }
          });
      placed->retry->enable(std::chrono::milliseconds(300));
      return;
    }
    // Placed again only while nothing can be running: during the build, which the engine
    // abandons with the worker's connection. From STARTING on, a container may run on the dead
    // worker's engine; a pinned job runs there or nowhere.
    const bool unstarted = placed->job.state() == pb::PLACED || placed->job.state() == pb::BUILDING;
    if (unstarted && placed->context && placed->job.placements() < 2 &&
        placed->spec.node().empty()) {
      placeAgain(placed, why);
      return;
    }
    if (unstarted) {
      placed->job.set_state(pb::FAILED);
      placed->job.set_error(
          fmt::format("worker {} died before the job started ({}){}", worker, why,
                      placed->spec.node().empty() ? "" : "; the job is pinned to it (--node)"));
      endRelays(*placed);
      return;
    }
    placed->job.set_state(pb::LOST);
    placed->job.set_error(fmt::format(
        "worker {} stopped answering while the job ran ({}); what became of its container is "
        "unknown",
        worker, why));
    StaticContext::instance().logger().warn("containers: job {}: {}", placed->job.job_id(),
                                            placed->job.error());
    endRelays(*placed);
  }

  void placeAgain(const std::shared_ptr<Placed>& placed, const std::string& why) {
    const std::string dead = placed->job.node();
    placed->failedOn.insert(dead);
    placed->job.set_placements(placed->job.placements() + 1);
    members()
        .then([this, placed, dead, why](const std::vector<Candidate>& all) {
          pb::JobSpec spec = placed->spec;
          const Placement where = place(
              withRecent(all), "", {spec.labels().begin(), spec.labels().end()}, placed->failedOn);
          if (where.nodeId.empty()) {
            throw std::runtime_error(
                fmt::format("worker {} died before the job started ({}), and no other fits: {}",
                            dead, why, where.why));
          }
          pb::JobEvent notice;
          notice.set_notice(
              fmt::format("worker {} died before the job started ({}); placing it "
                          "again on {}",
                          dead, why, where.nodeId));
          StaticContext::instance().logger().warn("containers: job {}: {}", placed->job.job_id(),
                                                  notice.notice());
          relay(*placed, notice);
          placed->retried = false;
          placed->job.set_state(pb::PLACED);
          if (where.nodeId == self()) {
            Upload upload{spec, nullptr, *placed->context, false};
            return runHere(upload, nullptr).then([this, placed](const pb::Job& job) {
              placed->job = job;
              placed->job.set_placements(2);
              placed->workerRpc.clear();
              placed_.erase(job.job_id());  // Local now: the worker answers for it.
              for (const auto& r : placed->relays) {
                attachLocally(job.job_id(), r);
              }
            });
          }
          return forward(placed, where.nodeId, all, nullptr).then([](const pb::Job&) {});
        })
        .recover([this, placed](const std::exception_ptr& error) {
          placed->job.set_state(pb::FAILED);
          placed->job.set_error(describe(error));
          endRelays(*placed);
        })
        .detach();
  }

  void attachLocally(const std::string& jobId, const std::shared_ptr<Relay>& r) {
    worker_->attach(jobId, true, r->stream)
        .whenSettled([r](const Future<void>&) { r->done->setValue(); })
        .detach();
  }

  // ---- Answering about jobs -------------------------------------------------------------------

  // Attach and Logs for a job on another worker than this node: relayed.
  Future<void> attachPlaced(const std::shared_ptr<Placed>& placed,
                            const rpc::ServerStreamPtr& stream) {
    for (const auto& line : placed->buildLog) {
      pb::JobEvent event;
      event.set_build_line(line);
      stream->write(event);
    }
    pb::JobEvent state;
    *state.mutable_state() = placed->job;
    stream->write(state);
    auto r = std::make_shared<Relay>();
    r->stream = stream;
    r->done = std::make_unique<Promise<void>>(StaticContext::instance().loop());
    Future<void> done = r->done->future();
    if (isTerminal(placed->job.state())) {
      r->done->setValue();
      return done;
    }
    placed->relays.push_back(r);
    return done;
  }

  // The workers other than this one, with their RPC addresses.
  Future<std::vector<std::pair<std::string, std::string>>> otherWorkers() {
    return members().then([this](const std::vector<Candidate>& all) {
      std::vector<std::pair<std::string, std::string>> out;
      for (const auto& c : all) {
        auto rpc = c.metadata.find(kRpcKey);
        if (c.nodeId != self() && c.alive && rpc != c.metadata.end() && !rpc->second.empty()) {
          out.emplace_back(c.nodeId, rpc->second);
        }
      }
      return out;
    });
  }

  using Where = std::pair<std::string, std::string>;  // A worker's RPC address and node id.

  // Asks every other live worker for its own jobs; `onList` gets each answer, `onSilent` each
  // worker that did not answer in time. Resolves when all have answered or not.
  Future<void> askEveryWorker(const std::function<void(const Where&, const pb::JobList&)>& onList,
                              const std::function<void(const Where&)>& onSilent) {
    return otherWorkers().then([this, onList, onSilent](const std::vector<Where>& workers) {
      std::vector<Future<void>> asks;
      for (const auto& [node, rpc] : workers) {
        pb::ListRequest ask;
        ask.set_local(true);
        rpc::CallOptions options;
        options.timeout = std::chrono::seconds(3);
        options.metadata = signedHeaders("List", node);
        const Where where{rpc, node};
        asks.push_back(
            StaticContext::instance()
                .node()
                .client()
                .call<pb::JobList>(rpc, method("List"), ask, options)
                .then([onList, where](const std::shared_ptr<const pb::JobList>& list) {
                  onList(where, *list);
                })
                .recover([onSilent, where](const std::exception_ptr&) { onSilent(where); }));
      }
      return all(std::move(asks));
    });
  }

  Future<MessagePtr> list(const rpc::CallContext& call, const pb::ListRequest& request) {
    const bool local = request.local();
    return authorize(call, "List").then([this, local] {
      auto reply = std::make_shared<pb::JobList>();
      auto known = std::make_shared<std::set<std::string>>();
      if (worker_) {
        for (auto& job : worker_->jobs()) {
          known->insert(job.job_id());
          *reply->add_jobs() = std::move(job);
        }
      }
      if (local) {
        return makeReadyFuture<MessagePtr>(reply);
      }
      return askEveryWorker(
                 [reply, known](const Where&, const pb::JobList& list) {
                   for (const auto& job : list.jobs()) {
                     if (known->insert(job.job_id()).second) {
                       *reply->add_jobs() = job;
                     }
                   }
                 },
                 [reply](const Where& silent) { reply->add_unreachable(silent.second); })
          .then([this, reply, known] {
            // Jobs placed from here that no worker knows: lost or failed on the way.
            for (const auto& [id, placed] : placed_) {
              if (known->insert(id).second) {
                *reply->add_jobs() = placed->job;
              }
            }
            return MessagePtr(reply);
          });
    });
  }

  // Where the job runs: {"", this node}, the worker this node placed it on, or whichever other
  // worker knows it (each is asked). Rejects NOT_FOUND.
  Future<Where> locate(const std::string& jobId) {
    if (worker_ && worker_->find(jobId) != nullptr) {
      return makeReadyFuture<Where>(Where{"", self()});
    }
    if (auto it = placed_.find(jobId); it != placed_.end() && !it->second->workerRpc.empty()) {
      return makeReadyFuture<Where>(Where{it->second->workerRpc, it->second->job.node()});
    }
    auto found = std::make_shared<std::optional<Where>>();
    return askEveryWorker(
               [found, jobId](const Where& where, const pb::JobList& list) {
                 for (const auto& job : list.jobs()) {
                   if (job.job_id() == jobId) {
                     *found = where;
                   }
                 }
               },
               [](const Where&) {})
        .then([this, found, jobId] {
          if (!found->has_value()) {
            throw rpc::RpcError(
                rpc::Code::NotFound,
                fmt::format("no job {} in the cluster (asked from node {})", jobId, self()));
          }
          return **found;
        });
  }

  Future<MessagePtr> jobCall(const rpc::CallContext& call, std::string_view name,
                             const pb::JobRef& request) {
    const std::string& jobId = request.job_id();
    const std::string verb(name);
    return authorize(call, name)
        .then([this, jobId] { return locate(jobId); })
        .then([this, jobId, verb](const std::pair<std::string, std::string>& where) {
          const auto& [rpc, node] = where;
          if (rpc.empty()) {
            auto done = verb == "Stop" ? worker_->stop(jobId) : worker_->remove(jobId);
            return done.then([this](pb::Job job) {
              advertise();
              return MessagePtr(std::make_shared<pb::Job>(std::move(job)));
            });
          }
          rpc::CallOptions options;
          options.timeout = std::chrono::seconds(60);
          options.metadata = signedHeaders(verb, node);
          pb::JobRef ref;
          ref.set_job_id(jobId);
          return StaticContext::instance()
              .node()
              .client()
              .call<pb::Job>(rpc, method(verb), ref, options)
              .then([this, jobId, verb](const std::shared_ptr<const pb::Job>& job) {
                if (auto it = placed_.find(jobId); verb == "Remove" && it != placed_.end()) {
                  it->second->job = *job;
                  endRelays(*it->second);  // Their clients hear it was removed.
                  placed_.erase(it);
                }
                return MessagePtr(job);
              });
        });
  }

  // Attach and Logs: this node's worker answers for its jobs; a job this node placed is
  // followed through its record (which sees it placed again); any other is relayed from its
  // worker.
  Future<void> watch(const rpc::CallContext& call, std::string_view name, const std::string& jobId,
                     bool attach, bool logs, const rpc::ServerStreamPtr& stream) {
    const std::string verb(name);
    return authorize(call, name)
        .then([this, jobId, attach] {
          if (attach) {
            if (auto it = placed_.find(jobId); it != placed_.end()) {
              return makeReadyFuture<std::pair<std::string, std::string>>(
                  std::pair<std::string, std::string>());
            }
          }
          return locate(jobId);
        })
        .then([this, jobId, attach, logs, stream,
               verb](const std::pair<std::string, std::string>& where) {
          const auto& [rpc, node] = where;
          if (node.empty()) {
            return attachPlaced(placed_.at(jobId), stream);
          }
          if (rpc.empty()) {
            return attach ? worker_->attach(jobId, logs, stream)
                          : worker_->logs(jobId, logs, stream);
          }
          rpc::CallOptions options;
          options.timeout = Duration(0);
          options.metadata = signedHeaders(verb, node);
          auto forward = [stream](const MessagePtr& message) { stream->write(*message); };
          if (attach) {
            pb::AttachRequest request;
            request.set_job_id(jobId);
            request.set_logs(logs);
            return StaticContext::instance().node().client().stream(
                rpc, method(verb), request, pb::JobEvent::default_instance(), forward, options);
          }
          pb::LogsRequest request;
          request.set_job_id(jobId);
          request.set_follow(logs);
          return StaticContext::instance().node().client().stream(
              rpc, method(verb), request, pb::JobEvent::default_instance(), forward, options);
        });
  }

  void serve(rpc::Services& services) {
    rpc_.push_back(services.addClientStream<pb::SubmitChunk, pb::SubmitReply>(
        method("Submit"), [this](const rpc::CallContext& call, const rpc::ClientStreamPtr& stream) {
          return submit(call, stream);
        }));
    rpc_.push_back(services.addStream<pb::AttachRequest, pb::JobEvent>(
        method("Attach"), [this](const rpc::CallContext& call, const pb::AttachRequest& request,
                                 const rpc::ServerStreamPtr& stream) {
          return watch(call, "Attach", request.job_id(), true, request.logs(), stream);
        }));
    rpc_.push_back(services.addStream<pb::LogsRequest, pb::JobEvent>(
        method("Logs"), [this](const rpc::CallContext& call, const pb::LogsRequest& request,
                               const rpc::ServerStreamPtr& stream) {
          return watch(call, "Logs", request.job_id(), false, request.follow(), stream);
        }));
    rpc_.push_back(services.addUnary<pb::ListRequest, pb::JobList>(
        method("List"), [this](const rpc::CallContext& call, const pb::ListRequest& request) {
          return list(call, request);
        }));
    rpc_.push_back(services.addUnary<pb::JobRef, pb::Job>(
        method("Stop"), [this](const rpc::CallContext& call, const pb::JobRef& request) {
          return jobCall(call, "Stop", request);
        }));
    rpc_.push_back(services.addUnary<pb::JobRef, pb::Job>(
        method("Remove"), [this](const rpc::CallContext& call, const pb::JobRef& request) {
          return jobCall(call, "Remove", request);
        }));
  }

  std::map<uint64_t, Settings> pending_;
  Settings settings_;
  std::unique_ptr<DockerEngine> engine_;
  std::unique_ptr<Worker> worker_;
  std::vector<rpc::Services::Registration> rpc_;
  TimerPtr advertiser_;
  std::map<std::string, std::string> advertisedMetadata_;
  // Jobs forwarded to each worker since its advertisement last changed: what its advertised
  // count cannot show yet. Read at the moment of each choice, so that jobs submitted together
  // spread instead of all following one snapshot.
  struct Recent {
    uint32_t count = 0;
    std::string advertisedJobs;  // Its containers.jobs when counting began.
  };
  std::map<std::string, Recent> placedSince_;
  std::map<std::string, std::shared_ptr<Placed>> placed_;
};

}  // namespace
}  // namespace snow::containers

using ContainersModule = snow::containers::Containers;
SNOW_MODULE(ContainersModule, "containers", "1.0.0");
