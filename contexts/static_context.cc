#include "snow/contexts/static_context.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "snow/core/tracing.h"
#include "snow/posix/active.h"

namespace snow {
namespace {

StaticContext* gInstance = nullptr;

}  // namespace

StaticContext::StaticContext(Options options)
    : tracer_(options.tracer ? std::move(options.tracer) : tracing::noopTracer()),
      logger_(options.logger ? std::move(options.logger) : spdlog::default_logger()),
      // posix::active() throws when the layer is not set: a context without it is unusable.
      origin_(options.origin != 0 ? (static_cast<void>(posix::active()), options.origin)
                                  : randomOrigin(posix::active())) {
  if (gInstance != nullptr) {
    throw std::logic_error("a StaticContext exists already: there is one per process");
  }
  loop_ = makeDispatcher(options.name);
  events_ = std::make_unique<EventTree>(*loop_, tracer_, origin_);
  gInstance = this;
}

StaticContext::~StaticContext() {
  current_.reset();
  children_.reset();
  events_.reset();
  loop_.reset();
  gInstance = nullptr;
}

StaticContext& StaticContext::instance() {
  if (gInstance == nullptr) {
    throw std::logic_error("StaticContext::instance() called before a StaticContext was created");
  }
  return *gInstance;
}

bool StaticContext::exists() noexcept {
  return gInstance != nullptr;
}

posix::Posix& StaticContext::posix() const {
  return posix::active();
}

DynamicContextPtr StaticContext::install(DynamicContextPtr next) {
  return std::exchange(current_, std::move(next));
}

uint64_t StaticContext::randomOrigin(posix::Posix& os) {
  uint64_t origin = 0;
  // Zero is reserved for "not set"; draw again in the (2^-64) case we get it.
  while (origin == 0) {
    auto r = os.getrandom(&origin, sizeof(origin), 0);
    if (!r.ok()) {
      throw std::system_error(r.errnum, std::system_category(), "getrandom(event id origin)");
    }
    if (r.value != static_cast<ssize_t>(sizeof(origin))) {
      throw std::runtime_error("getrandom(event id origin): short read");
    }
  }
  return origin;
}

void StaticContext::setTracer(std::shared_ptr<opentracing::Tracer> tracer) {
  events_->setTracer(std::move(tracer));
  tracer_ = events_->tracerPtr();
}

std::string StaticContext::nodeId() const {
  return identity_ ? identity_->nodeId() : fmt::format("{:016x}", origin_);
}

void StaticContext::setIdentity(std::shared_ptr<const NodeIdentity> identity) {
  identity_ = std::move(identity);
}

rpc::Node& StaticContext::node() const {
  if (node_ == nullptr) {
    throw std::logic_error("this context has no RPC node (it is not run by a daemon)");
  }
  return *node_;
}

ChildReaper& StaticContext::children() {
  if (!children_) {
    children_ = std::make_unique<ChildReaper>(*loop_, posix());
  }
  return *children_;
}

}  // namespace snow
