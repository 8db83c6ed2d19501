// The relay module, for the RPC reliability tests: a receiver that handles "test.work" events
// dispatched from another node and records each one, and a sender that dispatches a steady
// stream of them to a peer and records how each settled. Both write plain text files the test
// reads afterwards.
//
// The receiver handles an event once: the framework deduplicates retries; when the node was
// killed in the middle of handling one (Event::redelivered()), the receiver checks its own record
// first, as docs/rpc.md tells handlers with outside effects to do.

#include <unordered_map>
#include <unordered_set>

#include <fcntl.h>
#include <fmt/format.h>

#include "snow/contexts/static_context.h"
#include "snow/core/config.h"
#include "snow/core/module.h"
#include "snow/posix/file_descriptor.h"
#include "snow/rpc/node.h"
#include "snow/test/v1/relay.pb.h"

namespace {

using snow::test::v1::RelayConfig;

class AppendFile {
 public:
  void open(snow::posix::Posix& os, const std::string& path) {
    os_ = &os;
    fd_ = snow::posix::FileDescriptor(
        os.open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644).value);
  }
  // One write() per line: a kill never leaves half of one line before another.
  void append(const std::string& line) { (void)os_->write(fd_.get(), line.data(), line.size()); }

 private:
  snow::posix::Posix* os_ = nullptr;
  snow::posix::FileDescriptor fd_;
};

std::string readAll(snow::posix::Posix& os, const std::string& path) {
  std::string content;
  snow::posix::Result<int> opened{};
  try {
    opened = os.open(path.c_str(), O_RDONLY | O_CLOEXEC, 0);
  } catch (const std::system_error&) {
    return content;  // Not there yet.
  }
  snow::posix::FileDescriptor fd(opened.value);
  char chunk[65536];
  for (;;) {
    auto got = os.read(fd.get(), chunk, sizeof chunk);
    if (got.value <= 0) {
      break;
    }
    content.append(chunk, static_cast<size_t>(got.value));
  }
  return content;
}

class Relay final : public snow::ConfiguredModule<RelayConfig> {
 public:
  snow::Future<void> apply(const RelayConfig& config, snow::DynamicContext&) override {
    config_ = config;
    return snow::makeReadyFuture();
  }

  snow::Future<void> start() override {
    auto& context = snow::StaticContext::instance();
    if (!config_.handled_file().empty()) {
      startReceiver(context);
    }
    if (!config_.peer().empty()) {
      startSender(context);
    }
    return snow::makeReadyFuture();
  }

  snow::Future<void> stop() override {
    timer_.reset();
    delays_.clear();
    registration_.reset();
    sendRegistration_.reset();
    return snow::makeReadyFuture();
  }

 private:
  void startReceiver(snow::StaticContext& context) {
    // What earlier runs of this node handled, for redelivered events.
    const std::string before = readAll(context.posix(), config_.handled_file());
    for (size_t start = 0; start < before.size();) {
      const size_t end = before.find('\n', start);
      if (end == std::string::npos) {
        break;
      }
      handled_.insert(std::stoull(before.substr(start, before.find(' ', start) - start)));
      start = end + 1;
    }
    handledFile_.open(context.posix(), config_.handled_file());
    registration_ = context.events().on(
        snow::EventType::of("test.work"),
        [this, &context](const snow::EventPtr& event) -> snow::Future<snow::MessagePtr> {
          const auto* work = event->payloadAs<snow::test::v1::Work>();
          if (work == nullptr) {
            throw std::invalid_argument("test.work needs a snow.test.v1.Work payload");
          }
          const bool seen = event->redelivered() && handled_.contains(work->n());
          if (seen) {
            context.logger().info("relay: redelivered event {} was handled before; not repeated",
                                  event->id().toString());
          } else {
            handled_.insert(work->n());
            handledFile_.append(fmt::format("{} {} {}\n", work->n(), event->id().toString(),
                                            event->remoteParent().toString()));
          }
          auto done = std::make_shared<snow::test::v1::WorkDone>();
          done->set_n(work->n());
          done->set_node(context.node().id());
          const snow::Duration delay =
              snow::config::durationOr(config_.handle_delay(), snow::Duration(0));
          if (delay.count() == 0) {
            return snow::makeReadyFuture<snow::MessagePtr>(std::move(done));
          }
          auto promise = std::make_shared<snow::Promise<snow::MessagePtr>>(context.loop());
          auto answer = promise->future();
          const uint64_t key = nextDelay_++;
          snow::TimerPtr& timer = delays_[key];
          timer = context.loop().createTimer([this, &context, promise, done, key]() mutable {
            promise->setValue(std::move(done));
            // Not here: a timer must not free itself while it fires.
            context.loop().schedule([this, key] { delays_.erase(key); });
          });
          timer->enable(delay);
          return answer;
        });
  }

