// The gossip module (docs/gossip.md): membership, failure detection and broadcast to every live
// member, over the portal's authenticated connections.
//
//   Overlay     HyParView: a small active view of neighbours kept connected (symmetric links),
//               filled through JOIN / FORWARD_JOIN random walks and NEIGHBOR requests; lost
//               neighbours are replaced from a passive view, here a sample of the member table.
//   Membership  Every member's record (incarnation, status, metadata) spread by broadcast, with
//               SWIM's suspicion: a neighbour whose connection drops and cannot be dialled again
//               is suspected; it refutes with a higher incarnation, or is declared dead after
//               suspicion_timeout. Digests compared with a neighbour (anti-entropy) heal what
//               broadcasts missed; dead members are dialled now and then (a healed partition).
//   Broadcast   flood: a new message goes to `fanout` active neighbours. tree (Plumtree): a new
//               message goes to the eager neighbours, an "I have" to the lazy ones; a duplicate
//               prunes its link to lazy; a missing payload announced by "I have" is grafted.
//
// Module API (events):
//   gossip.publish  {topic, payload}  -> Published   a message to every live member
//   gossip.members  (none)            -> Members
//   gossip.metadata {metadata}        -> Member      this node's advertised metadata
// raised here for modules that handle them: gossip.message (Message, once per message),
// gossip.member (Member, on each status change).

#include <algorithm>
#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <google/protobuf/util/time_util.h>

#include "snow/contexts/static_context.h"
#include "snow/core/config.h"
#include "snow/core/module.h"
#include "snow/gossip/v1/gossip.pb.h"
#include "snow/portal/v1/portal.pb.h"
#include "snow/rpc/node.h"
#include "snow/rpc/status.h"

#include "membership.h"
#include "seen_set.h"
#include "wire.h"

namespace snow::gossip {
namespace {

namespace pv = snow::portal::v1;
using google::protobuf::util::TimeUtil;

constexpr std::string_view kService = "/snow.gossip.v1.Gossip/";
constexpr const char* kMemberTopic = "gossip.member";
// HyParView's active random walk length: how far a FORWARD_JOIN travels before it sticks.
constexpr uint64_t kActiveWalk = 6;
constexpr int kBootstrapTries = 100;  // Waiting for the portal to start: 100 x 50 ms.
constexpr size_t kSpreadFromState = 8;

// protobuf's TimeUtil::GetCurrentTime() has whole seconds here: latencies need the real clock.
int64_t nowUnixNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

struct Settings {
  std::vector<std::string> seeds;
  std::string advertise;
  bool tree = true;
  uint32_t fanout = 0;
  uint32_t activeView = 5;
  uint32_t passiveView = 30;
  uint32_t maxPayload = 65536;
  uint32_t seenEntries = 65536;
  Duration ihaveTimeout = std::chrono::milliseconds(200);
  Duration ihaveDelay = std::chrono::milliseconds(50);
  Duration messageCache = std::chrono::seconds(30);
  Duration suspicionTimeout = std::chrono::seconds(3);
  Duration syncInterval = std::chrono::seconds(5);
  Duration rejoinInterval = std::chrono::seconds(5);
  Duration forgetAfter = std::chrono::hours(24);
  std::map<std::string, std::string> metadata;
  uint32_t receivedHistory = 4096;
  uint32_t cacheBytes = 2U << 20;
};

std::vector<std::string> decide(const v1::GossipConfig& config, Settings& s) {
  std::vector<std::string> problems;
  const std::string at = "modules.gossip";
  s.seeds.assign(config.seeds().begin(), config.seeds().end());
  for (size_t i = 0; i < s.seeds.size(); ++i) {
    if (s.seeds[i].empty() || s.seeds[i].size() > kMaxAddress ||
        s.seeds[i].find(':') == std::string::npos) {
      problems.push_back(fmt::format("{}.seeds[{}]: '{}' is not HOST:PORT", at, i, s.seeds[i]));
    }
  }
  s.advertise = config.advertise();
  s.tree = config.mode() == v1::GossipConfig::TREE;
  s.fanout = config.fanout();
  auto orDefault = [](uint32_t value, uint32_t fallback) { return value != 0 ? value : fallback; };
  s.activeView = orDefault(config.active_view(), 5);
  s.passiveView = orDefault(config.passive_view(), 30);
  s.maxPayload = orDefault(config.max_payload_bytes(), 65536);
  s.seenEntries = orDefault(config.seen_entries(), 65536);
  s.receivedHistory = orDefault(config.received_history(), 4096);
  s.cacheBytes = orDefault(config.cache_bytes(), 2U << 20);
  if (s.activeView > 64) {
    problems.push_back(fmt::format("{}.active_view: {} is over 64", at, s.activeView));
  }
  if (s.maxPayload > (16U << 20)) {
    problems.push_back(fmt::format("{}.max_payload_bytes: {} is over 16 MiB", at, s.maxPayload));
  }
  s.ihaveTimeout = config::durationOr(config.ihave_timeout(), std::chrono::milliseconds(200));
  s.ihaveDelay = config::durationOr(config.ihave_delay(), std::chrono::milliseconds(50));
  s.messageCache = config::durationOr(config.message_cache(), std::chrono::seconds(30));
  s.suspicionTimeout = config::durationOr(config.suspicion_timeout(), std::chrono::seconds(3));
  s.syncInterval = config::durationOr(config.sync_interval(), std::chrono::seconds(5));
  s.rejoinInterval = config::durationOr(config.rejoin_interval(), std::chrono::seconds(5));
  s.forgetAfter = config::durationOr(config.forget_after(), std::chrono::hours(24));
  for (const auto& [name, d] : {std::pair{"ihave_timeout", s.ihaveTimeout},
                                {"suspicion_timeout", s.suspicionTimeout},
                                {"sync_interval", s.syncInterval},
                                {"rejoin_interval", s.rejoinInterval},
                                {"forget_after", s.forgetAfter}}) {
    if (d < std::chrono::milliseconds(10)) {
      problems.push_back(fmt::format("{}.{}: at least 10ms", at, name));
    }
  }
  s.metadata.clear();
  for (const auto& [key, value] : config.metadata()) {
    if (key.empty() || key.size() > kMaxMetadataKey || value.size() > kMaxMetadataValue) {
      problems.push_back(fmt::format("{}.metadata: keys 1 to {}, values up to {} characters", at,
                                     kMaxMetadataKey, kMaxMetadataValue));
    }
    s.metadata.emplace(key, value);
  }
  if (s.metadata.size() > kMaxMetadataEntries) {
    problems.push_back(fmt::format("{}.metadata: over {} entries", at, kMaxMetadataEntries));
  }
  return problems;
}

// What `snowctl gossip stats` shows; user messages only (membership news is not counted), so
// that payload sends per delivery is sum(sent) / sum(delivered - published).
struct Counters {
  uint64_t published = 0;
  uint64_t delivered = 0;
  uint64_t received = 0;
  uint64_t duplicates = 0;
  uint64_t sent = 0;
  uint64_t ihave_sent = 0;
  uint64_t ihave_received = 0;
  uint64_t grafts_sent = 0;
  uint64_t grafts_received = 0;
  uint64_t prunes_sent = 0;
  uint64_t prunes_received = 0;
  uint64_t bytes_in = 0;
  uint64_t bytes_out = 0;
  uint64_t refused = 0;
  uint64_t syncs_sent = 0;
  uint64_t syncs_received = 0;
  uint64_t states_sent = 0;
};

// A payload kept for GRAFTs.
struct Cached {
  Value push;
  MonotonicTime at;
  size_t bytes = 0;
};

// A message announced by "I have" that has not arrived.
struct Missing {
  std::deque<std::string> announcers;
  TimerPtr timer;
};

class Gossip final : public ConfiguredModule<v1::GossipConfig> {
 public:
  using ConfiguredModule::apply;
  using ConfiguredModule::verify;

