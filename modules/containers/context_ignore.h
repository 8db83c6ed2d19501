#pragma once

// The patterns of a .dockerignore file, with Docker's semantics (packContext() in context.h
// describes them; the reference is moby/patternmatcher and BuildKit's fsutil walker).
//
// Thread: an IgnorePatterns is immutable once built; const methods may run on any thread.
// Errors: parse() throws ContextError (context.h) for a malformed pattern.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace snow::containers {

class IgnorePatterns {
 public:
  // Parses a .dockerignore's text. A malformed pattern throws ContextError whose message starts
  // with "line N: ".
  static IgnorePatterns parse(std::string_view text);

  // Appends an exception for exactly `path` (no wildcards): it is always sent, whatever the
  // patterns before say (the Dockerfile, .dockerignore).
  void keep(std::string_view path);

  // Whether `path` (clean, relative, '/'-separated) is left out: the last pattern matching it or
  // one of its parent directories decides, an exception (`!`) including it again.
  [[nodiscard]] bool excludes(std::string_view path) const;

  // Whether an exception may include something below the excluded directory `dir`, so that a
  // walk must still enter it: an exception with `**`, or with more elements than `dir` whose
  // first ones match `dir`'s.
  [[nodiscard]] bool mayIncludeBelow(std::string_view dir) const;

  [[nodiscard]] bool empty() const noexcept { return patterns_.empty(); }

  // One element of a compiled pattern (public for the matcher in the .cc, not for callers).
  struct Token {
    enum class Kind : uint8_t {
      Literal,  // `text`, as is.
      Star,     // `*`: any run of characters but '/'.
      One,      // `?`: one character but '/'.
      Class,    // `[...]`: one character in (or, negated, not in) `ranges`.
      AnyDirs,  // `**/` or `**` before more pattern: any number of whole directories, none too.
      AnyAll,   // `**` ending the pattern: anything.
    };
    Kind kind = Kind::Literal;
    std::string text;
    bool negated = false;
    std::vector<std::pair<char32_t, char32_t>> ranges;
  };

 private:
  struct Pattern {
    std::string text;  // Cleaned, without the `!`.
    bool exception = false;
    bool literal = false;  // From keep(): `text` is a path, not a pattern.
    std::vector<Token> tokens;
  };

  [[nodiscard]] static bool matches(const Pattern& pattern, std::string_view path);

  std::vector<Pattern> patterns_;
};

// Whether the single pattern `pattern` (Go's filepath.Match syntax plus `**`) matches the whole
// of `path`. Throws ContextError for a malformed pattern. For tests and messages.
bool matchesIgnorePattern(std::string_view pattern, std::string_view path);

}  // namespace snow::containers
