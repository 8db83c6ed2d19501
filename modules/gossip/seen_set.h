#pragma once

// The ids of the last `capacity` messages, for deduplication: a message whose id is here was
// delivered already. Oldest forgotten first, so a burst bigger than the capacity forgets the
// oldest ids, never the ones still travelling (size it above the messages a cluster sees within
// one dissemination time). Thread: the owner's.

#include <cstddef>
#include <deque>
#include <string>
#include <unordered_set>

namespace snow::gossip {

class SeenSet {
 public:
  explicit SeenSet(size_t capacity) : capacity_(capacity == 0 ? 1 : capacity) {}

  // True when `id` was new (and is now remembered).
  bool insert(const std::string& id) {
    if (!ids_.insert(id).second) {
      return false;
    }
    order_.push_back(id);
    while (order_.size() > capacity_) {
      ids_.erase(order_.front());
      order_.pop_front();
    }
    return true;
  }
  [[nodiscard]] bool contains(const std::string& id) const { return ids_.contains(id); }
  [[nodiscard]] size_t size() const noexcept { return ids_.size(); }
  void setCapacity(size_t capacity) { capacity_ = capacity == 0 ? 1 : capacity; }

 private:
  size_t capacity_;
  std::unordered_set<std::string> ids_;
  std::deque<std::string> order_;
};

}  // namespace snow::gossip
