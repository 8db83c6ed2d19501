#include "snow/rpc/node.h"

#include <deque>
#include <unordered_map>

#include <fmt/format.h>
#include <google/protobuf/any.pb.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/dynamic_message.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/time_util.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include "snow/contexts/static_context.h"
#include "snow/core/config.h"
#include "snow/core/net.h"
#include "snow/core/tracer.h"
#include "snow/rpc/v1/config.pb.h"
#include "snow/rpc/v1/node.pb.h"

#include "dispatch_table.h"

namespace snow::rpc {
namespace {

using google::protobuf::util::TimeUtil;
namespace pb = snow::rpc::v1;

google::protobuf::Duration toProto(Duration d) {
  return TimeUtil::NanosecondsToDuration(
      std::chrono::duration_cast<std::chrono::nanoseconds>(d).count());
}

google::protobuf::Timestamp toProto(std::chrono::system_clock::time_point t) {
  return TimeUtil::NanosecondsToTimestamp(
      std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count());
}

TlsFiles tlsFilesOf(const pb::TlsConfig& tls) {
  return TlsFiles{tls.cert_file(), tls.key_file(), tls.ca_file(), tls.require_client_cert(),
                  tls.server_name()};
}

ClientOptions clientOptionsOf(const pb::RpcConfig& config, StaticContext& context) {
  ClientOptions options;
  const auto& backoff = config.backoff();
  options.backoff.initial = snow::config::durationOr(backoff.initial(), options.backoff.initial);
  options.backoff.max = snow::config::durationOr(backoff.max(), options.backoff.max);
  options.backoff.minConnectTimeout =
      snow::config::durationOr(backoff.min_connect_timeout(), options.backoff.minConnectTimeout);
  if (backoff.multiplier() > 0) {
    options.backoff.multiplier = backoff.multiplier();
  }
  if (backoff.jitter() > 0) {
    options.backoff.jitter = backoff.jitter();
  }
  options.health.interval =
      snow::config::durationOr(config.health().interval(), options.health.interval);
  options.health.timeout =
      snow::config::durationOr(config.health().timeout(), options.health.timeout);
  if (config.health().failures() != 0) {
    options.health.failures = config.health().failures();
  }
  options.defaultTimeout =
      snow::config::durationOr(config.default_timeout(), options.defaultTimeout);
  if (config.pool_size() != 0) {
    options.poolSize = config.pool_size();
  }
  if (config.max_message_bytes() != 0) {
    options.maxMessageBytes = static_cast<int>(config.max_message_bytes());
  }
  if (config.has_tls()) {
    options.tls = tlsFilesOf(config.tls());
  }
  options.tracer = context.tracerPtr();
  return options;
}

// The message an Any holds, as the generated type linked into this process; throws RpcError
// INVALID_ARGUMENT when the type is unknown here or the bytes do not parse.
MessagePtr unpack(const google::protobuf::Any& any) {
  if (any.type_url().empty()) {
    return nullptr;
  }
  const std::string_view url = any.type_url();
  const std::string name(url.substr(url.rfind('/') + 1));
  const auto* descriptor =
      google::protobuf::DescriptorPool::generated_pool()->FindMessageTypeByName(name);
  if (descriptor == nullptr) {
    throw RpcError(Code::InvalidArgument,
                   fmt::format("message type {} is not known on this node (no loaded module "
                               "declares it)",
                               name));
  }
  const auto* prototype =
      google::protobuf::MessageFactory::generated_factory()->GetPrototype(descriptor);
  std::shared_ptr<google::protobuf::Message> message(prototype->New());
  if (!message->ParseFromString(any.value())) {
    throw RpcError(Code::InvalidArgument, fmt::format("the {} does not parse", name));
  }
  return message;
}

std::string toJson(const Message& message) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

}  // namespace

std::vector<std::string> checkConfig(const v1::RpcConfig& config, posix::Posix& os) {
  std::vector<std::string> problems;
  if (!config.listen().empty()) {
    try {
      if (net::Address::parse(config.listen()).family() == AF_UNIX) {
        problems.push_back(
            fmt::format("rpc.listen: {} is a unix socket; use rpc.unix_socket", config.listen()));
      }
    } catch (const std::exception& e) {
      problems.push_back(fmt::format("rpc.listen: {}", e.what()));
    }
  }
  for (const auto& peer : config.peers()) {
    if (std::string why = checkPeerAddress(peer); !why.empty()) {
      problems.push_back(fmt::format("rpc.peers: '{}': {}", peer, why));
    }
  }
  if (config.has_tls()) {
    const auto& tls = config.tls();
    const std::pair<const std::string*, const char*> files[] = {{&tls.cert_file(), "cert_file"},
                                                                {&tls.key_file(), "key_file"},
                                                                {&tls.ca_file(), "ca_file"}};
    for (const auto& [path, name] : files) {
      if (path->empty()) {
        continue;
      }
      try {
        (void)readPemFile(os, *path, name);
      } catch (const std::exception& e) {
        problems.push_back(fmt::format("rpc.tls.{}: {}", name, e.what()));
      }
    }
    if (tls.cert_file().empty() != tls.key_file().empty()) {
      problems.push_back("rpc.tls: cert_file and key_file go together (one is set, not both)");
    } else if (!config.listen().empty() && tls.cert_file().empty()) {
      problems.push_back("rpc.tls: serving TLS on rpc.listen needs cert_file and key_file");
    }
    if (tls.require_client_cert() && tls.ca_file().empty()) {
      problems.push_back("rpc.tls: require_client_cert needs ca_file");
    }
  }
  return problems;
}

std::string defaultSocketPath(posix::Posix& os) {
  if (const char* chosen = os.getenv("SNOW_RPC_SOCKET").value; chosen != nullptr && *chosen) {
    return chosen;
  }
  if (os.geteuid().value == 0) {
    return "/run/snow-core/rpc.sock";
  }
  if (const char* runtime = os.getenv("XDG_RUNTIME_DIR").value; runtime != nullptr && *runtime) {
    return fmt::format("{}/snow-core/rpc.sock", runtime);
  }
  return fmt::format("/tmp/snow-core-{}/rpc.sock", os.geteuid().value);
}

class Node::Impl {
 public:
  Impl(StaticContext& context, const pb::RpcConfig& config, Hooks hooks)
      : context_(context),
        config_(config),
        hooks_(std::move(hooks)),
        client_(context.loop(), clientOptionsOf(config, context)),
        table_(context.posix(),
               config.dispatch().dedup_entries() != 0 ? config.dispatch().dedup_entries() : 100000,
               config.dispatch().journal()),
        id_(context.nodeId()),
        started_(std::chrono::system_clock::now()) {}

