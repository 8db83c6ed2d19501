#include "snow/core/log.h"

#include <sstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <opentracing/mocktracer/tracer.h>
#include <spdlog/sinks/ostream_sink.h>

#include <nlohmann/json.hpp>

#include "snow/core/event.h"

#include "support/await.h"

namespace snow {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;

// A logger writing through snow's formatter into a string.
struct CapturedLogger {
  explicit CapturedLogger(log::Format format)
      : sink(std::make_shared<spdlog::sinks::ostream_sink_st>(stream)),
        logger(std::make_shared<spdlog::logger>("snow", sink)) {
    logger->set_formatter(log::makeFormatter(format));
  }
  std::ostringstream stream;
  std::shared_ptr<spdlog::sinks::ostream_sink_st> sink;
  std::shared_ptr<spdlog::logger> logger;
};

// Runs `body` inside the handler of an event of a tree traced by a mocktracer.
class Traced {
 public:
  void insideAnEvent(const std::function<void(const Event&)>& body) {
    const auto type = EventType::of("log.test");
    auto reg = tree_.on(type, [&](const EventPtr& event) {
      body(*event);
      return makeReadyFuture<MessagePtr>(nullptr);
    });
    Future<MessagePtr> f = tree_.raise(type);
    ASSERT_TRUE(testing::await(*loop_, f));
  }

 private:
  DispatcherPtr loop_ = makeDispatcher("log");
  std::shared_ptr<opentracing::Tracer> tracer_ =
      std::make_shared<opentracing::mocktracer::MockTracer>(
          opentracing::mocktracer::MockTracerOptions{});
  EventTree tree_{*loop_, tracer_, 0xabcULL};
};

void insideAnEvent(const std::function<void(const Event&)>& body) {
  Traced().insideAnEvent(body);
}

TEST(LogTest, TextLinesOutsideEventsHaveNoEventIds) {
  CapturedLogger out(log::Format::Text);
  out.logger->info("plain");
  EXPECT_THAT(out.stream.str(),
              MatchesRegex("[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z info  snow: plain\n"));
}

TEST(LogTest, TextLinesInsideAnEventCarryItsEventAndTraceIds) {
  CapturedLogger out(log::Format::Text);
  std::string eventId;
  std::string traceId;
  insideAnEvent([&](const Event& event) {
    eventId = event.id().toString();
    traceId = event.span().context().ToTraceID();
    out.logger->warn("inside");
  });
  ASSERT_FALSE(traceId.empty());
  EXPECT_THAT(out.stream.str(),
              HasSubstr("warning snow [ev=" + eventId + " trace=" + traceId + "]: inside"));
}

TEST(LogTest, EventScopeReentersAnEventFromALaterContinuation) {
  CapturedLogger out(log::Format::Text);
  Traced traced;  // Outlives `kept`: events must not outlive their loop.
  std::shared_ptr<const Event> kept;
  std::string eventId;
  traced.insideAnEvent([&](const Event& event) {
    eventId = event.id().toString();
    kept = event.shared_from_this();
  });
  out.logger->info("after");
  {
    log::EventScope scope(*kept);
    out.logger->info("re-entered");
  }
  EXPECT_THAT(out.stream.str(), HasSubstr("snow: after"));
  EXPECT_THAT(out.stream.str(), HasSubstr("[ev=" + eventId));
  EXPECT_EQ(EventTree::current(), nullptr);
}

TEST(LogTest, JsonLinesParseAndEscapeTheMessage) {
  CapturedLogger out(log::Format::Json);
  std::string eventId;
  insideAnEvent([&](const Event& event) {
    eventId = event.id().toString();
    out.logger->error("quote \" backslash \\ newline \n tab \t bell \x07 end");
  });
  out.logger->info("outside");
  std::istringstream lines(out.stream.str());
  std::string first;
  std::string second;
  ASSERT_TRUE(std::getline(lines, first));
  ASSERT_TRUE(std::getline(lines, second));
  const auto inside = nlohmann::json::parse(first);
  EXPECT_EQ(inside.at("level"), "error");
  EXPECT_EQ(inside.at("logger"), "snow");
  EXPECT_EQ(inside.at("event_id"), eventId);
  EXPECT_FALSE(inside.at("trace_id").get<std::string>().empty());
  EXPECT_EQ(inside.at("msg"), "quote \" backslash \\ newline \n tab \t bell \x07 end");
  EXPECT_THAT(inside.at("time").get<std::string>(),
              MatchesRegex("[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{6}Z"));
  const auto plain = nlohmann::json::parse(second);
  EXPECT_FALSE(plain.contains("event_id"));
  EXPECT_EQ(plain.at("msg"), "outside");
}

TEST(LogTest, ParsesLevelAndFormatNames) {
  EXPECT_EQ(log::parseFormat("json"), log::Format::Json);
  EXPECT_EQ(log::parseFormat("text"), log::Format::Text);
  EXPECT_FALSE(log::parseFormat("xml").has_value());
  EXPECT_EQ(log::parseLevel("debug"), spdlog::level::debug);
  EXPECT_EQ(log::parseLevel("warning"), spdlog::level::warn);
  EXPECT_EQ(log::parseLevel("error"), spdlog::level::err);
  EXPECT_FALSE(log::parseLevel("loud").has_value());
}

}  // namespace
}  // namespace snow
