#pragma once

// Paths inside a build context, as Docker's Go code spells them: '/'-separated, relative to the
// context's root. Shared by the packer, the .dockerignore patterns and the checker.
//
// Thread: any (pure functions). Errors: none thrown except std::bad_alloc.

#include <string>
#include <string_view>
#include <vector>

namespace snow::containers {

// Go's path.Clean: repeated slashes, "." elements and "x/.." pairs removed; ".." kept where
// nothing is left to remove in a relative path, dropped at the root of an absolute one; "" and
// everything that cleans to nothing become ".". "./a//b/" -> "a/b", "a/../../b" -> "../b".
std::string cleanPath(std::string_view path);

// True when `cleaned` (a cleanPath() result) leaves its root: ".." or "../...".
bool leavesRoot(std::string_view cleaned);

// The non-empty, non-"." elements of `path`, in order ("a//./b/" -> {"a", "b"}).
std::vector<std::string> pathElements(std::string_view path);

// The elements joined with '/'; "" for none.
std::string joinElements(const std::vector<std::string>& elements);

// `path` quoted for a message: `"a/b"`, with `"` and `\` escaped, control bytes as `\xNN`, and
// cut after 200 bytes (a hostile path may be 64 KiB long).
std::string quotedPath(std::string_view path);

}  // namespace snow::containers