  void start();
  void registerService();
  Future<MessagePtr> onDispatch(const CallContext& call, const pb::DispatchRequest& request);
  Future<void> onWatch(const pb::WatchRequest& request, const ServerStreamPtr& stream);
  MessagePtr status();
  static MessagePtr replyOf(const detail::DispatchAnswer& answer, bool deduplicated);

  StaticContext& context_;
  pb::RpcConfig config_;
  Hooks hooks_;
  Services services_;
  std::unique_ptr<Server> server_;
  Client client_;
  detail::DispatchTable table_;
  std::string id_;
  std::chrono::system_clock::time_point started_;
  uint64_t deduplicated_ = 0;
  std::vector<Services::Registration> registrations_;
  EventTree::Registration upHandler_;
  EventTree::Registration downHandler_;

  // The most recently settled events, for `snowctl events` (WatchRequest.recent). Compact: the
  // record is built only when someone asks.
  struct Recent {
    EventId id;
    EventId parent;
    EventType type;
    bool failed;
    std::chrono::system_clock::time_point time;
    std::string error;
  };
  static constexpr size_t kRecent = 256;
  std::deque<Recent> recent_;
  EventTree::Observation recentObservation_;
};

void Node::Impl::start() {
  if (const size_t records = table_.open(); records != 0) {
    spdlog::info("dispatch journal {}: {} record(s), {} event id(s) remembered",
                 table_.journalPath(), records, table_.size());
  }
  registerService();
  recentObservation_ = context_.events().observe(
      [this](const Event& event, EventPhase phase, const std::exception_ptr* error) {
        if (phase == EventPhase::Raised) {
          return;
        }
        if (recent_.size() == kRecent) {
          recent_.pop_front();
        }
        recent_.push_back(
            Recent{event.id(), event.parent() ? event.parent()->id() : event.remoteParent(),
                   event.type(), phase == EventPhase::Failed, std::chrono::system_clock::now(),
                   error != nullptr ? describe(*error) : std::string()});
      });

  static const EventType kPeerUp = EventType::of("rpc.peer.up");
  static const EventType kPeerDown = EventType::of("rpc.peer.down");
  auto logHealth = [](const EventPtr& event) -> Future<MessagePtr> {
    const auto* peer = event->payloadAs<pb::PeerStatus>();
    if (peer != nullptr && peer->health() == pb::PeerStatus::DOWN) {
      spdlog::warn("peer {} is down: {}", peer->address(), peer->last_error());
    } else if (peer != nullptr) {
      spdlog::info("peer {} is up", peer->address());
    }
    return makeReadyFuture<MessagePtr>(nullptr);
  };
  upHandler_ = context_.events().on(kPeerUp, logHealth);
  downHandler_ = context_.events().on(kPeerDown, logHealth);
  client_.onHealth([this](const PeerHealth& health) {
    auto status = std::make_shared<pb::PeerStatus>();
    status->set_address(health.address);
    status->set_health(health.health == Health::Up ? pb::PeerStatus::UP : pb::PeerStatus::DOWN);
    *status->mutable_since() = toProto(health.since);
    status->set_last_error(health.lastError);
    context_.events()
        .raise(health.health == Health::Up ? kPeerUp : kPeerDown, std::move(status))
        .detach();
  });

  ServerOptions options;
  options.unixSocket = config_.unix_socket().empty()     ? defaultSocketPath(context_.posix())
                       : config_.unix_socket() == "none" ? ""
                                                         : config_.unix_socket();
  options.tcpListen = config_.listen();
  if (config_.has_tls()) {
    options.tls = tlsFilesOf(config_.tls());
  }
  if (config_.max_message_bytes() != 0) {
    options.maxMessageBytes = static_cast<int>(config_.max_message_bytes());
  }
  options.tracer = client_.options().tracer;
  server_ = std::make_unique<Server>(context_.loop(), services_, context_.posix(), options);
  server_->start();
  spdlog::info("serving RPC on {}", fmt::join(server_->endpoints(), ", "));
  if (!config_.listen().empty() && !(config_.has_tls() && config_.tls().require_client_cert())) {
    // Said at every start, since nothing else would tell: the socket works either way.
    spdlog::warn(
        "rpc.listen {}: callers on TCP are not authenticated{}; anyone who can connect may call "
        "the services that do not check their callers themselves (the spawner's among them, "
        "which starts processes): set rpc.tls with require_client_cert (docs/rpc.md)",
        config_.listen(), config_.has_tls() ? " (TLS without require_client_cert)" : "");
  }
  for (const auto& peer : config_.peers()) {
    client_.monitor(peer);
  }
}

void Node::Impl::registerService() {
  registrations_.push_back(services_.addUnary<pb::PingRequest, pb::PingReply>(
      std::string(kPing), [this](const CallContext&, const pb::PingRequest& request) {
        auto reply = std::make_shared<pb::PingReply>();
        reply->set_node_id(id_);
        reply->set_payload(request.payload());
        *reply->mutable_time() = toProto(std::chrono::system_clock::now());
        return makeReadyFuture<MessagePtr>(std::move(reply));
      }));
  registrations_.push_back(services_.addUnary<pb::GetStatusRequest, pb::NodeStatus>(
      std::string(kGetStatus), [this](const CallContext&, const pb::GetStatusRequest&) {
        return makeReadyFuture<MessagePtr>(status());
      }));
  registrations_.push_back(services_.addUnary<pb::ListModulesRequest, pb::ListModulesReply>(
      std::string(kListModules), [this](const CallContext&, const pb::ListModulesRequest&) {
        auto reply = std::make_shared<pb::ListModulesReply>();
        if (hooks_.modules) {
          for (const auto& module : hooks_.modules()) {
            auto* info = reply->add_modules();
            info->set_name(module.name);
            info->set_version(module.version);
            info->set_origin(module.origin);
          }
        }
        return makeReadyFuture<MessagePtr>(std::move(reply));
      }));
  registrations_.push_back(services_.addUnary<pb::ReloadRequest, pb::ReloadReply>(
      std::string(kReload), [this](const CallContext&, const pb::ReloadRequest&) {
        if (!hooks_.reload) {
          return makeErrorFuture<MessagePtr>(
              RpcError(Code::Unimplemented, "this node cannot reload"));
        }
        return hooks_.reload()
            .then([this]() -> MessagePtr {
              auto reply = std::make_shared<pb::ReloadReply>();
              const auto& current = context_.current();
              reply->set_generation(current ? current->generation() : 0);
              return reply;
            })
            .recover([](const std::exception_ptr& error) -> MessagePtr {
              throw RpcError(
                  Code::FailedPrecondition,
                  "reload refused, the previous configuration keeps serving: " + describe(error));
            });
      }));
  registrations_.push_back(services_.addUnary<pb::DispatchRequest, pb::DispatchReply>(
      std::string(kDispatch), [this](const CallContext& call, const pb::DispatchRequest& request) {
        return onDispatch(call, request);
      }));
  registrations_.push_back(services_.addStream<pb::WatchRequest, pb::EventRecord>(
      std::string(kWatch),
      [this](const CallContext&, const pb::WatchRequest& request, const ServerStreamPtr& stream) {
        return onWatch(request, stream);
      }));
}

MessagePtr Node::Impl::status() {
  auto reply = std::make_shared<pb::NodeStatus>();
  reply->set_node_id(id_);
  reply->set_version(SNOW_VERSION);
  reply->set_pid(context_.posix().getpid().value);
  *reply->mutable_started() = toProto(started_);
  *reply->mutable_uptime() = toProto(std::chrono::system_clock::now() - started_);
  const auto& current = context_.current();
  reply->set_generation(current ? current->generation() : 0);
  reply->set_config_source(current ? current->source() : hooks_.configSource);
  reply->set_modules(hooks_.modules ? static_cast<uint32_t>(hooks_.modules().size()) : 0);
  reply->set_live_events(context_.events().liveEvents());
  if (server_) {
    for (const auto& endpoint : server_->endpoints()) {
      reply->add_listening(endpoint);
    }
  }
  for (const auto& health : client_.health()) {
    auto* peer = reply->add_peers();
    peer->set_address(health.address);
    peer->set_health(health.health == Health::Up     ? pb::PeerStatus::UP
                     : health.health == Health::Down ? pb::PeerStatus::DOWN
                                                     : pb::PeerStatus::UNKNOWN);
    if (health.since.time_since_epoch().count() != 0) {
      *peer->mutable_since() = toProto(health.since);
    }
    peer->set_last_error(health.lastError);
    *peer->mutable_round_trip() = toProto(health.roundTrip);
  }
  reply->set_dispatch_deduplicated(deduplicated_);
  pb::TracingStatus* tracing = reply->mutable_tracing();
  tracing->set_tracer(hooks_.tracing);
  if (tracing::Tracer* own = tracing::asOwnTracer(context_.tracer())) {
    const tracing::TracerStats stats = own->stats();
    tracing->set_own(true);
    tracing->set_started(stats.started);
    tracing->set_finished(stats.finished);
    tracing->set_exported(stats.exported);
    tracing->set_dropped(stats.dropped);
    tracing->set_rejected(stats.rejected);
    tracing->set_failed_exports(stats.failedExports);
    tracing->set_queued(stats.queued);
    tracing->set_last_error(stats.lastError);
  }
  return reply;
}

MessagePtr Node::Impl::replyOf(const detail::DispatchAnswer& answer, bool deduplicated) {
  if (answer.code != Code::Ok) {
    throw RpcError(answer.code, answer.body);
  }
  auto reply = std::make_shared<pb::DispatchReply>();
  if (!reply->ParseFromString(answer.body)) {
    throw RpcError(Code::DataLoss, "the remembered answer does not parse");
  }
  reply->set_deduplicated(deduplicated);
  return reply;
}

Future<MessagePtr> Node::Impl::onDispatch(const CallContext& call,
                                          const pb::DispatchRequest& request) {
  const auto id = EventId::parse(request.event_id());
  if (!id) {
    throw RpcError(Code::InvalidArgument,
                   fmt::format("'{}' is not an event id", request.event_id()));
  }
  const detail::DispatchTable::State state = table_.state(*id);
  switch (state) {
    case detail::DispatchTable::State::Done:
      ++deduplicated_;
      return makeReadyFuture<MessagePtr>(replyOf(table_.answer(*id), true));
    case detail::DispatchTable::State::Running:
      ++deduplicated_;
      return table_.wait(*id).then(
          [](const detail::DispatchAnswer& answer) { return replyOf(answer, true); });
    case detail::DispatchTable::State::New:
    case detail::DispatchTable::State::Interrupted:
      break;
  }
  if (hooks_.ready && !hooks_.ready()) {
    // Not yet (or no longer) running its modules: the handler may not be registered. The sender
    // retries UNAVAILABLE; nothing is remembered.
    throw RpcError(Code::Unavailable, fmt::format("node {} is not running its modules", id_));
  }
  const bool redelivered = state == detail::DispatchTable::State::Interrupted;
  EventType type = [&] {
    try {
      return EventType::of(request.type());
    } catch (const std::invalid_argument& e) {
      throw RpcError(Code::InvalidArgument, e.what());
    }
  }();
  MessagePtr payload = unpack(request.payload());
  const auto parent = EventId::parse(request.parent_event_id());

  table_.begin(*id);
  Future<MessagePtr> answer = table_.wait(*id).then(
      [](const detail::DispatchAnswer& settled) { return replyOf(settled, false); });
  RemoteOrigin origin{*id, parent.value_or(EventId{}), call.traceParent(), redelivered};
  context_.events()
      .raiseRemote(origin, type, std::move(payload))
      .whenSettled([this, id = *id, type](const Future<MessagePtr>& outcome) {
        detail::DispatchAnswer settled;
        bool keep = true;  // Remembered for retries, or forgotten so that a retry runs again.
        if (outcome.hasError()) {
          try {
            std::rethrow_exception(outcome.error());
          } catch (const NoHandler&) {
            settled = {Code::NotFound,
                       fmt::format("node {} has no handler for event type '{}'", id_, type.name())};
            keep = false;  // Nothing ran; a module may register the handler later.
          } catch (const RpcError& e) {
            settled = {e.code(), e.statusMessage()};
            keep = !retryable(e.code());  // The handler asked to be tried again.
          } catch (...) {
            settled = {Code::Unknown, fmt::format("event {}({}) failed on node {}: {}", type.name(),
                                                  id.toString(), id_, describe(outcome.error()))};
          }
        } else {
          pb::DispatchReply reply;
          if (const MessagePtr& result = outcome.value()) {
            reply.mutable_result()->PackFrom(*result);
          }
          settled = {Code::Ok, reply.SerializeAsString()};
        }
        if (keep) {
          table_.complete(id, std::move(settled));
        } else {
          table_.forget(id, settled);
        }
      })
      .detach();
  return answer;
}

Future<void> Node::Impl::onWatch(const pb::WatchRequest& request, const ServerStreamPtr& stream) {
  std::vector<std::string> prefixes(request.type_prefixes().begin(), request.type_prefixes().end());
  auto wanted = [&prefixes](std::string_view type) {
    return prefixes.empty() ||
           std::any_of(prefixes.begin(), prefixes.end(),
                       [&](const std::string& p) { return type.starts_with(p); });
  };
  std::vector<const Recent*> recent;
  for (auto it = recent_.rbegin(); it != recent_.rend() && recent.size() < request.recent(); ++it) {
    if (wanted(it->type.name())) {
      recent.push_back(&*it);
    }
  }
  for (auto it = recent.rbegin(); it != recent.rend(); ++it) {
    const Recent& r = **it;
    pb::EventRecord record;
    record.set_phase(r.failed ? pb::EventRecord::FAILED : pb::EventRecord::SUCCEEDED);
    record.set_event_id(r.id.toString());
    if (r.parent.valid()) {
      record.set_parent_event_id(r.parent.toString());
    }
    record.set_type(std::string(r.type.name()));
    *record.mutable_time() = toProto(r.time);
    record.set_error(r.error);
    stream->write(record);
  }
  if (!request.follow()) {
    return makeReadyFuture();
  }
  auto raisedAt = std::make_shared<std::unordered_map<uint64_t, MonotonicTime>>();
  auto dropped = std::make_shared<uint64_t>(0);
  Dispatcher& loop = context_.loop();
  EventTree::Observation observation = context_.events().observe(
      [prefixes = std::move(prefixes), stream, raisedAt, dropped, &loop](
          const Event& event, EventPhase phase, const std::exception_ptr* error) {
        const std::string_view type = event.type().name();
        if (!prefixes.empty() &&
            std::none_of(prefixes.begin(), prefixes.end(),
                         [&](const std::string& p) { return type.starts_with(p); })) {
          return;
        }
        pb::EventRecord record;
        record.set_event_id(event.id().toString());
        if (event.parent()) {
          record.set_parent_event_id(event.parent()->id().toString());
        } else if (event.remoteParent().valid()) {
          record.set_parent_event_id(event.remoteParent().toString());
        }
        record.set_type(std::string(type));
        *record.mutable_time() = toProto(std::chrono::system_clock::now());
        // Keyed by sequence and origin mixed: ids are unique, collisions only merge durations.
        const uint64_t key = event.id().sequence ^ (event.id().origin << 1);
        if (phase == EventPhase::Raised) {
          record.set_phase(pb::EventRecord::RAISED);
          if (event.payload()) {
            record.set_payload_json(toJson(*event.payload()));
          }
          (*raisedAt)[key] = loop.now();
        } else {
          record.set_phase(phase == EventPhase::Succeeded ? pb::EventRecord::SUCCEEDED
                                                          : pb::EventRecord::FAILED);
          if (error != nullptr) {
            record.set_error(describe(*error));
          }
          if (auto it = raisedAt->find(key); it != raisedAt->end()) {
            *record.mutable_duration() = toProto(loop.now() - it->second);
            raisedAt->erase(it);
          }
        }
        record.set_dropped_before(*dropped);
        if (stream->write(record)) {
          *dropped = 0;
        } else {
          ++*dropped;
        }
      });
  pb::EventRecord live;
  live.set_phase(pb::EventRecord::LIVE);
  *live.mutable_time() = toProto(std::chrono::system_clock::now());
  stream->write(live);
  return stream->closed().finally([observation = std::move(observation)] {});
}

// ---- Node --------------------------------------------------------------------------------------

Node::Node(StaticContext& context, const v1::RpcConfig& config, Hooks hooks)
    : impl_(std::make_unique<Impl>(context, config, std::move(hooks))) {}

Node::~Node() = default;

void Node::start() {
  impl_->start();
}

Future<void> Node::stop(Duration grace) {
  impl_->registrations_.clear();
  impl_->client_.stopMonitoring();
  if (!impl_->server_) {
    return makeReadyFuture();
  }
  return impl_->server_->stop(grace);
}

Services& Node::services() noexcept {
  return impl_->services_;
}

Client& Node::client() noexcept {
  return impl_->client_;
}

const std::string& Node::id() const noexcept {
  return impl_->id_;
}

std::vector<std::string> Node::endpoints() const {
  return impl_->server_ ? impl_->server_->endpoints() : std::vector<std::string>{};
}

Future<MessagePtr> Node::dispatch(std::string_view peer, EventType type, const MessagePtr& payload,
                                  CallOptions options) {
  pb::DispatchRequest request;
  const EventId id = impl_->context_.events().mintId();
  request.set_event_id(id.toString());
  if (const Event* current = EventTree::current()) {
    request.set_parent_event_id(current->id().toString());
  }
  request.set_type(std::string(type.name()));
  if (payload) {
    request.mutable_payload()->PackFrom(*payload);
  }
  request.set_sender_node_id(impl_->id_);
  options.idempotent = true;  // The receiver deduplicates by event id.
  return impl_->client_.call<pb::DispatchReply>(peer, kDispatch, request, std::move(options))
      .then([](const std::shared_ptr<const pb::DispatchReply>& reply) {
        return unpack(reply->result());
      });
}

}  // namespace snow::rpc
