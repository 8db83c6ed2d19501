#include "snow/posix/errno_name.h"

#include <system_error>

#include <fmt/format.h>
#include <string.h>

namespace snow::posix {

std::string errnoName(int errnum) {
  // strerrorname_np (glibc >= 2.32) is thread-safe and returns null for unknown values.
  const char* name = ::strerrorname_np(errnum);
  return name != nullptr ? std::string(name) : fmt::format("errno {}", errnum);
}

std::string errnoMessage(int errnum) {
  return std::system_category().message(errnum);
}

}  // namespace snow::posix
