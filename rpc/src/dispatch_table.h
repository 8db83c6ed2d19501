#pragma once

// The receiving side's memory of dispatched events, for deduplication (private to rpc/).
//
// Each event id is New, Running (handler not settled; later arrivals wait for it), Done (its
// answer is kept and given to every retry) or Interrupted (the journal says a previous run of
// this node accepted it but did not record an answer: it was killed while handling it).
//
// The journal, when configured, is an append-only text file written before the handler runs
// ("A <id>") and when it settled ("D <id> <code> <hex answer>"). It is not fsync()ed: it
// survives the daemon being killed, not the machine losing power. It is rewritten (compacted)
// when it holds more than 2 * capacity + 1024 records. "X <id>" forgets an id: its handler did
// not run to an answer worth keeping (no handler, or it asked to be retried).
//
// Thread: loop thread. Errors: open() throws std::runtime_error naming the file.

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "snow/core/event.h"
#include "snow/core/future.h"
#include "snow/posix/file_descriptor.h"
#include "snow/posix/posix.h"
#include "snow/rpc/status.h"

namespace snow::rpc::detail {

struct DispatchAnswer {
  Code code = Code::Ok;
  std::string body;  // Ok: the serialised DispatchReply; otherwise the status message.
};

class DispatchTable {
 public:
  enum class State { New, Running, Done, Interrupted };

  DispatchTable(posix::Posix& os, size_t capacity, std::string journalPath);

  // Reads the journal (if any) and opens it for appending. Returns the number of records read.
  size_t open();

  [[nodiscard]] State state(const EventId& id) const;
  // Done: the answer.
  [[nodiscard]] const DispatchAnswer& answer(const EventId& id) const;
  // Running: a future of the answer.
  Future<DispatchAnswer> wait(const EventId& id);
  // New or Interrupted -> Running; journals the acceptance.
  void begin(const EventId& id);
  // Running -> Done; journals the answer and gives it to every waiter.
  void complete(const EventId& id, DispatchAnswer answer);
  // Running -> New: gives `answer` to every waiter but keeps nothing, so that a retry runs the
  // handler again.
  void forget(const EventId& id, const DispatchAnswer& answer);

  [[nodiscard]] size_t size() const noexcept { return entries_.size(); }
  [[nodiscard]] const std::string& journalPath() const noexcept { return journalPath_; }

 private:
  struct Hash {
    size_t operator()(const EventId& id) const noexcept {
      return std::hash<uint64_t>()(id.origin * 0x9e3779b97f4a7c15ULL ^ id.sequence);
    }
  };
  struct Entry {
    State state = State::New;
    DispatchAnswer answer;
    std::vector<Promise<DispatchAnswer>> waiters;
  };

  void append(const std::string& record);
  void compact();
  void evict();

  posix::Posix& os_;
  size_t capacity_;
  std::string journalPath_;
  posix::FileDescriptor journal_;
  size_t journalRecords_ = 0;
  std::unordered_map<EventId, Entry, Hash> entries_;
  std::deque<EventId> order_;  // Oldest first; entries are evicted from the front once Done.
};

// Hex, for answers in the journal.
std::string toHex(std::string_view bytes);
std::optional<std::string> fromHex(std::string_view hex);

}  // namespace snow::rpc::detail
