// The portal module: this node's TCP endpoint for peers and clients (docs/portal.md), speaking
// docs/protocol/portal.md.
//
// Other modules use it through events (module.h: modules never hold each other's objects):
//   portal.send       {to, type, payload}      -> SendResult      one message to a peer
//   portal.broadcast  {type, payload, except}  -> BroadcastResult every established peer
//   portal.peers      (none)                   -> Peers           the connections
//   portal.dial       {address, node_id}       -> Dialed          connect once (no redialling)
//   portal.disconnect {node_id, reason}        -> Dialed          close a node's connection
// and receive: an inbound message of type T is raised as an event of type T (payload: its
// Envelope) when some module handles T; otherwise the sender gets an `unknown_type` error.
// `portal.connected` / `portal.disconnected` (LinkChange) are raised when a node becomes
// reachable / unreachable, for modules that handle them (gossip's failure detector).
//
// Reloads: the listener is a resource (net.h) inherited by the next generation when the address
// did not change; connections belong to the module, not to a generation, so they all survive a
// reload except those to peers the new configuration removed.

#include <algorithm>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <google/protobuf/util/time_util.h>
#include <opentracing/propagation.h>
#include <sys/socket.h>

#include "snow/contexts/static_context.h"
#include "snow/core/backoff.h"
#include "snow/core/config.h"
#include "snow/core/module.h"
#include "snow/core/net.h"
#include "snow/posix/checked_posix.h"
#include "snow/posix/files.h"
#include "snow/rpc/node.h"
#include "snow/rpc/status.h"

#include "connection.h"

namespace snow::portal {
namespace {

using google::protobuf::util::TimeUtil;

constexpr std::string_view kService = "/snow.portal.v1.Portal/";
constexpr int kAcceptsPerWake = 64;
constexpr std::string_view kDuplicate = "a second connection to the same node; keeping the other";
constexpr Duration kAcceptPause = std::chrono::milliseconds(100);
// Big enough for a 64 KiB gossip payload in base64 with its envelope; the limit bounds one
// connection's input buffer, not what is allocated up front.
constexpr size_t kDefaultMaxMessage = size_t{1} << 20;

// One traceparent in and out of an envelope.
class TraceparentWriter final : public opentracing::TextMapWriter {
 public:
  explicit TraceparentWriter(std::string& out) : out_(out) {}
  opentracing::expected<void> Set(opentracing::string_view key,
                                  opentracing::string_view value) const override {
    if (key == "traceparent") {
      out_.assign(value.data(), value.size());
    }
    return {};
  }

 private:
  std::string& out_;
};

class TraceparentReader final : public opentracing::TextMapReader {
 public:
  explicit TraceparentReader(const std::string& value) : value_(value) {}
  opentracing::expected<void> ForeachKey(
      std::function<opentracing::expected<void>(opentracing::string_view, opentracing::string_view)>
          f) const override {
    return f("traceparent", value_);
  }

 private:
  const std::string& value_;
};

// At most `perSecond` lines a second; what is left out is summed up in one line at the end of
// the second: 10,000 bad connections must not become 10,000 log lines.
class LogLimiter {
 public:
  explicit LogLimiter(int perSecond) : perSecond_(perSecond) {}

  template <typename Log>
  void operator()(Dispatcher& loop, Log&& log) {
    const MonotonicTime now = loop.now();
    if (now - windowStart_ >= std::chrono::seconds(1)) {
      summarise();
      windowStart_ = now;
    }
    if (inWindow_++ < perSecond_) {
      log();
      return;
    }
    if (suppressed_++ == 0) {
      if (!summary_) {
        summary_ = loop.createTimer([this] { summarise(); });
      }
      summary_->enable(std::chrono::seconds(1) - (now - windowStart_));
    }
  }

 private:
  void summarise() {
    if (suppressed_ > 0) {
      StaticContext::instance().logger().warn(
          "portal: {} more connection problem(s) in that second, not logged one by one",
          suppressed_);
    }
    inWindow_ = 0;
    suppressed_ = 0;
  }

