// packContext() (context.h): walks the directory through the POSIX layer, then streams the tar
// with libarchive, which writes only to memory (the sink).

#include "context.h"

#include <algorithm>
#include <cerrno>
#include <exception>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>

#include "snow/posix/checked_posix.h"
#include "snow/posix/errno_name.h"

#include "context_ignore.h"
#include "context_path.h"

namespace snow::containers {
namespace {

constexpr size_t kChunk = size_t{64} * 1024;
constexpr int kMaxSymlinkHops = 40;  // As Linux's MAXSYMLINKS.
constexpr uint64_t kBlock = 512;

uint64_t roundUp(uint64_t size) {
  return (size + kBlock - 1) / kBlock * kBlock;
}

// An entry the walk found, to be sent.
struct Entry {
  std::string path;  // Relative, clean, without a trailing slash.
  struct stat info {};
  std::string linkTarget;  // Symlinks: the target, as readlink() gives it.
  std::string hardLinkTo;  // A file hard-linked to an entry sent before: that entry's path.
};

// Closes its descriptor through the layer that opened it (posix::FileDescriptor would use the
// active layer, which need not be `os`).
class OpenFile {
 public:
  OpenFile(posix::Posix& os, int fd) noexcept : os_(os), fd_(fd) {}
  ~OpenFile() {
    (void)posix::tolerant([&] { return os_.close(fd_); });
  }
  OpenFile(const OpenFile&) = delete;
  OpenFile& operator=(const OpenFile&) = delete;
  OpenFile(OpenFile&&) = delete;
  OpenFile& operator=(OpenFile&&) = delete;

  [[nodiscard]] int fd() const noexcept { return fd_; }

 private:
  posix::Posix& os_;
  int fd_;
};

// Freeing a handle that is still open closes it, which frees libarchive's buffers (after
// archive_write_fail() it would not, and they leak) and writes an end-of-archive marker: the
// packer's write callback refuses that after a failure (Packer::abandoned_), so that a cut
// stream never looks whole.
struct ArchiveFree {
  void operator()(struct archive* archive) const noexcept { archive_write_free(archive); }
};

struct EntryFree {
  void operator()(struct archive_entry* entry) const noexcept { archive_entry_free(entry); }
};

// Where following a symlink led.
struct Resolution {
  bool inside = true;
  std::vector<std::string> elements;  // The resolved path, when inside.
  std::string why;                    // Why not inside, for a message.
};

class Packer {
 public:
  Packer(posix::Posix& os, const std::string& dir, uint64_t maxBytes,
         const std::function<void(std::string_view)>& sink)
      : os_(os), dir_(dir), maxBytes_(maxBytes), sink_(sink) {}

  PackedContext run(const std::string& dockerfile) {
    checkRoot();
    packed_.dockerfile = findDockerfile(dockerfile);
    IgnorePatterns patterns = readIgnoreFile();
    patterns.keep(".dockerignore");
    patterns.keep(packed_.dockerfile);
    patterns_ = &patterns;
    walk("");
    checkSize();
    writeTar();
    packed_.files = entries_.size();
    packed_.bytes = sent_;
    return std::move(packed_);
  }

 private:
  [[nodiscard]] std::string inDir(std::string_view relative) const {
    return relative.empty() ? dir_ : fmt::format("{}/{}", dir_, relative);
  }

  posix::Result<int> lstatAt(std::string_view relative, struct stat* info) {
    const std::string path = inDir(relative);
    return posix::tolerant([&] { return os_.lstat(path.c_str(), info); });
  }

  [[noreturn]] void failed(std::string_view what, std::string_view relative, int errnum) const {
    throw ContextError(fmt::format("cannot {} {}: {}", what, quotedPath(inDir(relative)),
                                   posix::errnoMessage(errnum)));
  }

  void checkRoot() {
    struct stat info {};
    const auto result = posix::tolerant([&] { return os_.stat(dir_.c_str(), &info); });
    if (result.errnum == ENOENT) {
      throw ContextError(fmt::format("the build context {} does not exist", quotedPath(dir_)));
    }
    if (!result.ok()) {
      failed("read the build context", "", result.errnum);
    }
    if (!S_ISDIR(info.st_mode)) {
      throw ContextError(fmt::format("the build context {} is not a directory", quotedPath(dir_)));
    }
  }

