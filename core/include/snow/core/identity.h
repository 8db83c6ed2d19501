#pragma once

// The node's identity: an Ed25519 key pair, and the node id derived from its public key.
//
// The node id is hex(BLAKE2b-128(public key)): 32 lower-case hex digits, the one printable name
// of a node in logs, RPC answers, events, traces and the portal protocol (docs/protocol/
// portal.md). (Event ids keep a random per-process origin: they must not repeat after a restart.)
//
// On disk (daemon.key_directory, `snow-core keygen`): `node.key` holds the 32-byte seed in hex,
// owner-only (0600; a key readable by others is refused, as ssh does); `node.pub` the public key
// and the node id, for operators who pin peers.
//
// Crypto: libsodium (crypto_sign for Ed25519, crypto_generichash for BLAKE2b). Thread: an
// identity is immutable after construction; use it from any thread. Errors: load/save throw
// std::runtime_error naming the file and what is wrong with it; the rest does not fail.

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "snow/posix/posix.h"

namespace snow {

inline constexpr size_t kPublicKeyBytes = 32;
inline constexpr size_t kSignatureBytes = 64;
inline constexpr size_t kNodeIdHexDigits = 32;
using PublicKey = std::array<uint8_t, kPublicKeyBytes>;
using Signature = std::array<uint8_t, kSignatureBytes>;

class NodeIdentity {
 public:
  // A fresh key pair, from the POSIX layer's getrandom.
  static NodeIdentity generate(posix::Posix& os);
  static NodeIdentity fromSeed(std::span<const uint8_t, 32> seed);
  // The key in `directory`/node.key.
  static NodeIdentity load(posix::Posix& os, const std::string& directory);
  // Whether `directory`/node.key exists (whatever its content).
  static bool existsIn(posix::Posix& os, const std::string& directory);
  // Writes node.key (0600) and node.pub into `directory`, creating it (0700) if needed. Refuses
  // to replace an existing node.key unless `overwrite`: a node's key is its name to its peers.
  void save(posix::Posix& os, const std::string& directory, bool overwrite) const;

  NodeIdentity(const NodeIdentity& other) = default;
  NodeIdentity& operator=(const NodeIdentity& other) = default;
  ~NodeIdentity();

  [[nodiscard]] const PublicKey& publicKey() const noexcept { return publicKey_; }
  [[nodiscard]] const std::string& nodeId() const noexcept { return nodeId_; }
  [[nodiscard]] Signature sign(std::string_view message) const;

  static bool verify(const PublicKey& key, std::string_view message, const Signature& signature);
  static std::string nodeIdOf(const PublicKey& key);
  // Whether `text` has the shape of a node id (32 lower-case hex digits).
  static bool isNodeId(std::string_view text) noexcept;

 private:
  NodeIdentity() = default;

  std::array<uint8_t, 64> secretKey_{};  // libsodium's form: seed || public key.
  PublicKey publicKey_{};
  std::string nodeId_;
};

// Lower-case hex of `bytes`.
std::string toHex(std::span<const uint8_t> bytes);
// The bytes of lower- or upper-case hex `text`, or nullopt when it is not hex of an even length.
std::optional<std::vector<uint8_t>> fromHex(std::string_view text);

}  // namespace snow