  int perSecond_;
  MonotonicTime windowStart_{};
  int inWindow_ = 0;
  uint64_t suppressed_ = 0;
  TimerPtr summary_;
};

struct Settings {
  std::string listen;
  std::vector<v1::Peer> peers;
  std::optional<net::Address> proxy;
  std::optional<Socks5Credentials> proxyCredentials;
  std::optional<SessionKey> clusterKey;
  ConnectionLimits limits;
  size_t maxConnections = 1024;
  BackoffPolicy reconnect;
};

// host and port of "host:port" / "[v6]:port"; nullopt when it is not that shape.
std::optional<std::pair<std::string, uint16_t>> splitHostPort(const std::string& text) {
  const size_t colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size()) {
    return std::nullopt;
  }
  std::string host = text.substr(0, colon);
  if (host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  int port = 0;
  for (char c : text.substr(colon + 1)) {
    if (c < '0' || c > '9' || port > 65535) {
      return std::nullopt;
    }
    port = port * 10 + (c - '0');
  }
  if (port == 0 || port > 65535 || host.empty()) {
    return std::nullopt;
  }
  return std::make_pair(host, static_cast<uint16_t>(port));
}

// Everything wrong with `config`, each with its path; `settings` filled when there is nothing.
std::vector<std::string> decide(const v1::PortalConfig& config, posix::Posix& os,
                                Settings& settings) {
  std::vector<std::string> problems;
  const std::string at = "modules.portal";
  settings.listen = config.listen();
  if (!config.listen().empty()) {
    try {
      (void)net::Address::parse(config.listen());
    } catch (const std::exception& e) {
      problems.push_back(fmt::format("{}.listen: {}", at, e.what()));
    }
  }
  if (!config.socks5().address().empty()) {
    try {
      settings.proxy = net::Address::parse(config.socks5().address());
    } catch (const std::exception& e) {
      problems.push_back(fmt::format("{}.socks5.address: {}", at, e.what()));
    }
    if (!config.socks5().username().empty() || !config.socks5().password().empty()) {
      if (config.socks5().username().empty() || config.socks5().username().size() > 255 ||
          config.socks5().password().empty() || config.socks5().password().size() > 255) {
        problems.push_back(fmt::format(
            "{}.socks5: username and password go together, each 1 to 255 bytes (RFC 1929)", at));
      } else {
        settings.proxyCredentials =
            Socks5Credentials{config.socks5().username(), config.socks5().password()};
      }
    }
  } else if (!config.socks5().username().empty()) {
    problems.push_back(fmt::format("{}.socks5: a username without an address", at));
  }
  std::set<std::string> seen;
  for (int i = 0; i < config.peers_size(); ++i) {
    const auto& peer = config.peers(i);
    const std::string where = fmt::format("{}.peers[{}]", at, i);
    if (!seen.insert(peer.address()).second) {
      problems.push_back(fmt::format("{}.address: {} is listed twice", where, peer.address()));
    }
    if (!peer.node_id().empty() && !NodeIdentity::isNodeId(peer.node_id())) {
      problems.push_back(
          fmt::format("{}.node_id: '{}' is not a node id (32 lower-case hex "
                      "digits, as `snow-core keygen` prints)",
                      where, peer.node_id()));
    }
    if (settings.proxy) {
      if (!splitHostPort(peer.address())) {
        problems.push_back(fmt::format("{}.address: '{}' is not HOST:PORT", where, peer.address()));
      }
    } else {
      try {
        (void)net::Address::parse(peer.address());
      } catch (const std::exception& e) {
        problems.push_back(
            fmt::format("{}.address: {} (host names only through a SOCKS5 proxy, "
                        "which resolves them)",
                        where, e.what()));
      }
    }
    settings.peers.push_back(peer);
  }
  if (!config.cluster_secret().empty() && !config.cluster_secret_file().empty()) {
    problems.push_back(
        fmt::format("{}: cluster_secret and cluster_secret_file: give one of them", at));
  } else if (!config.cluster_secret().empty()) {
    settings.clusterKey = clusterKeyOf(config.cluster_secret());
  } else if (!config.cluster_secret_file().empty()) {
    const char* call = nullptr;
    auto secret = posix::readFile(os, config.cluster_secret_file(), &call);
    if (!secret.ok()) {
      problems.push_back(fmt::format("{}.cluster_secret_file: {}: {}: {}", at,
                                     config.cluster_secret_file(), call,
                                     std::strerror(secret.errnum)));
    } else {
      std::string text = secret.value;
      while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) {
        text.pop_back();
      }
      if (text.empty()) {
        problems.push_back(
            fmt::format("{}.cluster_secret_file: {} is empty", at, config.cluster_secret_file()));
      }
      settings.clusterKey = clusterKeyOf(text);
    }
  }
  auto& limits = settings.limits;
  limits.highWater =
      config.output_high_water_bytes() != 0 ? config.output_high_water_bytes() : size_t{4} << 20;
  // Unset, the message limit stays within a smaller high-water mark rather than refuse it.
  limits.maxMessage = config.max_message_bytes() != 0
                          ? config.max_message_bytes()
                          : std::min(kDefaultMaxMessage, std::max<size_t>(limits.highWater, 1024));
  if (limits.maxMessage < 1024 || limits.maxMessage > (64U << 20)) {
    problems.push_back(fmt::format("{}.max_message_bytes: {} is not between 1024 and 64 MiB", at,
                                   limits.maxMessage));
  }
  if (limits.highWater < limits.maxMessage) {
    problems.push_back(fmt::format(
        "{}.output_high_water_bytes: {} is below max_message_bytes ({}): no message would fit", at,
        limits.highWater, limits.maxMessage));
  }
  limits.handshakeTimeout = config::durationOr(config.handshake_timeout(), std::chrono::seconds(5));
  limits.idleTimeout = config::durationOr(config.idle_timeout(), std::chrono::seconds(60));
  if (limits.idleTimeout < std::chrono::milliseconds(300)) {
    problems.push_back(fmt::format("{}.idle_timeout: at least 300ms", at));
  }
  settings.maxConnections = config.max_connections() != 0 ? config.max_connections() : 1024;
  settings.reconnect.initial =
      config::durationOr(config.reconnect_initial(), std::chrono::milliseconds(100));
  settings.reconnect.max = config::durationOr(config.reconnect_max(), std::chrono::seconds(30));
  settings.reconnect.multiplier = 2;
  return problems;
}

// A configured peer: connected, or waiting to reconnect.
struct Link {
  v1::Peer peer;
  Connection* connection = nullptr;
  std::string learnedId;  // The node id it had last time: its inbound connection counts too.
  std::unique_ptr<Backoff> backoff;
  TimerPtr retry;
};

class Portal final : public ConfiguredModule<v1::PortalConfig> {
 public:
  using ConfiguredModule::apply;
  using ConfiguredModule::verify;

