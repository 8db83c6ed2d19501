#include "dispatch_table.h"

#include <cerrno>
#include <charconv>

#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "snow/posix/checked_posix.h"

namespace snow::rpc::detail {
namespace {

std::string errnoText(int errnum) {
  return std::generic_category().message(errnum);
}

}  // namespace

std::string toHex(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 15]);
  }
  return out;
}

std::optional<std::string> fromHex(std::string_view hex) {
  if (hex.size() % 2 != 0) {
    return std::nullopt;
  }
  std::string out(hex.size() / 2, '\0');
  for (size_t i = 0; i < out.size(); ++i) {
    unsigned value = 0;
    auto [ptr, ec] = std::from_chars(hex.data() + 2 * i, hex.data() + 2 * i + 2, value, 16);
    if (ec != std::errc() || ptr != hex.data() + 2 * i + 2) {
      return std::nullopt;
    }
    out[i] = static_cast<char>(value);
  }
  return out;
}

DispatchTable::DispatchTable(posix::Posix& os, size_t capacity, std::string journalPath)
    : os_(os), capacity_(capacity == 0 ? 1 : capacity), journalPath_(std::move(journalPath)) {}

size_t DispatchTable::open() {
  if (journalPath_.empty()) {
    return 0;
  }
  size_t records = 0;
  size_t torn = 0;
  auto opened =
      posix::tolerant([&] { return os_.open(journalPath_.c_str(), O_RDONLY | O_CLOEXEC, 0); });
  if (opened.errnum != 0 && opened.errnum != ENOENT) {
    throw std::runtime_error(fmt::format("cannot read the dispatch journal {}: {}", journalPath_,
                                         errnoText(opened.errnum)));
  }
  if (opened.errnum == 0) {
    posix::FileDescriptor fd(opened.value);
    std::string content;
    char chunk[65536];
    for (;;) {
      auto got = posix::tolerant([&] { return os_.read(fd.get(), chunk, sizeof chunk); });
      if (got.errnum == EINTR) {
        continue;
      }
      if (got.errnum != 0) {
        throw std::runtime_error(fmt::format("cannot read the dispatch journal {}: {}",
                                             journalPath_, errnoText(got.errnum)));
      }
      if (got.value == 0) {
        break;
      }
      content.append(chunk, static_cast<size_t>(got.value));
    }
    size_t start = 0;
    while (start < content.size()) {
      const size_t end = content.find('\n', start);
      if (end == std::string::npos) {
        ++torn;  // A record cut by a kill in the middle of write().
        break;
      }
      const std::string_view line(content.data() + start, end - start);
      start = end + 1;
      // "A <id>" or "D <id> <code> <hex>"
      const auto firstSpace = line.find(' ');
      const auto secondSpace = line.find(' ', firstSpace + 1);
      const std::string_view idText =
          firstSpace == std::string_view::npos
              ? std::string_view()
              : line.substr(firstSpace + 1, secondSpace == std::string_view::npos
                                                ? std::string_view::npos
                                                : secondSpace - firstSpace - 1);
      const auto id = EventId::parse(idText);
      if (!id || line.size() < 2) {
        ++torn;
        continue;
      }
      if (line[0] == 'A') {
        auto [it, inserted] = entries_.try_emplace(*id);
        if (inserted) {
          order_.push_back(*id);
        }
        if (it->second.state != State::Done) {
          it->second.state = State::Interrupted;
        }
      } else if (line[0] == 'D' && secondSpace != std::string_view::npos) {
        const std::string_view rest = line.substr(secondSpace + 1);
        const auto space = rest.find(' ');
        if (space == std::string_view::npos) {
          ++torn;
          continue;
        }
        int code = 0;
        auto [ptr, ec] = std::from_chars(rest.data(), rest.data() + space, code);
        auto body = fromHex(rest.substr(space + 1));
        if (ec != std::errc() || ptr != rest.data() + space || !body) {
          ++torn;
          continue;
        }
        auto [it, inserted] = entries_.try_emplace(*id);
        if (inserted) {
          order_.push_back(*id);
        }
        it->second.state = State::Done;
        it->second.answer = DispatchAnswer{static_cast<Code>(code), std::move(*body)};
      } else if (line[0] == 'X') {
        entries_.erase(*id);  // Its place in order_ is skipped when evicting and compacting.
      } else {
        ++torn;
        continue;
      }
      ++records;
    }
  }
  if (torn != 0) {
    spdlog::warn("dispatch journal {}: ignored {} incomplete record(s)", journalPath_, torn);
  }
  evict();
  compact();  // Starts the file afresh with what is remembered, dropping torn records.
  return records;
}

DispatchTable::State DispatchTable::state(const EventId& id) const {
  auto it = entries_.find(id);
  return it == entries_.end() ? State::New : it->second.state;
}