  std::string readLink(std::string_view relative) {
    const std::string path = inDir(relative);
    std::string target(4096, '\0');
    for (;;) {
      const auto got =
          posix::tolerant([&] { return os_.readlink(path.c_str(), target.data(), target.size()); });
      if (!got.ok()) {
        failed("read the symlink", relative, got.errnum);
      }
      if (static_cast<size_t>(got.value) < target.size()) {
        target.resize(static_cast<size_t>(got.value));
        return target;
      }
      target.resize(target.size() * 2);  // Possibly cut short: again with more room.
    }
  }

  // Follows `target` from the directory `base` as the kernel would, but inside the context only:
  // symlinks met on the way are followed, `..` may not go above the root, an absolute target
  // met on the way leaves. A path that does not exist is resolved lexically from there on.
  Resolution resolve(std::vector<std::string> base, std::string_view target) {
    std::vector<std::string> pending = pathElements(target);
    std::reverse(pending.begin(), pending.end());
    int hops = 0;
    while (!pending.empty()) {
      std::string element = std::move(pending.back());
      pending.pop_back();
      if (element == "..") {
        if (base.empty()) {
          return {false, {}, ""};
        }
        base.pop_back();
        continue;
      }
      base.push_back(std::move(element));
      const std::string path = joinElements(base);
      struct stat info {};
      const auto result = lstatAt(path, &info);
      if (result.errnum == ENOENT || result.errnum == ENOTDIR) {
        continue;
      }
      if (!result.ok()) {
        failed("read", path, result.errnum);
      }
      if (!S_ISLNK(info.st_mode)) {
        continue;
      }
      if (++hops > kMaxSymlinkHops) {
        return {true, {}, ""};  // A loop: resolves nowhere, so not outside either.
      }
      const std::string next = readLink(path);
      if (next.starts_with('/')) {
        return {false,
                {},
                fmt::format("through symlink {} to the absolute path {}", quotedPath(path),
                            quotedPath(next))};
      }
      base.pop_back();
      std::vector<std::string> more = pathElements(next);
      pending.insert(pending.end(), more.rbegin(), more.rend());
    }
    return {true, std::move(base), ""};
  }

  // The Dockerfile's path in the tar, once found a regular file inside the context, small enough
  // and not broken.
  std::string findDockerfile(const std::string& given) {
    const std::string name = given.empty() ? std::string("Dockerfile") : given;
    const std::string cleaned = cleanPath(name);
    if (cleaned.starts_with('/')) {
      throw ContextError(fmt::format(
          "the Dockerfile {} must be given relative to the build context", quotedPath(name)));
    }
    const Resolution resolution = resolve({}, cleaned);
    if (leavesRoot(cleaned) || !resolution.inside) {
      throw ContextError(fmt::format("the Dockerfile {} is outside the build context {}{}{}",
                                     quotedPath(name), quotedPath(dir_),
                                     resolution.why.empty() ? "" : " ", resolution.why));
    }
    std::string path = joinElements(resolution.elements);
    struct stat info {};
    const auto found = lstatAt(path, &info);
    if (found.errnum == ENOENT || found.errnum == ENOTDIR || path.empty()) {
      throw ContextError(fmt::format("the Dockerfile {} is not in the build context {}",
                                     quotedPath(name), quotedPath(dir_)));
    }
    if (!found.ok()) {
      failed("read the Dockerfile", path, found.errnum);
    }
    if (!S_ISREG(info.st_mode)) {
      throw ContextError(
          fmt::format("the Dockerfile {} is not a regular file", quotedPath(inDir(path))));
    }
    const std::string text = readSmallFile(path, kMaxDockerfileBytes, "the Dockerfile");
    if (text.empty()) {
      throw ContextError(fmt::format("the Dockerfile {} is empty", quotedPath(inDir(path))));
    }
    try {
      checkDockerfile(text);
    } catch (const ContextError& e) {
      throw ContextError(
          fmt::format("the Dockerfile {} is broken: {}", quotedPath(inDir(path)), e.what()));
    }
    return path;
  }

