// A module that uses the portal's module API the way a real one (gossip) would, so that the
// tests drive it from outside through the protocol:
//   test.echo  {payload}  -> portal.send back to the sender: test.echoed with the same payload
//   test.shout {payload}  -> portal.broadcast test.heard with the same payload to every peer
//   test.flood {"count":N,"size":S} -> N messages test.drop of S bytes to the sender, at once
// Its events are ordinary handlers of the envelope types: that is how modules subscribe.

#include <string>
#include <vector>

#include "snow/contexts/static_context.h"
#include "snow/core/module.h"
#include "snow/portal/v1/portal.pb.h"

namespace snow::test {
namespace {

namespace pv = snow::portal::v1;

class PortalProbe final : public Module {
 public:
  [[nodiscard]] const google::protobuf::Message& configPrototype() const override {
    return google::protobuf::Empty::default_instance();
  }
  Future<void> verify(const google::protobuf::Message&) override { return makeReadyFuture(); }
  Future<void> apply(const google::protobuf::Message&, DynamicContext&) override {
    return makeReadyFuture();
  }

  Future<void> start() override {
    auto& events = StaticContext::instance().events();
    handlers_.push_back(events.on(EventType::of("test.echo"), [](const EventPtr& event) {
      const auto* in = event->payloadAs<pv::Envelope>();
      auto send = std::make_shared<pv::Send>();
      send->set_to(in->sender());
      send->set_type("test.echoed");
      *send->mutable_payload() = in->payload();
      return event->raise(EventType::of("portal.send"), std::move(send));
    }));
    handlers_.push_back(events.on(EventType::of("test.shout"), [](const EventPtr& event) {
      const auto* in = event->payloadAs<pv::Envelope>();
      auto broadcast = std::make_shared<pv::Broadcast>();
      broadcast->set_type("test.heard");
      *broadcast->mutable_payload() = in->payload();
      return event->raise(EventType::of("portal.broadcast"), std::move(broadcast));
    }));
    handlers_.push_back(events.on(EventType::of("test.flood"), [](const EventPtr& event) {
      const auto* in = event->payloadAs<pv::Envelope>();
      const auto& fields = in->payload().struct_value().fields();
      const auto count = static_cast<int>(fields.at("count").number_value());
      const auto size = static_cast<size_t>(fields.at("size").number_value());
      for (int i = 0; i < count; ++i) {
        auto send = std::make_shared<pv::Send>();
        send->set_to(in->sender());
        send->set_type("test.drop");
        send->mutable_payload()->set_string_value(std::string(size, 'x'));
        // Raised one after another without waiting: the portal queues them all at once. Those
        // after the drop fail (no connection): expected, so not left to be logged one by one.
        event->raise(EventType::of("portal.send"), std::move(send))
            .recover([](const std::exception_ptr&) { return MessagePtr(); })
            .detach();
      }
      return makeReadyFuture<MessagePtr>(nullptr);
    }));
    return makeReadyFuture();
  }

  Future<void> stop() override {
    handlers_.clear();
    return makeReadyFuture();
  }

 private:
  std::vector<EventTree::Registration> handlers_;
};

SNOW_MODULE(PortalProbe, "portal_probe", "1.0.0");

}  // namespace
}  // namespace snow::test
