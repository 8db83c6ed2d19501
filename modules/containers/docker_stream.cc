#include "docker_stream.h"

#include <algorithm>

#include <nlohmann/json.hpp>

namespace snow::containers::detail {

void LogDemuxer::feed(std::string_view chunk, Sink& sink) {
  while (!chunk.empty()) {
    if (remaining_ == 0) {
      const size_t take = std::min(kHeaderSize - headerSize_, chunk.size());
      chunk.copy(header_.data() + headerSize_, take);
      headerSize_ += take;
      chunk.remove_prefix(take);
      if (headerSize_ < kHeaderSize) {
        return;
      }
      headerSize_ = 0;
      const auto byte = [this](size_t i) { return static_cast<uint32_t>(uint8_t(header_[i])); };
      stream_ = static_cast<int>(byte(0));
      remaining_ = byte(4) << 24U | byte(5) << 16U | byte(6) << 8U | byte(7);
      continue;  // An empty frame: its header was all there was.
    }
    const size_t take = std::min<size_t>(remaining_, chunk.size());
    remaining_ -= static_cast<uint32_t>(take);
    const std::string_view piece = chunk.substr(0, take);
    chunk.remove_prefix(take);
    sink(stream_, piece);
  }
}

void BuildStream::feed(std::string_view chunk, Sink& sink) {
  messages_.feed(chunk, [&](std::string_view json) { message(json, sink); });
}

void BuildStream::finish(Sink& sink) {
  const std::string json = messages_.takeRest();
  message(json, sink);
  const std::string rest = output_.takeRest();
  if (!rest.empty()) {
    line(rest, sink);
  }
}

std::string BuildStream::tail() const {
  std::string joined;
  for (const std::string& l : tail_) {
    if (!joined.empty()) {
      joined += '\n';
    }
    joined += l;
  }
  return joined;
}

void BuildStream::message(std::string_view json, Sink& sink) {
  if (json.find_first_not_of(" \t\r\n") == std::string_view::npos) {
    return;
  }
  nlohmann::json m = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (!m.is_object()) {
    text(json, sink);
    text("\n", sink);
    return;
  }
  if (const auto it = m.find("error"); it != m.end() && it->is_string()) {
    error_ = it->get<std::string>();
    if (error_->empty()) {
      error_ = "unknown error";
    }
    return;
  }
  if (const auto it = m.find("errorDetail"); it != m.end() && it->is_object()) {
    if (const auto detail = it->find("message"); detail != it->end() && detail->is_string()) {
      error_ = detail->get<std::string>();
      return;
    }
  }
  if (const auto it = m.find("aux"); it != m.end() && it->is_object()) {
    if (const auto id = it->find("ID"); id != it->end() && id->is_string()) {
      imageId_ = id->get<std::string>();
    }
    return;
  }
  if (const auto it = m.find("stream"); it != m.end() && it->is_string()) {
    text(it->get_ref<const std::string&>(), sink);
    return;
  }
  if (const auto it = m.find("status"); it != m.end() && it->is_string()) {
    std::string status = it->get<std::string>();
    if (const auto id = m.find("id"); id != m.end() && id->is_string()) {
      status = id->get<std::string>() + ": " + status;
    }
    line(status, sink);
  }
}

void BuildStream::text(std::string_view text, Sink& sink) {
  output_.feed(text, [&](std::string_view l) { line(l, sink); });
}

void BuildStream::line(std::string_view line, Sink& sink) {
  constexpr std::string_view kBuilt = "Successfully built ";
  if (line.starts_with(kBuilt)) {
    if (imageId_.empty()) {
      imageId_ = line.substr(kBuilt.size());
    }
  }
  tail_.emplace_back(line);
  if (tail_.size() > tailLines_) {
    tail_.pop_front();
  }
  sink(line);
}

}  // namespace snow::containers::detail