  // A whole file of at most `limit` bytes. When `missing` is given, a file that does not exist
  // gives "" with *missing set instead of an error.
  std::string readSmallFile(std::string_view relative, uint64_t limit, std::string_view what,
                            bool* missing = nullptr) {
    const std::string path = inDir(relative);
    const auto opened =
        posix::tolerant([&] { return os_.open(path.c_str(), O_RDONLY | O_CLOEXEC, 0); });
    if (missing != nullptr && opened.errnum == ENOENT) {
      *missing = true;
      return {};
    }
    if (!opened.ok()) {
      failed(fmt::format("read {}", what), relative, opened.errnum);
    }
    const OpenFile file(os_, opened.value);
    std::string content;
    char buffer[16384];
    for (;;) {
      const auto got = posix::tolerant([&] { return os_.read(file.fd(), buffer, sizeof(buffer)); });
      if (got.errnum == EINTR) {
        continue;
      }
      if (!got.ok()) {
        failed(fmt::format("read {}", what), relative, got.errnum);
      }
      if (got.value == 0) {
        return content;
      }
      content.append(buffer, static_cast<size_t>(got.value));
      if (content.size() > limit) {
        throw ContextError(
            fmt::format("{} {} is over the limit of {} bytes", what, quotedPath(path), limit));
      }
    }
  }

  IgnorePatterns readIgnoreFile() {
    bool missing = false;
    const std::string text =
        readSmallFile(".dockerignore", uint64_t{16} * 1024 * 1024, "the .dockerignore", &missing);
    if (missing) {
      return {};
    }
    try {
      return IgnorePatterns::parse(text);
    } catch (const ContextError& e) {
      throw ContextError(fmt::format("{}: {}", quotedPath(inDir(".dockerignore")), e.what()));
    }
  }

  // Adds the entries below `directory` (relative; "" for the root), depth first, each
  // directory's names sorted bytewise.
  void walk(const std::string& directory) {
    const std::string path = inDir(directory);
    auto listed = posix::tolerant([&] { return os_.readDirectory(path.c_str()); });
    if (!listed.ok()) {
      failed("read the directory", directory, listed.errnum);
    }
    std::vector<std::string> names;
    names.reserve(listed.value.size());
    for (posix::DirectoryEntry& entry : listed.value) {
      names.push_back(std::move(entry.name));
    }
    std::sort(names.begin(), names.end());
    for (const std::string& name : names) {
      visit(directory.empty() ? name : fmt::format("{}/{}", directory, name));
    }
  }

  void visit(const std::string& path) {
    Entry entry;
    entry.path = path;
    const auto found = lstatAt(path, &entry.info);
    if (!found.ok()) {
      failed("read", path, found.errnum);
    }
    const mode_t mode = entry.info.st_mode;
    const bool excluded = patterns_->excludes(path);
    if (S_ISDIR(mode)) {
      if (!excluded) {
        entries_.push_back(std::move(entry));
        walk(path);
      } else if (patterns_->mayIncludeBelow(path)) {
        // Sent only when an exception includes something below it, before that something.
        const size_t at = entries_.size();
        walk(path);
        if (entries_.size() > at) {
          entries_.insert(entries_.begin() + static_cast<std::ptrdiff_t>(at), std::move(entry));
        }
      }
      return;
    }
    if (excluded) {
      return;
    }
    if (S_ISREG(mode)) {
      addFile(std::move(entry));
    } else if (S_ISLNK(mode)) {
      addSymlink(std::move(entry));
    } else {
      const char* what = S_ISSOCK(mode)   ? "a socket"
                         : S_ISFIFO(mode) ? "a FIFO"
                         : S_ISCHR(mode)  ? "a character device"
                         : S_ISBLK(mode)  ? "a block device"
                                          : "of an unknown type";
      packed_.skipped.push_back({path, fmt::format("{}, which a build cannot use", what)});
    }
  }

  void addFile(Entry entry) {
    // Readable? Tried now, as the Docker CLI does, so that a refusal comes before any byte is
    // sent. O_NONBLOCK: should it have become a FIFO meanwhile, open() must not wait.
    const std::string path = inDir(entry.path);
    const auto opened = posix::tolerant(
        [&] { return os_.open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0); });
    if (!opened.ok()) {
      failed("read", entry.path, opened.errnum);
    }
    const OpenFile file(os_, opened.value);
    if (entry.info.st_nlink > 1 && entry.path != packed_.dockerfile) {
      const auto key = std::make_pair(entry.info.st_dev, entry.info.st_ino);
      const auto [first, inserted] = hardLinks_.emplace(key, entry.path);
      if (!inserted) {
        entry.hardLinkTo = first->second;
      }
    }
    entries_.push_back(std::move(entry));
  }

