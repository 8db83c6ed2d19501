#pragma once

// A real SOCKS5 proxy for tests, from Debian's packages, so that the portal's SOCKS5 client is
// checked against servers that share none of our code (scripts/install-deps installs both):
//
//   - Without credentials: Dante (dante-server, /usr/sbin/danted), the reference SOCKS server,
//     strict about the protocol and configured like a production proxy. Its username/password
//     method checks the system password database (or PAM), so using it would mean creating
//     system users on the test machine.
//   - With credentials: MicroSocks (microsocks, /usr/bin/microsocks), which takes one username
//     and password on its command line and requires them (RFC 1929).
//
// The proxy listens on 127.0.0.1 only, on a free port. Dante also connects out over the loopback
// interface only (its external interface is `lo`, so IPv4 and IPv6 destinations both work);
// MicroSocks would connect anywhere, so tests give it loopback destinations only. Destinations may
// be address literals or names, which the proxy resolves.
//
// Dante forks about twenty processes at start, all writing to the log this class reads; SIGTERM
// ends them all. Running as root (as in CI), it is told to drop to `nobody` (user.unprivileged),
// as it warns it should; as another user, it runs as that user. It needs no system users of its
// own, unlike its username/password method, hence MicroSocks for that.
//
// Thread: loop thread only, like the DaemonProcess that runs the server: start() and the
// destructor run `loop`, and the process is spawned through posix::active(), which the test must
// have set (posix::ScopedInjector). Errors: start() throws std::runtime_error, naming the server
// and holding its log, when the server cannot be started or does not answer SOCKS5 within the
// deadline.

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "snow/core/dispatcher.h"

#include "support/files.h"

namespace snow::testing {

class DaemonProcess;

class SocksProxy {
 public:
  // What clients must send (RFC 1929), and what the proxy accepts.
  struct Credentials {
    std::string username;
    std::string password;
  };

  static constexpr std::chrono::milliseconds kStartDeadline = std::chrono::seconds(20);

  // Starts Dante (no credentials: no authentication) or MicroSocks (credentials: only that
  // username/password) and returns once the proxy answers a SOCKS5 greeting on port().
  static std::unique_ptr<SocksProxy> start(Dispatcher& loop,
                                           std::optional<Credentials> credentials = std::nullopt);
  ~SocksProxy();  // Stops the server (SIGTERM, then SIGKILL) and removes its files.
  SocksProxy(const SocksProxy&) = delete;
  SocksProxy& operator=(const SocksProxy&) = delete;

  [[nodiscard]] uint16_t port() const noexcept { return port_; }
  // "127.0.0.1:PORT", the proxy's address as a configuration names it.
  [[nodiscard]] std::string address() const;
  // "danted" or "microsocks", for messages.
  [[nodiscard]] const std::string& server() const noexcept { return server_; }
  // What the server printed so far (Dante logs each connection it relays or refuses; MicroSocks
  // prints only errors). Runs nothing: a test that wants the latest lines runs the loop first.
  [[nodiscard]] std::string log() const;

 private:
  SocksProxy(Dispatcher& loop, std::optional<Credentials> credentials);
  // One try on a fresh free port: false when the port was taken before the server bound it.
  bool tryStart();
  [[noreturn]] void failToStart(const std::string& why);

  Dispatcher& loop_;
  std::optional<Credentials> credentials_;
  std::string server_;
  TempDir directory_;
  uint16_t port_ = 0;
  std::unique_ptr<DaemonProcess> process_;
};

}  // namespace snow::testing
