#include "socks5.h"

#include <algorithm>
#include <array>
#include <utility>

#include <arpa/inet.h>
#include <fmt/format.h>

namespace snow::portal {
namespace {

constexpr unsigned char kVersion = 0x05;
constexpr unsigned char kAuthVersion = 0x01;  // RFC 1929's own version byte.
constexpr unsigned char kNoAuthentication = 0x00;
constexpr unsigned char kUsernamePassword = 0x02;
constexpr unsigned char kNoAcceptableMethod = 0xff;
constexpr unsigned char kConnect = 0x01;
constexpr unsigned char kIpv4 = 0x01;
constexpr unsigned char kDomainName = 0x03;
constexpr unsigned char kIpv6 = 0x04;
constexpr size_t kMaxField = 255;  // A one-byte length on the wire.

// The server's answers: VER METHOD, and VER STATUS for username/password.
constexpr size_t kTwoByteAnswer = 2;
// VER REP RSV ATYP, then the bound address, then the bound port.
constexpr size_t kReplyHeader = 4;
constexpr size_t kPortBytes = 2;

unsigned char byteAt(const std::string& s, size_t i) {
  return static_cast<unsigned char>(s[i]);
}

std::string hexByte(unsigned char b) {
  return fmt::format("0x{:02x}", b);
}

std::string_view replyReason(unsigned char code) {
  switch (code) {
    case 1:
      return "general failure of the proxy (its log may say why)";
    case 2:
      return "the proxy's rules do not allow this connection";
    case 3:
      return "network unreachable";
    case 4:
      return "host unreachable";
    case 5:
      return "connection refused";
    case 6:
      return "TTL expired (the destination did not answer in time)";
    case 7:
      return "command not supported (the proxy does not offer CONNECT)";
    case 8:
      return "address type not supported";
    default:
      return "unknown reply code";
  }
}

std::string_view addressTypeName(unsigned char type) {
  switch (type) {
    case kIpv4:
      return "IPv4 addresses";
    case kIpv6:
      return "IPv6 addresses";
    default:
      return "domain names";
  }
}

bool isSpaceOrControl(char c) {
  return static_cast<unsigned char>(c) <= ' ' || c == '\x7f';
}

// `text` for a message: control characters as \xNN, since a NUL would cut what() short.
std::string escaped(std::string_view text) {
  std::string out;
  for (const char c : text) {
    out += c != ' ' && isSpaceOrControl(c) ? fmt::format("\\x{:02x}", static_cast<unsigned char>(c))
                                           : std::string(1, c);
  }
  return out;
}

void checkCredential(std::string_view field, const std::string& value) {
  if (value.empty() || value.size() > kMaxField) {
    throw std::invalid_argument(fmt::format("SOCKS5 {} must be 1 to {} bytes (RFC 1929), not {}",
                                            field, kMaxField, value.size()));
  }
}

}  // namespace

Socks5Client::Socks5Client(std::string host, uint16_t port,
                           std::optional<Socks5Credentials> credentials)
    : port_(port), credentials_(std::move(credentials)) {
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);  // "[::1]", as in a URL: only an IPv6 literal.
    std::array<unsigned char, 16> in6{};
    if (inet_pton(AF_INET6, host.c_str(), in6.data()) != 1) {
      throw std::invalid_argument("SOCKS5 destination [" + host + "] is not an IPv6 address");
    }
  }
  if (host.empty() || host.size() > kMaxField) {
    throw std::invalid_argument(fmt::format("SOCKS5 destination host must be 1 to {} bytes, not {}",
                                            kMaxField, host.size()));
  }
  if (std::any_of(host.begin(), host.end(), isSpaceOrControl)) {
    throw std::invalid_argument("SOCKS5 destination host \"" + escaped(host) +
                                "\" holds a space or control character");
  }
  if (port == 0) {
    throw std::invalid_argument("SOCKS5 destination port must not be 0");
  }
  if (credentials_) {
    checkCredential("username", credentials_->username);
    checkCredential("password", credentials_->password);
  }

  std::array<unsigned char, 16> binary{};
  if (inet_pton(AF_INET, host.c_str(), binary.data()) == 1) {
    addressType_ = kIpv4;
    address_.assign(reinterpret_cast<const char*>(binary.data()), 4);
  } else if (inet_pton(AF_INET6, host.c_str(), binary.data()) == 1) {
    addressType_ = kIpv6;
    address_.assign(reinterpret_cast<const char*>(binary.data()), 16);
  } else {
    addressType_ = kDomainName;
    address_ = host;
  }
  host_ = std::move(host);

  output_ = {static_cast<char>(kVersion)};
  if (credentials_) {
    output_ += {2, static_cast<char>(kNoAuthentication), static_cast<char>(kUsernamePassword)};
  } else {
    output_ += {1, static_cast<char>(kNoAuthentication)};
  }
}

std::string Socks5Client::takeOutput() {
  return std::exchange(output_, std::string());
}

