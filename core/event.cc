#include "snow/core/event.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <deque>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>

#include <fmt/format.h>

#include "snow/core/log.h"
#include "snow/core/tracing.h"

namespace snow {
namespace {

constinit __attribute__((tls_model("initial-exec"))) thread_local const Event* tCurrentEvent =
    nullptr;

class TypeRegistry {
 public:
  static TypeRegistry& instance() {
    static TypeRegistry registry;
    return registry;
  }

  // The index and the interned copy of `name`.
  std::pair<uint32_t, const std::string*> intern(std::string_view name) {
    {
      std::shared_lock lock(mutex_);
      if (auto it = byName_.find(name); it != byName_.end()) {
        return {it->second, &names_[it->second]};
      }
    }
    validate(name);
    std::unique_lock lock(mutex_);
    if (auto it = byName_.find(name); it != byName_.end()) {
      return {it->second, &names_[it->second]};
    }
    const auto index = static_cast<uint32_t>(names_.size());
    const std::string& stored = names_.emplace_back(name);  // deque: references stay valid.
    byName_.emplace(stored, index);
    return {index, &stored};
  }

  std::optional<std::pair<uint32_t, const std::string*>> find(std::string_view name) {
    std::shared_lock lock(mutex_);
    if (auto it = byName_.find(name); it != byName_.end()) {
      return std::make_pair(it->second, &names_[it->second]);
    }
    return std::nullopt;
  }

 private:
  static void validate(std::string_view name) {
    const bool ok = !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
      return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    });
    if (!ok) {
      throw std::invalid_argument(fmt::format(
          "invalid event type '{}': use lower case letters, digits, '.', '_', '-'", name));
    }
  }

  std::shared_mutex mutex_;
  std::deque<std::string> names_;
  std::unordered_map<std::string_view, uint32_t> byName_;
};

}  // namespace

// ---- EventId -----------------------------------------------------------------------------------

std::string EventId::toString() const {
  // By hand rather than fmt::format: every traced event is tagged with it, and formatting was a
  // third of an unsampled traced event's cost (docs/performance.md, Tracing).
  static constexpr char kHex[] = "0123456789abcdef";
  std::array<char, 33> text{};
  for (size_t i = 0; i < 16; ++i) {
    text[i] = kHex[(origin >> (60U - 4U * i)) & 0xfU];
  }
  text[16] = '-';
  size_t digits = 1;
  for (uint64_t rest = sequence >> 4U; rest != 0; rest >>= 4U) {
    ++digits;
  }
  for (size_t i = 0; i < digits; ++i) {
    text[17 + i] = kHex[(sequence >> (4U * (digits - 1 - i))) & 0xfU];
  }
  return {text.data(), 17 + digits};
}

std::optional<EventId> EventId::parse(std::string_view text) noexcept {
  const auto dash = text.find('-');
  if (dash != 16 || dash + 1 >= text.size()) {
    return std::nullopt;
  }
  EventId id;
  auto parseHex = [](std::string_view part, uint64_t& out) {
    const auto* end = part.data() + part.size();
    auto [ptr, ec] = std::from_chars(part.data(), end, out, 16);
    return ec == std::errc() && ptr == end;
  };
  if (!parseHex(text.substr(0, dash), id.origin) || !parseHex(text.substr(dash + 1), id.sequence) ||
      !id.valid()) {
    return std::nullopt;
  }
  return id;
}

// ---- EventType ---------------------------------------------------------------------------------

EventType EventType::of(std::string_view name) {
  auto [index, interned] = TypeRegistry::instance().intern(name);
  return EventType(index, interned);
}

std::optional<EventType> EventType::find(std::string_view name) {
  if (auto found = TypeRegistry::instance().find(name)) {
    return EventType(found->first, found->second);
  }
  return std::nullopt;
}

// ---- Event -------------------------------------------------------------------------------------

Event::Event(EventTree& tree, EventId id, EventType type, MessagePtr payload, EventPtr parent,
             const opentracing::SpanContext* spanParent)
    : tree_(&tree),
      id_(id),
      type_(type),
      payload_(std::move(payload)),
      parent_(std::move(parent)),
      promise_(tree.loop()) {
  const opentracing::SpanContext* parentContext = parent_ ? &parent_->span_->context() : spanParent;
  const std::string_view name = type_.name();
  span_ = tree.tracer().StartSpan(opentracing::string_view(name.data(), name.size()),
                                  {opentracing::ChildOf(parentContext)});
  if (!span_) {
    throw std::runtime_error("the tracer returned no span");
  }
  if (tree.tagSpans_) {
    span_->SetTag("snow.event.id", id_.toString());
    // Type names live as long as the program (EventType), so a view is safe to keep.
    span_->SetTag("snow.event.type",
                  opentracing::string_view(type_.name().data(), type_.name().size()));
  }
}

