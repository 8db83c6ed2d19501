#pragma once

// Readable names for errno values, for messages and logs.
//
// Thread: any thread (no shared buffers, unlike strerror). Errors: never throws except
// std::bad_alloc.

#include <string>

namespace snow::posix {

// The symbolic name, e.g. "ENOENT" for ENOENT; "errno 4242" for a value the C library does not
// know.
std::string errnoName(int errnum);

// The C library's description, e.g. "No such file or directory" (what std::system_error says).
std::string errnoMessage(int errnum);

}  // namespace snow::posix
