#include "snow/core/identity.h"

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>
#include <sodium.h>
#include <sys/stat.h>

#include "snow/posix/checked_posix.h"
#include "snow/posix/files.h"

namespace snow {
namespace {

constexpr size_t kSeedBytes = 32;
constexpr const char* kKeyFile = "node.key";
constexpr const char* kPublicFile = "node.pub";

void initialiseSodium() {
  // Idempotent and thread-safe; it picks the fastest implementations for this CPU.
  if (sodium_init() < 0) {
    throw std::runtime_error("libsodium cannot be initialised");
  }
}

std::string errorText(int errnum) {
  return std::strerror(errnum);
}

}  // namespace

std::string toHex(std::span<const uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(bytes.size() * 2, '0');
  for (size_t i = 0; i < bytes.size(); ++i) {
    out[2 * i] = kDigits[bytes[i] >> 4U];
    out[2 * i + 1] = kDigits[bytes[i] & 0xfU];
  }
  return out;
}

std::optional<std::vector<uint8_t>> fromHex(std::string_view text) {
  if (text.size() % 2 != 0) {
    return std::nullopt;
  }
  auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') {
      return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
      return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
      return c - 'A' + 10;
    }
    return -1;
  };
  std::vector<uint8_t> out(text.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    const int high = digit(text[2 * i]);
    const int low = digit(text[2 * i + 1]);
    if (high < 0 || low < 0) {
      return std::nullopt;
    }
    out[i] = static_cast<uint8_t>((high << 4) | low);
  }
  return out;
}

NodeIdentity NodeIdentity::generate(posix::Posix& os) {
  std::array<uint8_t, kSeedBytes> seed{};
  size_t filled = 0;
  while (filled < seed.size()) {
    auto r = posix::tolerant(
        [&] { return os.getrandom(seed.data() + filled, seed.size() - filled, 0); });
    if (r.errnum == EINTR) {
      continue;
    }
    if (!r.ok()) {
      throw std::runtime_error("cannot draw a node key: getrandom: " + errorText(r.errnum));
    }
    filled += static_cast<size_t>(r.value);
  }
  NodeIdentity identity = fromSeed(seed);
  sodium_memzero(seed.data(), seed.size());
  return identity;
}

NodeIdentity NodeIdentity::fromSeed(std::span<const uint8_t, 32> seed) {
  initialiseSodium();
  NodeIdentity identity;
  crypto_sign_seed_keypair(identity.publicKey_.data(), identity.secretKey_.data(), seed.data());
  identity.nodeId_ = nodeIdOf(identity.publicKey_);
  return identity;
}

NodeIdentity::~NodeIdentity() {
  sodium_memzero(secretKey_.data(), secretKey_.size());
}

std::string NodeIdentity::nodeIdOf(const PublicKey& key) {
  initialiseSodium();
  std::array<uint8_t, kNodeIdHexDigits / 2> hash{};
  crypto_generichash(hash.data(), hash.size(), key.data(), key.size(), nullptr, 0);
  return toHex(hash);
}

bool NodeIdentity::isNodeId(std::string_view text) noexcept {
  if (text.size() != kNodeIdHexDigits) {
    return false;
  }
  for (char c : text) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return false;
    }
  }
  return true;
}

Signature NodeIdentity::sign(std::string_view message) const {
  Signature signature{};
  crypto_sign_detached(signature.data(), nullptr, reinterpret_cast<const uint8_t*>(message.data()),
                       message.size(), secretKey_.data());
  return signature;
}

bool NodeIdentity::verify(const PublicKey& key, std::string_view message,
                          const Signature& signature) {
  initialiseSodium();
  return crypto_sign_verify_detached(signature.data(),
                                     reinterpret_cast<const uint8_t*>(message.data()),
                                     message.size(), key.data()) == 0;
}

bool NodeIdentity::existsIn(posix::Posix& os, const std::string& directory) {
  struct stat st {};
  const std::string path = directory + "/" + kKeyFile;
  return posix::tolerant([&] { return os.lstat(path.c_str(), &st); }).ok();
}

NodeIdentity NodeIdentity::load(posix::Posix& os, const std::string& directory) {
  const std::string path = directory + "/" + kKeyFile;
  struct stat st {};
  if (auto r = posix::tolerant([&] { return os.stat(path.c_str(), &st); }); !r.ok()) {
    throw std::runtime_error(fmt::format("node key {}: {}", path, errorText(r.errnum)));
  }
  if ((st.st_mode & 077U) != 0) {
    throw std::runtime_error(fmt::format(
        "node key {}: permissions {:04o} are too open: it must be readable by its owner only "
        "(chmod 600 {})",
        path, st.st_mode & 07777U, path));
  }
  const char* call = nullptr;
  auto content = posix::readFile(os, path, &call);
  if (!content.ok()) {
    throw std::runtime_error(
        fmt::format("node key {}: {}: {}", path, call, errorText(content.errnum)));
  }
  // Comment lines (#) and blank lines around the one line of hex.
  std::string hex;
  size_t start = 0;
  const std::string& text = content.value;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) {
      end = text.size();
    }
    std::string_view line(text.data() + start, end - start);
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) {
      line.remove_suffix(1);
    }
    if (!line.empty() && line.front() != '#') {
      if (!hex.empty()) {
        hex.clear();
        break;  // Two key lines: not ours.
      }
      hex = line;
    }
    start = end + 1;
  }
  auto seed = fromHex(hex);
  if (!seed || seed->size() != kSeedBytes) {
    throw std::runtime_error(fmt::format(
        "node key {}: not a snow-core node key (expected one line of 64 hex digits; make one "
        "with `snow-core keygen`)",
        path));
  }
  NodeIdentity identity = fromSeed(std::span<const uint8_t, 32>(seed->data(), kSeedBytes));
  sodium_memzero(seed->data(), seed->size());
  return identity;
}

void NodeIdentity::save(posix::Posix& os, const std::string& directory, bool overwrite) const {
  if (auto r = posix::tolerant([&] { return os.mkdir(directory.c_str(), 0700); });
      !r.ok() && r.errnum != EEXIST) {
    throw std::runtime_error(
        fmt::format("key directory {}: mkdir: {}", directory, errorText(r.errnum)));
  }
  const std::string keyPath = directory + "/" + kKeyFile;
  if (!overwrite && existsIn(os, directory)) {
    throw std::runtime_error(fmt::format(
        "{} exists already: a node's key is its identity to its peers; use --force to replace "
        "it",
        keyPath));
  }
  std::string seedHex = toHex(std::span<const uint8_t>(secretKey_.data(), kSeedBytes));
  std::string key =
      fmt::format("# snow-core node key (Ed25519 seed) of node {}. Secret: keep it 0600.\n{}\n",
                  nodeId_, seedHex);
  sodium_memzero(seedHex.data(), seedHex.size());
  const char* call = nullptr;
  auto written = posix::writeFileAtomically(os, keyPath, key, 0600, &call);
  sodium_memzero(key.data(), key.size());
  if (auto r = written; !r.ok()) {
    throw std::runtime_error(fmt::format("{}: {}: {}", keyPath, call, errorText(r.errnum)));
  }
  const std::string publicPath = directory + "/" + kPublicFile;
  const std::string pub = fmt::format("# snow-core node public key (Ed25519), node id {}\n{}\n",
                                      nodeId_, toHex(publicKey_));
  if (auto r = posix::writeFileAtomically(os, publicPath, pub, 0644, &call); !r.ok()) {
    throw std::runtime_error(fmt::format("{}: {}: {}", publicPath, call, errorText(r.errnum)));
  }
}

}  // namespace snow