Event::~Event() = default;

std::string Event::path() const {
  std::vector<const Event*> chain;
  for (const Event* e = this; e != nullptr; e = e->parent_.get()) {
    chain.push_back(e);
  }
  std::string out;
  if (chain.back()->remoteParent_.valid()) {
    out = fmt::format("remote({})", chain.back()->remoteParent_.toString());
  }
  for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
    if (!out.empty()) {
      out += " > ";
    }
    out += fmt::format("{}({})", (*it)->type_.name(), (*it)->id_.toString());
  }
  return out;
}

Future<MessagePtr> Event::raise(EventType type, MessagePtr payload) {
  return tree_->raiseChild(type, std::move(payload), shared_from_this());
}

void Event::cancel() {
  if (settled_) {
    return;
  }
  cancelled_ = true;
  // Children first, leaves before roots, as a tree is torn down. Copy: they unlink themselves.
  const std::vector<Event*> children = children_;
  for (Event* child : children) {
    child->cancel();
  }
  if (handling_.valid()) {
    handling_.cancel();
    handling_.detach();
  }
  tree_->settleError(*this, std::make_exception_ptr(Cancelled()));
}

// ---- EventTree ---------------------------------------------------------------------------------

EventTree::Registration& EventTree::Registration::operator=(Registration&& other) noexcept {
  if (this != &other) {
    reset();
    tree_ = std::exchange(other.tree_, nullptr);
    type_ = other.type_;
  }
  return *this;
}

void EventTree::Registration::reset() noexcept {
  if (tree_ != nullptr) {
    tree_->handlers_[type_] = nullptr;
    tree_ = nullptr;
  }
}

EventTree::EventTree(Dispatcher& loop, std::shared_ptr<opentracing::Tracer> tracer, uint64_t origin)
    : loop_(&loop),
      tracer_(tracer ? std::move(tracer) : tracing::noopTracer()),
      tagSpans_(!tracing::isNoop(*tracer_)),
      origin_(origin) {}

EventTree::~EventTree() = default;

void EventTree::setTracer(std::shared_ptr<opentracing::Tracer> tracer) {
  if (live_ != 0) {
    throw std::logic_error(fmt::format("the tracer cannot change while {} events are live", live_));
  }
  tracer_ = tracer ? std::move(tracer) : tracing::noopTracer();
  tagSpans_ = !tracing::isNoop(*tracer_);
}

EventTree::Registration EventTree::on(EventType type, Handler handler) {
  if (type.index() >= handlers_.size()) {
    handlers_.resize(type.index() + 1);
  }
  if (handlers_[type.index()]) {
    throw std::logic_error(fmt::format("event type '{}' has a handler already", type.name()));
  }
  handlers_[type.index()] = std::move(handler);
  return Registration(*this, type);
}

bool EventTree::handles(EventType type) const noexcept {
  return type.index() < handlers_.size() && static_cast<bool>(handlers_[type.index()]);
}

Future<MessagePtr> EventTree::raise(EventType type, MessagePtr payload) {
  return raiseChild(type, std::move(payload), nullptr);
}

Future<MessagePtr> EventTree::raiseRemote(const RemoteOrigin& origin, EventType type,
                                          MessagePtr payload) {
  auto event = std::allocate_shared<Event>(detail::RecyclingAllocator<Event>(), *this, origin.id,
                                           type, std::move(payload), nullptr, origin.spanParent);
  event->remoteParent_ = origin.parent;
  event->redelivered_ = origin.redelivered;
  if (tagSpans_ && origin.parent.valid()) {
    event->span_->SetTag("snow.event.remote_parent", origin.parent.toString());
  }
  return enqueue(std::move(event));
}

Future<MessagePtr> EventTree::raiseChild(EventType type, MessagePtr payload, EventPtr parent) {
  return enqueue(std::allocate_shared<Event>(detail::RecyclingAllocator<Event>(), *this,
                                             EventId{origin_, nextSequence_++}, type,
                                             std::move(payload), std::move(parent)));
}

