// One Node in this process (there is one StaticContext per process): the Node service's methods
// called through a client, above all Dispatch's deduplication by event id, and Watch.

#include "snow/rpc/node.h"

#include <gmock/gmock.h>
#include <google/protobuf/any.pb.h>
#include <gtest/gtest.h>

#include "snow/contexts/static_context.h"
#include "snow/rpc/v1/config.pb.h"

#include "rpc/rpc_support.h"

namespace snow::testing {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
namespace pb = rpc::v1;

using DispatchReplyPtr = std::shared_ptr<const pb::DispatchReply>;

class NodeTest : public ::testing::Test {
 protected:
  NodeTest() {
    pb::RpcConfig config;
    config.set_unix_socket(dir_.file("node.sock"));
    config.mutable_dispatch()->set_journal(dir_.file("dispatch.journal"));
    rpc::Node::Hooks hooks;
    hooks.modules = [] {
      return std::vector<rpc::Node::Hooks::Module>{{"greeter", "1.2.3", "built-in"}};
    };
    hooks.configSource = "test";
    hooks.ready = [this] { return ready_; };
    node_ = std::make_unique<rpc::Node>(context_, config, std::move(hooks));
  }
  ~NodeTest() override {
    registration_.reset();
    if (node_) {
      auto stopped = node_->stop(100ms);
      (void)loop().runUntil([&] { return stopped.isReady(); }, kDeadline);
      node_.reset();
    }
  }

  void SetUp() override {
    node_->start();
    // The handler of rpc-test.greet: answers "hello <payload>", counts its runs; a payload of
    // "hold" makes it wait for held_ to be settled by the test.
    registration_ = context_.events().on(greet_, [this](const EventPtr& event) {
      ++runs_;
      lastEvent_ = event;
      const auto* request = event->payloadAs<pb::PingRequest>();
      const std::string who = request != nullptr ? request->payload() : "nobody";
      if (who == "hold") {
        held_.emplace(loop());
        held_->onCancel([this] { heldCancelled_ = true; });
        return held_->future();
      }
      return makeReadyFuture<MessagePtr>(pingReply("hello " + who));
    });
  }

  Dispatcher& loop() { return context_.loop(); }
  std::string self() const { return "unix:" + dir_.file("node.sock"); }

  static pb::DispatchRequest dispatchRequest(const std::string& id, const std::string& type,
                                             const std::string& who) {
    pb::DispatchRequest request;
    request.set_event_id(id);
    request.set_type(type);
    request.set_sender_node_id("test");
    request.mutable_payload()->PackFrom(pingRequest(who));
    return request;
  }

  Future<DispatchReplyPtr> dispatch(const pb::DispatchRequest& request) {
    return node_->client().call<pb::DispatchReply>(self(), rpc::kDispatch, request);
  }

  static std::string resultOf(const DispatchReplyPtr& reply) {
    pb::PingReply result;
    EXPECT_TRUE(reply->result().UnpackTo(&result));
    return result.payload();
  }

