#pragma once

// The event tree: every unit of work in snow-core is an event.
//
// An event has an id, a type, a payload, a parent, children, a promise and a span. Raising an
// event queues it on the loop; its type's handler runs on a later pass and returns a future; the
// event's promise settles with that future's outcome. A handler raises children through
// Event::raise(), and the parent/child links are also the span links: the event tree *is* the
// trace tree (one OpenTracing span per event, ChildOf its parent's span).
//
// Contract:
//   - Thread: an EventTree and its events belong to the tree's loop thread.
//   - Ownership: an Event is shared (EventPtr). The tree keeps it alive from raise() until it
//     settled; children keep their parent alive. Handlers may keep the EventPtr they are given.
//   - Errors: a handler that throws, or whose future rejects, rejects the event; an event whose
//     type has no handler rejects with NoHandler. A rejection nobody observes is logged with the
//     event's path (future.h).
//   - Cancellation: cancelling an event (Event::cancel(), or cancel() on the future raise()
//     returned) cancels its live children first, then the handler's future (whose producer sees
//     its onCancel hook), then rejects the event with Cancelled.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <google/protobuf/message.h>
#include <opentracing/span.h>
#include <opentracing/tracer.h>

#include "snow/core/dispatcher.h"
#include "snow/core/future.h"

namespace snow {

// Payloads and results are protobuf messages: typed for handlers, serialisable for RPC, and
// printable as JSON for operators. Either may be null.
using Message = google::protobuf::Message;
using MessagePtr = std::shared_ptr<const Message>;

// A system-wide unique event id: the 64-bit origin of the process that minted it (random, drawn
// once per process start) and a sequence number within that origin (from 1). Printed as
// "<origin, 16 hex digits>-<sequence, hex>", e.g. "3f9a0c1e5b7d2a64-2a"; see docs/architecture.md,
// "Event ids".
struct EventId {
  uint64_t origin = 0;
  uint64_t sequence = 0;

  [[nodiscard]] bool valid() const noexcept { return sequence != 0; }
  [[nodiscard]] std::string toString() const;
  static std::optional<EventId> parse(std::string_view text) noexcept;
  friend auto operator<=>(const EventId&, const EventId&) = default;
};

// An interned event type name such as "spawner.exited". Names are lower case letters, digits,
// '.', '_' and '-'. Cheap to copy and compare; intern once (e.g. in a static) and reuse.
class EventType {
 public:
  // Interns `name` (thread-safe). Throws std::invalid_argument for an empty or malformed name.
  static EventType of(std::string_view name);
  // The type named `name` if it was interned, without interning it: for names from the network,
  // which must not grow the table (a type nobody interned has no handler anyway).
  static std::optional<EventType> find(std::string_view name);

  [[nodiscard]] std::string_view name() const noexcept { return *name_; }
  [[nodiscard]] uint32_t index() const noexcept { return index_; }
  friend bool operator==(EventType a, EventType b) noexcept { return a.index_ == b.index_; }

 private:
  EventType(uint32_t index, const std::string* name) : index_(index), name_(name) {}
  uint32_t index_;
  const std::string* name_;  // Interned: never moves, never freed.
};

// Raised for an event whose type has no handler.
class NoHandler : public std::runtime_error {
 public:
  explicit NoHandler(std::string_view type)
      : std::runtime_error("no handler for event type '" + std::string(type) + "'") {}
};

class EventTree;
class Event;
using EventPtr = std::shared_ptr<Event>;

class Event : public std::enable_shared_from_this<Event> {
 public:
  Event(EventTree& tree, EventId id, EventType type, MessagePtr payload, EventPtr parent,
        const opentracing::SpanContext* spanParent = nullptr);
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  [[nodiscard]] const EventId& id() const noexcept { return id_; }
  [[nodiscard]] EventType type() const noexcept { return type_; }
  [[nodiscard]] const MessagePtr& payload() const noexcept { return payload_; }
  // The payload as M, or nullptr when there is none or it is another message type.
  template <typename M>
  [[nodiscard]] const M* payloadAs() const noexcept {
    return dynamic_cast<const M*>(payload_.get());
  }
  [[nodiscard]] const EventPtr& parent() const noexcept { return parent_; }
  // The parent on another node, for an event raised there and dispatched here (rpc); invalid
  // otherwise.
  [[nodiscard]] const EventId& remoteParent() const noexcept { return remoteParent_; }
  // True when an earlier delivery of this event may have run its handler already (the node
  // restarted while handling it; docs/rpc.md). Handlers with effects outside the node check
  // their own records before repeating them.
  [[nodiscard]] bool redelivered() const noexcept { return redelivered_; }
  [[nodiscard]] const opentracing::Span& span() const noexcept { return *span_; }
  [[nodiscard]] EventTree& tree() const noexcept { return *tree_; }
  [[nodiscard]] bool settled() const noexcept { return settled_; }
  [[nodiscard]] bool cancelled() const noexcept { return cancelled_; }
  [[nodiscard]] size_t liveChildren() const noexcept { return children_.size(); }

  // "type(id)" of every ancestor and this event, root first, joined by " > ".
  [[nodiscard]] std::string path() const;

  // Raises a child of this event (see EventTree::raise).
  Future<MessagePtr> raise(EventType type, MessagePtr payload = nullptr);

  // See the header comment. No effect on a settled event.
  void cancel();

 private:
  friend class EventTree;

