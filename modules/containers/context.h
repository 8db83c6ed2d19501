#pragma once

// The build context of a container job: the directory `snowctl run DIR` sends, packed as
// `docker build DIR` would see it, and checked by the daemon that receives it before anything
// runs.
//
// Both halves speak one format: a tar stream (POSIX ustar headers, with pax 'x' extended headers
// where a name or size does not fit or a name is not ASCII), entries in the order a depth-first
// walk visits them with each directory's names sorted bytewise (Docker's order), no entry for the
// context's root. Metadata is kept only where Docker's build cache looks (content and mode):
// permission bits and the mtime in whole seconds are the file's, uid and gid are 0, user and group
// names empty, atime and ctime absent. Packing an unchanged directory twice gives the same bytes,
// so the cache keeps hitting.

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "snow/posix/posix.h"

namespace snow::containers {

// A context refused, by the packer or the checker. what() names the path (or stream offset) at
// fault and why, e.g. `symlink "lib/x" points to "/etc/passwd", outside the context`.
class ContextError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The largest Dockerfile either half accepts.
inline constexpr uint64_t kMaxDockerfileBytes = uint64_t{1024} * 1024;

// An entry of the directory the packer left out, and why.
struct SkippedEntry {
  std::string path;    // Relative to the context, as it would have been named in the tar.
  std::string reason;  // E.g. "a socket".
};

// What packContext() sent.
struct PackedContext {
  uint64_t files = 0;      // Entries written: files, directories, symlinks, hard links.
  uint64_t bytes = 0;      // Bytes of tar stream given to the sink, the end marker included.
  std::string dockerfile;  // The Dockerfile's path in the tar, e.g. "Dockerfile", "build/app.df".
  std::vector<SkippedEntry> skipped;  // Special files left out (see packContext).
};

// Packs `dir` as the build context and streams it to `sink` as a tar (see the format above).
//
// `dockerfile` is relative to `dir` (empty: "Dockerfile"), as `docker build -f` takes it. When
// it is a symlink inside the context, it names the file the link resolves to, as Docker does;
// PackedContext::dockerfile says which path that is in the tar.
//
// `.dockerignore` at the root of `dir` excludes entries with Docker's semantics: one pattern a
// line, `#` in the first column starts a comment, surrounding spaces and leading/trailing
// slashes and `.`/`..` elements are cleaned away (Go's filepath.Clean), patterns match like Go's
// filepath.Match (`*` and `?` never cross a `/`, `[a-z]`, `[^a-z]`, `\` escapes) plus `**`,
// which matches any number of directories (zero included). A pattern that matches a directory
// excludes everything below it; `!pattern` re-includes; the last matching line wins. An
// excluded directory is still walked when an exception could match something below it (one
// with `**`, or with more elements whose first ones match the directory's), and then sent only
// when something below it is (as BuildKit does). The Dockerfile and .dockerignore are always
// sent, even when a pattern excludes them.
//
// Kept as Docker keeps them: regular files, directories (empty ones too), symlinks whose target
// stays inside `dir` (kept as symlinks, not followed; a dangling one or a loop too, since it
// resolves to nothing outside), and files hard-linked to one already sent (a hard-link entry
// naming the first path; the Dockerfile itself is always sent whole).
// Skipped, named in PackedContext::skipped: sockets, FIFOs and device nodes (a build cannot
// use them, and a stray socket of a development server must not stop a build).
//
// Refused with ContextError, all before the first byte reaches `sink` except the last two:
//   - `dir` missing, not a directory, or unreadable (errno text);
//   - the Dockerfile missing, escaping `dir` (lexically or through a symlink), not a regular
//     file, empty, over kMaxDockerfileBytes, or broken (checkDockerfile());
//   - a .dockerignore that cannot be read or holds a malformed pattern;
//   - a symlink with an absolute target, or one that resolves outside `dir` (following the
//     symlinks it meets inside `dir`, as the kernel would);
//   - a file or directory that cannot be read (open() is tried on every file first, as the
//     Docker CLI does; errno text);
//   - a context over `maxBytes`: refused up front when its files alone are bigger, otherwise
//     when the stream reaches the limit (the message says the limit and how far it got);
//   - a file that changes size or fails to read while being packed.
// When it throws after sending started, what `sink` received is an unfinished tar that the
// receiver must drop (ContextChecker::finish() refuses it). An exception thrown by `sink` is
// passed on as it is.
//
// Thread: any, blocking on file I/O for as long as reading the directory takes; not for an
// event loop's thread. `sink` runs on the calling thread, with chunks of at most 64 KiB that are
// valid only during the call. Reads the directory only through `os` (which may be a checked
// layer: its exceptions are caught and reported as ContextError). Memory: two 64 KiB buffers
// (one is libarchive's) and a list of the entries' names and metadata, never a whole file.
PackedContext packContext(posix::Posix& os, const std::string& dir, const std::string& dockerfile,
                          uint64_t maxBytes,
                          const std::function<void(std::string_view chunk)>& sink);

// Checks a Dockerfile's text lightly: after parser directives, comments and blank lines, the
// first instruction must be FROM or ARG, and every instruction must start with a keyword Docker
// knows (ONBUILD's too). Line continuations (`\`, or the `escape` directive's character) and
// here-documents (`RUN <<EOF`) are followed. It does not check instructions' arguments.
// Throws ContextError naming the line. Thread: any (pure).
void checkDockerfile(std::string_view text);

// Checks a build context as it arrives from the network, chunk by chunk, before anything runs.
//
// Parses the tar stream incrementally: 512-byte ustar headers (POSIX "ustar\0" or GNU magic),
// checksums verified; pax 'x' extended headers (path, linkpath and size are applied to the next
// entry); pax 'g' global headers (checked like 'x' ones, applied to nothing, as Docker's reader
// does); GNU 'L'/'K' long names and link names. Accepted entries: regular files, directories,
// symlinks and hard links.
//
// feed() or finish() throws ContextError when:
//   - the stream exceeds `maxBytes` (counted over every byte fed; an error in the bytes before
//     the limit is reported first), or an entry declares more;
//   - a header is malformed (bad checksum, unknown magic, bad number, an unsupported or unsafe
//     type: devices, FIFOs, sparse files, GNU volume or dump-dir entries...), or an extended
//     header is malformed or over 64 KiB;
//   - an entry's path is empty, absolute, or keeps a `..` element once cleaned (Go's
//     path.Clean: "a/../b" is "b", "a/../../b" is refused);
//   - a symlink's target is absolute, or leaves the context when resolved lexically against the
//     link's directory; a hard link's target (relative to the root) is absolute or leaves it;
//   - non-zero data follows the end-of-archive marker;
//   - (finish) the stream ends inside an entry or without the end-of-archive marker (two zero
//     blocks);
//   - the Dockerfile (`dockerfile`, a path in the tar, cleaned as entries are) is missing,
//     present twice, not a regular file, empty, over kMaxDockerfileBytes, or broken
//     (checkDockerfile()).
// The symlink check is lexical: it cannot see that an earlier entry made a parent directory a
// symlink (that would need memory for every link); the Docker engine resolves links within the
// context's root when it reads it, which is the guard against such chains.
//
// Once a call threw, every later call throws the same error: the context is to be dropped.
//
// Thread: not synchronised; one thread at a time (an event loop's, typically). feed() does no
// I/O and costs O(chunk). Memory: never in proportion to the payload, except the Dockerfile's
// text (at most kMaxDockerfileBytes) and the current header (512 bytes, an extended one at most
// 64 KiB); chunks are not kept.
class ContextChecker {
 public:
  // `dockerfile`: the Dockerfile's path in the tar; empty: "Dockerfile".
  explicit ContextChecker(uint64_t maxBytes, std::string dockerfile);