  Future<void> verify(const v1::GossipConfig& config) override {
    Settings settings;
    if (auto problems = decide(config, settings); !problems.empty()) {
      return makeErrorFuture<void>(
          std::invalid_argument(fmt::format("{}", fmt::join(problems, "\n"))));
    }
    return makeReadyFuture();
  }

  Future<void> apply(const v1::GossipConfig& config, DynamicContext& next) override {
    Settings settings;
    if (auto problems = decide(config, settings); !problems.empty()) {
      throw std::invalid_argument(fmt::format("{}", fmt::join(problems, "\n")));
    }
    pending_[next.generation()] = std::move(settings);
    return makeReadyFuture();
  }

  void activated(DynamicContext& current) override {
    auto it = pending_.find(current.generation());
    if (it == pending_.end()) {
      return;
    }
    const bool metadataChanged = started_ && it->second.metadata != settings_.metadata;
    settings_ = std::move(it->second);
    pending_.clear();
    seen_.setCapacity(settings_.seenEntries);
    if (metadataChanged && table_) {
      table_->setSelfMetadata(settings_.metadata);
      spreadMembers({&table_->self()});
    }
  }

  Future<void> start() override {
    auto& context = StaticContext::instance();
    if (!context.identity()) {
      return makeErrorFuture<void>(std::logic_error("gossip needs the node's identity"));
    }
    started_ = true;
    since_ = TimeUtil::NanosecondsToTimestamp(nowUnixNanos());
    auto& events = context.events();
    auto on = [&](const char* type,
                  void (Gossip::*handler)(const EventPtr&, const pv::Envelope&, const Struct&)) {
      handlers_.push_back(events.on(EventType::of(type), [this, handler, type](const EventPtr& e) {
        const auto* envelope = e->payloadAs<pv::Envelope>();
        if (envelope == nullptr || !table_) {
          return makeReadyFuture<MessagePtr>(nullptr);
        }
        try {
          (this->*handler)(e, *envelope, objectOf(envelope->payload()));
        } catch (const Malformed& bad) {
          refuse(envelope->sender(), type, bad.what());
        }
        return makeReadyFuture<MessagePtr>(nullptr);
      }));
    };
    on("gossip.join", &Gossip::onJoin);
    on("gossip.welcome", &Gossip::onWelcome);
    on("gossip.forward_join", &Gossip::onForwardJoin);
    on("gossip.neighbor", &Gossip::onNeighbor);
    on("gossip.neighbor_reply", &Gossip::onNeighborReply);
    on("gossip.leave_view", &Gossip::onLeaveView);
    on("gossip.push", &Gossip::onPush);
    on("gossip.ihave", &Gossip::onIHave);
    on("gossip.graft", &Gossip::onGraft);
    on("gossip.prune", &Gossip::onPrune);
    on("gossip.sync", &Gossip::onSync);
    on("gossip.state", &Gossip::onState);
    handlers_.push_back(
        events.on(EventType::of("portal.disconnected"), [this](const EventPtr& event) {
          if (const auto* change = event->payloadAs<pv::LinkChange>(); change && table_) {
            onLinkLost(change->node_id());
          }
          return makeReadyFuture<MessagePtr>(nullptr);
        }));
    handlers_.push_back(events.on(EventType::of("gossip.publish"), [this](const EventPtr& event) {
      const auto* request = event->payloadAs<v1::Publish>();
      if (request == nullptr) {
        throw std::invalid_argument("gossip.publish needs a snow.gossip.v1.Publish payload");
      }
      return makeReadyFuture<MessagePtr>(publish(request->topic(), request->payload(), &event));
    }));
    handlers_.push_back(events.on(EventType::of("gossip.members"), [this](const EventPtr&) {
      return makeReadyFuture<MessagePtr>(members());
    }));
    handlers_.push_back(events.on(EventType::of("gossip.metadata"), [this](const EventPtr& event) {
      const auto* request = event->payloadAs<v1::SetMetadata>();
      if (request == nullptr || !table_) {
        throw std::invalid_argument(
            "gossip.metadata needs a snow.gossip.v1.SetMetadata payload and a started module");
      }
      auto metadata = table_->self().metadata;
      for (const auto& [key, value] : request->metadata()) {
        if (value.empty()) {
          metadata.erase(key);
        } else {
          metadata[key] = value;
        }
      }
      table_->setSelfMetadata(std::move(metadata));
      spreadMembers({&table_->self()});
      auto out = std::make_shared<v1::Member>();
      fillMember(*out, table_->self());
      return makeReadyFuture<MessagePtr>(std::move(out));
    }));
    if (context.hasNode()) {
      auto& services = context.node().services();
      rpc_.push_back(services.addUnary<v1::MembersRequest, v1::Members>(
          std::string(kService) + "ListMembers",
          [this](const rpc::CallContext&, const v1::MembersRequest&) {
            return makeReadyFuture<MessagePtr>(members());
          }));
      // Through the event, so that a publish is the root of one trace across the relays.
      rpc_.push_back(services.addUnary<v1::PublishRequest, v1::Published>(
          std::string(kService) + "Publish",
          [](const rpc::CallContext&, const v1::PublishRequest& request) {
            auto publish = std::make_shared<v1::Publish>();
            publish->set_topic(request.topic());
            publish->set_payload(request.payload());
            return StaticContext::instance()
                .events()
                .raise(EventType::of("gossip.publish"), std::move(publish))
                .recover([](const std::exception_ptr& error) -> MessagePtr {
                  try {
                    std::rethrow_exception(error);
                  } catch (const std::invalid_argument& e) {
                    throw rpc::RpcError(rpc::Code::InvalidArgument, e.what());
                  } catch (const std::logic_error& e) {
                    throw rpc::RpcError(rpc::Code::FailedPrecondition, e.what());
                  }
                });
          }));
      rpc_.push_back(services.addUnary<v1::StatsRequest, v1::Stats>(
          std::string(kService) + "GetStats",
          [this](const rpc::CallContext&, const v1::StatsRequest&) {
            return makeReadyFuture<MessagePtr>(stats());
          }));
      rpc_.push_back(services.addUnary<v1::ReceivedRequest, v1::Received>(
          std::string(kService) + "ListReceived",
          [this](const rpc::CallContext&, const v1::ReceivedRequest& request) {
            return makeReadyFuture<MessagePtr>(received(request.topic()));
          }));
    }
    bootstrap(0);
    return makeReadyFuture();
  }

