#include "context_ignore.h"

#include <algorithm>
#include <optional>
#include <utility>

#include <fmt/format.h>

#include "context.h"
#include "context_path.h"

namespace snow::containers {
namespace {

using Token = IgnorePatterns::Token;

Token tokenOf(Token::Kind kind) {
  Token token;
  token.kind = kind;
  return token;
}

// One UTF-8 character of `text` at `at`: its code point and length. A byte that does not start a
// valid sequence is U+FFFD, one byte long (as Go's regexp sees it).
std::pair<char32_t, size_t> decodeCharacter(std::string_view text, size_t at) {
  const auto lead = static_cast<unsigned char>(text[at]);
  size_t length = 0;
  char32_t value = 0;
  if (lead < 0x80) {
    return {lead, 1};
  }
  if ((lead & 0xe0) == 0xc0) {
    length = 2;
    value = lead & 0x1f;
  } else if ((lead & 0xf0) == 0xe0) {
    length = 3;
    value = lead & 0x0f;
  } else if ((lead & 0xf8) == 0xf0) {
    length = 4;
    value = lead & 0x07;
  } else {
    return {0xfffd, 1};
  }
  if (at + length > text.size()) {
    return {0xfffd, 1};
  }
  for (size_t i = 1; i < length; ++i) {
    const auto next = static_cast<unsigned char>(text[at + i]);
    if ((next & 0xc0) != 0x80) {
      return {0xfffd, 1};
    }
    value = (value << 6) | (next & 0x3f);
  }
  return {value, length};
}

// One character of a class, as Go's getEsc reads it: `\x` is x; '-' and ']' must be escaped;
// the class must go on after it. nullopt: malformed.
std::optional<char32_t> classCharacter(std::string_view pattern, size_t* at) {
  if (*at >= pattern.size() || pattern[*at] == '-' || pattern[*at] == ']') {
    return std::nullopt;
  }
  if (pattern[*at] == '\\') {
    ++*at;
    if (*at >= pattern.size()) {
      return std::nullopt;
    }
  }
  const auto [value, length] = decodeCharacter(pattern, *at);
  if (value == 0xfffd && length == 1) {
    return std::nullopt;
  }
  *at += length;
  if (*at >= pattern.size()) {
    return std::nullopt;  // Unterminated class.
  }
  return value;
}

// The tokens of `pattern`; nullopt when Go's filepath.Match would call it malformed (an
// unterminated or empty class, a bad range, a trailing backslash).
std::optional<std::vector<Token>> compile(std::string_view pattern) {
  std::vector<Token> tokens;
  auto literal = [&](std::string_view text) {
    if (tokens.empty() || tokens.back().kind != Token::Kind::Literal) {
      tokens.push_back({});
    }
    tokens.back().text += text;
  };
  size_t at = 0;
  while (at < pattern.size()) {
    const char c = pattern[at];
    if (c == '*') {
      if (at + 1 < pattern.size() && pattern[at + 1] == '*') {
        at += 2;
        if (at < pattern.size() && pattern[at] == '/') {
          ++at;  // `**/` is `**`.
        }
        tokens.push_back(
            tokenOf(at == pattern.size() ? Token::Kind::AnyAll : Token::Kind::AnyDirs));
      } else {
        tokens.push_back(tokenOf(Token::Kind::Star));
        ++at;
      }
    } else if (c == '?') {
      tokens.push_back(tokenOf(Token::Kind::One));
      ++at;
    } else if (c == '\\') {
      if (at + 1 == pattern.size()) {
        return std::nullopt;
      }
      literal(pattern.substr(at + 1, 1));
      at += 2;
    } else if (c == '[') {
      Token token = tokenOf(Token::Kind::Class);
      ++at;
      if (at < pattern.size() && pattern[at] == '^') {
        token.negated = true;
        ++at;
      }
      for (;;) {
        if (at < pattern.size() && pattern[at] == ']' && !token.ranges.empty()) {
          ++at;
          break;
        }
        const auto low = classCharacter(pattern, &at);
        if (!low) {
          return std::nullopt;
        }
        char32_t high = *low;
        if (pattern[at] == '-') {
          ++at;
          const auto last = classCharacter(pattern, &at);
          if (!last || *last < *low) {
            return std::nullopt;
          }
          high = *last;
        }
        token.ranges.emplace_back(*low, high);
      }
      tokens.push_back(std::move(token));
    } else {
      literal(pattern.substr(at, 1));
      ++at;
    }
  }
  return tokens;
}

bool inClass(const Token& token, char32_t value) {
  const bool in = std::any_of(token.ranges.begin(), token.ranges.end(), [&](const auto& range) {
    return range.first <= value && value <= range.second;
  });
  return in != token.negated;
}

// Whether `tokens` match the whole of `path`: the set of positions reachable after each token,
// so that the cost is O(tokens x path) whatever the stars (no backtracking).
bool matchTokens(const std::vector<Token>& tokens, std::string_view path) {
  const size_t n = path.size();
  // Strings rather than vector<char>: GCC's -Wnull-dereference misreads the latter here.
  std::string reach(n + 1, '\0');
  std::string next(n + 1, '\0');
  reach[0] = 1;
  for (const Token& token : tokens) {
    std::fill(next.begin(), next.end(), 0);
    bool on = false;
    for (size_t p = 0; p <= n; ++p) {
      switch (token.kind) {
        case Token::Kind::Literal:
          if (reach[p] != 0 && path.substr(p).starts_with(token.text)) {
            next[p + token.text.size()] = 1;
          }
          break;
        case Token::Kind::One:
        case Token::Kind::Class:
          if (reach[p] != 0 && p < n) {
            const auto [value, length] = decodeCharacter(path, p);
            if (token.kind == Token::Kind::One ? value != '/' : inClass(token, value)) {
              next[p + length] = 1;
            }
          }
          break;
        case Token::Kind::Star:
          on = on || reach[p] != 0;
          next[p] = on ? 1 : 0;
          if (p < n && path[p] == '/') {
            on = false;
          }
          break;
        case Token::Kind::AnyAll:
          on = on || reach[p] != 0;
          next[p] = on ? 1 : 0;
          break;
        case Token::Kind::AnyDirs:
          if (reach[p] != 0) {
            next[p] = 1;
            on = true;
          }
          if (on && p < n && path[p] == '/') {
            next[p + 1] = 1;
          }
          break;
      }
    }
    std::swap(reach, next);
  }
  return reach[n] != 0;
}

std::string_view trimSpace(std::string_view text) {
  constexpr std::string_view kSpace = " \t\n\v\f\r";
  const size_t first = text.find_first_not_of(kSpace);
  if (first == std::string_view::npos) {
    return {};
  }
  return text.substr(first, text.find_last_not_of(kSpace) - first + 1);
}

}  // namespace

IgnorePatterns IgnorePatterns::parse(std::string_view text) {
  IgnorePatterns patterns;
  if (text.starts_with("\xef\xbb\xbf")) {
    text.remove_prefix(3);  // A UTF-8 byte order mark.
  }
  int lineNumber = 0;
  while (!text.empty()) {
    const size_t end = text.find('\n');
    std::string_view line = text.substr(0, end);
    text.remove_prefix(end == std::string_view::npos ? text.size() : end + 1);
    ++lineNumber;
    if (line.ends_with('\r')) {
      line.remove_suffix(1);
    }
    if (line.starts_with('#')) {
      continue;  // A comment, only in the first column.
    }
    line = trimSpace(line);
    if (line.empty()) {
      continue;
    }
    Pattern pattern;
    if (line.front() == '!') {
      pattern.exception = true;
      line = trimSpace(line.substr(1));
      if (line.empty()) {
        throw ContextError(fmt::format("line {}: illegal exclusion pattern \"!\"", lineNumber));
      }
    }
    pattern.text = cleanPath(line);
    if (pattern.text.size() > 1 && pattern.text.front() == '/') {
      pattern.text.erase(0, 1);
    }
    auto tokens = compile(pattern.text);
    if (!tokens) {
      throw ContextError(fmt::format("line {}: malformed pattern \"{}\"", lineNumber, line));
    }
    pattern.tokens = std::move(*tokens);
    patterns.patterns_.push_back(std::move(pattern));
  }
  return patterns;
}

void IgnorePatterns::keep(std::string_view path) {
  Pattern pattern;
  pattern.text = std::string(path);
  pattern.exception = true;
  pattern.literal = true;
  patterns_.push_back(std::move(pattern));
}

bool IgnorePatterns::matches(const Pattern& pattern, std::string_view path) {
  return pattern.literal ? path == pattern.text : matchTokens(pattern.tokens, path);
}

bool IgnorePatterns::excludes(std::string_view path) const {
  // The parent directories: "a", "a/b" for "a/b/c".
  std::vector<std::string_view> parents;
  for (size_t slash = path.find('/'); slash != std::string_view::npos;
       slash = path.find('/', slash + 1)) {
    parents.push_back(path.substr(0, slash));
  }
  bool excluded = false;
  for (const Pattern& pattern : patterns_) {
    bool match = matches(pattern, path);
    for (size_t i = 0; !match && i < parents.size(); ++i) {
      match = matches(pattern, parents[i]);
    }
    if (match) {
      excluded = !pattern.exception;
    }
  }
  return excluded;
}

bool IgnorePatterns::mayIncludeBelow(std::string_view dir) const {
  const std::vector<std::string> dirElements = pathElements(dir);
  for (const Pattern& pattern : patterns_) {
    if (!pattern.exception) {
      continue;
    }
    const std::vector<std::string> elements = pathElements(pattern.text);
    bool possible = elements.size() > dirElements.size();
    for (size_t i = 0; i < dirElements.size() && i < elements.size(); ++i) {
      if (!pattern.literal && elements[i].find("**") != std::string::npos) {
        possible = true;  // Any depth from here on.
        break;
      }
      const auto tokens = pattern.literal ? std::nullopt : compile(elements[i]);
      const bool elementMatches = pattern.literal ? elements[i] == dirElements[i]
                                  : tokens        ? matchTokens(*tokens, dirElements[i])
                                                  : true;  // Cannot tell: enter.
      if (!elementMatches) {
        possible = false;
        break;
      }
    }
    if (possible) {
      return true;
    }
  }
  return false;
}

bool matchesIgnorePattern(std::string_view pattern, std::string_view path) {
  const auto tokens = compile(pattern);
  if (!tokens) {
    throw ContextError(fmt::format("malformed pattern \"{}\"", pattern));
  }
  return matchTokens(*tokens, path);
}

}  // namespace snow::containers
