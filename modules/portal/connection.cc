#include "connection.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>
#include <google/protobuf/util/time_util.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "snow/posix/checked_posix.h"

namespace snow::portal {
namespace {

using google::protobuf::util::TimeUtil;

constexpr size_t kReadChunk = size_t{64} * 1024;
constexpr int kReadsPerWake = 16;  // Bounded: one busy peer must not starve the others.
constexpr Duration kLinger = std::chrono::seconds(1);

std::atomic<uint64_t> gSerial{1};

std::string errnoText(int errnum) {
  return std::strerror(errnum);
}

}  // namespace

Connection::Connection(Dispatcher& loop, posix::Posix& os, posix::FileDescriptor fd, Role role,
                       bool connecting, std::string address, HandshakeSettings handshake,
                       ConnectionLimits limits, std::optional<ProxiedTarget> proxy,
                       Callbacks callbacks)
    : loop_(loop),
      os_(os),
      fd_(std::move(fd)),
      role_(role),
      address_(std::move(address)),
      settings_(std::move(handshake)),
      limits_(limits),
      proxy_(std::move(proxy)),
      callbacks_(std::move(callbacks)),
      state_(connecting ? State::Connecting : State::Handshake),
      lastReceived_(loop.now()),
      lastSent_(loop.now()),
      since_(TimeUtil::GetCurrentTime()),
      serial_(gSerial.fetch_add(1, std::memory_order_relaxed)) {
  settings_.maxFrame = limits_.maxMessage;
  // Messages are small and latency matters more than segment count; writes are batched per loop
  // pass already (transmit), so Nagle would only add delayed-ACK stalls.
  const int one = 1;
  (void)posix::tolerant(
      [&] { return os_.setsockopt(fd_.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)); });
  watch_ = loop_.createFileEvent(
      fd_.get(), [this](uint32_t events) { onReady(events); },
      connecting ? FileReady::kWrite : FileReady::kRead);
  handshakeTimer_ = loop_.createTimer([this] {
    fail(
        "timeout",
        fmt::format(
            "no handshake within {} ms (still {})",
            std::chrono::duration_cast<std::chrono::milliseconds>(limits_.handshakeTimeout).count(),
            stateName()));
  });
  handshakeTimer_->enable(limits_.handshakeTimeout);
  idleTimer_ = loop_.createTimer([this] { tick(); });
  if (!connecting) {
    startHandshake();
  }
}

Connection::~Connection() {
  *alive_ = false;
}

const char* Connection::stateName() const noexcept {
  switch (state_) {
    case State::Connecting:
      return "connecting";
    case State::Proxy:
      return "proxy";
    case State::Handshake:
      return "handshake";
    case State::Established:
      return "established";
    case State::Closing:
      return "closing";
    case State::Closed:
      return "closed";
  }
  return "?";
}

void Connection::onReady(uint32_t events) {
  if (state_ == State::Connecting) {
    if ((events & (FileReady::kWrite | FileReady::kRead | FileReady::kClosed)) != 0) {
      connected();
    }
    return;
  }
  if ((events & FileReady::kWrite) != 0) {
    flush();
  }
  if ((events & (FileReady::kRead | FileReady::kClosed)) != 0) {
    if (isOpen()) {
      readSome();
    } else if (state_ == State::Closing) {
      drainClosing();
    }
  }
}

void Connection::drainClosing() {
  // A lingering close, as HTTP servers do it: our error frame is out and our side shut for
  // writing; what the peer still sends is read and dropped until it closes too. Closing at once
  // instead would answer its next bytes with a reset, which destroys the error frame still
  // unread in its receive buffer.
  char buffer[4096];
  for (int i = 0; i < kReadsPerWake; ++i) {
    auto r = posix::tolerant([&] { return os_.read(fd_.get(), buffer, sizeof(buffer)); });
    if (r.errnum == EINTR) {
      continue;
    }
    if (r.errnum == EAGAIN || r.errnum == EWOULDBLOCK) {
      return;
    }
    if (!r.ok() || r.value == 0) {
      finish(closeReason_);
      return;
    }
  }
}

