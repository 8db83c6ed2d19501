#pragma once

// The member table: every node this node knows of, with SWIM's rules for whose word wins.
//
// A member's record is (incarnation, status). Only the member itself raises its incarnation (when
// it starts, when it refutes a suspicion, when its metadata changes); others only change its
// status. So a record with a higher incarnation is newer, and between records of one incarnation
// the worse status wins (alive < suspect < dead < left): news of a failure is never undone by
// older news of life, only by the member's own refutation.
//
// Thread: the owner's (the loop). Pure: no I/O, no clock; times are given.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "snow/gossip/v1/gossip.pb.h"

namespace snow::gossip {

using Status = v1::Member::Status;

struct MemberRecord {
  std::string id;
  std::string address;
  uint64_t incarnation = 0;
  Status status = v1::Member::ALIVE;
  std::map<std::string, std::string> metadata;
  int64_t sinceUnixNanos = 0;  // When this node saw its status change.
};

// alive 0 < suspect 1 < dead 2 < left 3.
[[nodiscard]] int severity(Status status) noexcept;
[[nodiscard]] const char* statusName(Status status) noexcept;
[[nodiscard]] std::optional<Status> statusNamed(std::string_view name) noexcept;
[[nodiscard]] inline bool isLive(Status status) noexcept {
  return status == v1::Member::ALIVE || status == v1::Member::SUSPECT;
}

class MemberTable {
 public:
  enum class Outcome {
    Unchanged,  // Not newer than what we have.
    Added,      // A member we did not know (alive or suspect: a death we never knew of, or
                // forgot, is ignored as Unchanged).
    Updated,    // Newer than what we had (status, address or metadata may have changed).
    AboutSelf,  // Someone says this node is suspect or dead: refute (refute()).
  };

  explicit MemberTable(MemberRecord self);

  // Applies `record` as heard at `nowUnixNanos`; `previous` gets the status it had, if known.
  Outcome merge(const MemberRecord& record, int64_t nowUnixNanos,
                std::optional<Status>* previous = nullptr);
  // This node answers a rumour of its failure at `heard` incarnation: its own goes above it.
  void refute(uint64_t heard);
  // This node's metadata changed: a new incarnation carries it.
  void setSelfMetadata(std::map<std::string, std::string> metadata);
  // This node leaves: its record says so (same incarnation, status left).
  void leave();
  // Drops the members dead or left since before `beforeUnixNanos`; returns how many.
  size_t forget(int64_t beforeUnixNanos);

  // Marks `id` (not this node) with `status` at its current incarnation, as this node's own
  // finding (a failed probe, an expired suspicion). False when it is unknown, or that status is
  // not worse than what it has.
  bool mark(const std::string& id, Status status, int64_t nowUnixNanos);

  [[nodiscard]] const MemberRecord& self() const noexcept { return members_.at(selfId_); }
  [[nodiscard]] const MemberRecord* find(const std::string& id) const;
  [[nodiscard]] const std::unordered_map<std::string, MemberRecord>& all() const noexcept {
    return members_;
  }
  // Changes whenever a live member's (incarnation, status) does, or a member lives or dies: equal
  // digests mean (almost certainly) the same live members, so anti-entropy sends whole tables
  // only when they differ. The dead and left are not in it: they are forgotten, and a node that
  // joined later never learns of them.
  [[nodiscard]] uint64_t digest() const noexcept { return digest_; }
  [[nodiscard]] size_t count(Status status) const noexcept;

 private:
  static uint64_t hashOf(const MemberRecord& record) noexcept;
  void replace(MemberRecord& slot, const MemberRecord& record);

  std::string selfId_;
  std::unordered_map<std::string, MemberRecord> members_;
  uint64_t digest_ = 0;
};

}  // namespace snow::gossip