  posix::PosixPtr layer_ = posix::makeDefaultPosix();
  posix::ScopedInjector injector_{*layer_};
  TempDir dir_;
  StaticContext context_;
  std::unique_ptr<rpc::Node> node_;
  EventType greet_ = EventType::of("rpc-test.greet");
  EventTree::Registration registration_;
  int runs_ = 0;
  EventPtr lastEvent_;
  std::optional<Promise<MessagePtr>> held_;
  bool heldCancelled_ = false;
  bool ready_ = true;
};

TEST_F(NodeTest, ServesPingStatusAndModulesOnItsSocket) {
  EXPECT_THAT(node_->endpoints(), ElementsAre(self()));
  EXPECT_EQ(node_->id(), fmt::format("{:016x}", context_.origin()));
  auto ping = node_->client().call<pb::PingReply>(self(), rpc::kPing, pingRequest("p"));
  auto status =
      node_->client().call<pb::NodeStatus>(self(), rpc::kGetStatus, pb::GetStatusRequest());
  auto modules = node_->client().call<pb::ListModulesReply>(self(), rpc::kListModules,
                                                            pb::ListModulesRequest());
  auto reload = node_->client().call<pb::ReloadReply>(self(), rpc::kReload, pb::ReloadRequest());
  ASSERT_TRUE(await(loop(), ping));
  ASSERT_TRUE(await(loop(), status));
  ASSERT_TRUE(await(loop(), modules));
  ASSERT_TRUE(await(loop(), reload));
  ASSERT_TRUE(ping.hasValue()) << errorOf(ping);
  EXPECT_EQ(ping.value()->node_id(), node_->id());
  EXPECT_EQ(ping.value()->payload(), "p");
  ASSERT_TRUE(status.hasValue()) << errorOf(status);
  EXPECT_EQ(status.value()->node_id(), node_->id());
  EXPECT_EQ(status.value()->config_source(), "test");
  EXPECT_EQ(status.value()->modules(), 1U);
  EXPECT_THAT(status.value()->listening(), ElementsAre(self()));
  ASSERT_TRUE(modules.hasValue()) << errorOf(modules);
  ASSERT_EQ(modules.value()->modules_size(), 1);
  EXPECT_EQ(modules.value()->modules(0).name(), "greeter");
  EXPECT_EQ(codeOf(reload), rpc::Code::Unimplemented) << "no reload hook: " << errorOf(reload);
}

TEST_F(NodeTest, ADispatchRunsTheHandlerOnceAndARetryGetsTheSameAnswer) {
  auto first = dispatch(dispatchRequest("00000000000000aa-1", "rpc-test.greet", "ann"));
  ASSERT_TRUE(await(loop(), first));
  ASSERT_TRUE(first.hasValue()) << errorOf(first);
  EXPECT_FALSE(first.value()->deduplicated());
  EXPECT_EQ(resultOf(first.value()), "hello ann");
  EXPECT_EQ(runs_, 1);
  ASSERT_TRUE(lastEvent_);
  EXPECT_EQ(lastEvent_->id().toString(), "00000000000000aa-1") << "the sender's id is kept";
  EXPECT_FALSE(lastEvent_->redelivered());

  auto retry = dispatch(dispatchRequest("00000000000000aa-1", "rpc-test.greet", "ann"));
  ASSERT_TRUE(await(loop(), retry));
  ASSERT_TRUE(retry.hasValue()) << errorOf(retry);
  EXPECT_TRUE(retry.value()->deduplicated());
  EXPECT_EQ(resultOf(retry.value()), "hello ann");
  EXPECT_EQ(runs_, 1) << "a retried dispatch ran the handler again";

  auto other = dispatch(dispatchRequest("00000000000000aa-2", "rpc-test.greet", "bob"));
  ASSERT_TRUE(await(loop(), other));
  ASSERT_TRUE(other.hasValue()) << errorOf(other);
  EXPECT_FALSE(other.value()->deduplicated());
  EXPECT_EQ(resultOf(other.value()), "hello bob");
  EXPECT_EQ(runs_, 2);

  auto status =
      node_->client().call<pb::NodeStatus>(self(), rpc::kGetStatus, pb::GetStatusRequest());
  ASSERT_TRUE(await(loop(), status));
  ASSERT_TRUE(status.hasValue()) << errorOf(status);
  EXPECT_EQ(status.value()->dispatch_deduplicated(), 1U);
}

TEST_F(NodeTest, ARetryArrivingWhileTheHandlerRunsWaitsForTheSameAnswer) {
  auto first = dispatch(dispatchRequest("00000000000000aa-3", "rpc-test.greet", "hold"));
  ASSERT_TRUE(awaitCondition(loop(), [&] { return held_.has_value(); }));
  auto second = dispatch(dispatchRequest("00000000000000aa-3", "rpc-test.greet", "hold"));
  // The second call reaches the node and waits there for the first one's answer.
  EXPECT_FALSE(loop().runUntil([&] { return second.isReady(); }, 50ms));
  held_->setValue(pingReply("held answer"));
  ASSERT_TRUE(await(loop(), first));
  ASSERT_TRUE(await(loop(), second));
  ASSERT_TRUE(first.hasValue()) << errorOf(first);
  ASSERT_TRUE(second.hasValue()) << errorOf(second);
  EXPECT_EQ(resultOf(first.value()), "held answer");
  EXPECT_EQ(resultOf(second.value()), "held answer");
  EXPECT_NE(first.value()->deduplicated(), second.value()->deduplicated());
  EXPECT_EQ(runs_, 1);
}

TEST_F(NodeTest, AnAttemptThatTimedOutLeavesTheHandlerRunningForTheRetry) {
  rpc::CallOptions brief;
  brief.timeout = 500ms;  // Long enough to reach the handler even under a sanitizer.
  auto first = node_->client().call<pb::DispatchReply>(
      self(), rpc::kDispatch, dispatchRequest("00000000000000aa-b", "rpc-test.greet", "hold"),
      brief);
  ASSERT_TRUE(awaitCondition(loop(), [&] { return held_.has_value(); }));
  ASSERT_TRUE(await(loop(), first));
  EXPECT_EQ(codeOf(first), rpc::Code::DeadlineExceeded) << errorOf(first);
  auto retry = dispatch(dispatchRequest("00000000000000aa-b", "rpc-test.greet", "hold"));
  EXPECT_FALSE(loop().runUntil([&] { return retry.isReady(); }, 50ms));
  EXPECT_FALSE(heldCancelled_) << "the caller's timeout cancelled the event itself";
  held_->setValue(pingReply("worth the wait"));
  ASSERT_TRUE(await(loop(), retry));
  ASSERT_TRUE(retry.hasValue()) << errorOf(retry);
  EXPECT_TRUE(retry.value()->deduplicated());
  EXPECT_EQ(resultOf(retry.value()), "worth the wait");
  EXPECT_EQ(runs_, 1);
}

TEST_F(NodeTest, AnEventTypeWithoutHandlerIsNotFoundAndSoIsItsRetry) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    auto reply = dispatch(dispatchRequest("00000000000000aa-4", "rpc-test.nobody", "x"));
    ASSERT_TRUE(await(loop(), reply));
    EXPECT_EQ(codeOf(reply), rpc::Code::NotFound) << errorOf(reply);
    EXPECT_THAT(errorOf(reply), HasSubstr("has no handler for event type 'rpc-test.nobody'"));
  }
  EXPECT_EQ(runs_, 0);
  // Nothing ran, so nothing was remembered: once a module handles the type, the id runs.
  auto late = context_.events().on(EventType::of("rpc-test.nobody"), [](const EventPtr&) {
    return makeReadyFuture<MessagePtr>(pingReply("hello late"));
  });
  auto reply = dispatch(dispatchRequest("00000000000000aa-4", "rpc-test.nobody", "x"));
  ASSERT_TRUE(await(loop(), reply));
  ASSERT_TRUE(reply.hasValue()) << errorOf(reply);
  EXPECT_FALSE(reply.value()->deduplicated());
  EXPECT_EQ(resultOf(reply.value()), "hello late");
}

