#include "handshake.h"

#include <cstring>

#include <fmt/format.h>
#include <google/protobuf/util/time_util.h>
#include <sodium.h>

#include "frame.h"

namespace snow::portal {
namespace {

constexpr std::string_view kTranscriptLabel = "snow-portal/1";
constexpr std::string_view kKeysLabel = "snow-portal/1 keys";
constexpr std::string_view kAuthLabel = "snow-portal/1 auth ";
constexpr int kVersion = 1;

std::string_view asText(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

std::string lengthPrefixed(std::string_view bytes) {
  return frameHeader(static_cast<uint32_t>(bytes.size())) + std::string(bytes);
}

// A 32-byte hex field of the hello payload.
std::array<uint8_t, 32> field32(const google::protobuf::Struct& payload, const char* name) {
  auto it = payload.fields().find(name);
  if (it == payload.fields().end() || !it->second.has_string_value()) {
    throw HandshakeError("handshake_failed", fmt::format("the peer's hello has no '{}'", name));
  }
  auto bytes = fromHex(it->second.string_value());
  if (!bytes || bytes->size() != 32) {
    throw HandshakeError(
        "handshake_failed",
        fmt::format("the peer's hello has a '{}' that is not 32 bytes of hex", name));
  }
  std::array<uint8_t, 32> out{};
  std::memcpy(out.data(), bytes->data(), out.size());
  return out;
}

void setNonce(std::array<uint8_t, crypto_aead_chacha20poly1305_IETF_NPUBBYTES>& nonce,
              uint64_t counter) {
  nonce.fill(0);
  for (size_t i = 0; i < 8; ++i) {
    nonce[4 + i] = static_cast<uint8_t>(counter >> (8 * i));
  }
}

}  // namespace

const char* roleName(Role role) noexcept {
  return role == Role::Client ? "client" : "server";
}

SessionKey clusterKeyOf(std::string_view secret) {
  SessionKey key{};
  crypto_generichash(key.data(), key.size(), reinterpret_cast<const uint8_t*>(secret.data()),
                     secret.size(), nullptr, 0);
  return key;
}

// ---- Channel ------------------------------------------------------------------------------------

Channel::~Channel() {
  sodium_memzero(sendKey_.data(), sendKey_.size());
  sodium_memzero(receiveKey_.data(), receiveKey_.size());
}

std::string Channel::seal(std::string_view plaintext) {
  std::string frame;
  sealInto(plaintext, frame);
  return frame;
}

void Channel::sealInto(std::string_view plaintext, std::string& out) {
  const auto length = static_cast<uint32_t>(plaintext.size() + kTagBytes);
  const std::string header = frameHeader(length);
  const size_t start = out.size();
  out.append(header);
  out.resize(start + kFrameHeaderBytes + length);
  std::array<uint8_t, crypto_aead_chacha20poly1305_IETF_NPUBBYTES> nonce{};
  setNonce(nonce, sent_++);
  unsigned long long written = 0;  // NOLINT(google-runtime-int): libsodium's type.
  crypto_aead_chacha20poly1305_ietf_encrypt(
      reinterpret_cast<uint8_t*>(out.data() + start + kFrameHeaderBytes), &written,
      reinterpret_cast<const uint8_t*>(plaintext.data()), plaintext.size(),
      reinterpret_cast<const uint8_t*>(header.data()), header.size(), nullptr, nonce.data(),
      sendKey_.data());
}

std::string Channel::open(std::string_view body) {
  if (body.size() <= kTagBytes) {
    throw HandshakeError("bad_frame", fmt::format("sealed frame of {} bytes is too short to hold "
                                                  "a message and its 16-byte tag",
                                                  body.size()));
  }
  const std::string header = frameHeader(static_cast<uint32_t>(body.size()));
  std::array<uint8_t, crypto_aead_chacha20poly1305_IETF_NPUBBYTES> nonce{};
  setNonce(nonce, received_);
  std::string plaintext(body.size() - kTagBytes, '\0');
  unsigned long long length = 0;  // NOLINT(google-runtime-int): libsodium's type.
  if (crypto_aead_chacha20poly1305_ietf_decrypt(
          reinterpret_cast<uint8_t*>(plaintext.data()), &length, nullptr,
          reinterpret_cast<const uint8_t*>(body.data()), body.size(),
          reinterpret_cast<const uint8_t*>(header.data()), header.size(), nonce.data(),
          receiveKey_.data()) != 0) {
    throw HandshakeError("bad_frame",
                         fmt::format("sealed frame {} does not open: altered, replayed or "
                                     "reordered in transit, or sealed with another key",
                                     received_));
  }
  ++received_;
  return plaintext;
}

// ---- Handshake ----------------------------------------------------------------------------------

Handshake::Handshake(Role role, HandshakeSettings settings)
    : role_(role), settings_(std::move(settings)) {
  if (sodium_init() < 0) {
    throw std::runtime_error("libsodium cannot be initialised");
  }
  randombytes_buf(ephemeralSecret_.data(), ephemeralSecret_.size());
  crypto_scalarmult_base(ephemeralPublic_.data(), ephemeralSecret_.data());
  randombytes_buf(challenge_.data(), challenge_.size());
}

Handshake::~Handshake() {
  sodium_memzero(ephemeralSecret_.data(), ephemeralSecret_.size());
}

std::string Handshake::helloFrame() {
  v1::Envelope hello;
  hello.set_type("portal.hello");
  hello.set_id("hello");
  hello.set_sender(settings_.identity->nodeId());
  *hello.mutable_timestamp() = google::protobuf::util::TimeUtil::GetCurrentTime();
  auto& fields = *hello.mutable_payload()->mutable_struct_value()->mutable_fields();
  fields["version"].set_number_value(kVersion);
  fields["role"].set_string_value(roleName(role_));
  fields["public_key"].set_string_value(toHex(settings_.identity->publicKey()));
  fields["ephemeral_key"].set_string_value(toHex(ephemeralPublic_));
  fields["challenge"].set_string_value(toHex(challenge_));
  fields["cluster_secret"].set_bool_value(settings_.clusterKey.has_value());
  fields["max_frame"].set_number_value(static_cast<double>(settings_.maxFrame));
  ourHello_ = encodeEnvelope(hello);
  return encodeFrame(ourHello_, ourHello_.size());
}

std::string Handshake::onHello(std::string_view body) {
  v1::Envelope hello;
  try {
    hello = decodeEnvelope(body);
  } catch (const EnvelopeError& e) {
    throw HandshakeError("bad_message", fmt::format("the peer's hello: {}", e.what()));
  }
  if (hello.type() != "portal.hello") {
    throw HandshakeError("handshake_failed",
                         fmt::format("expected the peer's portal.hello, got a '{}' message: not a "
                                     "snow-core portal, or it skipped the handshake",
                                     hello.type()));
  }
  if (!hello.payload().has_struct_value()) {
    throw HandshakeError("handshake_failed", "the peer's hello has no payload object");
  }
  const auto& payload = hello.payload().struct_value();
  const auto& fields = payload.fields();
  auto number = [&](const char* name) -> double {
    auto it = fields.find(name);
    return it != fields.end() && it->second.has_number_value() ? it->second.number_value() : -1;
  };
  if (const double version = number("version"); version != kVersion) {
    throw HandshakeError(
        "unsupported_version",
        fmt::format("the peer speaks portal protocol version {}; this node "
                    "speaks {}",
                    version < 0 ? std::string("(none)") : fmt::format("{}", version), kVersion));
  }
  const char* expectedRole = role_ == Role::Client ? "server" : "client";
  if (auto it = fields.find("role");
      it == fields.end() || it->second.string_value() != expectedRole) {
    throw HandshakeError(
        "handshake_failed",
        fmt::format("the peer's hello says role '{}', expected '{}'",
                    it == fields.end() ? "" : it->second.string_value(), expectedRole));
  }
  peerKey_ = field32(payload, "public_key");
  const auto peerEphemeral = field32(payload, "ephemeral_key");
  (void)field32(payload, "challenge");  // Hashed into the transcript with the rest of the hello.
  peerId_ = NodeIdentity::nodeIdOf(peerKey_);
  if (hello.sender() != peerId_) {
    throw HandshakeError("handshake_failed",
                         fmt::format("the peer's hello names sender '{}', but its public key is "
                                     "node {}",
                                     hello.sender().substr(0, 40), peerId_));
  }
  if (peerId_ == settings_.identity->nodeId()) {
    throw HandshakeError("handshake_failed",
                         "the peer is this node itself (connected to its own address)");
  }
  if (!settings_.expectedPeer.empty() && peerId_ != settings_.expectedPeer) {
    throw HandshakeError("handshake_failed", fmt::format("expected node {}, found node {}",
                                                         settings_.expectedPeer, peerId_));
  }
  auto secret = fields.find("cluster_secret");
  const bool peerHasSecret = secret != fields.end() && secret->second.bool_value();
  if (peerHasSecret != settings_.clusterKey.has_value()) {
    throw HandshakeError("handshake_failed",
                         peerHasSecret ? "the peer requires a cluster secret and this node has none"
                                       : "this node requires a cluster secret and the peer has "
                                         "none");
  }
  const double maxFrame = number("max_frame");
  if (maxFrame < 1024 || maxFrame > 64.0 * 1024 * 1024) {
    throw HandshakeError("handshake_failed",
                         "the peer's hello announces no max_frame between 1 KiB and 64 MiB");
  }
  peerMaxFrame_ = static_cast<size_t>(maxFrame);

  // Transcript and keys (docs/protocol/portal.md, "Handshake").
  const std::string peerHello(body);
  const std::string& clientHello = role_ == Role::Client ? ourHello_ : peerHello;
  const std::string& serverHello = role_ == Role::Client ? peerHello : ourHello_;
  const std::string transcriptInput =
      std::string(kTranscriptLabel) + lengthPrefixed(clientHello) + lengthPrefixed(serverHello);
  crypto_generichash(transcript_.data(), transcript_.size(),
                     reinterpret_cast<const uint8_t*>(transcriptInput.data()),
                     transcriptInput.size(), nullptr, 0);
  std::array<uint8_t, 32> shared{};
  if (crypto_scalarmult(shared.data(), ephemeralSecret_.data(), peerEphemeral.data()) != 0) {
    throw HandshakeError("handshake_failed", "the peer's ephemeral key is a weak point");
  }
  std::string keyInput = std::string(kKeysLabel) + std::string(asText(shared.data(), 32)) +
                         std::string(asText(transcript_.data(), 32));
  std::array<uint8_t, 64> keys{};
  crypto_generichash(keys.data(), keys.size(), reinterpret_cast<const uint8_t*>(keyInput.data()),
                     keyInput.size(), settings_.clusterKey ? settings_.clusterKey->data() : nullptr,
                     settings_.clusterKey ? settings_.clusterKey->size() : 0);
  SessionKey clientToServer{};
  SessionKey serverToClient{};
  std::memcpy(clientToServer.data(), keys.data(), 32);
  std::memcpy(serverToClient.data(), keys.data() + 32, 32);
  channel_ = role_ == Role::Client ? Channel(clientToServer, serverToClient)
                                   : Channel(serverToClient, clientToServer);
  sodium_memzero(shared.data(), shared.size());
  sodium_memzero(keyInput.data(), keyInput.size());
  sodium_memzero(keys.data(), keys.size());
  sodium_memzero(clientToServer.data(), clientToServer.size());
  sodium_memzero(serverToClient.data(), serverToClient.size());
  helloReceived_ = true;

  v1::Envelope auth;
  auth.set_type("portal.auth");
  auth.set_id("auth");
  auth.set_sender(settings_.identity->nodeId());
  *auth.mutable_timestamp() = google::protobuf::util::TimeUtil::GetCurrentTime();
  const Signature signature = settings_.identity->sign(std::string(kAuthLabel) + roleName(role_) +
                                                       std::string(asText(transcript_.data(), 32)));
  (*auth.mutable_payload()->mutable_struct_value()->mutable_fields())["signature"].set_string_value(
      toHex(signature));
  return channel_.seal(encodeEnvelope(auth));
}

void Handshake::onAuth(std::string_view body) {
  std::string plaintext;
  try {
    plaintext = channel_.open(body);
  } catch (const HandshakeError&) {
    throw HandshakeError("handshake_failed",
                         settings_.clusterKey
                             ? "the peer's proof does not open: it knows another cluster secret, "
                               "or the handshake was altered in transit"
                             : "the peer's proof does not open: the handshake was altered in "
                               "transit");
  }
  v1::Envelope auth;
  try {
    auth = decodeEnvelope(plaintext);
  } catch (const EnvelopeError& e) {
    throw HandshakeError("bad_message", fmt::format("the peer's auth: {}", e.what()));
  }
  if (auth.type() != "portal.auth") {
    throw HandshakeError("handshake_failed",
                         fmt::format("expected the peer's portal.auth, got '{}'", auth.type()));
  }
  const auto& fields = auth.payload().struct_value().fields();
  auto it = fields.find("signature");
  auto signatureBytes = it != fields.end() ? fromHex(it->second.string_value()) : std::nullopt;
  if (!signatureBytes || signatureBytes->size() != kSignatureBytes) {
    throw HandshakeError("handshake_failed", "the peer's auth has no 64-byte hex signature");
  }
  Signature signature{};
  std::memcpy(signature.data(), signatureBytes->data(), signature.size());
  const char* peerRole = role_ == Role::Client ? "server" : "client";
  if (!NodeIdentity::verify(
          peerKey_,
          std::string(kAuthLabel) + peerRole + std::string(asText(transcript_.data(), 32)),
          signature)) {
    throw HandshakeError("handshake_failed",
                         fmt::format("the peer's signature does not verify: it does not hold the "
                                     "key of node {}",
                                     peerId_));
  }
  established_ = true;
}

}  // namespace snow::portal
