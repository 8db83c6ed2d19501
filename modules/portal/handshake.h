#pragma once

// The portal's handshake and sealed frames (docs/protocol/portal.md, "Handshake" and "Sealing").
//
// I/O-free: a Handshake turns the peer's frame bodies into the frames to send, so that the
// connection code (connection.h) only moves bytes, and the tests and the fuzzer drive the
// cryptography directly.
//
//   Handshake h(Role::Client, settings);
//   send(h.helloFrame());
//   send(h.onHello(peerHelloBody));   // -> our sealed portal.auth frame
//   h.onAuth(peerFirstSealedBody);    // verified: h.established()
//   Channel channel = h.channel();    // seal()/open() for the rest of the connection
//
// Thread: one connection's. Errors: HandshakeError (code() is the protocol's error code) for
// everything the peer got wrong; the connection must send it as an error frame and close.

#include <array>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include "snow/core/identity.h"
#include "snow/portal/v1/portal.pb.h"

namespace snow::portal {

enum class Role { Client, Server };

class HandshakeError : public std::runtime_error {
 public:
  HandshakeError(std::string code, const std::string& message)
      : std::runtime_error(message), code_(std::move(code)) {}
  [[nodiscard]] const std::string& code() const noexcept { return code_; }

 private:
  std::string code_;
};

using SessionKey = std::array<uint8_t, 32>;

// One direction of sealed frames: ChaCha20-Poly1305 with a counter nonce, the frame header as
// associated data. A frame that does not open is an attack or a bug: fatal.
class Channel {
 public:
  inline static constexpr size_t kTagBytes = 16;

  Channel() = default;
  Channel(const SessionKey& sendKey, const SessionKey& receiveKey)
      : sendKey_(sendKey), receiveKey_(receiveKey) {}
  ~Channel();
  Channel(const Channel&) = default;
  Channel& operator=(const Channel&) = default;

  // The whole frame (header included) carrying `plaintext` sealed.
  [[nodiscard]] std::string seal(std::string_view plaintext);
  // Appends the whole sealed frame to `out` (no temporary string: the send path's hot loop).
  void sealInto(std::string_view plaintext, std::string& out);
  // The plaintext of a received frame's body. Throws HandshakeError("bad_frame") when it does
  // not open.
  [[nodiscard]] std::string open(std::string_view body);

 private:
  SessionKey sendKey_{};
  SessionKey receiveKey_{};
  uint64_t sent_ = 0;
  uint64_t received_ = 0;
};

struct HandshakeSettings {
  const NodeIdentity* identity = nullptr;  // Borrowed; must outlive the handshake.
  // BLAKE2b-256 of the cluster secret (clusterKeyOf), when one is configured.
  std::optional<SessionKey> clusterKey;
  size_t maxFrame = 65536;   // What we accept, announced in our hello.
  std::string expectedPeer;  // A node id the peer must have; empty: any.
};

SessionKey clusterKeyOf(std::string_view secret);

class Handshake {
 public:
  Handshake(Role role, HandshakeSettings settings);
  ~Handshake();
  Handshake(const Handshake&) = delete;
  Handshake& operator=(const Handshake&) = delete;

  // Our hello, as a whole plain frame.
  [[nodiscard]] std::string helloFrame();
  // Checks the peer's hello body; returns our sealed portal.auth frame.
  [[nodiscard]] std::string onHello(std::string_view body);
  // Opens and checks the peer's first sealed frame (its portal.auth).
  void onAuth(std::string_view body);

  [[nodiscard]] bool helloReceived() const noexcept { return helloReceived_; }
  [[nodiscard]] bool established() const noexcept { return established_; }
  // Valid after onHello.
  [[nodiscard]] const std::string& peerId() const noexcept { return peerId_; }
  [[nodiscard]] size_t peerMaxFrame() const noexcept { return peerMaxFrame_; }
  // The sealed channel; valid after onHello (it opens the peer's auth frame).
  [[nodiscard]] Channel& channel() noexcept { return channel_; }

 private:
  Role role_;
  HandshakeSettings settings_;
  std::array<uint8_t, 32> ephemeralSecret_{};
  std::array<uint8_t, 32> ephemeralPublic_{};
  std::array<uint8_t, 32> challenge_{};
  std::string ourHello_;  // The body exactly as sent: the transcript hashes it.
  std::array<uint8_t, 32> transcript_{};
  PublicKey peerKey_{};
  std::string peerId_;
  size_t peerMaxFrame_ = 0;
  Channel channel_;
  bool helloReceived_ = false;
  bool established_ = false;
};

// The protocol's role names ("client", "server").
const char* roleName(Role role) noexcept;

}  // namespace snow::portal