  // Leaving: this node's record says "left" and goes to every active neighbour, who flood it on,
  // while the portal still runs (it stops after every module drained). The cluster then lists the
  // node as left at once, instead of suspecting it for suspicion_timeout and declaring it dead.
  Future<void> drain() override {
    if (!table_) {
      return makeReadyFuture();
    }
    started_ = false;  // No more joins, view repairs or probes.
    timers_.clear();
    table_->leave();
    StaticContext::instance().logger().info("gossip: leaving the cluster: telling {} neighbour{}",
                                            active_.size(), active_.size() == 1 ? "" : "s");
    return sendAll({active_.begin(), active_.end()}, "gossip.push", memberNews({&table_->self()}));
  }

  Future<void> stop() override {
    started_ = false;
    rpc_.clear();
    handlers_.clear();
    timers_.clear();
    suspicions_.clear();
    missing_.clear();
    ihaveFlush_.reset();
    return makeReadyFuture();
  }

 private:
  // ---- Start ------------------------------------------------------------------------------------

  // Learns this node's portal address (modules start in name order: gossip before portal), then
  // joins.
  void bootstrap(int attempt) {
    auto& context = StaticContext::instance();
    context.events()
        .raise(EventType::of("portal.peers"))
        .then([this](const MessagePtr& reply) {
          const auto* peers = dynamic_cast<const pv::Peers*>(reply.get());
          if (peers == nullptr || !started_) {
            return;
          }
          begin(*peers);
        })
        .recover([this, attempt](const std::exception_ptr& error) {
          if (!started_) {
            return;
          }
          if (attempt < kBootstrapTries) {
            later(std::chrono::milliseconds(50), [this, attempt] { bootstrap(attempt + 1); });
            return;
          }
          StaticContext::instance().logger().error(
              "gossip: the portal module does not answer ({}); gossip needs it loaded",
              describe(error));
        })
        .detach();
  }

  void begin(const pv::Peers& peers) {
    auto& context = StaticContext::instance();
    std::string advertise = settings_.advertise.empty() ? peers.listen() : settings_.advertise;
    if (advertise.empty() && settings_.seeds.empty()) {
      context.logger().info(
          "gossip: a cluster of one (no modules.portal.listen, no modules.gossip.seeds); "
          "docs/gossip.md says how to form a cluster");
    } else if (advertise.empty()) {
      context.logger().warn(
          "gossip: the portal listens nowhere and modules.gossip.advertise is empty: members "
          "cannot dial this node (it can still join through seeds)");
    }
    // A payload in base64 with its message around it must fit in one portal message.
    const size_t needed = settings_.maxPayload / 3 * 4 + 4096;
    if (peers.max_message_bytes() != 0 && peers.max_message_bytes() < needed) {
      context.logger().error(
          "gossip: modules.portal.max_message_bytes ({}) cannot carry a payload of "
          "modules.gossip.max_payload_bytes ({}): it needs at least {}; payloads over {} bytes "
          "will not reach the other members",
          peers.max_message_bytes(), settings_.maxPayload, needed,
          (peers.max_message_bytes() - 4096) / 4 * 3);
    }
    MemberRecord self;
    self.id = context.nodeId();
    self.address = advertise;
    // Start time in milliseconds: a restarted node's records beat its old ones everywhere.
    self.incarnation = static_cast<uint64_t>(nowUnixNanos() / 1'000'000);
    self.metadata = settings_.metadata;
    self.sinceUnixNanos = nowUnixNanos();
    table_ = std::make_unique<MemberTable>(std::move(self));
    context.logger().info("gossip: node {} at {} ({} mode, active view {}, {} seed(s))",
                          context.nodeId(), advertise.empty() ? "(no address)" : advertise,
                          settings_.tree ? "tree" : "flood", settings_.activeView,
                          settings_.seeds.size());
    ihaveFlush_ = context.loop().createTimer([this] { flushIHave(); });
    every(settings_.syncInterval, [this] { maintain(); });
    every(settings_.rejoinInterval, [this] { rejoin(); });
    every(std::min<Duration>(settings_.forgetAfter, std::chrono::minutes(1)), [this] { forget(); });
    every(std::chrono::seconds(1), [this] { logSummary(); });
    join(0);
  }

  // Tries the seeds in turn until one welcomes us.
  void join(size_t index) {
    if (!started_) {
      return;
    }
    while (index < settings_.seeds.size() && settings_.seeds[index] == table_->self().address) {
      ++index;
    }
    if (index >= settings_.seeds.size()) {
      return;  // Alone for now: rejoin() tries again.
    }
    const std::string seed = settings_.seeds[index];
    dial(seed, {})
        .then([this, seed](const MessagePtr& reply) {
          const auto* dialed = dynamic_cast<const pv::Dialed*>(reply.get());
          if (dialed == nullptr || dialed->node_id() == table_->self().id) {
            return;
          }
          Value payload;
          (*payload.mutable_struct_value()->mutable_fields())["member"] =
              memberValue(table_->self());
          tell(dialed->node_id(), "gossip.join", std::move(payload));
        })
        .recover([this, index, seed](const std::exception_ptr& error) {
          noteSeedFailure(seed, describe(error));
          join(index + 1);
        })
        .detach();
  }

  // A seed that cannot be reached is worth a warning, but not one per rejoin round: the first,
  // then at most one a minute.
  void noteSeedFailure(const std::string& seed, const std::string& why) {
    auto& context = StaticContext::instance();
    const MonotonicTime now = context.loop().now();
    if (seedWarned_ != MonotonicTime{} && now - seedWarned_ < std::chrono::minutes(1)) {
      context.logger().debug("gossip: seed {}: {}", seed, why);
      return;
    }
    seedWarned_ = now;
    context.logger().warn(
        "gossip: cannot join through seed {}: {} (trying again every {} ms)", seed, why,
        std::chrono::duration_cast<std::chrono::milliseconds>(settings_.rejoinInterval).count());
  }

  // ---- Overlay (HyParView) ----------------------------------------------------------------------

  void onJoin(const EventPtr&, const pv::Envelope& in, const Struct& body) {
    MemberRecord joiner = memberOf(fieldOf(body, "member"));
    requireSender(in, joiner.id);
    learn({joiner});
    addActive(joiner.id, true);
    Value welcome;
    (*welcome.mutable_struct_value()->mutable_fields())["members"] = tableValue();
    tell(joiner.id, "gossip.welcome", std::move(welcome));
    Value forward;
    auto& fields = *forward.mutable_struct_value()->mutable_fields();
    fields["member"] = memberValue(joiner);
    fields["ttl"] = numberValue(static_cast<double>(kActiveWalk));
    std::vector<std::string> others;
    for (const auto& id : active_) {
      if (id != joiner.id) {
        others.push_back(id);
      }
    }
    sendAll(others, "gossip.forward_join", std::move(forward)).detach();
  }

  void onWelcome(const EventPtr&, const pv::Envelope& in, const Struct& body) {
    learn(membersOf(body, "members"));
    addActive(in.sender(), true);
    if (!joined_) {
      joined_ = true;
      StaticContext::instance().logger().info("gossip: joined through node {} ({} members)",
                                              in.sender(), table_->all().size());
    }
    spreadMembers({&table_->self()});
  }