  Future<void> verify(const v1::PortalConfig& config) override {
    Settings settings;
    auto problems = decide(config, StaticContext::instance().posix(), settings);
    if (!problems.empty()) {
      return makeErrorFuture<void>(
          std::invalid_argument(fmt::format("{}", fmt::join(problems, "\n"))));
    }
    return makeReadyFuture();
  }

  Future<void> apply(const v1::PortalConfig& config, DynamicContext& next) override {
    auto& context = StaticContext::instance();
    // Transactions run one at a time: what an aborted one prepared (its listener) goes now.
    pending_.clear();
    Pending pending;
    if (auto problems = decide(config, context.posix(), pending.settings); !problems.empty()) {
      throw std::invalid_argument(fmt::format("{}", fmt::join(problems, "\n")));
    }
    if (!config.listen().empty()) {
      const net::Address address = net::Address::parse(config.listen());
      pending.listener = next.resources().acquire<net::Listener>(
          "portal.listen " + address.toString(),
          [&] { return net::Listener::open(context.posix(), address); });
    }
    pending_[next.generation()] = std::move(pending);
    return makeReadyFuture();
  }

  void activated(DynamicContext& current) override {
    auto it = pending_.find(current.generation());
    if (it == pending_.end()) {
      return;
    }
    Pending next = std::move(it->second);
    pending_.clear();
    settings_ = std::move(next.settings);
    if (next.listener != listener_) {
      listener_ = std::move(next.listener);
      acceptWatch_.reset();
      if (started_) {
        startListening();
      }
    }
    if (started_) {
      reconcileLinks();
    }
  }

  Future<void> start() override {
    auto& context = StaticContext::instance();
    if (!context.identity()) {
      return makeErrorFuture<void>(std::logic_error("the portal needs the node's identity"));
    }
    started_ = true;
    auto& events = context.events();
    handlers_.push_back(events.on(EventType::of("portal.send"),
                                  [this](const EventPtr& event) { return onSend(event); }));
    handlers_.push_back(events.on(EventType::of("portal.broadcast"),
                                  [this](const EventPtr& event) { return onBroadcast(event); }));
    handlers_.push_back(events.on(EventType::of("portal.peers"), [this](const EventPtr&) {
      return makeReadyFuture<MessagePtr>(peers());
    }));
    handlers_.push_back(events.on(EventType::of("portal.dial"),
                                  [this](const EventPtr& event) { return onDial(event); }));
    handlers_.push_back(events.on(EventType::of("portal.disconnect"),
                                  [this](const EventPtr& event) { return onDisconnect(event); }));
    if (context.hasNode()) {
      rpc_.push_back(context.node().services().addUnary<v1::PeersRequest, v1::Peers>(
          std::string(kService) + "ListPeers",
          [this](const rpc::CallContext&, const v1::PeersRequest&) {
            return makeReadyFuture<MessagePtr>(peers());
          }));
    }
    startListening();
    reconcileLinks();
    return makeReadyFuture();
  }