TEST_F(NodeTest, ANodeNotRunningItsModulesAnswersUnavailableAndRemembersNothing) {
  ready_ = false;
  auto early = dispatch(dispatchRequest("00000000000000aa-c", "rpc-test.greet", "early"));
  ASSERT_TRUE(await(loop(), early));
  EXPECT_EQ(codeOf(early), rpc::Code::Unavailable) << errorOf(early);
  EXPECT_THAT(errorOf(early), HasSubstr("is not running its modules"));
  EXPECT_EQ(runs_, 0);
  ready_ = true;
  auto later = dispatch(dispatchRequest("00000000000000aa-c", "rpc-test.greet", "early"));
  ASSERT_TRUE(await(loop(), later));
  ASSERT_TRUE(later.hasValue()) << errorOf(later);
  EXPECT_FALSE(later.value()->deduplicated());
  EXPECT_EQ(runs_, 1);
}

TEST_F(NodeTest, AHandlerFailureIsUnknownWithItsMessage) {
  registration_.reset();
  registration_ = context_.events().on(greet_, [](const EventPtr&) -> Future<MessagePtr> {
    throw std::runtime_error("greeting failed");
  });
  auto reply = dispatch(dispatchRequest("00000000000000aa-5", "rpc-test.greet", "x"));
  ASSERT_TRUE(await(loop(), reply));
  EXPECT_EQ(codeOf(reply), rpc::Code::Unknown) << errorOf(reply);
  EXPECT_THAT(errorOf(reply), HasSubstr("greeting failed"));
  EXPECT_THAT(errorOf(reply), HasSubstr("rpc-test.greet(00000000000000aa-5)"));
}

