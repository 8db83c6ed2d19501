#pragma once

// How the decorators name a call's arguments and results in messages (private to posix/).
//
// Used by the describeArguments column of posix_methods.inc. Every helper is total: a null
// pointer or an address family it does not know still gives readable text, because these run
// while reporting another failure and must not fail themselves.

#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <fmt/format.h>
#include <sys/socket.h>

#include "snow/posix/errno_name.h"
#include "snow/posix/posix.h"

namespace snow::posix::describe {

// `"/etc/x"`, quoted and escaped; `nullptr` for a null path.
std::string path(const char* text);

// `fd=7`.
std::string fd(int number);

// `127.0.0.1:8080`, `[::1]:443`, `"/run/x.sock"`, `@abstract` (Linux abstract unix socket), or
// `family=N` for families not decoded here.
std::string address(const struct sockaddr* addr, socklen_t len);

// A call's returned value, for trace lines.
template <typename T>
std::string value(const T& returned) {
  if constexpr (std::is_same_v<T, std::vector<DirectoryEntry>>) {
    return fmt::format("{} entries", returned.size());
  } else if constexpr (std::is_same_v<T, UserRecord>) {
    return fmt::format("uid={} gid={} groups={}", returned.uid, returned.gid,
                       returned.groups.size());
  } else if constexpr (std::is_same_v<T, char*> || std::is_same_v<T, const char*>) {
    return returned == nullptr ? std::string("nullptr") : path(returned);
  } else if constexpr (std::is_pointer_v<T>) {
    return returned == nullptr ? std::string("nullptr") : fmt::format("{}", fmt::ptr(returned));
  } else {
    return fmt::to_string(returned);
  }
}

// `call(arguments) = value` on success, `call(arguments) = value ENOENT (No such file...)` on
// failure, as strace prints it.
template <typename T>
std::string outcome(std::string_view call, const std::string& arguments, const Result<T>& result) {
  if (result.ok()) {
    return fmt::format("{}({}) = {}", call, arguments, value(result.value));
  }
  return fmt::format("{}({}) = {} {} ({})", call, arguments, value(result.value),
                     errnoName(result.errnum), errnoMessage(result.errnum));
}

}  // namespace snow::posix::describe
