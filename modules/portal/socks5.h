#pragma once

// The portal's outbound SOCKS5 client (RFC 1928, CONNECT only, with RFC 1929 username/password
// authentication): a state machine without I/O. The connection code owns the socket and the loop;
// it writes what takeOutput() returns and hands every byte it reads to feed() until done(). Kept
// free of I/O so that every split of the proxy's bytes and every refusal can be tested on canned
// bytes, and the same code runs whatever drives the socket.
//
// The exchange, as the client sees it:
//   greeting        -> method selection   (we offer "no authentication", and username/password
//                                          when credentials are given; the proxy picks one)
//   [username/password -> status]         (only when the proxy picked username/password)
//   CONNECT request -> reply              (the reply carries the proxy's bound address, whose
//                                          length depends on its address type)
// After the reply, the connection is a plain tunnel to the destination.
//
// Thread: a Socks5Client belongs to one connection and is used by one thread at a time; it holds
// no references to anything outside itself. Errors: std::invalid_argument from the constructor
// for a destination or credentials that cannot be sent (a caller's bug or a bad configuration,
// known before any I/O); Socks5Error from feed() when the proxy refuses or answers something that
// is not SOCKS5. After a Socks5Error the connection cannot go on (the proxy closes it, or its
// stream can no longer be trusted): close it. The messages name the proxy's answer in words an
// operator can act on, since they end up in logs far from the code.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace snow::portal {

// RFC 1929 credentials; each field 1..255 bytes, the limit of its one-byte length on the wire.
struct Socks5Credentials {
  std::string username;
  std::string password;
};

class Socks5Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Socks5Client {
 public:
  // `host` is what the proxy connects to: an IPv4 or IPv6 literal (IPv6 with or without
  // brackets) is sent as an address (ATYP 1 or 4); anything else as a domain name (ATYP 3, 1..255
  // bytes), which the proxy resolves, so names that only the proxy's side of the network knows
  // work, and no lookup happens here. `credentials`: when given, username/password is offered
  // beside "no authentication"; the proxy decides. Throws std::invalid_argument for an empty,
  // over-long or control-character host, port 0, or credentials outside 1..255 bytes.
  Socks5Client(std::string host, uint16_t port, std::optional<Socks5Credentials> credentials);

  // The bytes to write to the proxy now, handed over once (the buffer is emptied): the greeting
  // right after construction, then each request as the answer it depends on arrives. Empty while
  // waiting for the proxy, and once done().
  [[nodiscard]] std::string takeOutput();

  // Feeds bytes read from the proxy, split anywhere (one byte at a time works; a partial message
  // is kept until the rest comes). Returns how many of them belong to the handshake: bytes after
  // the CONNECT reply belong to the tunnelled stream, are not consumed, and stay with the caller
  // (a proxy may send the reply and the destination's first bytes in one segment). Once done(),
  // returns 0. Throws Socks5Error as soon as the bytes received show a refusal or a non-SOCKS5
  // answer, without waiting for the rest of the message: a proxy that refuses may close the
  // connection before sending it whole. After a throw, every later feed() throws the same error.
  size_t feed(std::string_view bytes);

  // The proxy answered the CONNECT with success: the connection is now a tunnel to host:port.
  [[nodiscard]] bool done() const noexcept { return state_ == State::Done; }

 private:
  enum class State { Greeting, Authenticating, Connecting, Done, Failed };

  // The complete length of the message being received, as far as `received_` tells (a lower
  // bound while the connect reply's address length is still unknown).
  [[nodiscard]] size_t expectedLength() const;
  // Checks the bytes of the message received so far; throws at the first one that is wrong.
  void checkPartial();
  // Acts on a complete message in `received_`.
  void handleMessage();
  [[noreturn]] void fail(std::string message);
  [[nodiscard]] std::string destination() const;

  std::string host_;
  uint16_t port_;
  std::optional<Socks5Credentials> credentials_;
  unsigned char addressType_ = 0;  // ATYP of the CONNECT request.
  std::string address_;            // The destination as sent: 4 or 16 bytes, or the name.
  State state_ = State::Greeting;
  std::string output_;
  std::string received_;  // The message being received, at most 262 bytes.
  std::string error_;     // What went wrong, once Failed.
};

}  // namespace snow::portal