  void onForwardJoin(const EventPtr&, const pv::Envelope& in, const Struct& body) {
    MemberRecord joiner = memberOf(fieldOf(body, "member"));
    const uint64_t ttl = integerField(body, "ttl");
    if (joiner.id == table_->self().id) {
      return;
    }
    learn({joiner});
    if (ttl == 0 || active_.size() <= 1) {
      connectNeighbor(joiner.id, true);
      return;
    }
    std::vector<std::string> candidates;
    for (const auto& id : active_) {
      if (id != in.sender() && id != joiner.id) {
        candidates.push_back(id);
      }
    }
    if (candidates.empty()) {
      connectNeighbor(joiner.id, true);
      return;
    }
    Value forward;
    auto& fields = *forward.mutable_struct_value()->mutable_fields();
    fields["member"] = memberValue(joiner);
    fields["ttl"] = numberValue(static_cast<double>(ttl - 1));
    tell(pick(candidates), "gossip.forward_join", std::move(forward));
  }

  void onNeighbor(const EventPtr&, const pv::Envelope& in, const Struct& body) {
    MemberRecord asker = memberOf(fieldOf(body, "member"));
    requireSender(in, asker.id);
    const bool high = boolField(body, "high");
    learn({asker});
    const bool accepted =
        active_.contains(asker.id) || high || active_.size() < settings_.activeView;
    if (accepted) {
      addActive(asker.id, true);
    }
    Value reply;
    (*reply.mutable_struct_value()->mutable_fields())["accepted"] = boolValue(accepted);
    tell(asker.id, "gossip.neighbor_reply", std::move(reply));
  }

  void onNeighborReply(const EventPtr&, const pv::Envelope& in, const Struct& body) {
    asked_.erase(in.sender());
    if (boolField(body, "accepted")) {
      addActive(in.sender(), true);
      fillPause_ = 0;
    } else if (!active_.contains(in.sender())) {
      // Full neighbours: in a small or saturated cluster every try would be refused, and each
      // costs a connection; try less often (up to every 16th maintenance round).
      fillBackoff_ = std::min(fillBackoff_ == 0 ? 1 : fillBackoff_ * 2, 16);
      fillPause_ = fillBackoff_;
      disconnect(in.sender(), "gossip: it has no room in its active view");
    }
  }

  void onLeaveView(const EventPtr&, const pv::Envelope& in, const Struct&) {
    removeActive(in.sender());
  }

  // Asks `id` to become a neighbour (dialling it first).
  void connectNeighbor(const std::string& id, bool high) {
    const MemberRecord* record = table_->find(id);
    if (record == nullptr || active_.contains(id) || asked_.contains(id) ||
        id == table_->self().id || record->address.empty()) {
      return;
    }
    asked_.insert(id);
    dial(record->address, id)
        .then([this, id, high](const MessagePtr&) {
          Value ask;
          auto& fields = *ask.mutable_struct_value()->mutable_fields();
          fields["member"] = memberValue(table_->self());
          fields["high"] = boolValue(high || active_.empty());
          tell(id, "gossip.neighbor", std::move(ask));
        })
        .recover([this, id](const std::exception_ptr& error) {
          asked_.erase(id);
          StaticContext::instance().logger().debug("gossip: cannot reach node {}: {}", id,
                                                   describe(error));
          probeFailed(id);
        })
        .detach();
  }

  // Adds `id` to the active view; when it is full, `force` makes room by dropping a random
  // neighbour (told with leave_view, then disconnected).
  bool addActive(const std::string& id, bool force) {
    if (id == table_->self().id || active_.contains(id)) {
      return true;
    }
    if (active_.size() >= settings_.activeView) {
      if (!force) {
        return false;
      }
      std::vector<std::string> others(active_.begin(), active_.end());
      const std::string dropped = pick(others);
      removeActive(dropped);
      tell(dropped, "gossip.leave_view", emptyObject());
      disconnect(dropped, "gossip: dropped from the active view to make room");
    }
    active_.insert(id);
    eager_.insert(id);
    lazy_.erase(id);
    asked_.erase(id);
    changed_ = true;
    return true;
  }

  void removeActive(const std::string& id) {
    if (active_.erase(id) > 0) {
      changed_ = true;
    }
    eager_.erase(id);
    lazy_.erase(id);
  }

  // The portal lost every connection to `id`.
  void onLinkLost(const std::string& id) {
    asked_.erase(id);
    if (!active_.contains(id)) {
      return;
    }
    removeActive(id);
    fillPause_ = 0;
    fillBackoff_ = 0;
    probe(id);
    fillView();
  }

  // Dials a member whose connection dropped: reached, it lives (and may be a neighbour again);
  // not, it is suspected.
  void probe(const std::string& id) {
    const MemberRecord* record = table_->find(id);
    if (record == nullptr || !isLive(record->status) || probing_.contains(id)) {
      return;
    }
    probing_.insert(id);
    dial(record->address, id)
        .then([this, id](const MessagePtr&) {
          probing_.erase(id);
          if (active_.size() < settings_.activeView) {
            connectNeighbor(id, active_.empty());
          }
        })
        .recover([this, id](const std::exception_ptr& error) {
          probing_.erase(id);
          StaticContext::instance().logger().debug("gossip: probe of node {} failed: {}", id,
                                                   describe(error));
          probeFailed(id);
        })
        .detach();
  }

  void probeFailed(const std::string& id) {
    const MemberRecord* record = table_->find(id);
    if (record == nullptr || record->status != v1::Member::ALIVE) {
      return;
    }
    const auto previous = record->status;
    if (table_->mark(id, v1::Member::SUSPECT, nowUnixNanos())) {
      memberChanged(*table_->find(id), previous);
      spreadMembers({table_->find(id)});
    }
  }

  void fillView() {
    if (!started_ || active_.size() >= settings_.activeView) {
      return;
    }
    refreshPassive();
    std::vector<std::string> candidates;
    for (const auto& id : passive_) {
      if (!asked_.contains(id)) {
        candidates.push_back(id);
      }
    }
    if (!candidates.empty()) {
      connectNeighbor(pick(candidates), active_.empty());
    }
  }

  // The passive view: a random sample of live members outside the active view.
  void refreshPassive() {
    std::vector<std::string> live;
    for (const auto& [id, record] : table_->all()) {
      if (record.status == v1::Member::ALIVE && id != table_->self().id && !active_.contains(id)) {
        live.push_back(id);
      }
    }
    std::shuffle(live.begin(), live.end(), rng_);
    if (live.size() > settings_.passiveView) {
      live.resize(settings_.passiveView);
    }
    passive_ = std::move(live);
  }

  // Every sync_interval: anti-entropy with a random neighbour, the view topped up, old cached
  // payloads dropped.
  void maintain() {
    if (fillPause_ > 0) {
      --fillPause_;
    } else {
      fillView();
    }
    // Anti-entropy repairs what broadcasts missed; while news still arrives (a cluster forming),
    // tables differ anyway and exchanging them would only double the work.
    const bool quiet = StaticContext::instance().loop().now() - lastNews_ >= settings_.syncInterval;
    if (!active_.empty() && quiet) {
      std::vector<std::string> neighbours(active_.begin(), active_.end());
      sendSync(pick(neighbours));
    }
    const MonotonicTime now = StaticContext::instance().loop().now();
    while (!cacheOrder_.empty()) {
      auto it = cache_.find(cacheOrder_.front());
      if (it != cache_.end() && now - it->second.at < settings_.messageCache) {
        break;
      }
      dropOldestCached();
    }
  }

