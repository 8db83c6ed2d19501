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

Result<int> writeFileAtomically(Posix& os, const std::string& path, std::string_view content,
                                mode_t mode, const char** failedCall) {
  auto failed = [&](const char* call, int errnum) -> Result<int> {
    if (failedCall != nullptr) {
      *failedCall = call;
    }
    return {-1, errnum};
  };
  const std::string temporary = path + ".tmp";
  (void)tolerant([&] { return os.unlink(temporary.c_str()); });  // A leftover of a crash.
  auto opened = tolerant(
      [&] { return os.open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode); });
  if (!opened.ok()) {
    return failed("open", opened.errnum);
  }
  FileDescriptor fd(opened.value);
  const char* call = "chmod";
  auto written = tolerant([&] { return os.chmod(temporary.c_str(), mode); });
  if (written.ok()) {
    call = "write";
  }
  size_t done = 0;
  while (written.ok() && done < content.size()) {
    auto wrote =
        tolerant([&] { return os.write(fd.get(), content.data() + done, content.size() - done); });
    if (wrote.errnum == EINTR) {
      continue;
    }
    if (!wrote.ok()) {
      written = {-1, wrote.errnum};
      break;
    }
    done += static_cast<size_t>(wrote.value);
  }
  fd.reset();
  if (written.ok()) {
    written = tolerant([&] { return os.rename(temporary.c_str(), path.c_str()); });
    if (written.ok()) {
      return {0, 0};
    }
    (void)tolerant([&] { return os.unlink(temporary.c_str()); });
    return failed("rename", written.errnum);
  }
  (void)tolerant([&] { return os.unlink(temporary.c_str()); });
  return failed(call, written.errnum);
}

}  // namespace snow::posix