void Connection::connected() {
  int error = 0;
  socklen_t length = sizeof(error);
  auto r = posix::tolerant(
      [&] { return os_.getsockopt(fd_.get(), SOL_SOCKET, SO_ERROR, &error, &length); });
  if (!r.ok() || error != 0) {
    finish(fmt::format("cannot connect to {}{}: {}", proxy_ ? "the SOCKS5 proxy for " : "",
                       address_, errnoText(r.ok() ? error : r.errnum)));
    return;
  }
  if (proxy_) {
    state_ = State::Proxy;
    try {
      socks_.emplace(proxy_->host, proxy_->port, proxy_->credentials);
    } catch (const std::exception& e) {
      finish(fmt::format("SOCKS5 to {}: {}", address_, e.what()));
      return;
    }
    watch_->setEnabled(FileReady::kRead);
    queue(socks_->takeOutput());
    return;
  }
  watch_->setEnabled(FileReady::kRead);
  startHandshake();
}

void Connection::startHandshake() {
  state_ = State::Handshake;
  try {
    handshake_ = std::make_unique<Handshake>(role_, settings_);
    queue(handshake_->helloFrame());
  } catch (const std::exception& e) {
    finish(fmt::format("cannot start the handshake: {}", e.what()));
  }
}

void Connection::readSome() {
  char buffer[kReadChunk];
  for (int i = 0; i < kReadsPerWake && isOpen(); ++i) {
    auto r = posix::tolerant([&] { return os_.read(fd_.get(), buffer, sizeof(buffer)); });
    if (r.errnum == EINTR) {
      continue;
    }
    if (r.errnum == EAGAIN || r.errnum == EWOULDBLOCK) {
      return;
    }
    if (!r.ok()) {
      finish(fmt::format("read: {}", errnoText(r.errnum)));
      return;
    }
    if (r.value == 0) {
      const size_t cut = decoder_.pending();
      finish(cut > 0 ? fmt::format("the peer closed the connection in the middle of a frame "
                                   "({} bytes of it received)",
                                   cut)
                     : std::string("the peer closed the connection"));
      return;
    }
    stats_.bytesIn += static_cast<uint64_t>(r.value);
    take(std::string_view(buffer, static_cast<size_t>(r.value)));
  }
}

void Connection::take(std::string_view bytes) {
  if (state_ == State::Proxy) {
    size_t used = 0;
    try {
      used = socks_->feed(bytes);
    } catch (const Socks5Error& e) {
      finish(fmt::format("SOCKS5 to {}: {}", address_, e.what()));
      return;
    }
    queue(socks_->takeOutput());
    if (!socks_->done()) {
      return;
    }
    socks_.reset();
    bytes.remove_prefix(used);
    startHandshake();
  }
  decoder_.feed(bytes);
  while (isOpen()) {
    std::optional<std::string> body;
    try {
      body = decoder_.next();
    } catch (const FrameError& e) {
      fail("bad_frame", e.what());
      return;
    }
    if (!body) {
      return;
    }
    lastReceived_ = loop_.now();
    onFrame(*body);
  }
}

void Connection::onFrame(const std::string& body) {
  try {
    if (state_ == State::Handshake) {
      if (refusedBy(body)) {
        return;
      }
      if (!handshake_->helloReceived()) {
        const std::string auth = handshake_->onHello(body);
        peerId_ = handshake_->peerId();
        sealed_ = true;
        queue(auth);
        // Still a stranger: its next frame is its auth, as small as a hello. The limit rises
        // only once it proved its key (and the secret).
        decoder_.setLimit(kHelloLimitBytes + Channel::kTagBytes);
        return;
      }
      handshake_->onAuth(body);
      decoder_.setLimit(limits_.maxMessage + Channel::kTagBytes);
      state_ = State::Established;
      handshakeTimer_->disable();
      idleTimer_->enable(limits_.idleTimeout / 3);
      if (callbacks_.established) {
        callbacks_.established(*this);
      }
      return;
    }
    if (state_ != State::Established) {
      return;
    }
    const std::string plaintext = handshake_->channel().open(body);
    v1::Envelope envelope;
    try {
      envelope = decodeEnvelope(plaintext);
    } catch (const EnvelopeError& e) {
      v1::Envelope error = errorEnvelope("bad_message", e.what());
      queueEnvelope(error);
      return;
    }
    onMessage(std::move(envelope));
  } catch (const HandshakeError& e) {
    fail(e.code(), e.what());
  }
}