  // The next bytes of the stream, of any size (empty is fine).
  void feed(std::string_view chunk);

  // The stream ended: checks it ended cleanly and the Dockerfile. Call once.
  void finish();

  // After finish() returned: the Dockerfile's text.
  [[nodiscard]] const std::string& dockerfileText() const noexcept { return dockerfileText_; }
  // Bytes taken so far (at most maxBytes); entries (of any kind, not extended headers) seen so
  // far.
  [[nodiscard]] uint64_t bytes() const noexcept { return bytes_; }
  [[nodiscard]] uint64_t entries() const noexcept { return entries_; }

 private:
  enum class State {
    Header,    // Expecting a header block.
    Data,      // Inside an entry's data (and its padding).
    Zero,      // Saw one zero block: expecting the second.
    Ended,     // Saw the end marker: only zero padding may follow.
    Finished,  // finish() returned.
  };
  enum class DataUse { Skip, Dockerfile, Extended };

  void consume(std::string_view chunk);
  void onHeader();
  void onEntry(char type, const std::string& path, const std::string& link, uint64_t size);
  void onExtendedHeader();
  void onPaxRecords(bool global);

  uint64_t maxBytes_;
  std::string dockerfile_;
  std::string dockerfileText_;

  State state_ = State::Header;
  std::string failure_;  // Non-empty once a call threw.
  uint64_t bytes_ = 0;
  uint64_t entries_ = 0;
  uint64_t consumed_ = 0;     // Bytes parsed so far (== bytes_ between calls).
  uint64_t entryOffset_ = 0;  // Where the current header started in the stream.
  std::string entryPath_;     // The current entry's path, for messages.

  char block_[512] = {};
  size_t blockFill_ = 0;

  // The current entry's data.
  DataUse dataUse_ = DataUse::Skip;
  uint64_t dataLeft_ = 0;     // Payload bytes still to come.
  uint64_t paddingLeft_ = 0;  // Zero bytes after the payload up to the block boundary.
  char extendedType_ = 0;     // 'x', 'g', 'L' or 'K' while DataUse::Extended.
  std::string extended_;      // The extended header being read (at most 64 KiB).

  // What extended headers said about the next entry.
  bool pendingPax_ = false;  // An 'x' header was read; its entry has not come yet.
  bool hasPaxPath_ = false;
  bool hasPaxLinkpath_ = false;
  bool hasPaxSize_ = false;
  bool hasLongName_ = false;
  bool hasLongLink_ = false;
  std::string paxPath_;
  std::string paxLinkpath_;
  uint64_t paxSize_ = 0;
  std::string longName_;
  std::string longLink_;

  bool dockerfileSeen_ = false;
};

}  // namespace snow::containers