TEST_F(NodeTest, MalformedDispatchesAreInvalidArgument) {
  auto badId = dispatch(dispatchRequest("not-an-id", "rpc-test.greet", "x"));
  auto zeroId = dispatch(dispatchRequest("00000000000000aa-0", "rpc-test.greet", "x"));
  auto badType = dispatch(dispatchRequest("00000000000000aa-6", "Not A Type!", "x"));
  pb::DispatchRequest unknownPayload = dispatchRequest("00000000000000aa-7", "rpc-test.greet", "");
  unknownPayload.mutable_payload()->set_type_url("type.googleapis.com/nowhere.Unknown");
  auto badPayload = dispatch(unknownPayload);
  for (auto* reply : {&badId, &zeroId, &badType, &badPayload}) {
    ASSERT_TRUE(await(loop(), *reply));
    EXPECT_EQ(codeOf(*reply), rpc::Code::InvalidArgument) << errorOf(*reply);
  }
  EXPECT_THAT(errorOf(badId), HasSubstr("'not-an-id' is not an event id"));
  EXPECT_THAT(errorOf(badPayload), HasSubstr("nowhere.Unknown is not known on this node"));
  EXPECT_EQ(runs_, 0);
  // Refused requests are not remembered: the id may be used by a good request.
  auto good = dispatch(dispatchRequest("00000000000000aa-6", "rpc-test.greet", "ok"));
  ASSERT_TRUE(await(loop(), good));
  ASSERT_TRUE(good.hasValue()) << errorOf(good);
  EXPECT_FALSE(good.value()->deduplicated());
}

TEST_F(NodeTest, DispatchToItselfRaisesTheEventAndReturnsTheResult) {
  auto result =
      node_->dispatch(self(), greet_, std::make_shared<pb::PingRequest>(pingRequest("me")));
  ASSERT_TRUE(await(loop(), result));
  ASSERT_TRUE(result.hasValue()) << errorOf(result);
  const auto* reply = dynamic_cast<const pb::PingReply*>(result.value().get());
  ASSERT_NE(reply, nullptr);
  EXPECT_EQ(reply->payload(), "hello me");
  EXPECT_EQ(runs_, 1);
  EXPECT_EQ(lastEvent_->id().origin, context_.origin());
}