  void forget() {
    const auto forgotten =
        table_->forget(nowUnixNanos() - std::chrono::nanoseconds(settings_.forgetAfter).count());
    if (forgotten > 0) {
      changed_ = true;
      StaticContext::instance().logger().info(
          "gossip: forgot {} member{} dead or left for over {:g} s (forget_after)", forgotten,
          forgotten == 1 ? "" : "s", std::chrono::duration<double>(settings_.forgetAfter).count());
    }
  }

  // Every rejoin_interval: alone, the seeds again; otherwise one dead member is dialled, so that
  // the two sides of a healed partition find each other.
  void rejoin() {
    const bool alone = std::none_of(table_->all().begin(), table_->all().end(), [&](const auto& m) {
      return m.first != table_->self().id && isLive(m.second.status);
    });
    if (alone || active_.empty()) {
      join(0);
    }
    std::vector<std::string> dead;
    for (const auto& [id, record] : table_->all()) {
      if (record.status == v1::Member::DEAD && !record.address.empty()) {
        dead.push_back(id);
      }
    }
    if (dead.empty()) {
      return;
    }
    const std::string id = pick(dead);
    dial(table_->find(id)->address, id)
        .then([this, id](const MessagePtr&) {
          // It lives: tables are compared (it learns it was declared dead and refutes) and it
          // becomes a neighbour, a bridge for the news.
          sendSync(id);
          connectNeighbor(id, true);
        })
        .recover([](const std::exception_ptr&) {})
        .detach();
  }

  // ---- Membership -------------------------------------------------------------------------------

  // Merges records heard from others; what changed here is spread further by the caller when
  // it did not arrive by broadcast.
  std::vector<const MemberRecord*> learn(const std::vector<MemberRecord>& records) {
    std::vector<const MemberRecord*> changed;
    const int64_t now = nowUnixNanos();
    for (const auto& record : records) {
      std::optional<Status> previous;
      switch (table_->merge(record, now, &previous)) {
        case MemberTable::Outcome::Unchanged:
          break;
        case MemberTable::Outcome::AboutSelf:
          table_->refute(record.incarnation);
          StaticContext::instance().logger().info(
              "gossip: refuting a rumour that this node is {} (incarnation now {})",
              statusName(record.status), table_->self().incarnation);
          spreadMembers({&table_->self()});
          break;
        case MemberTable::Outcome::Added:
        case MemberTable::Outcome::Updated: {
          lastNews_ = StaticContext::instance().loop().now();
          const MemberRecord* current = table_->find(record.id);
          changed.push_back(current);
          if (!previous || *previous != current->status) {
            memberChanged(*current, previous.value_or(v1::Member::LEFT));
          }
          break;
        }
      }
    }
    return changed;
  }

  void memberChanged(const MemberRecord& record, Status previous) {
    auto& context = StaticContext::instance();
    changed_ = true;
    if (record.status == v1::Member::SUSPECT) {
      startSuspicion(record.id, record.incarnation);
    } else {
      suspicions_.erase(record.id);
    }
    if (record.status == v1::Member::DEAD || record.status == v1::Member::LEFT ||
        (record.status == v1::Member::ALIVE &&
         (previous == v1::Member::DEAD || previous == v1::Member::SUSPECT))) {
      context.logger().info("gossip: member {} at {} is {} (incarnation {})", record.id,
                            record.address, statusName(record.status), record.incarnation);
    }
    if (!isLive(record.status)) {
      removeActive(record.id);
    }
    auto& events = context.events();
    if (auto type = EventType::find("gossip.member"); type && events.handles(*type)) {
      auto member = std::make_shared<v1::Member>();
      fillMember(*member, record);
      events.raise(*type, std::move(member)).detach();
    }
  }

  // A suspect that does not refute within suspicion_timeout is dead.
  void startSuspicion(const std::string& id, uint64_t incarnation) {
    if (suspicions_.contains(id)) {
      return;
    }
    auto timer = StaticContext::instance().loop().createTimer(
        [this, id, incarnation] { suspicionExpired(std::string(id), incarnation); });
    timer->enable(settings_.suspicionTimeout);
    suspicions_[id] = std::move(timer);
  }

  // `suspect` is a copy: the timer whose callback calls this is destroyed on the way.
  // NOLINTNEXTLINE(performance-unnecessary-value-param): the caller's string dies in here.
  void suspicionExpired(std::string suspect, uint64_t incarnation) {
    if (auto node = suspicions_.extract(suspect)) {
      retire(std::move(node.mapped()));
    }
    const MemberRecord* record = table_->find(suspect);
    if (record == nullptr || record->status != v1::Member::SUSPECT ||
        record->incarnation != incarnation) {
      return;
    }
    table_->mark(suspect, v1::Member::DEAD, nowUnixNanos());
    memberChanged(*table_->find(suspect), v1::Member::SUSPECT);
    spreadMembers({table_->find(suspect)});
  }

  void onSync(const EventPtr&, const pv::Envelope& in, const Struct& body) {
    const std::string digest = stringField(body, "digest", 16);
    ++stats_.syncs_received;
    if (digest != digestText()) {
      sendState(in.sender(), true);
    }
  }

  void onState(const EventPtr&, const pv::Envelope& in, const Struct& body) {
    // A few records that were news here are news elsewhere too: spread them. Many (a node that
    // was away, a healed partition) are not broadcast: at 1,000 nodes one such broadcast costs
    // every node a table, and pairwise anti-entropy carries them on within a few rounds.
    auto changed = learn(membersOf(body, "members"));
    if (!changed.empty() && changed.size() <= kSpreadFromState) {
      spreadMembers(changed);
    }
    if (boolField(body, "ask")) {
      sendState(in.sender(), false);
    }
  }

  [[nodiscard]] std::string digestText() const { return fmt::format("{:016x}", table_->digest()); }

  // Anti-entropy: our digest; `to` answers with its table when the two differ.
  void sendSync(const std::string& to) {
    Value sync;
    (*sync.mutable_struct_value()->mutable_fields())["digest"] = stringValue(digestText());
    ++stats_.syncs_sent;
    tell(to, "gossip.sync", std::move(sync));
  }

  // Every record of the member table, for a welcome or a state.
  [[nodiscard]] Value tableValue() const {
    std::vector<const MemberRecord*> all;
    all.reserve(table_->all().size());
    for (const auto& [id, record] : table_->all()) {
      all.push_back(&record);
    }
    return membersValue(all);
  }

  void sendState(const std::string& to, bool ask) {
    Value state;
    auto& fields = *state.mutable_struct_value()->mutable_fields();
    fields["members"] = tableValue();
    fields["ask"] = boolValue(ask);
    ++stats_.states_sent;
    tell(to, "gossip.state", std::move(state));
  }

  // Broadcasts member records (internal topic gossip.member).
  void spreadMembers(const std::vector<const MemberRecord*>& records) {
    if (records.empty()) {
      return;
    }
    const Value push = memberNews(records);
    forward(push, push.struct_value().fields().at("id").string_value(), {}, nullptr, 0);
  }

