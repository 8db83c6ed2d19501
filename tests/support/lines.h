#pragma once

#include <sstream>
#include <string>
#include <vector>

namespace snow::testing {

// The lines of a program's output, without their newlines, empty lines left out.
inline std::vector<std::string> nonEmptyLines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) {
      lines.push_back(line);
    }
  }
  return lines;
}

}  // namespace snow::testing