  Future<void> stop() override {
    started_ = false;
    rpc_.clear();
    handlers_.clear();
    acceptWatch_.reset();
    links_.clear();
    dials_.clear();  // Their promises break: the node is stopping.
    // Tell every peer, then let the connections go (their error frames are written now or
    // never: the process is about to exit).
    std::vector<Connection*> all;
    for (auto& [serial, connection] : connections_) {
      all.push_back(connection.get());
    }
    for (Connection* connection : all) {
      connection->fail("shutting_down", "the node is stopping");
    }
    return makeReadyFuture();
  }

  ~Portal() override {
    links_.clear();
    connections_.clear();
  }

 private:
  struct Pending {
    Settings settings;
    std::shared_ptr<net::Listener> listener;
  };

  [[nodiscard]] HandshakeSettings handshakeSettings(std::string expected = {}) const {
    return HandshakeSettings{StaticContext::instance().identity().get(), settings_.clusterKey,
                             settings_.limits.maxMessage, std::move(expected)};
  }

  // ---- Inbound ----------------------------------------------------------------------------------

  void startListening() {
    auto& context = StaticContext::instance();
    if (!listener_) {
      return;
    }
    acceptWatch_ = context.loop().createFileEvent(
        listener_->fd(), [this](uint32_t) { acceptSome(); }, FileReady::kRead);
    context.logger().info("portal: listening on {} as node {}", listener_->local().toString(),
                          context.nodeId());
  }

  void acceptSome() {
    auto& context = StaticContext::instance();
    auto& os = context.posix();
    for (int i = 0; i < kAcceptsPerWake; ++i) {
      sockaddr_storage from{};
      socklen_t length = sizeof(from);
      auto r = posix::tolerant([&] {
        return os.accept4(listener_->fd(), reinterpret_cast<sockaddr*>(&from), &length,
                          SOCK_NONBLOCK | SOCK_CLOEXEC);
      });
      if (r.errnum == EAGAIN || r.errnum == EWOULDBLOCK) {
        return;
      }
      if (r.errnum == EINTR || r.errnum == ECONNABORTED) {
        continue;
      }
      if (!r.ok()) {
        limiter_(context.loop(), [&] {
          context.logger().warn("portal: accept on {}: {}; pausing accepts for 100 ms",
                                listener_->local().toString(), std::strerror(r.errnum));
        });
        // Out of descriptors or memory: the connection stays in the backlog and the listener
        // stays readable, so watching it now would spin. Pause, then try again.
        acceptWatch_->setEnabled(0);
        if (!acceptPause_) {
          acceptPause_ = context.loop().createTimer([this] {
            if (acceptWatch_) {
              acceptWatch_->setEnabled(FileReady::kRead);
            }
          });
        }
        acceptPause_->enable(kAcceptPause);
        return;
      }
      posix::FileDescriptor fd(r.value);
      const std::string address =
          net::Address::fromSockaddr(reinterpret_cast<sockaddr*>(&from), length).toString();
      if (connections_.size() >= settings_.maxConnections) {
        refuse(std::move(fd), address);
        continue;
      }
      adopt(std::make_unique<Connection>(context.loop(), os, std::move(fd), Role::Server, false,
                                         address, handshakeSettings(), settings_.limits,
                                         std::nullopt, callbacks()));
    }
  }

  // Over the connection limit: one plain error frame, written if the socket takes it now, then
  // close. Nothing is kept for it.
  void refuse(posix::FileDescriptor fd, const std::string& address) {
    auto& context = StaticContext::instance();
    ++refused_;
    v1::Envelope error = errorEnvelope(
        "too_many_connections",
        fmt::format("this node has its maximum of {} connections", settings_.maxConnections));
    error.set_id("refused");
    error.set_sender(context.nodeId());
    const std::string frame = encodeFrame(encodeEnvelope(error), 1U << 20);
    (void)posix::tolerant(
        [&] { return context.posix().write(fd.get(), frame.data(), frame.size()); });
    limiter_(context.loop(), [&] {
      context.logger().warn("portal: refused {}: already {} connections (max_connections)", address,
                            connections_.size());
    });
  }