  // A broadcast of member records (flooded in both modes), already marked seen here.
  Value memberNews(const std::vector<const MemberRecord*>& records) {
    Value push = newPush(kMemberTopic);
    (*push.mutable_struct_value()->mutable_fields())["members"] = membersValue(records);
    seen_.insert(push.struct_value().fields().at("id").string_value());
    return push;
  }

  // ---- Broadcast --------------------------------------------------------------------------------

  Value newPush(const std::string& topic) {
    Value push;
    auto& fields = *push.mutable_struct_value()->mutable_fields();
    fields["id"] = stringValue(fmt::format("{}-{:x}", table_->self().id, ++sequence_));
    fields["origin"] = stringValue(table_->self().id);
    fields["topic"] = stringValue(topic);
    fields["ts"] = stringValue(std::to_string(nowUnixNanos()));
    fields["hops"] = numberValue(0);
    return push;
  }

  std::shared_ptr<v1::Published> publish(const std::string& topic, const std::string& payload,
                                         const EventPtr* parent) {
    if (!table_) {
      throw std::logic_error("gossip has not started yet (waiting for the portal)");
    }
    if (!isTopic(topic) || topic.starts_with("gossip.")) {
      throw std::invalid_argument(fmt::format(
          "'{}' is not a topic: 1 to {} characters of A-Z a-z 0-9 . _ / -, not starting "
          "with 'gossip.'",
          topic, kMaxTopicLength));
    }
    if (payload.size() > settings_.maxPayload) {
      throw std::invalid_argument(
          fmt::format("the payload has {} bytes, over modules.gossip.max_payload_bytes ({})",
                      payload.size(), settings_.maxPayload));
    }
    Value push = newPush(topic);
    auto& fields = *push.mutable_struct_value()->mutable_fields();
    fields["data"] = stringValue(toBase64(payload));
    fields["n"] = numberValue(static_cast<double>(payload.size()));
    const std::string id = fields.at("id").string_value();
    const int64_t ts = std::stoll(fields.at("ts").string_value());
    seen_.insert(id);
    ++stats_.published;
    deliver(id, table_->self().id, topic, payload.size(), &payload, ts, 0,
            parent != nullptr ? *parent : nullptr);
    if (settings_.tree) {
      cache(id, push, payload.size());
    }
    forward(push, id, {}, parent != nullptr ? *parent : nullptr, payload.size());
    auto out = std::make_shared<v1::Published>();
    out->set_id(id);
    *out->mutable_published() = TimeUtil::NanosecondsToTimestamp(ts);
    return out;
  }

  void onPush(const EventPtr& event, const pv::Envelope& in, const Struct& body) {
    const std::string id = stringField(body, "id", kMaxIdLength);
    const std::string origin = stringField(body, "origin", 32);
    const std::string topic = stringField(body, "topic", kMaxTopicLength);
    const uint64_t ts = integerField(body, "ts");
    const uint64_t hops = integerField(body, "hops");
    const bool internal = topic == kMemberTopic;
    if (!isTopic(topic) || (!internal && topic.starts_with("gossip."))) {
      throw Malformed(fmt::format("'{}' is not a topic", topic));
    }
    size_t bytes = 0;
    if (!internal) {
      bytes = integerField(body, "n");
      if (bytes > settings_.maxPayload) {
        throw Malformed(fmt::format("a payload of {} bytes, over the limit of {}", bytes,
                                    settings_.maxPayload));
      }
      const Value& data = fieldOf(body, "data");
      if (data.kind_case() != Value::kStringValue ||
          data.string_value().size() != (bytes + 2) / 3 * 4) {
        throw Malformed(fmt::format("'data' is not the base64 of 'n' ({}) bytes", bytes));
      }
      ++stats_.received;
      stats_.bytes_in += bytes;
    }
    const std::string& from = in.sender();
    if (!seen_.insert(id)) {
      if (internal) {
        return;  // Membership news is flooded on purpose: its duplicates prune nothing.
      }
      ++stats_.duplicates;
      hasIt(from, id);
      if (settings_.tree && eager_.erase(from) > 0) {
        lazy_.insert(from);
        ++stats_.prunes_sent;
        tell(from, "gossip.prune", emptyObject());
      }
      return;
    }
    // Those that announced it have it: no "I have" goes back to them.
    std::vector<std::string> announcers;
    if (auto it = missing_.find(id); it != missing_.end()) {
      announcers.assign(it->second.announcers.begin(), it->second.announcers.end());
      missing_.erase(it);
    }
    if (settings_.tree && !internal && active_.contains(from)) {
      eager_.insert(from);
      lazy_.erase(from);
    }
    if (internal) {
      // Forwarded only when it told this node something: every node that marks a suspect dead
      // when its own suspicion runs out says so once, and before this, each of those N floods
      // went to every node (N^2 messages a death; a cluster losing nodes one after another at
      // 512 nodes grew every survivor by 20 MB a minute in queued news).
      if (learn(membersOf(body, "members")).empty()) {
        return;
      }
    } else {
      std::optional<std::string> payload;
      if (wantsMessages()) {
        payload = fromBase64(fieldOf(body, "data").string_value());
        if (!payload) {
          throw Malformed("'data' is not base64");
        }
      }
      deliver(id, origin, topic, bytes, payload ? &*payload : nullptr, static_cast<int64_t>(ts),
              static_cast<uint32_t>(hops + 1), event);
    }
    Value next = in.payload();
    (*next.mutable_struct_value()->mutable_fields())["hops"] =
        numberValue(static_cast<double>(hops + 1));
    if (settings_.tree && !internal) {
      cache(id, next, bytes);
    }
    forward(next, id, from, event, bytes, announcers);
  }

  // Sends a new message on: flood to `fanout` neighbours, tree to the eager ones (and "I have"
  // to the lazy ones).
  void forward(const Value& push, const std::string& id, const std::string& from,
               const EventPtr& parent, size_t bytes,
               const std::vector<std::string>& informed = {}) {
    const bool internal = push.struct_value().fields().at("topic").string_value() == kMemberTopic;
    std::vector<std::string> targets;
    std::vector<std::string> announce;
    // Membership news is small and rare, and must survive a broken tree: flooded in both modes.
    if (settings_.tree && !internal) {
      for (const auto& peer : eager_) {
        if (peer != from) {
          targets.push_back(peer);
        }
      }
      for (const auto& peer : lazy_) {
        if (peer != from && std::find(informed.begin(), informed.end(), peer) == informed.end()) {
          announce.push_back(peer);
        }
      }
    } else {
      for (const auto& peer : active_) {
        if (peer != from) {
          targets.push_back(peer);
        }
      }
      if (!internal && settings_.fanout != 0 && targets.size() > settings_.fanout) {
        std::shuffle(targets.begin(), targets.end(), rng_);
        targets.resize(settings_.fanout);
      }
    }
    if (!internal) {
      stats_.sent += targets.size();
      stats_.bytes_out += bytes * targets.size();
    }
    sendAll(targets, "gossip.push", push, parent).detach();
    for (const auto& peer : announce) {
      pendingIHave_[peer].push_back(id);
    }
    if (!announce.empty() && !ihaveFlush_->enabled()) {
      ihaveFlush_->enable(settings_.ihaveDelay);
    }
  }

