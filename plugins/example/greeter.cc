// The example plugin: a small, real snow-core module, written only against the installed
// SnowCore headers (docs/modules.md walks through it).
//
// It has a configuration section (greeter.proto), handles the event type "greeter.greet" (payload:
// a google.protobuf.StringValue name; result: "<greeting>, <name>"), serves the RPC method
// /snow.example.v1.Greeter/Greet (greeter.proto), and answers on TCP, one line per line:
// "ada\n" -> "hello, ada\n". Its listening socket is a resource of the configuration
// generation, keyed by its address, so a reload that keeps the address keeps the socket and the
// connections; a reload that changes the greeting changes what existing connections hear next.

#include <map>

#include <google/protobuf/wrappers.pb.h>

#include "snow/contexts/static_context.h"
#include "snow/core/module.h"
#include "snow/core/net.h"
#include "snow/rpc/node.h"

#include "greeter.pb.h"

namespace {

using snow::example::v1::GreeterConfig;

class Greeter final : public snow::ConfiguredModule<GreeterConfig> {
 public:
  snow::Future<void> verify(const GreeterConfig& config) override {
    if (config.listen().empty()) {
      return snow::makeReadyFuture();
    }
    const auto address = snow::net::Address::parse(config.listen());  // Throws: a clear reject.
    // Can it be bound? Not a question when the current generation holds it already.
    const auto& current = snow::StaticContext::instance().current();
    if (current == nullptr || current->resources().inherit(key(address)) == nullptr) {
      (void)snow::net::Listener::open(snow::StaticContext::instance().posix(), address);
    }
    return snow::makeReadyFuture();
  }

  snow::Future<void> apply(const GreeterConfig& config, snow::DynamicContext& next) override {
    Pending pending;
    pending.greeting = config.greeting().empty() ? "hello" : config.greeting();
    if (!config.listen().empty()) {
      const auto address = snow::net::Address::parse(config.listen());
      pending.listener = next.resources().acquire<snow::net::Listener>(key(address), [&] {
        return snow::net::Listener::open(snow::StaticContext::instance().posix(), address);
      });
    }
    pending_[next.generation()] = std::move(pending);
    return snow::makeReadyFuture();
  }

  void activated(snow::DynamicContext& current) override {
    auto it = pending_.find(current.generation());
    if (it == pending_.end()) {
      return;
    }
    Pending now = std::move(it->second);
    pending_.clear();  // Older pending generations were aborted.
    greeting_ = now.greeting;
    if (now.listener != listener_) {
      listener_ = std::move(now.listener);
      accepting_.reset();
      if (listener_) {
        accepting_ = snow::StaticContext::instance().loop().createFileEvent(
            listener_->fd(), [this](uint32_t) { acceptAll(); }, snow::FileReady::kRead);
        snow::StaticContext::instance().logger().info("greeter: listening on {}",
                                                      listener_->local().toString());
      }
    }
  }

  snow::Future<void> start() override {
    registration_ = snow::StaticContext::instance().events().on(
        greet_, [this](const snow::EventPtr& event) -> snow::Future<snow::MessagePtr> {
          const auto* name = event->payloadAs<google::protobuf::StringValue>();
          auto reply = std::make_shared<google::protobuf::StringValue>();
          reply->set_value(greeting_ + ", " + (name != nullptr ? name->value() : "stranger"));
          return snow::makeReadyFuture<snow::MessagePtr>(std::move(reply));
        });
    auto& context = snow::StaticContext::instance();
    if (context.hasNode()) {  // Run by a daemon: serve the Greeter service too.
      service_ = context.node()
                     .services()
                     .addUnary<snow::example::v1::GreetRequest, snow::example::v1::GreetReply>(
                         "/snow.example.v1.Greeter/Greet",
                         [this](const snow::rpc::CallContext&,
                                const snow::example::v1::GreetRequest& request) {
                           auto reply = std::make_shared<snow::example::v1::GreetReply>();
                           reply->set_text(greeting_ + ", " + request.name());
                           return snow::makeReadyFuture<snow::MessagePtr>(std::move(reply));
                         });
    }
    return snow::makeReadyFuture();
  }

  snow::Future<void> stop() override {
    registration_.reset();
    service_.reset();
    accepting_.reset();
    connections_.clear();
    return snow::makeReadyFuture();
  }

 private:
  struct Pending {
    std::string greeting;
    std::shared_ptr<snow::net::Listener> listener;
  };

  // One client connection: reads lines, answers each.
  struct Connection final : snow::DeferredDeletable {
    snow::posix::FileDescriptor fd;
    snow::FileEventPtr watch;
    std::string input;
    std::string output;
  };

  static std::string key(const snow::net::Address& address) {
    return "greeter/listen/" + address.toString();
  }

  void acceptAll() {
    auto& os = snow::StaticContext::instance().posix();
    for (;;) {
      auto accepted = os.accept4(listener_->fd(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (!accepted.ok()) {
        return;  // EAGAIN: all accepted (other errors: the next readiness retries).
      }
      auto connection = std::make_unique<Connection>();
      connection->fd = snow::posix::FileDescriptor(accepted.value);
      const int fd = accepted.value;
      connection->watch = snow::StaticContext::instance().loop().createFileEvent(
          fd, [this, fd](uint32_t ready) { serve(fd, ready); }, snow::FileReady::kRead);
      connections_[fd] = std::move(connection);
    }
  }

  void serve(int fd, uint32_t ready) {
    auto it = connections_.find(fd);
    if (it == connections_.end()) {
      return;
    }
    Connection& c = *it->second;
    auto& os = snow::StaticContext::instance().posix();
    if ((ready & snow::FileReady::kRead) != 0) {
      char buffer[4096];
      for (;;) {
        auto r = os.read(fd, buffer, sizeof(buffer));
        if (!r.ok()) {
          break;  // EAGAIN: drained.
        }
        if (r.value == 0) {
          return hangUp(it);
        }
        c.input.append(buffer, static_cast<size_t>(r.value));
      }
      for (auto newline = c.input.find('\n'); newline != std::string::npos;
           newline = c.input.find('\n')) {
        c.output += greeting_ + ", " + c.input.substr(0, newline) + "\n";
        c.input.erase(0, newline + 1);
      }
    }
    while (!c.output.empty()) {
      auto w = os.write(fd, c.output.data(), c.output.size());
      if (!w.ok()) {
        break;  // EAGAIN: wait for writability below.
      }
      c.output.erase(0, static_cast<size_t>(w.value));
    }
    c.watch->setEnabled(snow::FileReady::kRead | (c.output.empty() ? 0 : snow::FileReady::kWrite));
  }

  void hangUp(std::map<int, std::unique_ptr<Connection>>::iterator it) {
    // We are inside this connection's own callback: delete it after the callback returns.
    snow::StaticContext::instance().loop().deferredDelete(std::move(it->second));
    connections_.erase(it);
  }

  // Interned here, not in a static: a plugin's static initialisers run before the loader checked
  // its descriptor, so they must not call into snow-core.
  const snow::EventType greet_ = snow::EventType::of("greeter.greet");
  std::string greeting_ = "hello";
  std::map<uint64_t, Pending> pending_;
  std::shared_ptr<snow::net::Listener> listener_;
  snow::FileEventPtr accepting_;
  std::map<int, std::unique_ptr<Connection>> connections_;
  snow::EventTree::Registration registration_;
  snow::rpc::Services::Registration service_;
};

}  // namespace

SNOW_MODULE(Greeter, "greeter", "1.0.0");
