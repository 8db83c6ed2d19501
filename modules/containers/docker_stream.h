#pragma once

// Incremental parsers of the Docker engine's streamed answers (private to the Docker client).
// Bytes arrive in chunks cut anywhere; each parser keeps only what it needs across chunks.
//
// Thread: none of their own; used on the loop thread. Errors: callbacks' exceptions pass through
// (the parser is then unusable); nothing else throws.

#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>

#include "snow/core/function.h"

namespace snow::containers::detail {

// Docker's multiplexed stream (the logs of a container without a TTY): frames of an 8-byte header
// [stream, 0, 0, 0, payload size as big-endian uint32] and the payload. Payload is handed on as
// soon as it arrives, in as many pieces as the chunks cut it into: a frame is never held whole.
class LogDemuxer {
 public:
  using Sink = UniqueFunction<void(int stream, std::string_view bytes)>;

  void feed(std::string_view chunk, Sink& sink);
  // True when the bytes so far end on a frame boundary (a stream that ends elsewhere was cut).
  [[nodiscard]] bool atBoundary() const noexcept { return headerSize_ == 0 && remaining_ == 0; }

 private:
  static constexpr size_t kHeaderSize = 8;
  std::array<char, kHeaderSize> header_{};
  size_t headerSize_ = 0;   // Header bytes gathered so far.
  uint32_t remaining_ = 0;  // Payload bytes of the current frame still to come.
  int stream_ = 0;
};

// Splits bytes into lines at '\n' (a '\r' before it is dropped), across chunk boundaries.
class LineSplitter {
 public:
  template <typename F>
  void feed(std::string_view chunk, F&& onLine) {
    while (!chunk.empty()) {
      const size_t newline = chunk.find('\n');
      if (newline == std::string_view::npos) {
        partial_.append(chunk);
        return;
      }
      std::string_view line = chunk.substr(0, newline);
      chunk.remove_prefix(newline + 1);
      if (!partial_.empty()) {
        partial_.append(line);
        std::string whole = std::move(partial_);
        partial_.clear();
        onLine(trimmed(whole));
      } else {
        onLine(trimmed(line));
      }
    }
  }

  // What came after the last '\n'; the splitter is empty afterwards.
  std::string takeRest() {
    std::string rest = std::move(partial_);
    partial_.clear();
    return rest;
  }

 private:
  static std::string_view trimmed(std::string_view line) {
    return line.ends_with('\r') ? line.substr(0, line.size() - 1) : line;
  }
  std::string partial_;
};

// The answer of POST /build: one JSON message per line.
//   {"stream": "text"}          output; a message may hold part of a line, or several lines
//   {"status": "...", "id": ...} progress (pulls)
//   {"aux": {"ID": "sha256:..."}} the image built
//   {"error": "...", "errorDetail": {"message": "..."}}  the build failed
// A line that is not JSON is taken for output text.
class BuildStream {
 public:
  using Sink = UniqueFunction<void(std::string_view line)>;

  explicit BuildStream(size_t tailLines = 20) : tailLines_(tailLines) {}

  // Calls sink(line) for each complete output line.
  void feed(std::string_view chunk, Sink& sink);
  // The answer ended: hands on what is left of an unterminated line.
  void finish(Sink& sink);

  // The aux ID, else the id of a "Successfully built <id>" line, else "".
  [[nodiscard]] const std::string& imageId() const noexcept { return imageId_; }
  [[nodiscard]] const std::optional<std::string>& error() const noexcept { return error_; }
  // The last output lines (at most tailLines), joined with '\n'.
  [[nodiscard]] std::string tail() const;

 private:
  void message(std::string_view json, Sink& sink);
  void text(std::string_view text, Sink& sink);
  void line(std::string_view line, Sink& sink);

  size_t tailLines_;
  LineSplitter messages_;  // The JSON messages.
  LineSplitter output_;    // The text of "stream" messages.
  std::deque<std::string> tail_;
  std::string imageId_;
  std::optional<std::string> error_;
};

}  // namespace snow::containers::detail
