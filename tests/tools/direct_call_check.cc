#include "direct_call_check.h"

#include <algorithm>
#include <array>
#include <cstddef>
#include <fstream>
#include <sstream>
#include <tuple>

namespace snow::tools {
namespace {

bool isIdentifierStart(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

bool isIdentifierChar(char c) {
  return isIdentifierStart(c) || (c >= '0' && c <= '9');
}

bool isDigit(char c) {
  return c >= '0' && c <= '9';
}

bool isSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

bool isOsFunction(std::string_view name) {
  return std::find(kOsFunctions.begin(), kOsFunctions.end(), name) != kOsFunctions.end();
}

// Keywords after which a name starts an expression, so `return read(` is a call although an
// identifier precedes it.
bool isExpressionKeyword(std::string_view word) {
  static constexpr auto kKeywords =
      std::to_array<std::string_view>({"return", "co_return", "co_await", "co_yield", "throw",
                                       "else", "do", "case", "new", "not", "and", "or"});
  return std::find(kKeywords.begin(), kKeywords.end(), word) != kKeywords.end();
}

// The start of the identifier-like run ending just before `end` (letters, digits, `_`, and `.`
// and `'` when `numberChars`, for pp-numbers such as 1'000 or 1.5e3).
size_t runStart(std::string_view text, size_t end, bool numberChars) {
  size_t start = end;
  while (start > 0) {
    const char c = text[start - 1];
    if (!isIdentifierChar(c) && !(numberChars && (c == '.' || c == '\''))) {
      break;
    }
    --start;
  }
  return start;
}

// The identifier (or keyword) that ends just before `end`.
std::string_view wordEndingAt(std::string_view text, size_t end) {
  const size_t start = runStart(text, end, false);
  return text.substr(start, end - start);
}

// True when the `'` at `quote` separates digits (1'000'000) instead of opening a char literal.
bool isDigitSeparator(std::string_view text, size_t quote) {
  const size_t start = runStart(text, quote, true);
  return start < quote && isDigit(text[start]);
}

// True when the `"` at `quote` opens a raw string literal: R"...", u8R"...", uR, UR, LR.
bool opensRawString(std::string_view text, size_t quote) {
  const std::string_view prefix = wordEndingAt(text, quote);
  return prefix == "R" || prefix == "u8R" || prefix == "uR" || prefix == "UR" || prefix == "LR";
}

// Index just past the last non-space character before `end`; 0 when there is none.
size_t skipSpaceBackwards(std::string_view text, size_t end) {
  while (end > 0 && isSpace(text[end - 1])) {
    --end;
  }
  return end;
}

// Whether the name starting at `start` is called rather than declared or reached as a member;
// rules 3 to 5 of the header.
bool isDirectCall(std::string_view text, size_t start) {
  size_t end = skipSpaceBackwards(text, start);
  if (end == 0) {
    return true;
  }
  const char previous = text[end - 1];
  if (previous == '.' || previous == '>' || previous == '*') {
    return false;  // Member access (`.`, `->`), or a declaration after a type (`T>`, `T*`).
  }
  if (previous == '&') {
    return end >= 2 && text[end - 2] == '&';  // `&&` is mostly logical and; `T&` declares.
  }
  if (previous == ':' && end >= 2 && text[end - 2] == ':') {
    end = skipSpaceBackwards(text, end - 2);
    if (end == 0) {
      return true;
    }
    if (text[end - 1] == '>') {
      return false;  // `Foo<T>::open(`: a member of a class template.
    }
    if (!isIdentifierChar(text[end - 1])) {
      return true;  // `::open(`: the global one.
    }
    const std::string_view qualifier = wordEndingAt(text, end);
    return qualifier == "std" || isExpressionKeyword(qualifier);  // `return ::close(` is global.
  }
  if (isIdentifierChar(previous)) {
    return isExpressionKeyword(wordEndingAt(text, end));  // Otherwise a declaration: `int open(`.
  }
  return true;
}

}  // namespace

std::string blankCommentsAndLiterals(std::string_view source) {
  std::string text(source);
  const auto blank = [&text](size_t from, size_t to) {
    for (size_t i = from; i < to && i < text.size(); ++i) {
      if (text[i] != '\n') {
        text[i] = ' ';
      }
    }
  };
  // Index of the closing `quote` of a literal opened just before `from`, honouring escapes;
  // literals do not span lines, so an unterminated one ends at the newline.
  const auto literalEnd = [&source](size_t from, char quote) {
    size_t i = from;
    while (i < source.size() && source[i] != quote && source[i] != '\n') {
      i += source[i] == '\\' ? 2 : 1;
    }
    return std::min(i, source.size());
  };

  size_t i = 0;
  while (i < source.size()) {
    const char c = source[i];
    const char next = i + 1 < source.size() ? source[i + 1] : '\0';
    if (c == '/' && next == '/') {
      const size_t end = std::min(source.find('\n', i), source.size());
      blank(i, end);
      i = end;
    } else if (c == '/' && next == '*') {
      const size_t close = source.find("*/", i + 2);
      const size_t end = close == std::string_view::npos ? source.size() : close + 2;
      blank(i, end);
      i = end;
    } else if (c == '"' && opensRawString(source, i)) {
      const size_t open = source.find('(', i + 1);
      if (open == std::string_view::npos) {
        blank(i + 1, source.size());
        break;
      }
      const std::string closing = ")" + std::string(source.substr(i + 1, open - i - 1)) + "\"";
      const size_t close = source.find(closing, open);
      const size_t end = close == std::string_view::npos ? source.size() : close + closing.size();
      blank(i + 1, end - 1);
      i = end;
    } else if (c == '"' || (c == '\'' && !isDigitSeparator(source, i))) {
      const size_t end = literalEnd(i + 1, c);
      blank(i + 1, end);
      i = end + 1;
    } else {
      ++i;
    }
  }
  return text;
}

std::vector<DirectCall> findDirectCalls(std::string_view source) {
  const std::string text = blankCommentsAndLiterals(source);
  std::vector<DirectCall> calls;
  int line = 1;
  size_t i = 0;
  while (i < text.size()) {
    const char c = text[i];
    if (c == '\n') {
      ++line;
      ++i;
    } else if (isDigit(c)) {
      // A pp-number (0x1f, 1'000, 1.5e3) may hold letters that are not identifiers.
      while (i < text.size() && (isIdentifierChar(text[i]) || text[i] == '.' || text[i] == '\'')) {
        ++i;
      }
    } else if (isIdentifierStart(c)) {
      const size_t start = i;
      while (i < text.size() && isIdentifierChar(text[i])) {
        ++i;
      }
      const std::string_view name(text.data() + start, i - start);
      size_t after = i;
      while (after < text.size() && isSpace(text[after])) {
        ++after;
      }
      if (after < text.size() && text[after] == '(' && isOsFunction(name) &&
          isDirectCall(text, start)) {
        calls.push_back({line, std::string(name)});
      }
    } else {
      ++i;
    }
  }
  return calls;
}

std::vector<Offence> scanTree(const std::filesystem::path& root,
                              const std::vector<std::string>& excludedTopLevel) {
  namespace fs = std::filesystem;
  static constexpr auto kExtensions =
      std::to_array<std::string_view>({".h", ".hpp", ".cc", ".cpp", ".inc"});
  std::vector<Offence> offences;
  for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator();
       ++it) {
    const fs::path& path = it->path();
    const std::string name = path.filename().string();
    if (it->is_directory()) {
      const bool excluded =
          it.depth() == 0 && std::find(excludedTopLevel.begin(), excludedTopLevel.end(), name) !=
                                 excludedTopLevel.end();
      if (excluded || name.starts_with('.') || fs::exists(path / "CMakeCache.txt")) {
        it.disable_recursion_pending();
      }
      continue;
    }
    const std::string extension = path.extension().string();
    if (!it->is_regular_file() ||
        std::find(kExtensions.begin(), kExtensions.end(), extension) == kExtensions.end()) {
      continue;
    }
    std::ifstream file(path, std::ios::binary);
    std::stringstream contents;
    contents << file.rdbuf();
    for (DirectCall& call : findDirectCalls(contents.str())) {
      offences.push_back({path.lexically_relative(root).generic_string(), std::move(call)});
    }
  }
  std::sort(offences.begin(), offences.end(), [](const Offence& a, const Offence& b) {
    return std::tie(a.file, a.call.line) < std::tie(b.file, b.call.line);
  });
  return offences;
}

std::string formatOffences(const std::vector<Offence>& offences) {
  std::string text;
  for (const Offence& offence : offences) {
    text += offence.file + ":" + std::to_string(offence.call.line) + ": " + offence.call.function +
            "(\n";
  }
  return text;
}

}  // namespace snow::tools