  EventTree* tree_;
  EventId id_;
  EventType type_;
  MessagePtr payload_;
  EventPtr parent_;
  EventId remoteParent_;
  bool redelivered_ = false;
  std::unique_ptr<opentracing::Span> span_;
  Promise<MessagePtr> promise_;
  Future<void> handling_;         // The handler's future, while it is pending.
  std::vector<Event*> children_;  // Live (unsettled) children; they unlink themselves.
  bool settled_ = false;
  bool cancelled_ = false;
};

// What an observer of the tree is told (EventTree::observe).
enum class EventPhase { Raised, Succeeded, Failed };

// An event raised on behalf of another node (rpc): it keeps the sender's id, so that a retried
// delivery is recognised, and links to the sender's event and span.
struct RemoteOrigin {
  EventId id;
  EventId parent;
  const opentracing::SpanContext* spanParent = nullptr;  // Only read during raiseRemote().
  bool redelivered = false;
};

class EventTree {
 public:
  using Handler = UniqueFunction<Future<MessagePtr>(const EventPtr&)>;
  // Told of every event raised and settled. `error` is set for Failed. Must not raise events
  // or throw; runs inside the tree's bookkeeping.
  using Observer =
      UniqueFunction<void(const Event& event, EventPhase phase, const std::exception_ptr* error)>;

  // Stops its observer when destroyed. Must not outlive the tree.
  class Observation {
   public:
    Observation() = default;
    Observation(EventTree& tree, uint64_t id) : tree_(&tree), id_(id) {}
    Observation(Observation&& other) noexcept
        : tree_(std::exchange(other.tree_, nullptr)), id_(other.id_) {}
    Observation& operator=(Observation&& other) noexcept;
    Observation(const Observation&) = delete;
    Observation& operator=(const Observation&) = delete;
    ~Observation() { reset(); }
    void reset() noexcept;

   private:
    EventTree* tree_ = nullptr;
    uint64_t id_ = 0;
  };

  // Unregisters its handler when destroyed. Must not outlive the tree.
  class Registration {
   public:
    Registration() = default;
    Registration(EventTree& tree, EventType type) : tree_(&tree), type_(type.index()) {}
    Registration(Registration&& other) noexcept
        : tree_(std::exchange(other.tree_, nullptr)), type_(other.type_) {}
    Registration& operator=(Registration&& other) noexcept;
    Registration(const Registration&) = delete;
    Registration& operator=(const Registration&) = delete;
    ~Registration() { reset(); }
    void reset() noexcept;

   private:
    EventTree* tree_ = nullptr;
    uint32_t type_ = 0;
  };

  // `origin` is the id origin of this process (EventId). `tracer` must outlive the tree.
  EventTree(Dispatcher& loop, std::shared_ptr<opentracing::Tracer> tracer, uint64_t origin);
  ~EventTree();
  EventTree(const EventTree&) = delete;
  EventTree& operator=(const EventTree&) = delete;

  // Registers the handler of `type`. Throws std::logic_error when the type has one already.
  [[nodiscard]] Registration on(EventType type, Handler handler);
  // Whether `type` has a handler now.
  [[nodiscard]] bool handles(EventType type) const noexcept;

  // Raises a root event. The handler runs on a later loop pass, never inline.
  Future<MessagePtr> raise(EventType type, MessagePtr payload = nullptr);
  // Raises a root event with another node's id and parent (see RemoteOrigin).
  Future<MessagePtr> raiseRemote(const RemoteOrigin& origin, EventType type,
                                 MessagePtr payload = nullptr);
  // Mints the id the next local event would get, for an event raised on another node.
  EventId mintId() noexcept { return EventId{origin_, nextSequence_++}; }

  [[nodiscard]] Observation observe(Observer observer);

  [[nodiscard]] Dispatcher& loop() const noexcept { return *loop_; }
  [[nodiscard]] opentracing::Tracer& tracer() const noexcept { return *tracer_; }
  // Replaces the tracer (null: the noop one), which the daemon chooses from its configuration.
  // Throws std::logic_error while events are live: their spans belong to the old tracer.
  void setTracer(std::shared_ptr<opentracing::Tracer> tracer);
  [[nodiscard]] const std::shared_ptr<opentracing::Tracer>& tracerPtr() const noexcept {
    return tracer_;
  }
  [[nodiscard]] uint64_t origin() const noexcept { return origin_; }
  [[nodiscard]] size_t liveEvents() const noexcept { return live_; }

  // The event whose handler is running on this thread right now, or nullptr (used by logging).
  static const Event* current() noexcept;
  // Sets the current event, returning the previous one. Use log::EventScope rather than this.
  static const Event* exchangeCurrent(const Event* event) noexcept;

 private:
  friend class Event;

  Future<MessagePtr> raiseChild(EventType type, MessagePtr payload, EventPtr parent);
  Future<MessagePtr> enqueue(EventPtr event);
  void notify(const Event& event, EventPhase phase, const std::exception_ptr* error);
  void dispatch(const EventPtr& event);
  void settle(Event& event, const Future<MessagePtr>& outcome);
  void settleError(Event& event, std::exception_ptr error);
  void finish(Event& event);

  Dispatcher* loop_;
  std::shared_ptr<opentracing::Tracer> tracer_;
  bool tagSpans_;
  uint64_t origin_;
  uint64_t nextSequence_ = 1;
  size_t live_ = 0;
  std::vector<Handler> handlers_;  // Indexed by EventType::index().
  std::vector<std::pair<uint64_t, Observer>> observers_;
  uint64_t nextObserver_ = 1;
};

}  // namespace snow