  void startSender(snow::StaticContext& context) {
    outcomeFile_.open(context.posix(), config_.outcome_file());
    // Each item is a local event whose handler dispatches it to the peer: the remote event is
    // its child across nodes, and the remote result settles it.
    sendRegistration_ = context.events().on(
        snow::EventType::of("test.send"),
        [this, &context](const snow::EventPtr& event) -> snow::Future<snow::MessagePtr> {
          snow::rpc::CallOptions options;
          options.timeout = snow::config::durationOr(config_.timeout(), std::chrono::seconds(20));
          localIds_[event->payloadAs<snow::test::v1::Work>()->n()] = event->id();
          return context.node().dispatch(config_.peer(), snow::EventType::of("test.work"),
                                         event->payload(), options);
        });
    timer_ = context.loop().createTimer([this, &context] { tick(context); });
    timer_->enable(snow::config::durationOr(config_.interval(), std::chrono::milliseconds(2)));
  }

  void tick(snow::StaticContext& context) {
    const uint32_t inFlight = config_.in_flight() == 0 ? 16 : config_.in_flight();
    if (sent_ < config_.count() && sent_ - settled_ < inFlight) {
      const uint64_t n = ++sent_;
      auto work = std::make_shared<snow::test::v1::Work>();
      work->set_n(n);
      context.events()
          .raise(snow::EventType::of("test.send"), std::move(work))
          .whenSettled([this, n, &context](const snow::Future<snow::MessagePtr>& reply) {
            ++settled_;
            const auto* done =
                reply.hasValue()
                    ? dynamic_cast<const snow::test::v1::WorkDone*>(reply.value().get())
                    : nullptr;
            if (done != nullptr && done->n() == n) {
              ++ok_;
              outcomeFile_.append(fmt::format("{} ok {}\n", n, localIds_[n].toString()));
            } else {
              outcomeFile_.append(fmt::format(
                  "{} error {}\n", n,
                  reply.hasError() ? snow::describe(reply.error()) : "wrong or empty reply"));
            }
            localIds_.erase(n);
            if (settled_ == config_.count()) {
              context.logger().info("relay: all {} settled: {} ok, {} failed", settled_, ok_,
                                    settled_ - ok_);
            }
          })
          .detach();
    }
    if (sent_ < config_.count()) {
      timer_->enable(snow::config::durationOr(config_.interval(), std::chrono::milliseconds(2)));
    }
  }

  RelayConfig config_;
  snow::EventTree::Registration registration_;
  snow::EventTree::Registration sendRegistration_;
  std::unordered_map<uint64_t, snow::EventId> localIds_;
  std::unordered_set<uint64_t> handled_;
  AppendFile handledFile_;
  AppendFile outcomeFile_;
  snow::TimerPtr timer_;
  std::unordered_map<uint64_t, snow::TimerPtr> delays_;  // Answers waiting for handle_delay.
  uint64_t nextDelay_ = 0;
  uint64_t sent_ = 0;
  uint64_t settled_ = 0;
  uint64_t ok_ = 0;
};

}  // namespace

SNOW_MODULE(Relay, "relay", "1.0.0");
