// libFuzzer target: the build context's checker (modules/containers/context.h) reads tar streams
// from the network. Whatever the bytes and wherever a read cuts them, it must end in acceptance
// or ContextError, never a crash, a hang or another exception; the verdict must not depend on the
// cut; and an accepted context's Dockerfile must be one checkDockerfile() accepts.
//
// Input: two bytes choosing the cut (little endian, taken modulo the stream's length + 1), one
// choosing the limit (0: 1 MiB; n: 32 n bytes, so that the limit is crossed too), then the
// stream.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "context.h"

namespace {

using snow::containers::ContextChecker;
using snow::containers::ContextError;

std::string verdict(std::string_view stream, size_t cut, uint64_t limit) {
  ContextChecker checker(limit, "Dockerfile");
  try {
    checker.feed(stream.substr(0, cut));
    checker.feed(stream.substr(cut));
    checker.finish();
  } catch (const ContextError& e) {
    return std::string("refused: ") + e.what();
  }
  const std::string& text = checker.dockerfileText();
  if (text.empty() || text.size() > snow::containers::kMaxDockerfileBytes ||
      checker.bytes() != stream.size()) {
    __builtin_trap();  // Accepted what the contract says it refuses.
  }
  try {
    snow::containers::checkDockerfile(text);
  } catch (const ContextError&) {
    __builtin_trap();  // Accepted a broken Dockerfile.
  }
  return "accepted";
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) {
    return 0;
  }
  const std::string_view stream(reinterpret_cast<const char*>(data) + 3, size - 3);
  const size_t cut =
      (static_cast<size_t>(data[0]) | static_cast<size_t>(data[1]) << 8) % (stream.size() + 1);
  const uint64_t limit = data[2] == 0 ? uint64_t{1} << 20 : uint64_t{data[2]} * 32;
  if (verdict(stream, cut, limit) != verdict(stream, stream.size(), limit)) {
    __builtin_trap();  // The verdict depends on where the stream was cut.
  }
  return 0;
}
