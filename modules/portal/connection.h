#pragma once

// One portal connection on the loop: connect (directly or through a SOCKS5 proxy), handshake,
// then sealed messages both ways, with the limits of docs/protocol/portal.md.
//
// Life: Connecting -> (Proxy) -> Handshake -> Established -> Closing -> Closed. Whatever ends it
// (the peer, a limit, bad input, fail()) ends in Closed with closeReason() saying why, and then
// Callbacks::closed runs once; the owner destroys the connection later (deferredDelete), never
// inside a callback of its own.
//
// Bad input is answered as the protocol says: an error frame (plain before the peer's hello was
// accepted, sealed after), then close for fatal ones; a malformed message after the handshake is
// answered and the connection goes on. Memory per connection is bounded: frames by the message
// limit (4 KiB before the handshake), output by the high-water mark (a slower reader is dropped).
//
// Thread: the loop's. Ownership: owns its socket. Errors: nothing throws out of the loop
// callbacks; send() reports whether the message was queued.

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <google/protobuf/timestamp.pb.h>

#include "snow/core/dispatcher.h"
#include "snow/core/function.h"
#include "snow/portal/v1/portal.pb.h"
#include "snow/posix/file_descriptor.h"
#include "snow/posix/posix.h"

#include "frame.h"
#include "handshake.h"
#include "socks5.h"

namespace snow::portal {

inline constexpr size_t kHelloLimitBytes = 4096;

struct ConnectionLimits {
  size_t maxMessage = kDefaultMaxFrameBytes;
  size_t highWater = size_t{4} << 20;
  Duration handshakeTimeout = std::chrono::seconds(5);
  Duration idleTimeout = std::chrono::seconds(60);
};

// Where a connection through a SOCKS5 proxy goes (the socket is connected to the proxy).
struct ProxiedTarget {
  std::string host;
  uint16_t port = 0;
  std::optional<Socks5Credentials> credentials;
};

struct ConnectionStats {
  uint64_t messagesIn = 0;
  uint64_t messagesOut = 0;
  uint64_t bytesIn = 0;
  uint64_t bytesOut = 0;
};

class Connection : public DeferredDeletable {
 public:
  enum class State { Connecting, Proxy, Handshake, Established, Closing, Closed };

  struct Callbacks {
    UniqueFunction<void(Connection&)> established;
    // An application message (type not portal.*), its sender checked to be the peer.
    UniqueFunction<void(Connection&, v1::Envelope&&)> message;
    UniqueFunction<void(Connection&)> closed;
  };

  // `fd`: non-blocking; accepted (Role::Server) or with a connect() in progress (Role::Client,
  // `connecting`), to the proxy when `proxy` is set. `address`: the peer's, for messages.
  Connection(Dispatcher& loop, posix::Posix& os, posix::FileDescriptor fd, Role role,
             bool connecting, std::string address, HandshakeSettings handshake,
             ConnectionLimits limits, std::optional<ProxiedTarget> proxy, Callbacks callbacks);
  ~Connection() override;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Seals and queues `envelope` (its sender is set to this node); what is queued during one loop
  // pass goes out in one write at its end. False when not established or over the peer's
  // message limit; closes the connection when the peer does not read (over the high-water mark).
  bool transmit(v1::Envelope& envelope);
  // Sends a `portal.error` (when the state allows one), then closes; `reason` is closeReason().
  void fail(const std::string& code, const std::string& message, const std::string& ref = {});
  // Closes without a word (shutting down, a duplicate).
  void close(const std::string& reason);

  [[nodiscard]] State state() const noexcept { return state_; }
  [[nodiscard]] const char* stateName() const noexcept;
  [[nodiscard]] Role role() const noexcept { return role_; }
  [[nodiscard]] const std::string& address() const noexcept { return address_; }
  // The peer's node id once its hello was accepted; empty before.
  [[nodiscard]] const std::string& peerId() const noexcept { return peerId_; }
  [[nodiscard]] const std::string& closeReason() const noexcept { return closeReason_; }
  // The message of the last portal.error the peer sent; empty when it sent none.
  [[nodiscard]] const std::string& peerError() const noexcept { return peerError_; }
  [[nodiscard]] const ConnectionStats& stats() const noexcept { return stats_; }
  [[nodiscard]] size_t queuedBytes() const noexcept { return out_.size() - outOffset_; }
  [[nodiscard]] const google::protobuf::Timestamp& since() const noexcept { return since_; }
  // A number unique within the process, for owners' maps.
  [[nodiscard]] uint64_t serial() const noexcept { return serial_; }

 private:
  void onReady(uint32_t events);
  void connected();
  void startHandshake();
  void readSome();
  void drainClosing();
  void take(std::string_view bytes);
  void onFrame(const std::string& body);
  void onMessage(v1::Envelope&& envelope);
  bool refusedBy(std::string_view body);
  void queue(std::string_view bytes);
  void queueEnvelope(v1::Envelope& envelope);
  void flush();
  void tick();
  void finish(const std::string& reason);
  [[nodiscard]] bool isOpen() const noexcept {
    return state_ != State::Closing && state_ != State::Closed;
  }

  Dispatcher& loop_;
  posix::Posix& os_;
  posix::FileDescriptor fd_;
  FileEventPtr watch_;
  Role role_;
  std::string address_;
  HandshakeSettings settings_;
  ConnectionLimits limits_;
  std::optional<ProxiedTarget> proxy_;
  std::optional<Socks5Client> socks_;
  Callbacks callbacks_;
  State state_;
  std::unique_ptr<Handshake> handshake_;
  FrameDecoder decoder_{kHelloLimitBytes};
  std::string out_;
  size_t outOffset_ = 0;
  TimerPtr handshakeTimer_;
  TimerPtr idleTimer_;
  TimerPtr lingerTimer_;
  MonotonicTime lastReceived_;
  MonotonicTime lastSent_;
  std::string peerId_;
  std::string closeReason_;
  std::string peerError_;
  ConnectionStats stats_;
  google::protobuf::Timestamp since_;
  uint64_t serial_;
  uint64_t nextId_ = 1;
  bool sealed_ = false;  // Our side seals from now on (we sent our auth).
  bool flushScheduled_ = false;
  // Cleared by the destructor: a flush scheduled on the loop must not outlive the connection.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace snow::portal