const DispatchAnswer& DispatchTable::answer(const EventId& id) const {
  return entries_.at(id).answer;
}

Future<DispatchAnswer> DispatchTable::wait(const EventId& id) {
  Entry& entry = entries_.at(id);
  return entry.waiters.emplace_back().future();
}

void DispatchTable::begin(const EventId& id) {
  auto [it, inserted] = entries_.try_emplace(id);
  if (inserted) {
    order_.push_back(id);
  }
  it->second.state = State::Running;
  append(fmt::format("A {}\n", id.toString()));
}

void DispatchTable::complete(const EventId& id, DispatchAnswer answer) {
  Entry& entry = entries_.at(id);
  append(fmt::format("D {} {} {}\n", id.toString(), static_cast<int>(answer.code),
                     toHex(answer.body)));
  entry.state = State::Done;
  entry.answer = std::move(answer);
  for (auto& waiter : std::exchange(entry.waiters, {})) {
    if (!waiter.isSettled()) {
      waiter.setValue(entry.answer);
    }
  }
  evict();
}

void DispatchTable::forget(const EventId& id, const DispatchAnswer& answer) {
  auto it = entries_.find(id);
  if (it == entries_.end()) {
    return;
  }
  append(fmt::format("X {}\n", id.toString()));
  auto waiters = std::exchange(it->second.waiters, {});
  entries_.erase(it);
  for (auto& waiter : waiters) {
    if (!waiter.isSettled()) {
      waiter.setValue(answer);
    }
  }
}

void DispatchTable::evict() {
  // order_ also holds forgotten ids: trim it too, so that it stays bounded. A running entry is
  // never evicted (its waiters need the answer); it moves to the back, so that a handler that
  // never settles does not stop eviction of everything after it. Bounded: each id is looked at
  // once per call.
  for (size_t looked = order_.size();
       looked > 0 && !order_.empty() &&
       (entries_.size() > capacity_ || order_.size() > 2 * capacity_);
       --looked) {
    const EventId id = order_.front();
    order_.pop_front();
    auto it = entries_.find(id);
    if (it == entries_.end()) {
      continue;
    }
    if (it->second.state == State::Running) {
      order_.push_back(id);
      continue;
    }
    entries_.erase(it);
  }
}

void DispatchTable::append(const std::string& record) {
  if (journalPath_.empty()) {
    return;
  }
  if (journalRecords_ >= 2 * capacity_ + 1024) {
    try {
      compact();
    } catch (const std::exception& e) {
      spdlog::error("{}; appending to the old journal", e.what());
      journalRecords_ = 0;
    }
  }
  // One write() per record: a kill can cut a record, never interleave two.
  auto written =
      posix::tolerant([&] { return os_.write(journal_.get(), record.data(), record.size()); });
  if (written.errnum != 0 || static_cast<size_t>(written.value) != record.size()) {
    spdlog::error("cannot append to the dispatch journal {}: {}", journalPath_,
                  written.errnum != 0 ? errnoText(written.errnum) : "short write");
    return;
  }
  ++journalRecords_;
}

void DispatchTable::compact() {
  const std::string temporary = journalPath_ + ".new";
  auto opened = posix::tolerant([&] {
    return os_.open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
  });
  if (opened.errnum != 0) {
    throw std::runtime_error(fmt::format("cannot write the dispatch journal {}: {}", temporary,
                                         errnoText(opened.errnum)));
  }
  posix::FileDescriptor fd(opened.value);
  std::string content;
  size_t records = 0;
  for (const EventId& id : order_) {
    auto it = entries_.find(id);
    if (it == entries_.end()) {
      continue;
    }
    const Entry& entry = it->second;
    content += fmt::format("A {}\n", id.toString());
    ++records;
    if (entry.state == State::Done) {
      content += fmt::format("D {} {} {}\n", id.toString(), static_cast<int>(entry.answer.code),
                             toHex(entry.answer.body));
      ++records;
    }
  }
  size_t offset = 0;
  while (offset < content.size()) {
    auto written = posix::tolerant(
        [&] { return os_.write(fd.get(), content.data() + offset, content.size() - offset); });
    if (written.errnum == EINTR) {
      continue;
    }
    if (written.errnum != 0) {
      throw std::runtime_error(fmt::format("cannot write the dispatch journal {}: {}", temporary,
                                           errnoText(written.errnum)));
    }
    offset += static_cast<size_t>(written.value);
  }
  if (auto renamed =
          posix::tolerant([&] { return os_.rename(temporary.c_str(), journalPath_.c_str()); });
      renamed.errnum != 0) {
    throw std::runtime_error(fmt::format("cannot replace the dispatch journal {}: {}", journalPath_,
                                         errnoText(renamed.errnum)));
  }
  journal_ = std::move(fd);
  journalRecords_ = records;
}

}  // namespace snow::rpc::detail
