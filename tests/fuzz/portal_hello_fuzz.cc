// The portal's handshake as a stranger drives it: whatever bytes arrive as the hello and then as
// the auth, the server side ends in success or HandshakeError, never a crash, a hang or a leak.
// (The frames around them are portal_frame's.)

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "snow/posix/active.h"

#include "handshake.h"

// The handshake touches no file; identity.cc's key-file code only needs the symbol to link.
snow::posix::Posix& snow::posix::active() {
  __builtin_trap();
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const snow::NodeIdentity server = [] {
    std::array<uint8_t, 32> seed{};
    seed.fill(2);
    return snow::NodeIdentity::fromSeed(seed);
  }();
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  // A NUL splits the input into the hello and what follows as the first sealed frame.
  const size_t split = input.find('\0');
  const std::string_view hello = input.substr(0, split);
  const std::string_view auth =
      split == std::string_view::npos ? std::string_view() : input.substr(split + 1);
  snow::portal::Handshake handshake(
      snow::portal::Role::Server,
      snow::portal::HandshakeSettings{&server, std::nullopt, 65536, ""});
  (void)handshake.helloFrame();
  try {
    (void)handshake.onHello(hello);
    handshake.onAuth(auth);
  } catch (const snow::portal::HandshakeError&) {
  }
  return 0;
}