  Connection::Callbacks callbacks() {
    return Connection::Callbacks{
        [this](Connection& c) { onEstablished(c); },
        [this](Connection& c, v1::Envelope&& envelope) { onMessage(c, std::move(envelope)); },
        [this](Connection& c) { onClosed(c); }};
  }

  void adopt(std::unique_ptr<Connection> connection) {
    if (connection->state() == Connection::State::Closed) {
      // It failed in its constructor (its closed callback ran already): nothing of it is in
      // the maps.
      StaticContext::instance().loop().deferredDelete(std::move(connection));
      return;
    }
    const uint64_t serial = connection->serial();
    connections_.emplace(serial, std::move(connection));
  }

  // The node id that opened `c`.
  std::string clientOf(const Connection& c) const {
    return c.role() == Role::Client ? StaticContext::instance().nodeId() : c.peerId();
  }

  void onEstablished(Connection& c) {
    auto& context = StaticContext::instance();
    const std::string& peer = c.peerId();
    if (auto dial = dials_.extract(c.serial())) {
      // Reached, whichever connection of the pair the duplicate rule below keeps.
      auto result = std::make_shared<v1::Dialed>();
      result->set_node_id(peer);
      result->set_already(byPeer_.contains(peer));
      dial.mapped().setValue(std::move(result));
    }
    // The link learns whom it reached before any duplicate is resolved: when its connection is
    // the one dropped, the link then waits on the peer's own connection instead of redialling.
    for (auto& link : links_) {
      if (link->connection == &c) {
        link->learnedId = peer;
        link->backoff->reset();
      }
    }
    if (auto it = byPeer_.find(peer); it != byPeer_.end()) {
      // Two connections to one node (both dialled, or it reconnected before we noticed the old
      // one die). Both sides keep the one opened by the smaller node id, so they agree without
      // talking; between two of the same opener, the newer.
      Connection* old = it->second;
      const std::string preferred = std::min(context.nodeId(), peer);
      const bool keepNew = clientOf(c) == clientOf(*old) || clientOf(c) == preferred;
      Connection* loser = keepNew ? old : &c;
      byPeer_.erase(it);
      if (keepNew) {
        byPeer_.emplace(peer, &c);
      } else {
        byPeer_.emplace(peer, old);
      }
      loser->close(std::string(kDuplicate));
      if (loser == &c) {
        return;
      }
    } else {
      byPeer_.emplace(peer, &c);
      notify("portal.connected", c, {});
    }
    context.logger().info("portal: connected to node {} at {} ({})", peer, c.address(),
                          c.role() == Role::Client ? "outbound" : "inbound");
  }

  // Raises portal.connected / portal.disconnected when a module listens.
  void notify(const char* name, const Connection& c, const std::string& reason) {
    auto& events = StaticContext::instance().events();
    const auto type = EventType::find(name);
    if (!type || !events.handles(*type)) {
      return;
    }
    auto change = std::make_shared<v1::LinkChange>();
    change->set_node_id(c.peerId());
    change->set_address(c.address());
    change->set_outbound(c.role() == Role::Client);
    change->set_reason(reason);
    events.raise(*type, std::move(change)).detach();
  }

  void onMessage(Connection& c, v1::Envelope&& envelope) {
    auto& context = StaticContext::instance();
    auto& events = context.events();
    const auto type = EventType::find(envelope.type());
    if (!type || !events.handles(*type)) {
      v1::Envelope error = errorEnvelope(
          "unknown_type",
          fmt::format("no module of node {} handles '{}'", context.nodeId(), envelope.type()),
          envelope.id());
      c.transmit(error);
      return;
    }
    auto payload = std::make_shared<v1::Envelope>(std::move(envelope));
    std::unique_ptr<opentracing::SpanContext> parent;
    if (!payload->traceparent().empty()) {
      auto extracted = events.tracer().Extract(TraceparentReader(payload->traceparent()));
      if (extracted) {
        parent = std::move(*extracted);
      }
    }
    RemoteOrigin origin{events.mintId(), EventId{}, parent.get(), false};
    events.raiseRemote(origin, *type, std::move(payload)).detach();
  }

