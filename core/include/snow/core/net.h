#pragma once

// Socket addresses and listening sockets, for modules that serve on the network.
//
// A Listener is a Resource (resources.h): acquired under a key naming its address, it moves into
// the next configuration generation when the address did not change, so a reload never closes a
// listening socket whose address stayed the same (clients connected before are unaffected, and
// the port never stops accepting).
//
// Thread: loop thread. Errors: std::invalid_argument for a malformed address, std::system_error
// (naming the call and the address) for an OS failure.

#include <memory>
#include <string>
#include <string_view>

#include <sys/socket.h>

#include "snow/contexts/resources.h"
#include "snow/posix/file_descriptor.h"
#include "snow/posix/posix.h"

namespace snow::net {

// "127.0.0.1:8080", "[::1]:8080", "0.0.0.0:0" (any free port) or "unix:/run/snow/x.sock".
class Address {
 public:
  static Address parse(std::string_view text);
  static Address fromSockaddr(const sockaddr* address, socklen_t length);

  [[nodiscard]] const sockaddr* get() const noexcept {
    return reinterpret_cast<const sockaddr*>(&storage_);
  }
  [[nodiscard]] socklen_t length() const noexcept { return length_; }
  [[nodiscard]] int family() const noexcept { return storage_.ss_family; }
  // The canonical text form (parse(toString()) gives the same address).
  [[nodiscard]] std::string toString() const;

 private:
  sockaddr_storage storage_{};
  socklen_t length_ = 0;
};

class Listener : public Resource {
 public:
  // A non-blocking, close-on-exec socket bound to `address` and listening.
  static std::shared_ptr<Listener> open(posix::Posix& os, const Address& address,
                                        int backlog = 1024);

  [[nodiscard]] int fd() const noexcept { return fd_.get(); }
  // The address actually bound (port 0 resolved to the port the OS chose).
  [[nodiscard]] const Address& local() const noexcept { return local_; }

  Listener(posix::FileDescriptor fd, Address local) : fd_(std::move(fd)), local_(local) {}

 private:
  posix::FileDescriptor fd_;
  Address local_;
};

}  // namespace snow::net
