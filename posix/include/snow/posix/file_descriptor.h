#pragma once

// RAII owner of one file descriptor.
//
// Closes the descriptor through posix::active() when destroyed or reset. Errors from that close
// are ignored: at destruction nobody can act on them, and on Linux the descriptor is released even
// when close() fails. Code that must know whether buffered data reached the disk or the peer
// calls fsync()/shutdown() (or close() on release()) itself before letting go.
//
// Thread: one owner at a time, like any value; not synchronised. Ownership: move-only; exactly
// one FileDescriptor owns a given descriptor, release() gives it back to the caller.

namespace snow::posix {

class FileDescriptor {
 public:
  FileDescriptor() noexcept = default;
  // Takes ownership of `fd` (a negative value means "none").
  explicit FileDescriptor(int fd) noexcept : fd_(fd) {}
  ~FileDescriptor() { reset(); }

  FileDescriptor(FileDescriptor&& other) noexcept : fd_(other.release()) {}
  FileDescriptor& operator=(FileDescriptor&& other) noexcept {
    if (this != &other) {
      reset(other.release());
    }
    return *this;
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;

  // The descriptor, still owned by this object; -1 when empty.
  [[nodiscard]] int get() const noexcept { return fd_; }

  // Gives up ownership without closing; the object is empty afterwards.
  [[nodiscard]] int release() noexcept {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }

  // Closes the owned descriptor (if any, and if it is not `fd` itself) and takes `fd`.
  void reset(int fd = -1) noexcept;

  explicit operator bool() const noexcept { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

}  // namespace snow::posix