Future<MessagePtr> EventTree::enqueue(EventPtr event) {
  Event* parentRaw = event->parent_.get();
  Future<MessagePtr> result = event->promise_.future();
  // A raw pointer is enough: the hook can only run while the promise is pending, and the event
  // settles its promise (clearing the hook) before it can be destroyed.
  event->promise_.onCancel([raw = event.get()] { raw->cancel(); });
  if (parentRaw != nullptr) {
    parentRaw->children_.push_back(event.get());
  }
  ++live_;
  if (!observers_.empty()) {
    notify(*event, EventPhase::Raised, nullptr);
  }
  loop_->schedule([this, event = std::move(event)] { dispatch(event); });
  return result;
}

EventTree::Observation& EventTree::Observation::operator=(Observation&& other) noexcept {
  if (this != &other) {
    reset();
    tree_ = std::exchange(other.tree_, nullptr);
    id_ = other.id_;
  }
  return *this;
}

void EventTree::Observation::reset() noexcept {
  if (tree_ != nullptr) {
    std::erase_if(tree_->observers_, [this](const auto& entry) { return entry.first == id_; });
    tree_ = nullptr;
  }
}

EventTree::Observation EventTree::observe(Observer observer) {
  const uint64_t id = nextObserver_++;
  observers_.emplace_back(id, std::move(observer));
  return Observation(*this, id);
}

void EventTree::notify(const Event& event, EventPhase phase, const std::exception_ptr* error) {
  // By index: an observer may stop observing (erasing itself) while it runs.
  for (size_t i = 0; i < observers_.size(); ++i) {
    observers_[i].second(event, phase, error);
  }
}

void EventTree::dispatch(const EventPtr& event) {
  if (event->settled_) {  // Cancelled before its turn.
    return;
  }
  Handler* handler =
      event->type_.index() < handlers_.size() ? &handlers_[event->type_.index()] : nullptr;
  if (handler == nullptr || !*handler) {
    settleError(*event, std::make_exception_ptr(NoHandler(event->type_.name())));
    return;
  }
  Future<MessagePtr> outcome;
  try {
    log::EventScope scope(*event);
    outcome = (*handler)(event);
  } catch (...) {
    settleError(*event, std::current_exception());
    return;
  }
  if (!outcome.valid()) {
    settleError(*event,
                std::make_exception_ptr(std::logic_error("the handler returned an empty future")));
  } else if (outcome.isReady()) {  // The common case: settle now, without another loop pass.
    settle(*event, outcome);
  } else {
    event->handling_ = outcome.whenSettled(
        [this, event](const Future<MessagePtr>& settled) { settle(*event, settled); });
  }
}

void EventTree::settle(Event& event, const Future<MessagePtr>& outcome) {
  if (event.settled_) {
    (void)outcome.error();  // Cancelled meanwhile: the late outcome is not news.
    return;
  }
  if (outcome.hasError()) {
    settleError(event, outcome.error());
    return;
  }
  if (!observers_.empty()) {
    notify(event, EventPhase::Succeeded, nullptr);
  }
  event.promise_.setValue(outcome.value());
  finish(event);
}

void EventTree::settleError(Event& event, std::exception_ptr error) {
  if (event.settled_) {
    return;
  }
  if (tagSpans_) {
    event.span_->SetTag("error", true);
    event.span_->Log({{"event", "error"}, {"message", describe(error)}});
  }
  if (!observers_.empty()) {
    notify(event, EventPhase::Failed, &error);
  }
  event.promise_.setLabel("event " + event.path());
  event.promise_.setError(std::move(error));
  finish(event);
}

void EventTree::finish(Event& event) {
  event.settled_ = true;
  if (tagSpans_) {
    event.span_->Finish();
  } else {
    // Finish() reads the clock for the finish timestamp; the noop tracer throws it away.
    event.span_->FinishWithOptions(opentracing::FinishSpanOptions{});
  }
  if (event.parent_) {
    auto& siblings = event.parent_->children_;
    if (auto it = std::find(siblings.begin(), siblings.end(), &event); it != siblings.end()) {
      *it = siblings.back();
      siblings.pop_back();
    }
  }
  --live_;
}

const Event* EventTree::current() noexcept {
  return tCurrentEvent;
}

const Event* EventTree::exchangeCurrent(const Event* event) noexcept {
  return std::exchange(tCurrentEvent, event);
}

}  // namespace snow
