// checkDockerfile() (context.h): a light parse of a Dockerfile, enough to refuse text that is
// not one before a build is started for it. The reference is BuildKit's dockerfile parser
// (frontend/dockerfile/parser): directives, comments, continuations and here-documents.

#include <algorithm>
#include <array>
#include <cctype>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "context.h"

namespace snow::containers {
namespace {

constexpr auto kInstructions = std::to_array<std::string_view>(
    {"ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
     "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR"});

bool isBlank(char c) {
  return c == ' ' || c == '\t';
}

std::string_view trimLeft(std::string_view text) {
  while (!text.empty() && (isBlank(text.front()) || text.front() == '\r')) {
    text.remove_prefix(1);
  }
  return text;
}

std::string_view trimRight(std::string_view text) {
  while (!text.empty() && (isBlank(text.back()) || text.back() == '\r')) {
    text.remove_suffix(1);
  }
  return text;
}

std::string upper(std::string_view text) {
  std::string result(text);
  for (char& c : result) {
    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  }
  return result;
}

// The first word of `text` (up to a blank) and the rest after the blanks that follow it.
std::pair<std::string_view, std::string_view> firstWord(std::string_view text) {
  text = trimLeft(text);
  size_t end = 0;
  while (end < text.size() && !isBlank(text[end])) {
    ++end;
  }
  return {text.substr(0, end), trimLeft(text.substr(end))};
}

bool isKnown(std::string_view keyword) {
  return std::find(kInstructions.begin(), kInstructions.end(), keyword) != kInstructions.end();
}

// A parser directive, `# name=value` before anything else: its name (lower case) and value.
bool parseDirective(std::string_view line, std::string* name, std::string* value) {
  if (!line.starts_with('#')) {
    return false;
  }
  line = trimLeft(line.substr(1));
  size_t end = 0;
  while (end < line.size() && std::isalnum(static_cast<unsigned char>(line[end])) != 0) {
    ++end;
  }
  if (end == 0 || std::isalpha(static_cast<unsigned char>(line.front())) == 0) {
    return false;
  }
  std::string_view rest = trimLeft(line.substr(end));
  if (!rest.starts_with('=')) {
    return false;
  }
  rest = trimRight(trimLeft(rest.substr(1)));
  if (rest.empty()) {
    return false;
  }
  *name = std::string(line.substr(0, end));
  for (char& c : *name) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  *value = std::string(rest);
  return true;
}

// The lines of a text, one at a time: nothing is allocated per line (a Dockerfile of 1 MiB of
// newlines must not cost 16 MiB of views).
struct Lines {
  std::string_view rest;
  size_t number = 0;  // Of the line last taken, from 1.

  [[nodiscard]] bool done() const noexcept { return rest.empty(); }

  std::string_view take() noexcept {
    const size_t end = rest.find('\n');
    const std::string_view line = rest.substr(0, end);
    rest.remove_prefix(end == std::string_view::npos ? rest.size() : end + 1);
    ++number;
    return line;
  }
};

// A here-document's terminator and whether its lines may be indented with tabs (`<<-`).
struct HereDocument {
  std::string terminator;
  bool stripTabs = false;
};

// The here-documents an instruction's arguments open: words `<<WORD`, `<<-WORD`, `<<"WORD"`.
std::vector<HereDocument> hereDocuments(std::string_view arguments) {
  std::vector<HereDocument> documents;
  while (!arguments.empty()) {
    auto [word, rest] = firstWord(arguments);
    arguments = rest;
    if (!word.starts_with("<<") || word.starts_with("<<<")) {
      continue;
    }
    word.remove_prefix(2);
    HereDocument document;
    if (word.starts_with('-')) {
      document.stripTabs = true;
      word.remove_prefix(1);
    }
    if (word.size() >= 2 && (word.front() == '"' || word.front() == '\'') &&
        word.back() == word.front()) {
      word = word.substr(1, word.size() - 2);
    }
    const bool valid = !word.empty() && std::all_of(word.begin(), word.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_';
    });
    if (valid) {
      document.terminator = std::string(word);
      documents.push_back(std::move(document));
    }
  }
  return documents;
}

}  // namespace

void checkDockerfile(std::string_view text) {
  if (text.starts_with("\xef\xbb\xbf")) {
    text.remove_prefix(3);
  }
  Lines lines{text};
  char escape = '\\';
  bool directives = true;
  std::vector<std::string> seenDirectives;
  bool first = true;
  while (!lines.done()) {
    std::string_view line = lines.take();
    const size_t lineNumber = lines.number;
    if (directives) {
      std::string name;
      std::string value;
      if (parseDirective(trimRight(line), &name, &value) &&
          (name == "syntax" || name == "escape" || name == "check")) {
        if (std::find(seenDirectives.begin(), seenDirectives.end(), name) != seenDirectives.end()) {
          throw ContextError(
              fmt::format("line {}: the {} directive is given twice", lineNumber, name));
        }
        seenDirectives.push_back(name);
        if (name == "escape") {
          if (value != "\\" && value != "`") {
            throw ContextError(fmt::format(
                "line {}: invalid escape directive \"{}\" (must be ` or \\)", lineNumber, value));
          }
          escape = value.front();
        }
        continue;
      }
      directives = false;
    }
    const std::string_view trimmed = trimLeft(line);
    if (trimmed.empty() || trimmed.front() == '#') {
      continue;
    }

    // The logical line: continued while a line ends with the escape character; comment and
    // blank lines inside it are dropped, as BuildKit does.
    std::string logical(trimRight(trimmed));
    auto continues = [&] {
      if (logical.empty() || logical.back() != escape) {
        return false;
      }
      logical.pop_back();
      return true;
    };
    for (bool more = continues(); more && !lines.done();) {
      const std::string_view next = trimLeft(lines.take());
      if (next.empty() || next.front() == '#') {
        continue;
      }
      logical += ' ';
      logical += trimRight(next);
      more = continues();
    }

    auto [word, arguments] = firstWord(logical);
    const std::string keyword = upper(word);
    if (!isKnown(keyword)) {
      throw ContextError(fmt::format("line {}: unknown instruction \"{}\"", lineNumber, word));
    }
    if (first && keyword != "FROM" && keyword != "ARG") {
      throw ContextError(fmt::format("line {}: the first instruction must be FROM or ARG, not {}",
                                     lineNumber, keyword));
    }
    first = false;
    std::string triggered = keyword;
    if (keyword == "ONBUILD") {
      auto [inner, innerArguments] = firstWord(arguments);
      triggered = upper(inner);
      if (!isKnown(triggered) || triggered == "ONBUILD" || triggered == "FROM" ||
          triggered == "MAINTAINER") {
        throw ContextError(
            fmt::format("line {}: ONBUILD cannot trigger \"{}\"", lineNumber, inner));
      }
      arguments = innerArguments;
    }
    if (triggered == "RUN" || triggered == "COPY" || triggered == "ADD") {
      for (const HereDocument& document : hereDocuments(arguments)) {
        for (;;) {
          if (lines.done()) {
            throw ContextError(fmt::format("line {}: here-document \"{}\" is never ended",
                                           lineNumber, document.terminator));
          }
          std::string_view body = lines.take();
          if (body.ends_with('\r')) {
            body.remove_suffix(1);
          }
          if (document.stripTabs) {
            body = body.substr(std::min(body.find_first_not_of('\t'), body.size()));
          }
          if (body == document.terminator) {
            break;
          }
        }
      }
    }
  }
  if (first) {
    throw ContextError("it holds no instruction");
  }
}

}  // namespace snow::containers