  void addSymlink(Entry entry) {
    entry.linkTarget = readLink(entry.path);
    const std::string& target = entry.linkTarget;
    if (target.empty()) {
      throw ContextError(fmt::format("symlink {} has an empty target", quotedPath(entry.path)));
    }
    if (target.starts_with('/')) {
      throw ContextError(fmt::format("symlink {} points to the absolute path {}",
                                     quotedPath(entry.path), quotedPath(target)));
    }
    std::vector<std::string> base = pathElements(entry.path);
    base.pop_back();
    const Resolution resolution = resolve(std::move(base), target);
    if (!resolution.inside) {
      throw ContextError(fmt::format("symlink {} points to {}, outside the context{}{}",
                                     quotedPath(entry.path), quotedPath(target),
                                     resolution.why.empty() ? "" : " ", resolution.why));
    }
    entries_.push_back(std::move(entry));
  }

  // Refuses up front a context whose entries alone (headers and data, without extended headers)
  // are over the limit.
  void checkSize() const {
    uint64_t least = 2 * kBlock;  // The end-of-archive marker.
    for (const Entry& entry : entries_) {
      least += kBlock;
      if (S_ISREG(entry.info.st_mode) && entry.hardLinkTo.empty()) {
        least += roundUp(static_cast<uint64_t>(entry.info.st_size));
      }
    }
    if (least > maxBytes_) {
      throw ContextError(
          fmt::format("the build context {} is over the limit of {} bytes: its {} entries "
                      "need at least {} bytes",
                      quotedPath(dir_), maxBytes_, entries_.size(), least));
    }
  }

  static la_ssize_t onWrite(struct archive* /*archive*/, void* client, const void* buffer,
                            size_t length) {
    auto* packer = static_cast<Packer*>(client);
    try {
      if (packer->error_ || packer->abandoned_) {
        return -1;
      }
      if (length > packer->maxBytes_ - packer->sent_) {
        throw ContextError(fmt::format(
            "the build context {} is over the limit of {} bytes: it reached {} bytes at {}",
            quotedPath(packer->dir_), packer->maxBytes_, packer->sent_ + length,
            quotedPath(packer->current_)));
      }
      packer->sink_({static_cast<const char*>(buffer), length});
      packer->sent_ += length;
      return static_cast<la_ssize_t>(length);
    } catch (...) {
      packer->error_ = std::current_exception();
      return -1;
    }
  }

  // Throws the error behind a failed libarchive call: the sink's or the limit's when the write
  // callback failed, libarchive's own otherwise.
  [[noreturn]] void archiveFailed(struct archive* archive) {
    if (error_) {
      std::rethrow_exception(error_);
    }
    const char* text = archive_error_string(archive);
    throw ContextError(fmt::format("cannot pack {} into the context: {}", quotedPath(current_),
                                   text != nullptr ? text : "libarchive failed"));
  }

  void writeTar() {
    const std::unique_ptr<struct archive, ArchiveFree> archive(archive_write_new());
    if (!archive) {
      throw std::bad_alloc();
    }
    struct archive* a = archive.get();
    if (archive_write_set_format_pax_restricted(a) != ARCHIVE_OK ||
        archive_write_set_bytes_per_block(a, static_cast<int>(kChunk)) != ARCHIVE_OK ||
        archive_write_set_bytes_in_last_block(a, 1) != ARCHIVE_OK ||
        archive_write_open2(a, this, nullptr, &Packer::onWrite, nullptr, nullptr) != ARCHIVE_OK) {
      archiveFailed(a);
    }
    std::vector<char> buffer(kChunk);
    try {
      for (const Entry& entry : entries_) {
        current_ = entry.path;
        writeEntry(a, entry, buffer);
      }
      current_ = "the end of the archive";
      if (archive_write_close(a) != ARCHIVE_OK) {
        archiveFailed(a);
      }
    } catch (...) {
      abandoned_ = true;  // Nothing more reaches the sink, the end marker least of all.
      throw;
    }
  }

