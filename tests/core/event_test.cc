#include "snow/core/event.h"

#include <map>

#include <gmock/gmock.h>
#include <google/protobuf/wrappers.pb.h>
#include <gtest/gtest.h>
#include <opentracing/mocktracer/in_memory_recorder.h>
#include <opentracing/mocktracer/tracer.h>

#include "support/await.h"
#include "support/log_capture.h"

namespace snow {
namespace {

using google::protobuf::StringValue;
using testing::await;
using testing::errorOf;
using ::testing::HasSubstr;

MessagePtr text(const std::string& value) {
  auto message = std::make_shared<StringValue>();
  message->set_value(value);
  return message;
}

std::string textOf(const MessagePtr& message) {
  const auto* value = dynamic_cast<const StringValue*>(message.get());
  return value != nullptr ? value->value() : "<not a StringValue>";
}

class EventTreeTest : public ::testing::Test {
 protected:
  DispatcherPtr loop_ = makeDispatcher("events");
  EventTree tree_{*loop_, nullptr, 0x3f9a0c1e5b7d2a64ULL};
  const EventType echo_ = EventType::of("test.echo");
  const EventType parent_ = EventType::of("test.parent");
  const EventType child_ = EventType::of("test.child");
};

TEST(EventIdTest, PrintsAndParsesRoundTrip) {
  const EventId id{0x3f9a0c1e5b7d2a64ULL, 42};
  EXPECT_EQ(id.toString(), "3f9a0c1e5b7d2a64-2a");
  EXPECT_EQ(EventId::parse("3f9a0c1e5b7d2a64-2a"), id);
  EXPECT_EQ(EventId::parse("00000000000000ff-1"), (EventId{0xff, 1}));
  EXPECT_EQ((EventId{0xff, 1}).toString(), "00000000000000ff-1");
  EXPECT_EQ((EventId{1, 0x10}).toString(), "0000000000000001-10");
  const EventId widest{~uint64_t{0}, ~uint64_t{0}};
  EXPECT_EQ(widest.toString(), "ffffffffffffffff-ffffffffffffffff");
  EXPECT_EQ(EventId::parse(widest.toString()), widest);
}

TEST(EventIdTest, RejectsMalformedText) {
  for (const char* bad : {"", "-", "3f9a0c1e5b7d2a64", "3f9a0c1e5b7d2a64-", "3f9a-2a",
                          "3f9a0c1e5b7d2a64-0", "3f9a0c1e5b7d2a6g-1", "3f9a0c1e5b7d2a64-1x"}) {
    EXPECT_FALSE(EventId::parse(bad).has_value()) << bad;
  }
}

TEST(EventTypeTest, InternsNamesAndRejectsMalformedOnes) {
  EXPECT_EQ(EventType::of("spawner.exited"), EventType::of("spawner.exited"));
  EXPECT_NE(EventType::of("spawner.exited"), EventType::of("spawner.spawned"));
  EXPECT_EQ(EventType::of("spawner.exited").name(), "spawner.exited");
  EXPECT_THROW(EventType::of(""), std::invalid_argument);
  EXPECT_THROW(EventType::of("Spawner Exited"), std::invalid_argument);
}

TEST_F(EventTreeTest, HandlerRunsOnALaterPassAndSettlesTheEvent) {
  bool ran = false;
  auto reg = tree_.on(echo_, [&](const EventPtr& event) {
    ran = true;
    return makeReadyFuture<MessagePtr>(text("echo: " + textOf(event->payload())));
  });
  Future<MessagePtr> f = tree_.raise(echo_, text("hi"));
  EXPECT_FALSE(ran) << "raise() ran the handler inline";
  EXPECT_EQ(tree_.liveEvents(), 1U);
  ASSERT_TRUE(await(*loop_, f));
  EXPECT_EQ(textOf(f.value()), "echo: hi");
  EXPECT_EQ(tree_.liveEvents(), 0U);
}

TEST_F(EventTreeTest, IdsAreUniqueAndCarryTheOrigin) {
  std::vector<EventId> seen;
  auto reg = tree_.on(echo_, [&](const EventPtr& event) {
    seen.push_back(event->id());
    return makeReadyFuture<MessagePtr>(nullptr);
  });
  std::vector<Future<MessagePtr>> all;
  for (int i = 0; i < 100; ++i) {
    all.push_back(tree_.raise(echo_));
  }
  auto done = snow::all(std::move(all));
  ASSERT_TRUE(await(*loop_, done));
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(std::adjacent_find(seen.begin(), seen.end()), seen.end());
  EXPECT_EQ(seen.front().origin, tree_.origin());
}

TEST_F(EventTreeTest, AnEventWithoutHandlerRejects) {
  Future<MessagePtr> f = tree_.raise(EventType::of("test.nobody"));
  ASSERT_TRUE(await(*loop_, f));
  EXPECT_THROW((void)f.value(), NoHandler);
  EXPECT_EQ(errorOf(f), "no handler for event type 'test.nobody'");
}

TEST_F(EventTreeTest, ASecondHandlerForATypeIsRefusedUntilTheFirstIsGone) {
  auto first =
      tree_.on(echo_, [](const EventPtr&) { return makeReadyFuture<MessagePtr>(nullptr); });
  EXPECT_THROW(
      (void)tree_.on(echo_, [](const EventPtr&) { return makeReadyFuture<MessagePtr>(nullptr); }),
      std::logic_error);
  first.reset();
  auto second =
      tree_.on(echo_, [](const EventPtr&) { return makeReadyFuture<MessagePtr>(text("2")); });
  Future<MessagePtr> f = tree_.raise(echo_);
  ASSERT_TRUE(await(*loop_, f));
  EXPECT_EQ(textOf(f.value()), "2");
}

TEST_F(EventTreeTest, ThrowingOrRejectingHandlersRejectTheEvent) {
  auto thrower = tree_.on(echo_, [](const EventPtr&) -> Future<MessagePtr> {
    throw std::runtime_error("handler threw");
  });
  auto rejecter = tree_.on(child_, [](const EventPtr&) {
    return makeErrorFuture<MessagePtr>(std::runtime_error("handler rejected"));
  });
  Future<MessagePtr> a = tree_.raise(echo_);
  Future<MessagePtr> b = tree_.raise(child_);
  ASSERT_TRUE(await(*loop_, a));
  ASSERT_TRUE(await(*loop_, b));
  EXPECT_EQ(errorOf(a), "handler threw");
  EXPECT_EQ(errorOf(b), "handler rejected");
}

TEST_F(EventTreeTest, APendingHandlerSettlesTheEventLater) {
  Promise<MessagePtr> work;
  auto reg = tree_.on(echo_, [&](const EventPtr&) { return work.future(); });
  Future<MessagePtr> f = tree_.raise(echo_);
  ASSERT_TRUE(testing::awaitCondition(*loop_, [&] { return tree_.liveEvents() == 1; }));
  loop_->run(RunMode::NonBlock);
  EXPECT_FALSE(f.isReady());
  work.setValue(text("later"));
  ASSERT_TRUE(await(*loop_, f));
  EXPECT_EQ(textOf(f.value()), "later");
}

TEST_F(EventTreeTest, ChildrenLinkToTheirParentAndShowInThePath) {
  std::string childPath;
  EventPtr childsParent;
  auto parentReg = tree_.on(parent_, [&](const EventPtr& event) {
    std::vector<Future<MessagePtr>> children;
    children.push_back(event->raise(child_, text("a")));
    children.push_back(event->raise(child_, text("b")));
    EXPECT_EQ(event->liveChildren(), 2U);
    return all(std::move(children)).then([](std::vector<MessagePtr> results) -> MessagePtr {
      return text(textOf(results[0]) + textOf(results[1]));
    });
  });
  auto childReg = tree_.on(child_, [&](const EventPtr& event) {
    childPath = event->path();
    childsParent = event->parent();
    return makeReadyFuture<MessagePtr>(text(textOf(event->payload()) + "!"));
  });
  Future<MessagePtr> f = tree_.raise(parent_);
  ASSERT_TRUE(await(*loop_, f));
  EXPECT_EQ(textOf(f.value()), "a!b!");
  ASSERT_NE(childsParent, nullptr);
  EXPECT_EQ(childsParent->type(), parent_);
  EXPECT_EQ(childsParent->liveChildren(), 0U);
  EXPECT_THAT(childPath, ::testing::MatchesRegex("test\\.parent\\(3f9a0c1e5b7d2a64-[0-9a-f]+\\) > "
                                                 "test\\.child\\(3f9a0c1e5b7d2a64-[0-9a-f]+\\)"));
}

TEST_F(EventTreeTest, CancellingARootCancelsItsWholeSubtree) {
  std::vector<Promise<MessagePtr>> leaves;
  int leafCancels = 0;
  std::vector<Future<MessagePtr>> childFutures;
  auto parentReg = tree_.on(parent_, [&](const EventPtr& event) {
    childFutures.push_back(event->raise(child_));
    childFutures.push_back(event->raise(child_));
    Promise<MessagePtr> own;
    Future<MessagePtr> f = own.future();
    leaves.push_back(std::move(own));
    return f;
  });
  auto childReg = tree_.on(child_, [&](const EventPtr&) {
    Promise<MessagePtr> work;
    work.onCancel([&] { ++leafCancels; });
    Future<MessagePtr> f = work.future();
    leaves.push_back(std::move(work));
    return f;
  });
  Future<MessagePtr> root = tree_.raise(parent_);
  ASSERT_TRUE(testing::awaitCondition(*loop_, [&] { return leaves.size() == 3; }));
  EXPECT_EQ(tree_.liveEvents(), 3U);

  root.cancel();

  EXPECT_EQ(leafCancels, 2) << "the children's work was not told to stop";
  ASSERT_TRUE(await(*loop_, root));
  EXPECT_THROW((void)root.value(), Cancelled);
  for (auto& child : childFutures) {
    ASSERT_TRUE(await(*loop_, child));
    EXPECT_THROW((void)child.value(), Cancelled);
  }
  EXPECT_EQ(tree_.liveEvents(), 0U);
}

TEST_F(EventTreeTest, CancellingBeforeDispatchSkipsTheHandler) {
  bool ran = false;
  auto reg = tree_.on(echo_, [&](const EventPtr&) {
    ran = true;
    return makeReadyFuture<MessagePtr>(nullptr);
  });
  Future<MessagePtr> f = tree_.raise(echo_);
  f.cancel();
  ASSERT_TRUE(await(*loop_, f));
  loop_->run(RunMode::NonBlock);
  EXPECT_FALSE(ran);
  EXPECT_EQ(tree_.liveEvents(), 0U);
}

TEST_F(EventTreeTest, UnobservedFailureIsLoggedWithTheEventPath) {
  testing::LogCapture log;
  auto reg = tree_.on(echo_, [](const EventPtr&) {
    return makeErrorFuture<MessagePtr>(std::runtime_error("disk full"));
  });
  {
    Future<MessagePtr> f = tree_.raise(echo_);
    ASSERT_TRUE(testing::awaitCondition(*loop_, [&] { return tree_.liveEvents() == 0; }));
  }
  EXPECT_THAT(log.text(),
              ::testing::MatchesRegex(
                  ".*unobserved rejection of event test\\.echo\\(3f9a0c1e5b7d2a64-[0-9a-f]+\\): "
                  "disk full.*"));
}

TEST_F(EventTreeTest, TheHandlersEventIsCurrentWhileItRuns) {
  const Event* during = nullptr;
  auto reg = tree_.on(echo_, [&](const EventPtr&) {
    during = EventTree::current();
    return makeReadyFuture<MessagePtr>(nullptr);
  });
  Future<MessagePtr> f = tree_.raise(echo_);
  ASSERT_TRUE(await(*loop_, f));
  EXPECT_NE(during, nullptr);
  EXPECT_EQ(EventTree::current(), nullptr);
}

// The event tree is the span tree: one span per event, ChildOf the parent event's span.
TEST(EventTreeTracingTest, SpansMirrorTheEventTree) {
  using namespace opentracing::mocktracer;
  auto* recorder = new InMemoryRecorder();
  MockTracerOptions options;
  options.recorder.reset(recorder);
  auto tracer = std::make_shared<MockTracer>(std::move(options));
  DispatcherPtr loop = makeDispatcher("traced");
  EventTree tree(*loop, tracer, 7);
  const auto root = EventType::of("trace.root");
  const auto mid = EventType::of("trace.mid");
  const auto leaf = EventType::of("trace.leaf");
  std::map<std::string, std::string> eventIdOfType;
  auto remember = [&](const EventPtr& e) {
    eventIdOfType[std::string(e->type().name())] = e->id().toString();
  };
  auto r1 = tree.on(root, [&](const EventPtr& e) {
    remember(e);
    return e->raise(mid);
  });
  auto r2 = tree.on(mid, [&](const EventPtr& e) {
    remember(e);
    return e->raise(leaf);
  });
  auto r3 = tree.on(leaf, [&](const EventPtr& e) {
    remember(e);
    return makeErrorFuture<MessagePtr>(std::runtime_error("leaf failed"));
  });
  Future<MessagePtr> f = tree.raise(root);
  ASSERT_TRUE(testing::await(*loop, f));
  EXPECT_EQ(testing::errorOf(f), "leaf failed");

  const auto spans = recorder->spans();
  ASSERT_EQ(spans.size(), 3U);
  std::map<std::string, SpanData> byName;
  for (const auto& span : spans) {
    byName[span.operation_name] = span;
  }
  const auto& rootSpan = byName.at("trace.root");
  const auto& midSpan = byName.at("trace.mid");
  const auto& leafSpan = byName.at("trace.leaf");
  EXPECT_TRUE(rootSpan.references.empty());
  ASSERT_EQ(midSpan.references.size(), 1U);
  EXPECT_EQ(midSpan.references[0].reference_type, opentracing::SpanReferenceType::ChildOfRef);
  EXPECT_EQ(midSpan.references[0].span_id, rootSpan.span_context.span_id);
  ASSERT_EQ(leafSpan.references.size(), 1U);
  EXPECT_EQ(leafSpan.references[0].span_id, midSpan.span_context.span_id);
  EXPECT_EQ(leafSpan.span_context.trace_id, rootSpan.span_context.trace_id);
  EXPECT_EQ(midSpan.span_context.trace_id, rootSpan.span_context.trace_id);
  for (const auto& [name, span] : byName) {
    EXPECT_EQ(span.tags.at("snow.event.id"), opentracing::Value(eventIdOfType.at(name))) << name;
    EXPECT_EQ(span.tags.at("error"), opentracing::Value(true))
        << name << " did not record the failure";
  }
}

}  // namespace
}  // namespace snow
