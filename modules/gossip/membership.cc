#include "membership.h"

#include <array>
#include <utility>

namespace snow::gossip {

int severity(Status status) noexcept {
  switch (status) {
    case v1::Member::ALIVE:
      return 0;
    case v1::Member::SUSPECT:
      return 1;
    case v1::Member::DEAD:
      return 2;
    case v1::Member::LEFT:
      return 3;
    default:
      return 0;
  }
}

namespace {
constexpr std::array<std::pair<Status, const char*>, 4> kNames{{
    {v1::Member::ALIVE, "alive"},
    {v1::Member::SUSPECT, "suspect"},
    {v1::Member::DEAD, "dead"},
    {v1::Member::LEFT, "left"},
}};
}  // namespace

const char* statusName(Status status) noexcept {
  for (const auto& [value, name] : kNames) {
    if (value == status) {
      return name;
    }
  }
  return "alive";
}

std::optional<Status> statusNamed(std::string_view name) noexcept {
  for (const auto& [value, text] : kNames) {
    if (name == text) {
      return value;
    }
  }
  return std::nullopt;
}

MemberTable::MemberTable(MemberRecord self) : selfId_(self.id) {
  digest_ ^= hashOf(self);
  members_.emplace(selfId_, std::move(self));
}

uint64_t MemberTable::hashOf(const MemberRecord& record) noexcept {
  // Only live members count: two nodes that agree on who lives agree, whatever each remembers of
  // the dead (a node that joined later never learns of old deaths, and forgotten ones are gone).
  if (!isLive(record.status)) {
    return 0;
  }
  // FNV-1a over id, incarnation and status, then a final mix so that XOR-combining many of them
  // does not cancel out by structure.
  uint64_t h = 1469598103934665603ULL;
  auto mixByte = [&](unsigned char c) {
    h ^= c;
    h *= 1099511628211ULL;
  };
  for (char c : record.id) {
    mixByte(static_cast<unsigned char>(c));
  }
  for (int i = 0; i < 8; ++i) {
    mixByte(static_cast<unsigned char>(record.incarnation >> (8 * i)));
  }
  mixByte(static_cast<unsigned char>(severity(record.status)));
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  return h;
}

void MemberTable::replace(MemberRecord& slot, const MemberRecord& record) {
  digest_ ^= hashOf(slot);
  const int64_t since = slot.sinceUnixNanos;
  slot = record;
  slot.sinceUnixNanos = since;
  digest_ ^= hashOf(slot);
}

MemberTable::Outcome MemberTable::merge(const MemberRecord& record, int64_t nowUnixNanos,
                                        std::optional<Status>* previous) {
  if (record.id == selfId_) {
    const MemberRecord& me = self();
    if (record.incarnation >= me.incarnation && record.status != v1::Member::ALIVE &&
        me.status == v1::Member::ALIVE) {
      return Outcome::AboutSelf;
    }
    return Outcome::Unchanged;
  }
  auto it = members_.find(record.id);
  if (it == members_.end()) {
    if (!isLive(record.status)) {
      return Outcome::Unchanged;  // Else a forgotten death would come back with the next sync.
    }
    MemberRecord fresh = record;
    fresh.sinceUnixNanos = nowUnixNanos;
    digest_ ^= hashOf(fresh);
    members_.emplace(record.id, std::move(fresh));
    return Outcome::Added;
  }
  MemberRecord& known = it->second;
  const bool newer =
      record.incarnation > known.incarnation ||
      (record.incarnation == known.incarnation && severity(record.status) > severity(known.status));
  if (!newer) {
    return Outcome::Unchanged;
  }
  if (previous != nullptr) {
    *previous = known.status;
  }
  const bool statusChanged = record.status != known.status;
  replace(known, record);
  if (statusChanged) {
    known.sinceUnixNanos = nowUnixNanos;
  }
  return Outcome::Updated;
}

void MemberTable::refute(uint64_t heard) {
  MemberRecord& me = members_.at(selfId_);
  MemberRecord next = me;
  next.incarnation = std::max(me.incarnation, heard) + 1;
  next.status = v1::Member::ALIVE;
  replace(me, next);
}

void MemberTable::setSelfMetadata(std::map<std::string, std::string> metadata) {
  MemberRecord& me = members_.at(selfId_);
  MemberRecord next = me;
  next.metadata = std::move(metadata);
  next.incarnation = me.incarnation + 1;
  replace(me, next);
}

void MemberTable::leave() {
  MemberRecord& me = members_.at(selfId_);
  MemberRecord next = me;
  next.status = v1::Member::LEFT;
  replace(me, next);
}

bool MemberTable::mark(const std::string& id, Status status, int64_t nowUnixNanos) {
  if (id == selfId_) {
    return false;
  }
  auto it = members_.find(id);
  if (it == members_.end() || severity(status) <= severity(it->second.status)) {
    return false;
  }
  MemberRecord next = it->second;
  next.status = status;
  replace(it->second, next);
  it->second.sinceUnixNanos = nowUnixNanos;
  return true;
}

size_t MemberTable::forget(int64_t beforeUnixNanos) {
  // Only the dead and left go, and they are not in the digest.
  return std::erase_if(members_, [&](const auto& entry) {
    const MemberRecord& record = entry.second;
    return entry.first != selfId_ && !isLive(record.status) &&
           record.sinceUnixNanos < beforeUnixNanos;
  });
}

const MemberRecord* MemberTable::find(const std::string& id) const {
  auto it = members_.find(id);
  return it == members_.end() ? nullptr : &it->second;
}

size_t MemberTable::count(Status status) const noexcept {
  size_t n = 0;
  for (const auto& [id, record] : members_) {
    n += record.status == status ? 1 : 0;
  }
  return n;
}

}  // namespace snow::gossip