  void onClosed(Connection& c) {
    auto& context = StaticContext::instance();
    const bool wasPeer = [&] {
      auto it = byPeer_.find(c.peerId());
      if (it != byPeer_.end() && it->second == &c) {
        byPeer_.erase(it);
        return true;
      }
      return false;
    }();
    const std::string said = c.peerError().empty() ? "" : " (it said: " + c.peerError() + ")";
    const bool duplicate = c.closeReason() == kDuplicate;
    if (auto dial = dials_.extract(c.serial())) {
      dial.mapped().reject(std::runtime_error(
          fmt::format("cannot connect to {}: {}{}", c.address(), c.closeReason(), said)));
    }
    if (wasPeer) {
      notify("portal.disconnected", c, c.closeReason() + said);
    }
    if (duplicate) {
      context.logger().debug("portal: {} to node {} at {}", kDuplicate, c.peerId(), c.address());
    } else if (wasPeer) {
      context.logger().info("portal: disconnected from node {} at {}: {}{}", c.peerId(),
                            c.address(), c.closeReason(), said);
    } else if (c.role() == Role::Server) {
      ++refused_;
      limiter_(context.loop(), [&] {
        context.logger().warn("portal: connection from {} closed before it was established: {}{}",
                              c.address(), c.closeReason(), said);
      });
    }
    for (auto& link : links_) {
      if (link->connection == &c) {
        link->connection = nullptr;
        if (duplicate) {
          continue;  // Reached through the peer's own connection; redialled if that one drops.
        }
        if (!wasPeer) {
          context.logger().warn("portal: peer {}: {}{}", link->peer.address(), c.closeReason(),
                                said);
        }
        scheduleRetry(*link);
      } else if (wasPeer && link->connection == nullptr && link->learnedId == c.peerId() &&
                 !link->retry->enabled()) {
        scheduleRetry(*link);  // It was reached through its own connection to us.
      }
    }
    if (auto it = connections_.find(c.serial()); it != connections_.end()) {
      context.loop().deferredDelete(std::move(it->second));
      connections_.erase(it);
    }
  }

  // ---- Outbound ---------------------------------------------------------------------------------

  void reconcileLinks() {
    std::vector<std::unique_ptr<Link>> kept;
    for (const auto& peer : settings_.peers) {
      auto it = std::find_if(links_.begin(), links_.end(), [&](const auto& link) {
        return link && link->peer.address() == peer.address() &&
               link->peer.node_id() == peer.node_id();
      });
      if (it != links_.end()) {
        kept.push_back(std::move(*it));
        continue;
      }
      auto link = std::make_unique<Link>();
      link->peer = peer;
      link->backoff = std::make_unique<Backoff>(settings_.reconnect, std::random_device{}());
      Link* raw = link.get();
      link->retry = StaticContext::instance().loop().createTimer([this, raw] { dial(*raw); });
      link->retry->enable(Duration::zero());
      kept.push_back(std::move(link));
    }
    // The links of removed peers leave links_ first, so that closing their connections (which
    // calls onClosed) finds nothing to reconnect.
    std::vector<std::unique_ptr<Link>> removed;
    for (auto& link : links_) {
      if (link) {
        removed.push_back(std::move(link));
      }
    }
    links_ = std::move(kept);
    for (auto& gone : removed) {
      if (Connection* connection = std::exchange(gone->connection, nullptr)) {
        connection->close("the peer was removed from the configuration");
      }
    }
  }

  void scheduleRetry(Link& link) {
    if (!started_) {
      return;
    }
    link.retry->enable(link.backoff->next());
  }

  void dial(Link& link) {
    if (link.connection != nullptr ||
        (!link.learnedId.empty() && byPeer_.contains(link.learnedId)) ||
        (!link.peer.node_id().empty() && byPeer_.contains(link.peer.node_id()))) {
      return;  // Connected, one way or the other.
    }
    auto connection = connectTo(link.peer.address(), link.peer.node_id());
    if (!connection) {
      scheduleRetry(link);
      return;
    }
    if (connection->state() != Connection::State::Closed) {
      link.connection = connection.get();
    } else {
      scheduleRetry(link);  // Failed in its constructor (logged by onClosed).
    }
    adopt(std::move(connection));
  }

