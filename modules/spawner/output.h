#pragma once

// A service's output: the pipes its stdout and stderr write into, cut into lines, and the last
// lines kept for `snowctl logs` with live followers.
//
// Thread: loop thread. Ownership: a Service owns its two OutputPipes and its LogRing (shared, so
// that a follower's stream can outlive a removed service without dangling). Errors: the
// constructor throws std::system_error when the pipe cannot be made.

#include <cstdint>
#include <deque>
#include <list>
#include <memory>
#include <string>
#include <string_view>

#include "snow/core/dispatcher.h"
#include "snow/core/function.h"
#include "snow/core/future.h"
#include "snow/posix/file_descriptor.h"
#include "snow/posix/posix.h"
#include "snow/rpc/services.h"
#include "snow/spawner/v1/spawner.pb.h"

namespace snow::spawner {

namespace pb = snow::spawner::v1;

// Lines longer than this are cut: a child writing without newlines must not grow the daemon.
inline constexpr size_t kMaxLineBytes = size_t{16} * 1024;

class OutputPipe {
 public:
  using OnLine = UniqueFunction<void(std::string_view line)>;

  // The pipe lives as long as the service, across its restarts: a restart costs no new pipe, and
  // output a child wrote just before it died is still read.
  OutputPipe(Dispatcher& loop, posix::Posix& os, OnLine onLine);
  OutputPipe(const OutputPipe&) = delete;
  OutputPipe& operator=(const OutputPipe&) = delete;

  // The end the child writes to (placed at its fd 1 or 2 by spawn()).
  [[nodiscard]] int writeFd() const noexcept { return write_.get(); }
  // Reads what is in the pipe now, and hands out a last unterminated line.
  void drain(bool flushPartial);

 private:
  posix::Posix& os_;
  OnLine onLine_;
  posix::FileDescriptor read_;
  posix::FileDescriptor write_;
  FileEventPtr watch_;
  std::string partial_;
};

class LogRing : public std::enable_shared_from_this<LogRing> {
 public:
  explicit LogRing(size_t capacity) : capacity_(capacity) {}
  ~LogRing();
  LogRing(const LogRing&) = delete;
  LogRing& operator=(const LogRing&) = delete;

  void setCapacity(size_t capacity);
  void add(pb::LogLine line);
  // The last `n` lines, oldest first.
  [[nodiscard]] std::vector<pb::LogLine> last(size_t n) const;
  // Writes every new line to `stream` until the client goes away or the ring ends (the service
  // was removed); the future settles then.
  Future<void> follow(const rpc::ServerStreamPtr& stream);
  [[nodiscard]] size_t size() const noexcept { return lines_.size(); }

 private:
  struct Follower {
    rpc::ServerStreamPtr stream;
    uint64_t dropped = 0;
    Promise<void> done;
  };

  size_t capacity_;
  std::deque<pb::LogLine> lines_;
  std::list<Follower> followers_;
};

}  // namespace snow::spawner
