#pragma once

// Whole-file reads through the POSIX layer, for the small files code reads at once
// (configuration, PEM files, /proc and cgroup files).
//
// Thread: any. Errors: never throws, whether `os` is a checked layer or not: a failure comes
// back as errnum, and *failedCall (when given) names the call that failed ("open" or "read").
// EINTR is retried.

#include <string>
#include <string_view>

#include <sys/types.h>

#include "snow/posix/posix.h"

namespace snow::posix {

Result<std::string> readFile(Posix& os, const std::string& path, const char** failedCall = nullptr);

// Replaces `path` with `content` atomically: written to `path`.tmp (created with `mode`, never
// wider than it, whatever the umask left) and renamed over `path`, so a reader sees the old file
// or the new one, never a part. Same error reporting as readFile ("open", "write", "rename").
Result<int> writeFileAtomically(Posix& os, const std::string& path, std::string_view content,
                                mode_t mode, const char** failedCall = nullptr);

}  // namespace snow::posix