bool Connection::refusedBy(std::string_view body) {
  // A peer that refuses us sends a plain portal.error instead of its hello, or instead of its
  // auth when it refused our hello after we accepted its own (docs/protocol/portal.md).
  if (body.find("\"portal.error\"") == std::string_view::npos) {
    return false;
  }
  v1::Envelope error;
  try {
    error = decodeEnvelope(body);
  } catch (const EnvelopeError&) {
    return false;  // Sealed, or not an envelope: the handshake says what is wrong with it.
  }
  if (error.type() != "portal.error") {
    return false;
  }
  finish(fmt::format("refused by the peer: {}: {}", payloadField(error, "code"),
                     payloadField(error, "message")));
  return true;
}

void Connection::onMessage(v1::Envelope&& envelope) {
  ++stats_.messagesIn;
  if (envelope.sender() != peerId_) {
    auto error = errorEnvelope("bad_message",
                               fmt::format("sender '{}' is not this connection's node {}",
                                           envelope.sender().substr(0, 40), peerId_),
                               envelope.id());
    queueEnvelope(error);
    return;
  }
  const std::string& type = envelope.type();
  if (type.starts_with("portal.")) {
    if (type == "portal.ping") {
      v1::Envelope pong;
      pong.set_type("portal.pong");
      auto& fields = *pong.mutable_payload()->mutable_struct_value()->mutable_fields();
      fields["ref"].set_string_value(envelope.id());
      fields["payload"] = envelope.payload();
      queueEnvelope(pong);
    } else if (type == "portal.error") {
      // Kept for the log line when the connection ends: the peer closes after a fatal one.
      peerError_ = payloadField(envelope, "message");
    } else if (type != "portal.pong") {
      auto error = errorEnvelope("unknown_type", fmt::format("no such protocol message '{}'", type),
                                 envelope.id());
      queueEnvelope(error);
    }
    return;
  }
  if (callbacks_.message) {
    callbacks_.message(*this, std::move(envelope));
  }
}

bool Connection::transmit(v1::Envelope& envelope) {
  if (state_ != State::Established) {
    return false;
  }
  if (envelope.id().empty()) {
    envelope.set_id(fmt::format("{:x}", nextId_++));
  }
  envelope.set_sender(settings_.identity->nodeId());
  std::string json = encodeEnvelope(envelope);
  if (json.size() > std::min(handshake_->peerMaxFrame(), limits_.highWater)) {
    return false;  // Over the peer's limit, or more than our output may ever hold.
  }
  ++stats_.messagesOut;
  handshake_->channel().sealInto(json, out_);
  if (queuedBytes() > limits_.highWater) {
    flush();  // Drops the peer now if the socket cannot take it.
    return isOpen();
  }
  // One write for everything sent during this loop pass (a burst of replies to one read, a
  // broadcast): a write per message cost more than the sealing.
  if (!flushScheduled_) {
    flushScheduled_ = true;
    loop_.schedule([this, alive = alive_] {
      if (*alive) {
        flushScheduled_ = false;
        flush();
      }
    });
  }
  return true;
}

void Connection::queueEnvelope(v1::Envelope& envelope) {
  if (envelope.id().empty()) {
    envelope.set_id(fmt::format("{:x}", nextId_++));
  }
  envelope.set_sender(settings_.identity->nodeId());
  const std::string json = encodeEnvelope(envelope);
  if (sealed_) {
    handshake_->channel().sealInto(json, out_);
    flush();
  } else {
    queue(encodeFrame(json, json.size()));
  }
}

void Connection::queue(std::string_view bytes) {
  if (bytes.empty()) {
    return;
  }
  out_.append(bytes);
  flush();
}

