#include "describe.h"

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <string_view>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

namespace snow::posix::describe {

std::string path(const char* text) {
  if (text == nullptr) {
    return "nullptr";
  }
  return fmt::format("{:?}", std::string_view(text));
}

std::string fd(int number) {
  return fmt::format("fd={}", number);
}

std::string address(const struct sockaddr* addr, socklen_t len) {
  if (addr == nullptr) {
    return "nullptr";
  }
  // Copied into a sockaddr_storage so that the casts below read a correctly aligned object of
  // the right size whatever the caller passed.
  sockaddr_storage storage{};
  std::memcpy(&storage, addr, std::min<std::size_t>(len, sizeof(storage)));
  char text[INET6_ADDRSTRLEN] = {};
  switch (storage.ss_family) {
    case AF_INET: {
      const auto* in = reinterpret_cast<const sockaddr_in*>(&storage);
      ::inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text));
      return fmt::format("{}:{}", text, ntohs(in->sin_port));
    }
    case AF_INET6: {
      const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&storage);
      ::inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof(text));
      return fmt::format("[{}]:{}", text, ntohs(in6->sin6_port));
    }
    case AF_UNIX: {
      const auto* un = reinterpret_cast<const sockaddr_un*>(&storage);
      const std::size_t pathLength =
          len > offsetof(sockaddr_un, sun_path) ? len - offsetof(sockaddr_un, sun_path) : 0;
      const std::string_view name(un->sun_path, std::min(pathLength, sizeof(un->sun_path)));
      if (name.empty()) {
        return "unix:unnamed";
      }
      if (name.front() == '\0') {
        // Abstract names are not NUL-terminated; their length is what `len` says.
        return fmt::format("@{}", name.substr(1));
      }
      return path(std::string(name.substr(0, name.find('\0'))).c_str());
    }
    default:
      return fmt::format("family={}", storage.ss_family);
  }
}

}  // namespace snow::posix::describe