  // `peer` showed it has `id` (sent it, or announced it): it needs no announcement of it.
  void hasIt(const std::string& peer, const std::string& id) {
    if (auto it = pendingIHave_.find(peer); it != pendingIHave_.end()) {
      std::erase(it->second, id);
    }
  }

  // The announcements of the last ihave_delay, one message per neighbour.
  void flushIHave() {
    for (auto& [peer, ids] : pendingIHave_) {
      if (ids.empty() || !active_.contains(peer)) {
        continue;
      }
      ++stats_.ihave_sent;
      Value ihave;
      (*ihave.mutable_struct_value()->mutable_fields())["ids"] = idsValue(ids);
      tell(peer, "gossip.ihave", std::move(ihave));
    }
    pendingIHave_.clear();
  }

  void onIHave(const EventPtr&, const pv::Envelope& in, const Struct& body) {
    ++stats_.ihave_received;
    for (const auto& id : idsOf(body, "ids")) {
      if (seen_.contains(id)) {
        hasIt(in.sender(), id);
        continue;
      }
      Missing& missing = missing_[id];
      if (missing.announcers.size() < 16) {
        missing.announcers.push_back(in.sender());
      }
      if (!missing.timer) {
        missing.timer = StaticContext::instance().loop().createTimer([this, id] { graft(id); });
        missing.timer->enable(settings_.ihaveTimeout);
      }
    }
  }

  // The payload of `id` did not come through the tree in time: ask an announcer for it, which
  // also makes that link eager (the tree repairs itself).
  void graft(const std::string& id) {
    auto it = missing_.find(id);
    if (it == missing_.end()) {
      return;
    }
    if (seen_.contains(id) || it->second.announcers.empty()) {
      retire(std::move(it->second.timer));  // This very timer: destroyed after its callback.
      missing_.erase(it);
      return;
    }
    const std::string announcer = it->second.announcers.front();
    it->second.announcers.pop_front();
    if (active_.contains(announcer)) {
      eager_.insert(announcer);
      lazy_.erase(announcer);
    }
    ++stats_.grafts_sent;
    Value request;
    (*request.mutable_struct_value()->mutable_fields())["ids"] = idsValue({id});
    tell(announcer, "gossip.graft", std::move(request));
    it->second.timer->enable(settings_.ihaveTimeout / 2);
  }

  void onGraft(const EventPtr& event, const pv::Envelope& in, const Struct& body) {
    ++stats_.grafts_received;
    const std::string& from = in.sender();
    if (active_.contains(from)) {
      eager_.insert(from);
      lazy_.erase(from);
    }
    for (const auto& id : idsOf(body, "ids")) {
      if (auto it = cache_.find(id); it != cache_.end()) {
        ++stats_.sent;
        stats_.bytes_out += it->second.bytes;
        sendAll({from}, "gossip.push", it->second.push, event).detach();
      }
    }
  }

  void onPrune(const EventPtr&, const pv::Envelope& in, const Struct&) {
    ++stats_.prunes_received;
    if (eager_.erase(in.sender()) > 0) {
      lazy_.insert(in.sender());
    }
  }

  void cache(const std::string& id, const Value& push, size_t bytes) {
    if (bytes > settings_.cacheBytes) {
      return;
    }
    cacheBytes_ += bytes;
    cache_.emplace(id, Cached{push, StaticContext::instance().loop().now(), bytes});
    cacheOrder_.push_back(id);
    while (cacheBytes_ > settings_.cacheBytes && !cacheOrder_.empty()) {
      dropOldestCached();
    }
  }

  void dropOldestCached() {
    if (auto it = cache_.find(cacheOrder_.front()); it != cache_.end()) {
      cacheBytes_ -= it->second.bytes;
      cache_.erase(it);
    }
    cacheOrder_.pop_front();
  }

  [[nodiscard]] bool wantsMessages() const {
    auto type = EventType::find("gossip.message");
    return type && StaticContext::instance().events().handles(*type);
  }

  // A message reaches this node: recorded, and raised as gossip.message for modules.
  void deliver(const std::string& id, const std::string& origin, const std::string& topic,
               size_t bytes, const std::string* payload, int64_t published, uint32_t hops,
               const EventPtr& parent) {
    ++stats_.delivered;
    v1::Delivery delivery;
    delivery.set_id(id);
    delivery.set_origin(origin);
    delivery.set_topic(topic);
    delivery.set_bytes(static_cast<uint32_t>(bytes));
    delivery.set_published_unix_nanos(published);
    delivery.set_received_unix_nanos(nowUnixNanos());
    delivery.set_hops(hops);
    received_.push_back(std::move(delivery));
    while (received_.size() > settings_.receivedHistory) {
      received_.pop_front();
      ++forgotten_;
    }
    if (payload == nullptr || !wantsMessages()) {
      return;
    }
    auto message = std::make_shared<v1::Message>();
    message->set_id(id);
    message->set_origin(origin);
    message->set_topic(topic);
    message->set_payload(*payload);
    *message->mutable_published() = TimeUtil::NanosecondsToTimestamp(published);
    message->set_hops(hops);
    const auto type = EventType::of("gossip.message");
    auto raised = parent ? parent->raise(type, std::move(message))
                         : StaticContext::instance().events().raise(type, std::move(message));
    raised.detach();
  }

  // ---- Sending through the portal ---------------------------------------------------------------

  void tell(const std::string& to, const char* type, Value payload) {
    sendAll({to}, type, std::move(payload)).detach();
  }

  // Settles (never fails) once the portal has queued the message to every reachable peer in `to`.
  Future<void> sendAll(const std::vector<std::string>& to, const char* type, Value payload,
                       const EventPtr& parent = nullptr) {
    if (to.empty()) {
      return makeReadyFuture();
    }
    auto broadcast = std::make_shared<pv::Broadcast>();
    broadcast->set_type(type);
    *broadcast->mutable_payload() = std::move(payload);
    for (const auto& id : to) {
      broadcast->add_to(id);
    }
    const auto portalBroadcast = EventType::of("portal.broadcast");
    auto sent =
        parent ? parent->raise(portalBroadcast, std::move(broadcast))
               : StaticContext::instance().events().raise(portalBroadcast, std::move(broadcast));
    return sent.recover([](const std::exception_ptr&) { return MessagePtr(); })
        .then([](const MessagePtr&) {});
  }

  Future<MessagePtr> dial(const std::string& address, const std::string& id) {
    auto request = std::make_shared<pv::Dial>();
    request->set_address(address);
    request->set_node_id(id);
    return StaticContext::instance().events().raise(EventType::of("portal.dial"),
                                                    std::move(request));
  }

  void disconnect(const std::string& id, const std::string& reason) {
    auto request = std::make_shared<pv::Disconnect>();
    request->set_node_id(id);
    request->set_reason(reason);
    StaticContext::instance()
        .events()
        .raise(EventType::of("portal.disconnect"), std::move(request))
        .recover([](const std::exception_ptr&) { return MessagePtr(); })
        .detach();
  }

  // ---- Reports ----------------------------------------------------------------------------------