void Connection::flush() {
  if (state_ == State::Closed) {
    return;
  }
  while (outOffset_ < out_.size()) {
    auto r = posix::tolerant(
        [&] { return os_.write(fd_.get(), out_.data() + outOffset_, out_.size() - outOffset_); });
    if (r.errnum == EINTR) {
      continue;
    }
    if (r.errnum == EAGAIN || r.errnum == EWOULDBLOCK) {
      break;
    }
    if (!r.ok()) {
      out_.clear();
      outOffset_ = 0;
      finish(fmt::format("write: {}", errnoText(r.errnum)));
      return;
    }
    outOffset_ += static_cast<size_t>(r.value);
    stats_.bytesOut += static_cast<uint64_t>(r.value);
    lastSent_ = loop_.now();
  }
  if (outOffset_ == out_.size()) {
    out_.clear();
    outOffset_ = 0;
    if (state_ == State::Closing) {
      (void)posix::tolerant([&] { return os_.shutdown(fd_.get(), SHUT_WR); });
      watch_->setEnabled(FileReady::kRead);
      return;
    }
  } else if (outOffset_ > (size_t{1} << 20) && outOffset_ > out_.size() / 2) {
    out_.erase(0, outOffset_);  // Compact: amortised O(1) per byte, bounded by the high water.
    outOffset_ = 0;
  }
  if (state_ == State::Closed || state_ == State::Connecting) {
    return;
  }
  if (queuedBytes() > limits_.highWater && state_ != State::Closing) {
    const size_t queued = queuedBytes();
    out_.clear();
    outOffset_ = 0;
    finish(
        fmt::format("dropped: the peer reads too slowly ({} bytes queued, over the "
                    "high-water mark of {})",
                    queued, limits_.highWater));
    return;
  }
  watch_->setEnabled(FileReady::kRead | (queuedBytes() > 0 ? FileReady::kWrite : 0));
}

void Connection::tick() {
  const MonotonicTime now = loop_.now();
  if (now - lastReceived_ >= limits_.idleTimeout) {
    fail("timeout",
         fmt::format(
             "nothing received for {} ms (the idle timeout)",
             std::chrono::duration_cast<std::chrono::milliseconds>(limits_.idleTimeout).count()));
    return;
  }
  if (now - lastSent_ >= limits_.idleTimeout / 3 && queuedBytes() == 0) {
    v1::Envelope ping;
    ping.set_type("portal.ping");
    transmit(ping);
  }
  if (isOpen()) {
    idleTimer_->enable(limits_.idleTimeout / 3);
  }
}

void Connection::fail(const std::string& code, const std::string& message, const std::string& ref) {
  if (!isOpen()) {
    return;
  }
  closeReason_ = fmt::format("{}: {}", code, message);
  if (state_ != State::Handshake && state_ != State::Established) {
    finish(closeReason_);  // Nobody speaking the protocol to tell.
    return;
  }
  v1::Envelope error = errorEnvelope(code, message, ref);
  queueEnvelope(error);
  if (!isOpen()) {
    return;  // The write failed: finished already.
  }
  state_ = State::Closing;
  handshakeTimer_->disable();
  idleTimer_->disable();
  lingerTimer_ = loop_.createTimer([this] { finish(closeReason_); });
  lingerTimer_->enable(kLinger);
  flush();  // Shuts our side for writing once the error frame is out (then drainClosing).
}

void Connection::close(const std::string& reason) {
  if (isOpen()) {
    finish(reason);
  }
}

void Connection::finish(const std::string& reason) {
  if (state_ == State::Closed) {
    return;
  }
  state_ = State::Closed;
  closeReason_ = reason;
  watch_.reset();
  handshakeTimer_->disable();
  idleTimer_->disable();
  if (lingerTimer_) {
    lingerTimer_->disable();
  }
  (void)posix::tolerant([&] { return os_.shutdown(fd_.get(), SHUT_RDWR); });
  fd_.reset();
  if (callbacks_.closed) {
    callbacks_.closed(*this);
  }
}

}  // namespace snow::portal
