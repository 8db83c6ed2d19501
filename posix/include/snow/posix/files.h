#pragma once

// Whole-file reads through the POSIX layer, for the small files code reads at once
// (configuration, PEM files, /proc and cgroup files).
//
// Thread: any. Errors: never throws, whether `os` is a checked layer or not: a failure comes
// back as errnum, and *failedCall (when given) names the call that failed ("open" or "read").
// EINTR is retried.

#include <string>

#include "snow/posix/posix.h"

namespace snow::posix {

Result<std::string> readFile(Posix& os, const std::string& path, const char** failedCall = nullptr);

}  // namespace snow::posix