  // A connection on its way to `address` (through the proxy when there is one); null when not
  // even a socket could be made (logged).
  std::unique_ptr<Connection> connectTo(const std::string& address, const std::string& nodeId) {
    auto& context = StaticContext::instance();
    auto& os = context.posix();
    std::optional<ProxiedTarget> proxied;
    net::Address target;
    if (settings_.proxy) {
      auto hostPort = splitHostPort(address);
      proxied = ProxiedTarget{hostPort->first, hostPort->second, settings_.proxyCredentials};
      target = *settings_.proxy;
    } else {
      target = net::Address::parse(address);
    }
    auto made = posix::tolerant(
        [&] { return os.socket(target.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0); });
    if (!made.ok()) {
      lastDialError_ = fmt::format("socket: {}", std::strerror(made.errnum));
      context.logger().warn("portal: peer {}: {}", address, lastDialError_);
      return nullptr;
    }
    posix::FileDescriptor fd(made.value);
    auto connecting =
        posix::tolerant([&] { return os.connect(fd.get(), target.get(), target.length()); });
    if (!connecting.ok() && connecting.errnum != EINPROGRESS) {
      lastDialError_ =
          fmt::format("connect to {}: {}", target.toString(), std::strerror(connecting.errnum));
      context.logger().warn("portal: peer {}: {}", address, lastDialError_);
      return nullptr;
    }
    return std::make_unique<Connection>(context.loop(), os, std::move(fd), Role::Client, true,
                                        address, handshakeSettings(nodeId), settings_.limits,
                                        std::move(proxied), callbacks());
  }

  // ---- The module API -------------------------------------------------------------------------

  Future<MessagePtr> onSend(const EventPtr& event) {
    const auto* send = event->payloadAs<v1::Send>();
    if (send == nullptr) {
      throw std::invalid_argument("portal.send needs a snow.portal.v1.Send payload");
    }
    auto it = byPeer_.find(send->to());
    if (it == byPeer_.end()) {
      throw std::runtime_error(
          fmt::format("no connection to node {} (connected: {})", send->to(), connectedList()));
    }
    v1::Envelope envelope = envelopeFor(*event, send->type(), send->payload());
    // transmit() may close the connection (a slow reader), which erases `it`: only the
    // connection itself, destroyed later, is safe to ask why.
    Connection* connection = it->second;
    if (!connection->transmit(envelope)) {
      throw std::runtime_error(fmt::format("cannot send to node {}: {}", send->to(),
                                           connection->closeReason().empty()
                                               ? "the message is over its size limit"
                                               : connection->closeReason()));
    }
    auto result = std::make_shared<v1::SendResult>();
    result->set_id(envelope.id());
    return makeReadyFuture<MessagePtr>(std::move(result));
  }

  Future<MessagePtr> onDial(const EventPtr& event) {
    const auto* dial = event->payloadAs<v1::Dial>();
    if (dial == nullptr) {
      throw std::invalid_argument("portal.dial needs a snow.portal.v1.Dial payload");
    }
    if (!dial->node_id().empty() && !NodeIdentity::isNodeId(dial->node_id())) {
      throw std::invalid_argument(
          fmt::format("portal.dial: '{}' is not a node id", dial->node_id()));
    }
    if (!dial->node_id().empty() && byPeer_.contains(dial->node_id())) {
      auto result = std::make_shared<v1::Dialed>();
      result->set_node_id(dial->node_id());
      result->set_already(true);
      return makeReadyFuture<MessagePtr>(std::move(result));
    }
    const bool valid = settings_.proxy ? splitHostPort(dial->address()).has_value() : [&] {
      try {
        (void)net::Address::parse(dial->address());
        return true;
      } catch (const std::exception&) {
        return false;
      }
    }();
    if (!valid) {
      throw std::invalid_argument(
          fmt::format("portal.dial: '{}' is not an address to dial{}", dial->address(),
                      settings_.proxy ? " (HOST:PORT)" : " (IP:PORT; names only through SOCKS5)"));
    }
    auto connection = connectTo(dial->address(), dial->node_id());
    if (!connection) {
      throw std::runtime_error(
          fmt::format("cannot connect to {}: {}", dial->address(), lastDialError_));
    }
    if (connection->state() == Connection::State::Closed) {
      const std::string reason = connection->closeReason();
      adopt(std::move(connection));
      throw std::runtime_error(fmt::format("cannot connect to {}: {}", dial->address(), reason));
    }
    Promise<MessagePtr> promise(StaticContext::instance().loop());
    auto future = promise.future();
    dials_.emplace(connection->serial(), std::move(promise));
    adopt(std::move(connection));
    return future;
  }

