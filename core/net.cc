#include "snow/core/net.h"

#include <charconv>
#include <cstring>
#include <stdexcept>
#include <system_error>

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/un.h>

namespace snow::net {
namespace {

[[noreturn]] void malformed(std::string_view text, const char* why) {
  throw std::invalid_argument(
      fmt::format("invalid address '{}': {} (expected host:port, "
                  "[ipv6]:port or unix:/path)",
                  text, why));
}

}  // namespace

Address Address::parse(std::string_view text) {
  Address out;
  if (text.starts_with("unix:")) {
    const std::string_view path = text.substr(5);
    sockaddr_un un{};
    if (path.empty() || path.size() >= sizeof(un.sun_path)) {
      malformed(text, "the unix socket path is empty or too long");
    }
    un.sun_family = AF_UNIX;
    std::memcpy(un.sun_path, path.data(), path.size());
    std::memcpy(&out.storage_, &un, sizeof(un));
    out.length_ = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
    return out;
  }
  const auto colon = text.rfind(':');
  if (colon == std::string_view::npos) {
    malformed(text, "no port");
  }
  std::string_view host = text.substr(0, colon);
  const std::string_view portText = text.substr(colon + 1);
  unsigned port = 0;
  auto [ptr, ec] = std::from_chars(portText.data(), portText.data() + portText.size(), port);
  if (ec != std::errc() || ptr != portText.data() + portText.size() || port > 65535) {
    malformed(text, "the port is not a number from 0 to 65535");
  }
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    sockaddr_in6 in6{};
    in6.sin6_family = AF_INET6;
    in6.sin6_port = htons(static_cast<uint16_t>(port));
    const std::string h(host.substr(1, host.size() - 2));
    if (inet_pton(AF_INET6, h.c_str(), &in6.sin6_addr) != 1) {
      malformed(text, "not an IPv6 address");
    }
    std::memcpy(&out.storage_, &in6, sizeof(in6));
    out.length_ = sizeof(in6);
    return out;
  }
  sockaddr_in in4{};
  in4.sin_family = AF_INET;
  in4.sin_port = htons(static_cast<uint16_t>(port));
  const std::string h(host);
  if (inet_pton(AF_INET, h.c_str(), &in4.sin_addr) != 1) {
    malformed(text, "not an IPv4 address (names are not resolved here)");
  }
  std::memcpy(&out.storage_, &in4, sizeof(in4));
  out.length_ = sizeof(in4);
  return out;
}

Address Address::fromSockaddr(const sockaddr* address, socklen_t length) {
  Address out;
  if (length > sizeof(out.storage_)) {
    throw std::invalid_argument("socket address too long");
  }
  std::memcpy(&out.storage_, address, length);
  out.length_ = length;
  return out;
}

std::string Address::toString() const {
  char text[INET6_ADDRSTRLEN] = {};
  switch (storage_.ss_family) {
    case AF_INET: {
      const auto* in4 = reinterpret_cast<const sockaddr_in*>(&storage_);
      inet_ntop(AF_INET, &in4->sin_addr, text, sizeof(text));
      return fmt::format("{}:{}", text, ntohs(in4->sin_port));
    }
    case AF_INET6: {
      const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&storage_);
      inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof(text));
      return fmt::format("[{}]:{}", text, ntohs(in6->sin6_port));
    }
    case AF_UNIX:
      return std::string("unix:") + reinterpret_cast<const sockaddr_un*>(&storage_)->sun_path;
    default:
      return fmt::format("(address family {})", storage_.ss_family);
  }
}

std::shared_ptr<Listener> Listener::open(posix::Posix& os, const Address& address, int backlog) {
  auto fail = [&](const char* call, int errnum) {
    throw std::system_error(errnum, std::system_category(),
                            fmt::format("{}({})", call, address.toString()));
  };
  auto made = os.socket(address.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (!made.ok()) {
    fail("socket", made.errnum);
  }
  posix::FileDescriptor fd(made.value);
  if (address.family() != AF_UNIX) {
    const int on = 1;
    auto r = os.setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    if (!r.ok()) {
      fail("setsockopt(SO_REUSEADDR)", r.errnum);
    }
  }
  if (auto r = os.bind(fd.get(), address.get(), address.length()); !r.ok()) {
    fail("bind", r.errnum);
  }
  if (auto r = os.listen(fd.get(), backlog); !r.ok()) {
    fail("listen", r.errnum);
  }
  sockaddr_storage bound{};
  auto length = static_cast<socklen_t>(sizeof(bound));
  if (auto r = os.getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &length); !r.ok()) {
    fail("getsockname", r.errnum);
  }
  return std::make_shared<Listener>(
      std::move(fd), Address::fromSockaddr(reinterpret_cast<sockaddr*>(&bound), length));
}

}  // namespace snow::net
