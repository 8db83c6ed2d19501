#include "context_path.h"

#include <fmt/format.h>

namespace snow::containers {

std::vector<std::string> pathElements(std::string_view path) {
  std::vector<std::string> elements;
  while (!path.empty()) {
    const size_t slash = path.find('/');
    const std::string_view element = path.substr(0, slash);
    if (!element.empty() && element != ".") {
      elements.emplace_back(element);
    }
    if (slash == std::string_view::npos) {
      break;
    }
    path.remove_prefix(slash + 1);
  }
  return elements;
}

std::string joinElements(const std::vector<std::string>& elements) {
  std::string joined;
  for (const std::string& element : elements) {
    if (!joined.empty()) {
      joined += '/';
    }
    joined += element;
  }
  return joined;
}

std::string cleanPath(std::string_view path) {
  const bool rooted = !path.empty() && path.front() == '/';
  std::vector<std::string> kept;
  for (std::string& element : pathElements(path)) {
    if (element != "..") {
      kept.push_back(std::move(element));
    } else if (!kept.empty() && kept.back() != "..") {
      kept.pop_back();
    } else if (!rooted) {
      kept.emplace_back("..");
    }
  }
  std::string cleaned = (rooted ? "/" : "") + joinElements(kept);
  return cleaned.empty() ? "." : cleaned;
}

bool leavesRoot(std::string_view cleaned) {
  return cleaned == ".." || cleaned.starts_with("../");
}

std::string quotedPath(std::string_view path) {
  constexpr size_t kShown = 200;
  std::string shown = "\"";
  for (const char c : path.substr(0, kShown)) {
    if (c == '"' || c == '\\') {
      shown += '\\';
      shown += c;
    } else if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      shown += fmt::format("\\x{:02x}", static_cast<unsigned char>(c));
    } else {
      shown += c;
    }
  }
  return shown + (path.size() > kShown ? "...\"" : "\"");
}

}  // namespace snow::containers
