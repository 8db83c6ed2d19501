#include "output.h"

#include <system_error>

#include <fcntl.h>

namespace snow::spawner {

OutputPipe::OutputPipe(Dispatcher& loop, posix::Posix& os, OnLine onLine)
    : os_(os), onLine_(std::move(onLine)) {
  int fds[2] = {-1, -1};
  if (auto r = os.pipe2(fds, O_CLOEXEC); !r.ok()) {
    throw std::system_error(r.errnum, std::generic_category(), "pipe2 for a service's output");
  }
  read_.reset(fds[0]);
  write_.reset(fds[1]);
  // Only our end is non-blocking: the child's end behaves as a terminal-less stdout would.
  (void)os.fcntl(read_.get(), F_SETFL, O_NONBLOCK);
  watch_ = loop.createFileEvent(
      read_.get(), [this](uint32_t) { drain(false); }, FileReady::kRead);
}

void OutputPipe::drain(bool flushPartial) {
  char buffer[16384];
  for (int rounds = 0; rounds < 64;
       ++rounds) {  // Bounded: a chatty child must not starve the loop.
    auto r = os_.read(read_.get(), buffer, sizeof(buffer));
    if (!r.ok() || r.value <= 0) {
      break;  // EAGAIN: drained. (0 cannot happen while we hold the write end.)
    }
    std::string_view chunk(buffer, static_cast<size_t>(r.value));
    while (!chunk.empty()) {
      const size_t newline = chunk.find('\n');
      const size_t take = newline == std::string_view::npos ? chunk.size() : newline;
      const size_t room = kMaxLineBytes - partial_.size();
      if (take >= room) {
        partial_.append(chunk.substr(0, room));
        chunk.remove_prefix(room);
        onLine_(partial_);
        partial_.clear();
        continue;
      }
      partial_.append(chunk.substr(0, take));
      if (newline == std::string_view::npos) {
        break;
      }
      chunk.remove_prefix(take + 1);
      if (!partial_.empty() && partial_.back() == '\r') {
        partial_.pop_back();
      }
      onLine_(partial_);
      partial_.clear();
    }
  }
  if (flushPartial && !partial_.empty()) {
    onLine_(partial_);
    partial_.clear();
  }
}

LogRing::~LogRing() {
  for (auto& f : followers_) {
    f.done.setValue();
  }
}

void LogRing::setCapacity(size_t capacity) {
  capacity_ = capacity;
  while (lines_.size() > capacity_) {
    lines_.pop_front();
  }
}

void LogRing::add(pb::LogLine line) {
  for (auto& f : followers_) {
    line.set_dropped_before(f.dropped);
    if (f.stream->write(line)) {
      f.dropped = 0;
    } else {
      ++f.dropped;
    }
  }
  line.clear_dropped_before();
  if (capacity_ == 0) {
    return;
  }
  if (lines_.size() == capacity_) {
    lines_.pop_front();
  }
  lines_.push_back(std::move(line));
}

std::vector<pb::LogLine> LogRing::last(size_t n) const {
  const size_t from = lines_.size() > n ? lines_.size() - n : 0;
  return {lines_.begin() + static_cast<std::ptrdiff_t>(from), lines_.end()};
}

Future<void> LogRing::follow(const rpc::ServerStreamPtr& stream) {
  auto it = followers_.insert(followers_.end(), Follower{stream, 0, Promise<void>()});
  Future<void> done = it->done.future();
  std::weak_ptr<LogRing> self = weak_from_this();
  stream->closed()
      .whenSettled([self, stream](const Future<void>&) {
        if (auto ring = self.lock()) {
          auto& list = ring->followers_;
          for (auto f = list.begin(); f != list.end(); ++f) {
            if (f->stream == stream) {
              f->done.setValue();
              list.erase(f);
              break;
            }
          }
        }
      })
      .detach();
  return done;
}

}  // namespace snow::spawner
