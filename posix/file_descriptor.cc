#include "snow/posix/file_descriptor.h"

#include "snow/posix/active.h"

namespace snow::posix {

void FileDescriptor::reset(int fd) noexcept {
  const int old = fd_;
  fd_ = fd;
  if (old < 0 || old == fd) {
    return;
  }
  try {
    // Result ignored and exceptions swallowed on purpose, see the header. Even a missing active
    // layer (logic_error) must not escape a destructor.
    (void)active().close(old);
  } catch (...) {  // NOLINT(bugprone-empty-catch)
  }
}

}  // namespace snow::posix