  Future<MessagePtr> onDisconnect(const EventPtr& event) {
    const auto* request = event->payloadAs<v1::Disconnect>();
    if (request == nullptr) {
      throw std::invalid_argument("portal.disconnect needs a snow.portal.v1.Disconnect payload");
    }
    auto result = std::make_shared<v1::Dialed>();
    result->set_node_id(request->node_id());
    if (auto it = byPeer_.find(request->node_id()); it != byPeer_.end()) {
      result->set_already(true);
      it->second->fail("closed", request->reason().empty() ? std::string("closed by a module")
                                                           : request->reason());
    }
    return makeReadyFuture<MessagePtr>(std::move(result));
  }

  Future<MessagePtr> onBroadcast(const EventPtr& event) {
    const auto* broadcast = event->payloadAs<v1::Broadcast>();
    if (broadcast == nullptr) {
      throw std::invalid_argument("portal.broadcast needs a snow.portal.v1.Broadcast payload");
    }
    const std::set<std::string> except(broadcast->except().begin(), broadcast->except().end());
    v1::Envelope envelope = envelopeFor(*event, broadcast->type(), broadcast->payload());
    auto result = std::make_shared<v1::BroadcastResult>();
    std::vector<Connection*> targets;
    if (broadcast->to().empty()) {
      for (auto& [peer, connection] : byPeer_) {
        if (!except.contains(peer)) {
          targets.push_back(connection);
        }
      }
    } else {
      for (const auto& peer : broadcast->to()) {
        if (auto it = byPeer_.find(peer); it != byPeer_.end() && !except.contains(peer)) {
          targets.push_back(it->second);
        }
      }
    }
    for (Connection* connection : targets) {
      const std::string peer = connection->peerId();
      if (connection->transmit(envelope)) {
        result->add_to(peer);
      }
    }
    return makeReadyFuture<MessagePtr>(std::move(result));
  }

  static v1::Envelope envelopeFor(const Event& event, const std::string& type,
                                  const google::protobuf::Value& payload) {
    v1::Envelope envelope;
    envelope.set_type(type);
    envelope.set_id(event.id().toString());
    *envelope.mutable_timestamp() = TimeUtil::GetCurrentTime();
    *envelope.mutable_payload() = payload;
    (void)event.tree().tracer().Inject(event.span().context(),
                                       TraceparentWriter(*envelope.mutable_traceparent()));
    return envelope;
  }

  std::string connectedList() const {
    std::vector<std::string> ids;
    for (const auto& [peer, connection] : byPeer_) {
      ids.push_back(peer);
    }
    return ids.empty() ? std::string("none") : fmt::format("{}", fmt::join(ids, ", "));
  }

  std::shared_ptr<v1::Peers> peers() const {
    auto& context = StaticContext::instance();
    auto out = std::make_shared<v1::Peers>();
    out->set_node_id(context.nodeId());
    if (listener_) {
      out->set_listen(listener_->local().toString());
    }
    out->set_refused(refused_);
    out->set_max_message_bytes(static_cast<uint32_t>(settings_.limits.maxMessage));
    for (const auto& [serial, c] : connections_) {
      auto& info = *out->add_peers();
      info.set_node_id(c->peerId());
      info.set_address(c->address());
      info.set_outbound(c->role() == Role::Client);
      info.set_state(c->stateName());
      *info.mutable_since() = c->since();
      info.set_messages_in(c->stats().messagesIn);
      info.set_messages_out(c->stats().messagesOut);
      info.set_bytes_in(c->stats().bytesIn);
      info.set_bytes_out(c->stats().bytesOut);
      info.set_queued_bytes(c->queuedBytes());
    }
    return out;
  }

  Settings settings_;
  std::map<uint64_t, Pending> pending_;
  std::shared_ptr<net::Listener> listener_;
  FileEventPtr acceptWatch_;
  TimerPtr acceptPause_;
  std::map<uint64_t, std::unique_ptr<Connection>> connections_;
  std::unordered_map<std::string, Connection*> byPeer_;  // Established, one per node.
  std::vector<std::unique_ptr<Link>> links_;
  std::map<uint64_t, Promise<MessagePtr>> dials_;  // By connection serial, until established.
  std::string lastDialError_;
  std::vector<EventTree::Registration> handlers_;
  std::vector<rpc::Services::Registration> rpc_;
  LogLimiter limiter_{10};
  uint64_t refused_ = 0;
  bool started_ = false;
};

SNOW_MODULE(Portal, "portal", "1.0.0");

}  // namespace
}  // namespace snow::portal
