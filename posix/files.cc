#include "snow/posix/files.h"

#include <cerrno>

#include <fcntl.h>

#include "snow/posix/checked_posix.h"
#include "snow/posix/file_descriptor.h"

namespace snow::posix {

Result<std::string> readFile(Posix& os, const std::string& path, const char** failedCall) {
  auto failed = [&](const char* call, int errnum) -> Result<std::string> {
    if (failedCall != nullptr) {
      *failedCall = call;
    }
    return {std::string(), errnum};
  };
  auto opened = tolerant([&] { return os.open(path.c_str(), O_RDONLY | O_CLOEXEC, 0); });
  if (!opened.ok()) {
    return failed("open", opened.errnum);
  }
  FileDescriptor fd(opened.value);
  std::string content;
  char buffer[16384];
  for (;;) {
    auto got = tolerant([&] { return os.read(fd.get(), buffer, sizeof(buffer)); });
    if (got.errnum == EINTR) {
      continue;
    }
    if (!got.ok()) {
      return failed("read", got.errnum);
    }
    if (got.value == 0) {
      return {std::move(content), 0};
    }
    content.append(buffer, static_cast<size_t>(got.value));
  }
}

}  // namespace snow::posix