  void writeEntry(struct archive* a, const Entry& entry, std::vector<char>& buffer) {
    const std::unique_ptr<struct archive_entry, EntryFree> header(archive_entry_new());
    if (!header) {
      throw std::bad_alloc();
    }
    struct archive_entry* e = header.get();
    struct stat info = entry.info;
    std::unique_ptr<OpenFile> file;
    const bool regular = S_ISREG(info.st_mode) && entry.hardLinkTo.empty();
    if (regular) {
      // Opened again, and checked to be the same kind of file: it may have changed since.
      const std::string path = inDir(entry.path);
      const auto opened = posix::tolerant([&] {
        return os_.open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0);
      });
      if (!opened.ok()) {
        failed("read", entry.path, opened.errnum);
      }
      file = std::make_unique<OpenFile>(os_, opened.value);
      const auto described = posix::tolerant([&] { return os_.fstat(file->fd(), &info); });
      if (!described.ok()) {
        failed("read", entry.path, described.errnum);
      }
      if (!S_ISREG(info.st_mode)) {
        throw ContextError(fmt::format("{} changed while the context was being packed",
                                       quotedPath(inDir(entry.path))));
      }
    }

    archive_entry_set_pathname(e, (S_ISDIR(info.st_mode) ? entry.path + "/" : entry.path).c_str());
    archive_entry_set_perm(e, info.st_mode & 07777);
    archive_entry_set_uid(e, 0);
    archive_entry_set_gid(e, 0);
    archive_entry_set_mtime(e, info.st_mtime, 0);
    uint64_t size = 0;
    if (S_ISDIR(info.st_mode)) {
      archive_entry_set_filetype(e, AE_IFDIR);
    } else if (S_ISLNK(info.st_mode)) {
      archive_entry_set_filetype(e, AE_IFLNK);
      archive_entry_set_symlink(e, entry.linkTarget.c_str());
    } else if (!entry.hardLinkTo.empty()) {
      archive_entry_set_filetype(e, AE_IFREG);
      archive_entry_set_hardlink(e, entry.hardLinkTo.c_str());
    } else {
      archive_entry_set_filetype(e, AE_IFREG);
      size = static_cast<uint64_t>(info.st_size);
    }
    archive_entry_set_size(e, static_cast<la_int64_t>(size));
    // ARCHIVE_WARN: a name that is not valid in the locale's charset, written as raw bytes with
    // a pax hdrcharset=BINARY record, which is what is wanted.
    if (archive_write_header(a, e) < ARCHIVE_WARN) {
      archiveFailed(a);
    }
    if (file) {
      copyData(a, entry, *file, size, buffer);
    }
    if (archive_write_finish_entry(a) < ARCHIVE_WARN) {
      archiveFailed(a);
    }
  }

  void copyData(struct archive* a, const Entry& entry, const OpenFile& file, uint64_t size,
                std::vector<char>& buffer) {
    uint64_t done = 0;
    for (;;) {
      // One byte more than announced is asked for at the end, to notice a file that grew.
      const size_t want = static_cast<size_t>(std::min<uint64_t>(buffer.size(), size - done));
      const auto got =
          posix::tolerant([&] { return os_.read(file.fd(), buffer.data(), want == 0 ? 1 : want); });
      if (got.errnum == EINTR) {
        continue;
      }
      if (!got.ok()) {
        failed("read", entry.path, got.errnum);
      }
      if (want == 0) {
        if (got.value != 0) {
          throw ContextError(fmt::format("{} grew while the context was being packed",
                                         quotedPath(inDir(entry.path))));
        }
        return;
      }
      if (got.value == 0) {
        throw ContextError(
            fmt::format("{} shrank while the context was being packed ({} of {} bytes read)",
                        quotedPath(inDir(entry.path)), done, size));
      }
      if (archive_write_data(a, buffer.data(), static_cast<size_t>(got.value)) < 0) {
        archiveFailed(a);
      }
      done += static_cast<uint64_t>(got.value);
    }
  }

  posix::Posix& os_;
  const std::string& dir_;
  uint64_t maxBytes_;
  const std::function<void(std::string_view)>& sink_;

  const IgnorePatterns* patterns_ = nullptr;
  std::vector<Entry> entries_;
  std::map<std::pair<dev_t, ino_t>, std::string> hardLinks_;
  PackedContext packed_;

  std::string current_;  // The entry being written, for messages.
  uint64_t sent_ = 0;
  std::exception_ptr error_;  // What the write callback caught.
  bool abandoned_ = false;    // Packing failed: the write callback passes nothing on.
};

}  // namespace

PackedContext packContext(posix::Posix& os, const std::string& dir, const std::string& dockerfile,
                          uint64_t maxBytes,
                          const std::function<void(std::string_view chunk)>& sink) {
  Packer packer(os, dir, maxBytes, sink);
  return packer.run(dockerfile);
}

}  // namespace snow::containers