  void refuse(const std::string& sender, const char* type, const std::string& why) {
    ++stats_.refused;
    auto& context = StaticContext::instance();
    const MonotonicTime now = context.loop().now();
    if (now - refusedWindow_ >= std::chrono::seconds(1)) {
      refusedWindow_ = now;
      refusedLogged_ = 0;
    }
    if (refusedLogged_++ < 10) {
      context.logger().warn("gossip: refused a {} from node {}: {}", type, sender, why);
    }
  }

  static void requireSender(const pv::Envelope& in, const std::string& id) {
    if (in.sender() != id) {
      throw Malformed(fmt::format("it speaks for node {}, not for its sender", id));
    }
  }

  void logSummary() {
    if (!changed_) {
      return;
    }
    changed_ = false;
    StaticContext::instance().logger().info(
        "gossip: members: {} alive, {} suspect, {} dead; active {}, passive {}",
        table_->count(v1::Member::ALIVE), table_->count(v1::Member::SUSPECT),
        table_->count(v1::Member::DEAD) + table_->count(v1::Member::LEFT), active_.size(),
        passive_.size());
  }

  static void fillMember(v1::Member& out, const MemberRecord& record) {
    out.set_node_id(record.id);
    out.set_address(record.address);
    out.set_status(record.status);
    out.set_incarnation(record.incarnation);
    out.mutable_metadata()->insert(record.metadata.begin(), record.metadata.end());
    *out.mutable_since() = TimeUtil::NanosecondsToTimestamp(record.sinceUnixNanos);
  }

  std::shared_ptr<v1::Members> members() const {
    auto out = std::make_shared<v1::Members>();
    out->set_node_id(StaticContext::instance().nodeId());
    if (!table_) {
      return out;
    }
    std::vector<const MemberRecord*> sorted;
    for (const auto& [id, record] : table_->all()) {
      sorted.push_back(&record);
    }
    std::sort(sorted.begin(), sorted.end(),
              [](const auto* a, const auto* b) { return a->id < b->id; });
    for (const auto* record : sorted) {
      fillMember(*out->add_members(), *record);
    }
    out->mutable_active()->Add(active_.begin(), active_.end());
    out->mutable_passive()->Add(passive_.begin(), passive_.end());
    out->mutable_eager()->Add(eager_.begin(), eager_.end());
    return out;
  }

  std::shared_ptr<v1::Stats> stats() const {
    auto out = std::make_shared<v1::Stats>();
    out->set_published(stats_.published);
    out->set_delivered(stats_.delivered);
    out->set_received(stats_.received);
    out->set_duplicates(stats_.duplicates);
    out->set_sent(stats_.sent);
    out->set_ihave_sent(stats_.ihave_sent);
    out->set_ihave_received(stats_.ihave_received);
    out->set_grafts_sent(stats_.grafts_sent);
    out->set_grafts_received(stats_.grafts_received);
    out->set_prunes_sent(stats_.prunes_sent);
    out->set_prunes_received(stats_.prunes_received);
    out->set_bytes_in(stats_.bytes_in);
    out->set_bytes_out(stats_.bytes_out);
    out->set_refused(stats_.refused);
    out->set_syncs_sent(stats_.syncs_sent);
    out->set_syncs_received(stats_.syncs_received);
    out->set_states_sent(stats_.states_sent);
    out->set_node_id(StaticContext::instance().nodeId());
    out->set_mode(settings_.tree ? "tree" : "flood");
    out->set_seen(static_cast<uint32_t>(seen_.size()));
    out->set_cached(static_cast<uint32_t>(cache_.size()));
    if (table_) {
      out->set_alive(static_cast<uint32_t>(table_->count(v1::Member::ALIVE)));
      out->set_suspect(static_cast<uint32_t>(table_->count(v1::Member::SUSPECT)));
      out->set_dead(
          static_cast<uint32_t>(table_->count(v1::Member::DEAD) + table_->count(v1::Member::LEFT)));
    }
    out->set_active(static_cast<uint32_t>(active_.size()));
    out->set_passive(static_cast<uint32_t>(passive_.size()));
    *out->mutable_since() = since_;
    return out;
  }

  std::shared_ptr<v1::Received> received(const std::string& topic) const {
    auto out = std::make_shared<v1::Received>();
    out->set_node_id(StaticContext::instance().nodeId());
    for (const auto& delivery : received_) {
      if (topic.empty() || delivery.topic() == topic) {
        *out->add_deliveries() = delivery;
      }
    }
    out->set_forgotten(forgotten_);
    return out;
  }

  // ---- Small things -----------------------------------------------------------------------------

  template <typename Container>
  std::string pick(const Container& from) {
    std::uniform_int_distribution<size_t> index(0, from.size() - 1);
    return from[index(rng_)];
  }

  void every(Duration period, std::function<void()> work) {
    auto timer = std::make_shared<TimerPtr>();
    *timer = StaticContext::instance().loop().createTimer(
        [this, period, work = std::move(work), raw = timer.get()] {
          if (!started_) {
            return;
          }
          work();
          (*raw)->enable(period);
        });
    (*timer)->enable(period);
    timers_.push_back(std::move(timer));
  }

  // Destroys `timer` after the current callback: a timer must not be destroyed inside its own.
  static void retire(TimerPtr timer) {
    StaticContext::instance().loop().schedule(
        [doomed = std::shared_ptr<Timer>(std::move(timer))] { (void)doomed; });
  }

  void later(Duration delay, std::function<void()> work) {
    auto timer = std::make_shared<TimerPtr>();
    *timer = StaticContext::instance().loop().createTimer(std::move(work));
    (*timer)->enable(delay);
    timers_.push_back(std::move(timer));
  }

  Settings settings_;
  std::map<uint64_t, Settings> pending_;
  std::unique_ptr<MemberTable> table_;
  SeenSet seen_{65536};
  std::set<std::string> active_;
  std::set<std::string> eager_;
  std::set<std::string> lazy_;
  std::vector<std::string> passive_;
  std::set<std::string> asked_;    // Neighbour requests on their way.
  std::set<std::string> probing_;  // Lost neighbours being dialled again.
  std::unordered_map<std::string, TimerPtr> suspicions_;
  std::unordered_map<std::string, Missing> missing_;
  std::unordered_map<std::string, std::vector<std::string>> pendingIHave_;  // By neighbour.
  TimerPtr ihaveFlush_;
  std::unordered_map<std::string, Cached> cache_;
  std::deque<std::string> cacheOrder_;
  size_t cacheBytes_ = 0;
  std::deque<v1::Delivery> received_;
  uint64_t forgotten_ = 0;
  Counters stats_;
  google::protobuf::Timestamp since_;
  uint64_t sequence_ = 0;
  std::mt19937_64 rng_{std::random_device{}()};
  std::vector<std::shared_ptr<TimerPtr>> timers_;
  std::vector<EventTree::Registration> handlers_;
  std::vector<rpc::Services::Registration> rpc_;
  MonotonicTime refusedWindow_{};
  MonotonicTime seedWarned_{};
  MonotonicTime lastNews_{};  // When a member record last changed here.
  int refusedLogged_ = 0;
  int fillBackoff_ = 0;  // Maintenance rounds to skip after a refused neighbour request.
  int fillPause_ = 0;
  bool started_ = false;
  bool joined_ = false;
  bool changed_ = true;
};

SNOW_MODULE(Gossip, "gossip", "1.0.0");

}  // namespace
}  // namespace snow::gossip
