// The portal's framing and envelope: what a peer's bytes meet first.

#include "frame.h"

#include <gmock/gmock.h>
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

namespace snow::testing {
namespace {

using portal::decodeEnvelope;
using portal::encodeFrame;
using portal::FrameDecoder;
using ::testing::HasSubstr;

TEST(FrameTest, FramesSurviveBeingSplitAtEveryByte) {
  const std::string stream = encodeFrame("{\"a\":1}") + encodeFrame("x") + encodeFrame("hello");
  for (size_t cut = 0; cut <= stream.size(); ++cut) {
    FrameDecoder decoder;
    std::vector<std::string> frames;
    decoder.feed(std::string_view(stream).substr(0, cut));
    while (auto frame = decoder.next()) {
      frames.push_back(*frame);
    }
    decoder.feed(std::string_view(stream).substr(cut));
    while (auto frame = decoder.next()) {
      frames.push_back(*frame);
    }
    EXPECT_EQ(frames, (std::vector<std::string>{"{\"a\":1}", "x", "hello"})) << "cut at " << cut;
    EXPECT_EQ(decoder.pending(), 0U);
  }
}

TEST(FrameTest, AnOversizedLengthIsRefusedBeforeItsBodyArrives) {
  FrameDecoder decoder(1024);
  decoder.feed(std::string("\x00\x00\x04\x01", 4));  // 1025 bytes announced, none sent.
  EXPECT_THAT([&] { (void)decoder.next(); },
              ::testing::ThrowsMessage<portal::FrameError>(
                  HasSubstr("frame of 1025 bytes is over the limit of 1024 bytes")));
  FrameDecoder huge;
  huge.feed(std::string("\xff\xff\xff\xff", 4));
  EXPECT_THROW((void)huge.next(), portal::FrameError);
  FrameDecoder empty;
  empty.feed(std::string("\x00\x00\x00\x00", 4));
  EXPECT_THAT([&] { (void)empty.next(); },
              ::testing::ThrowsMessage<portal::FrameError>(HasSubstr("empty frame")));
  EXPECT_THROW((void)encodeFrame(std::string(1025, 'x'), 1024), portal::FrameError);
  EXPECT_THROW((void)encodeFrame(""), portal::FrameError);
}

TEST(FrameTest, AFrameCutInTheMiddleIsPendingNotDelivered) {
  FrameDecoder decoder;
  const std::string frame = encodeFrame("0123456789");
  decoder.feed(std::string_view(frame).substr(0, 9));
  EXPECT_FALSE(decoder.next().has_value());
  EXPECT_EQ(decoder.pending(), 9U);
}

TEST(FrameTest, ManyFramesKeepTheBufferSmall) {
  FrameDecoder decoder;
  const std::string frame = encodeFrame(std::string(1000, 'y'));
  for (int i = 0; i < 10000; ++i) {
    decoder.feed(frame);
    ASSERT_TRUE(decoder.next().has_value());
  }
  EXPECT_EQ(decoder.pending(), 0U);
}

TEST(EnvelopeTest, RoundTripsEveryField) {
  const auto envelope = decodeEnvelope(
      R"({"type":"gossip.push","id":"m-1","sender":"ab12","timestamp":"2026-11-25T03:00:00Z",)"
      R"("payload":{"n":[1,2,{"x":null}],"s":"\u00e9"}})");
  EXPECT_EQ(envelope.type(), "gossip.push");
  EXPECT_EQ(envelope.id(), "m-1");
  EXPECT_EQ(envelope.sender(), "ab12");
  EXPECT_EQ(envelope.timestamp().seconds(), 1795575600);
  EXPECT_EQ(envelope.payload().struct_value().fields().at("s").string_value(), "\xc3\xa9");
  const auto again = decodeEnvelope(portal::encodeEnvelope(envelope));
  // Struct is a map: compare as messages, its serialised order varies.
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(again, envelope));
}

TEST(EnvelopeTest, BadEnvelopesAreRefusedWithWhatWasWrong) {
  auto refused = [](std::string_view json) {
    try {
      (void)decodeEnvelope(json);
    } catch (const portal::EnvelopeError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_THAT(refused(R"({"type":"a","id":"1")"), HasSubstr("malformed envelope"));
  EXPECT_THAT(refused("not json at all"), HasSubstr("malformed envelope 'not json at all'"));
  EXPECT_THAT(refused(R"({"type":"a","id":"1","colour":"red"})"), HasSubstr("colour"));
  EXPECT_THAT(refused(R"({"id":"1"})"), HasSubstr("envelope without a type"));
  EXPECT_THAT(refused(R"({"type":"Gossip Push","id":"1"})"),
              HasSubstr("envelope type 'Gossip Push' is not"));
  EXPECT_THAT(refused(R"({"type":"a"})"), HasSubstr("envelope of type 'a' without an id"));
  EXPECT_THAT(refused(R"({"type":"a","id":"x y"})"), HasSubstr("envelope id 'x y' is not"));
  EXPECT_THAT(refused(R"({"type":"a","id":"1","timestamp":"yesterday"})"),
              HasSubstr("malformed envelope"));
  // A control character: shown as '?', never echoed raw into a log line.
  EXPECT_THAT(refused(R"({"type":"a","id":"1\u0001"})"),
              HasSubstr("envelope id '1?' is not 1 to 64 printable characters"));
  // Raw control characters and invalid UTF-8 are not JSON.
  EXPECT_THAT(refused(std::string("{\"type\":\"a\",\"id\":\"1\x01\"}")),
              HasSubstr("malformed envelope"));
  EXPECT_THAT(refused(std::string("{\"type\":\"a\",\"id\":\"1\",\"payload\":\"\xff\"}")),
              HasSubstr("malformed envelope"));
  EXPECT_THAT(refused(R"({"type":"a","id":"1","type":"b"})"),
              HasSubstr("key 'type' appears twice"));
  EXPECT_THAT(refused(R"(["type"])"), HasSubstr("an envelope is a JSON object"));
  EXPECT_THAT(refused(R"({"type":7,"id":"1"})"), HasSubstr("are strings"));
  EXPECT_THAT(refused(std::string(100, '[') + std::string(100, ']')),
              HasSubstr("an envelope is a JSON object"));
  EXPECT_THAT(refused(R"({"type":"a","id":"1","payload":)" + std::string(100, '[') +
                      std::string(100, ']') + "}"),
              HasSubstr("nested deeper than 64 levels"));
  EXPECT_EQ(refused(R"({"type":"a","id":"1"})"), "accepted");
}

}  // namespace
}  // namespace snow::testing