size_t Socks5Client::feed(std::string_view bytes) {
  if (state_ == State::Failed) {
    throw Socks5Error(error_);
  }
  size_t consumed = 0;
  while (consumed < bytes.size() && state_ != State::Done) {
    // Never past the message being received: what follows the last one is the tunnel's.
    const size_t take = std::min(expectedLength() - received_.size(), bytes.size() - consumed);
    received_.append(bytes.substr(consumed, take));
    consumed += take;
    checkPartial();
    if (received_.size() == expectedLength()) {
      handleMessage();
      received_.clear();
    }
  }
  return consumed;
}

size_t Socks5Client::expectedLength() const {
  if (state_ != State::Connecting) {
    return kTwoByteAnswer;
  }
  if (received_.size() < kReplyHeader) {
    return kReplyHeader;
  }
  switch (byteAt(received_, 3)) {
    case kIpv4:
      return kReplyHeader + 4 + kPortBytes;
    case kIpv6:
      return kReplyHeader + 16 + kPortBytes;
    default:  // kDomainName (checkPartial refuses the others): a length byte, then the name.
      if (received_.size() <= kReplyHeader) {
        return kReplyHeader + 1;
      }
      return kReplyHeader + 1 + byteAt(received_, kReplyHeader) + kPortBytes;
  }
}

void Socks5Client::checkPartial() {
  const size_t n = received_.size();
  if (state_ == State::Authenticating) {
    // RFC 1929 answers with its own version, 0x01; some servers answer 0x05 and are otherwise
    // right, so that is let through too.
    if (n >= 1 && byteAt(received_, 0) != kAuthVersion && byteAt(received_, 0) != kVersion) {
      fail(
          fmt::format("SOCKS5 proxy answered the username/password request with version {}, "
                      "not 0x01 (RFC 1929)",
                      hexByte(byteAt(received_, 0))));
    }
    return;
  }
  if (n >= 1 && byteAt(received_, 0) != kVersion) {
    fail("not a SOCKS5 proxy: it answered version " + hexByte(byteAt(received_, 0)));
  }
  if (state_ != State::Connecting) {
    return;
  }
  if (n >= 2 && byteAt(received_, 1) != 0) {
    // Refusals fail here, before the rest of the reply: a proxy may close without sending it.
    const unsigned char code = byteAt(received_, 1);
    std::string reason(replyReason(code));
    if (code == 8) {
      reason += fmt::format(" (the proxy does not take {})", addressTypeName(addressType_));
    }
    fail(fmt::format("SOCKS5 proxy could not connect to {}: {} (reply {})", destination(), reason,
                     code));
  }
  if (n >= 4) {
    const unsigned char type = byteAt(received_, 3);
    if (type != kIpv4 && type != kDomainName && type != kIpv6) {
      fail(fmt::format("SOCKS5 proxy's CONNECT reply has an unknown address type {}",
                       hexByte(type)));
    }
  }
}

void Socks5Client::handleMessage() {
  switch (state_) {
    case State::Greeting: {
      const unsigned char method = byteAt(received_, 1);
      const std::string_view offered =
          credentials_ ? "no authentication, username/password" : "no authentication";
      if (method == kNoAcceptableMethod) {
        fail(fmt::format("SOCKS5 proxy refused every authentication method we offered ({}){}",
                         offered,
                         credentials_ ? "" : ": it may require a username/password, none is set"));
      }
      if (method == kUsernamePassword && credentials_) {
        const auto& [username, password] = *credentials_;
        output_ += static_cast<char>(kAuthVersion);
        output_ += static_cast<char>(username.size());
        output_ += username;
        output_ += static_cast<char>(password.size());
        output_ += password;
        state_ = State::Authenticating;
        return;
      }
      if (method != kNoAuthentication) {
        fail(fmt::format("SOCKS5 proxy chose authentication method {}, which we did not offer ({})",
                         hexByte(method), offered));
      }
      break;
    }
    case State::Authenticating:
      if (byteAt(received_, 1) != 0) {
        fail(fmt::format("SOCKS5 proxy rejected the username/password of user \"{}\" (status {})",
                         credentials_->username, byteAt(received_, 1)));
      }
      break;
    case State::Connecting:
      state_ = State::Done;  // checkPartial() has seen a success code and a known address type.
      return;
    case State::Done:
    case State::Failed:
      return;
  }
  // Authenticated, or nothing to authenticate: the CONNECT request.
  output_ += {static_cast<char>(kVersion), static_cast<char>(kConnect), 0,
              static_cast<char>(addressType_)};
  if (addressType_ == kDomainName) {
    output_ += static_cast<char>(address_.size());
  }
  output_ += address_;
  output_ += {static_cast<char>(port_ >> 8), static_cast<char>(port_ & 0xff)};
  state_ = State::Connecting;
}

void Socks5Client::fail(std::string message) {
  state_ = State::Failed;
  error_ = std::move(message);
  received_.clear();
  output_.clear();
  throw Socks5Error(error_);
}

std::string Socks5Client::destination() const {
  if (addressType_ == kIpv6) {
    return fmt::format("[{}]:{}", host_, port_);
  }
  return fmt::format("{}:{}", host_, port_);
}

}  // namespace snow::portal
