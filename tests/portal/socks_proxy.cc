#include "socks_proxy.h"

#include <csignal>
#include <cstring>
#include <stdexcept>
#include <system_error>

#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "snow/posix/file_descriptor.h"

#include "daemon/daemon_process.h"

namespace snow::testing {
namespace {

// A port another process took between freePort() and the server's bind is tried again on a new
// port, this many times in all.
constexpr int kAttempts = 3;
constexpr std::chrono::seconds kProbeTimeout(2);
constexpr std::chrono::milliseconds kPollInterval = std::chrono::milliseconds(10);
constexpr std::chrono::milliseconds kStopDeadline = std::chrono::seconds(10);

sockaddr_in loopback(uint16_t port) {
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(port);
  return address;
}

// A port free on 127.0.0.1 now. The servers cannot bind port 0 and tell which port they got, so
// the port is chosen here, and tryStart() copes with losing the race for it.
uint16_t freePort() {
  posix::FileDescriptor fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in address = loopback(0);
  socklen_t length = sizeof(address);
  if (!fd || ::bind(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    throw std::system_error(errno, std::system_category(), "socks-proxy: a free port");
  }
  return ntohs(address.sin_port);
}

struct Probe {
  enum class Outcome {
    Refused,  // Nothing listens yet.
    Silent,   // Connected, but no answer before the timeout or the connection closed: busy yet.
    Socks5,   // The expected method selection.
    Other,    // Something else answered.
  } outcome = Outcome::Refused;
  std::string detail;  // What happened, for an error message.
};

// Connects to the port and sends a SOCKS5 greeting offering what the proxy should accept: a
// listening port alone could be another program's that took the port first.
Probe probe(uint16_t port, bool withCredentials) {
  posix::FileDescriptor fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  const sockaddr_in address = loopback(port);
  if (!fd ||
      ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
    return {Probe::Outcome::Refused, std::strerror(errno)};
  }
  const timeval timeout{kProbeTimeout.count(), 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  const std::string greeting =
      withCredentials ? std::string("\x05\x01\x02", 3) : std::string("\x05\x01\x00", 3);
  if (::send(fd.get(), greeting.data(), greeting.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(greeting.size())) {
    return {Probe::Outcome::Silent, fmt::format("send: {}", std::strerror(errno))};
  }
  std::string answer;
  while (answer.size() < 2) {
    char buffer[2];
    const ssize_t n = ::recv(fd.get(), buffer, 2 - answer.size(), 0);
    if (n <= 0) {
      return {Probe::Outcome::Silent,
              n == 0 ? "the connection closed" : fmt::format("recv: {}", std::strerror(errno))};
    }
    answer.append(buffer, static_cast<size_t>(n));
  }
  if (answer == greeting.substr(0, 1) + greeting.substr(2, 1)) {
    return {Probe::Outcome::Socks5, ""};
  }
  return {Probe::Outcome::Other,
          fmt::format("answered {:02x} {:02x}", static_cast<unsigned char>(answer[0]),
                      static_cast<unsigned char>(answer[1]))};
}

}  // namespace

SocksProxy::SocksProxy(Dispatcher& loop, std::optional<Credentials> credentials)
    : loop_(loop),
      credentials_(std::move(credentials)),
      server_(credentials_ ? "microsocks" : "danted"),
      directory_("snow-socks-proxy") {}

std::unique_ptr<SocksProxy> SocksProxy::start(Dispatcher& loop,
                                              std::optional<Credentials> credentials) {
  // Not make_unique: the constructor is private, so that every proxy is a started one.
  std::unique_ptr<SocksProxy> proxy(new SocksProxy(loop, std::move(credentials)));
  for (int attempt = 1; !proxy->tryStart(); ++attempt) {
    if (attempt == kAttempts) {
      proxy->failToStart(fmt::format("its port was taken {} times in a row", kAttempts));
    }
  }
  return proxy;
}

SocksProxy::~SocksProxy() {
  if (process_) {
    // Dante's children hold its output too: waitForExit() returns once all of them are gone.
    process_->signal(SIGTERM);
    (void)process_->waitForExit(kStopDeadline);
    process_.reset();  // SIGKILLs the server if SIGTERM was not enough.
  }
}

std::string SocksProxy::address() const {
  return fmt::format("127.0.0.1:{}", port_);
}

std::string SocksProxy::log() const {
  return process_ ? process_->log() : std::string();
}

bool SocksProxy::tryStart() {
  process_.reset();
  port_ = freePort();
  std::string program;
  std::vector<std::string> args;
  if (credentials_) {
    program = SNOW_MICROSOCKS;
    args = {"-i", "127.0.0.1", "-p", std::to_string(port_)};
    args.insert(args.end(), {"-u", credentials_->username, "-P", credentials_->password});
  } else {
    program = SNOW_DANTED;
    // Only the loopback interface, both ways. Each rule logs the connections it passes and the
    // errors on them, so that a failing test shows what the proxy did.
    const std::string config = fmt::format(
        "logoutput: stderr\n"
        "internal: 127.0.0.1 port = {}\n"
        "external: lo\n"
        "clientmethod: none\n"
        "socksmethod: none\n"
        "{}"  // Settings come before the rules: Dante refuses them after.
        "client pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 log: error }}\n"
        "socks pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 log: connect error }}\n"
        "socks pass {{ from: 127.0.0.0/8 to: ::/0 log: connect error }}\n",
        port_,
        // As root, Dante wants an unprivileged user to run as (it warns about uid 0 otherwise).
        ::geteuid() == 0 ? "user.privileged: root\nuser.unprivileged: nobody\n" : "");
    writeFile(directory_.file("danted.conf"), config);
    args = {"-f", directory_.file("danted.conf"), "-p", directory_.file("danted.pid")};
  }
  try {
    process_ = std::make_unique<DaemonProcess>(loop_, program, args, std::vector<std::string>{});
  } catch (const std::system_error& e) {
    failToStart(fmt::format("{} (scripts/install-deps installs it)", e.what()));
  }

  const auto deadline = std::chrono::steady_clock::now() + kStartDeadline;
  for (;;) {
    const Probe result = probe(port_, credentials_.has_value());
    if (result.outcome == Probe::Outcome::Socks5) {
      return true;
    }
    // Not ready yet, or gone: running the loop a little reads the server's log and its exit. A
    // wrong answer may come from another program that took the port, and ours is about to exit:
    // long enough for that, too.
    const int code = process_->waitForExit(result.outcome == Probe::Outcome::Other ? kProbeTimeout
                                                                                   : kPollInterval);
    if (code >= 0) {
      if (process_->log().find("Address already in use") != std::string::npos) {
        return false;
      }
      failToStart(fmt::format("it exited with code {}", code));
    }
    if (result.outcome == Probe::Outcome::Other) {
      // Our server still runs, so this is its answer (another program on the port would have
      // made it exit): it is configured wrong.
      failToStart(fmt::format("port {} {} to a SOCKS5 greeting offering {}", port_, result.detail,
                              credentials_ ? "username/password" : "no authentication"));
    }
    if (std::chrono::steady_clock::now() > deadline) {
      failToStart(fmt::format("no SOCKS5 answer on port {} within {} ms (last try: {})", port_,
                              kStartDeadline.count(), result.detail));
    }
  }
}

void SocksProxy::failToStart(const std::string& why) {
  throw std::runtime_error(
      fmt::format("socks-proxy: {} did not start: {}; its log:\n{}", server_, why, log()));
}

}  // namespace snow::testing