TEST_F(NodeTest, TheDedupTableSurvivesARestartThroughTheJournal) {
  auto first = dispatch(dispatchRequest("00000000000000aa-8", "rpc-test.greet", "kept"));
  ASSERT_TRUE(await(loop(), first));
  ASSERT_TRUE(first.hasValue()) << errorOf(first);
  // A new Node on the same journal (the daemon restarted).
  registration_.reset();
  auto stopped = node_->stop(100ms);
  ASSERT_TRUE(await(loop(), stopped));
  node_.reset();
  pb::RpcConfig config;
  config.set_unix_socket(dir_.file("node.sock"));
  config.mutable_dispatch()->set_journal(dir_.file("dispatch.journal"));
  node_ = std::make_unique<rpc::Node>(context_, config, rpc::Node::Hooks{});
  SetUp();
  auto retry = dispatch(dispatchRequest("00000000000000aa-8", "rpc-test.greet", "kept"));
  ASSERT_TRUE(await(loop(), retry));
  ASSERT_TRUE(retry.hasValue()) << errorOf(retry);
  EXPECT_TRUE(retry.value()->deduplicated());
  EXPECT_EQ(resultOf(retry.value()), "hello kept");
  EXPECT_EQ(runs_, 1);
}

TEST_F(NodeTest, WatchSendsRecentEventsThenFollowsNewOnesUntilCancelled) {
  auto first = dispatch(dispatchRequest("00000000000000aa-9", "rpc-test.greet", "w"));
  ASSERT_TRUE(await(loop(), first));

  // Recent only: the settled dispatch, then the stream ends.
  pb::WatchRequest recentOnly;
  recentOnly.set_recent(10);
  recentOnly.add_type_prefixes("rpc-test.");
  std::vector<pb::EventRecord> records;
  auto done = node_->client().stream(
      self(), rpc::kWatch, recentOnly, pb::EventRecord::default_instance(),
      [&](MessagePtr m) { records.push_back(static_cast<const pb::EventRecord&>(*m)); });
  ASSERT_TRUE(await(loop(), done));
  ASSERT_TRUE(done.hasValue()) << errorOf(done);
  ASSERT_EQ(records.size(), 1U);
  EXPECT_EQ(records[0].event_id(), "00000000000000aa-9");
  EXPECT_EQ(records[0].type(), "rpc-test.greet");
  EXPECT_EQ(records[0].phase(), pb::EventRecord::SUCCEEDED);

  // Follow: the recent one first, then the LIVE marker, then new events as they happen.
  pb::WatchRequest follow = recentOnly;
  follow.set_recent(1);
  follow.set_follow(true);
  std::vector<pb::EventRecord> live;
  auto watching = node_->client().stream(
      self(), rpc::kWatch, follow, pb::EventRecord::default_instance(),
      [&](MessagePtr m) { live.push_back(static_cast<const pb::EventRecord&>(*m)); });
  ASSERT_TRUE(awaitCondition(loop(), [&] { return live.size() == 2; }));
  EXPECT_EQ(live[0].phase(), pb::EventRecord::SUCCEEDED);
  EXPECT_EQ(live[1].phase(), pb::EventRecord::LIVE);
  EXPECT_TRUE(live[1].has_time());
  auto raised =
      context_.events().raise(greet_, std::make_shared<pb::PingRequest>(pingRequest("z")));
  ASSERT_TRUE(await(loop(), raised));
  ASSERT_TRUE(awaitCondition(loop(), [&] { return live.size() == 4; }));
  EXPECT_EQ(live[2].phase(), pb::EventRecord::RAISED);
  EXPECT_EQ(live[2].type(), "rpc-test.greet");
  EXPECT_THAT(live[2].payload_json(), HasSubstr("\"payload\""));
  EXPECT_EQ(live[3].phase(), pb::EventRecord::SUCCEEDED);
  EXPECT_EQ(live[3].event_id(), live[2].event_id());
  EXPECT_TRUE(live[3].has_duration());
  // Events of other types are filtered out.
  auto other = context_.events().raise(EventType::of("other.thing"));
  ASSERT_TRUE(await(loop(), other));
  EXPECT_THAT(errorOf(other), HasSubstr("no handler"));
  EXPECT_FALSE(loop().runUntil([&] { return live.size() > 4; }, 50ms));

  watching.cancel();
  EXPECT_THROW((void)watching.value(), Cancelled);
}

}  // namespace
}  // namespace snow::testing
