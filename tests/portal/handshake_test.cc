// The portal's handshake and sealed frames, driven directly: both sides in one test, and an
// attacker in between where the test needs one.

#include "handshake.h"

#include <array>
#include <memory>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "snow/posix/posix.h"

#include "frame.h"

namespace snow::testing {
namespace {

using portal::Handshake;
using portal::HandshakeError;
using portal::HandshakeSettings;
using portal::Role;
using ::testing::HasSubstr;

NodeIdentity identity(uint8_t fill) {
  std::array<uint8_t, 32> seed{};
  seed.fill(fill);
  return NodeIdentity::fromSeed(seed);
}

// The body of a whole frame.
std::string bodyOf(const std::string& frame) {
  portal::FrameDecoder decoder(1 << 20);
  decoder.feed(frame);
  auto body = decoder.next();
  EXPECT_TRUE(body.has_value());
  return body.value_or("");
}

struct Pair {
  NodeIdentity clientKey = identity(1);
  NodeIdentity serverKey = identity(2);
  std::unique_ptr<Handshake> client;
  std::unique_ptr<Handshake> server;
  std::string clientHello;
  std::string serverHello;

  explicit Pair(std::optional<std::string> clientSecret = std::nullopt,
                std::optional<std::string> serverSecret = std::nullopt, std::string expected = "") {
    HandshakeSettings c{&clientKey, std::nullopt, 65536, std::move(expected)};
    HandshakeSettings s{&serverKey, std::nullopt, 65536, ""};
    if (clientSecret) {
      c.clusterKey = portal::clusterKeyOf(*clientSecret);
    }
    if (serverSecret) {
      s.clusterKey = portal::clusterKeyOf(*serverSecret);
    }
    client = std::make_unique<Handshake>(Role::Client, c);
    server = std::make_unique<Handshake>(Role::Server, s);
    clientHello = bodyOf(client->helloFrame());
    serverHello = bodyOf(server->helloFrame());
  }
};

TEST(HandshakeTest, BothSidesProveTheirKeysAndThenSealEachOthersFrames) {
  Pair p;
  const std::string clientAuth = bodyOf(p.client->onHello(p.serverHello));
  const std::string serverAuth = bodyOf(p.server->onHello(p.clientHello));
  p.client->onAuth(serverAuth);
  p.server->onAuth(clientAuth);
  ASSERT_TRUE(p.client->established());
  ASSERT_TRUE(p.server->established());
  EXPECT_EQ(p.client->peerId(), p.serverKey.nodeId());
  EXPECT_EQ(p.server->peerId(), p.clientKey.nodeId());
  for (int i = 0; i < 3; ++i) {
    const std::string message = "{\"type\":\"x\",\"id\":\"" + std::to_string(i) + "\"}";
    EXPECT_EQ(p.server->channel().open(bodyOf(p.client->channel().seal(message))), message);
    EXPECT_EQ(p.client->channel().open(bodyOf(p.server->channel().seal(message))), message);
  }
}

TEST(HandshakeTest, WithTheSameClusterSecretBothSidesAgree) {
  Pair p("s3cret", "s3cret");
  const std::string clientAuth = bodyOf(p.client->onHello(p.serverHello));
  const std::string serverAuth = bodyOf(p.server->onHello(p.clientHello));
  p.client->onAuth(serverAuth);
  p.server->onAuth(clientAuth);
  EXPECT_TRUE(p.client->established() && p.server->established());
}

TEST(HandshakeTest, AnotherClusterSecretIsRefusedOnBothSides) {
  Pair p("s3cret", "guess");
  const std::string clientAuth = bodyOf(p.client->onHello(p.serverHello));
  const std::string serverAuth = bodyOf(p.server->onHello(p.clientHello));
  EXPECT_THAT([&] { p.client->onAuth(serverAuth); },
              ::testing::ThrowsMessage<HandshakeError>(HasSubstr("another cluster secret")));
  EXPECT_THAT([&] { p.server->onAuth(clientAuth); },
              ::testing::ThrowsMessage<HandshakeError>(HasSubstr("another cluster secret")));
}

TEST(HandshakeTest, AStrangerWithoutTheSecretIsToldWhy) {
  Pair p(std::nullopt, "s3cret");
  EXPECT_THAT([&] { (void)p.server->onHello(p.clientHello); },
              ::testing::ThrowsMessage<HandshakeError>(
                  HasSubstr("this node requires a cluster secret and the peer has none")));
}

TEST(HandshakeTest, ATamperedHelloBreaksTheProof) {
  Pair p;
  // An attacker in the middle swaps the server's challenge: both sides compute different
  // transcripts, so neither proof verifies.
  std::string tampered = p.serverHello;
  const size_t at = tampered.find("\"challenge\":\"") + 13;
  tampered[at] = tampered[at] == '0' ? '1' : '0';
  const std::string clientAuth = bodyOf(p.client->onHello(tampered));
  const std::string serverAuth = bodyOf(p.server->onHello(p.clientHello));
  EXPECT_THROW(p.client->onAuth(serverAuth), HandshakeError);
  EXPECT_THROW(p.server->onAuth(clientAuth), HandshakeError);
}

TEST(HandshakeTest, AReplayedAuthFromAnotherConnectionFails) {
  Pair first;
  const std::string recordedAuth = bodyOf(first.client->onHello(first.serverHello));
  Pair second;  // Same keys, fresh ephemeral keys and challenges.
  (void)second.server->onHello(first.clientHello);  // The attacker replays the whole client side.
  EXPECT_THAT([&] { second.server->onAuth(recordedAuth); },
              ::testing::ThrowsMessage<HandshakeError>(HasSubstr("does not open")));
}

TEST(HandshakeTest, ASenderThatIsNotItsKeyIsRefused) {
  Pair p;
  std::string forged = p.clientHello;
  const std::string realId = p.clientKey.nodeId();
  forged.replace(forged.find(realId), realId.size(), std::string(32, 'a'));
  EXPECT_THAT([&] { (void)p.server->onHello(forged); },
              ::testing::ThrowsMessage<HandshakeError>(HasSubstr("but its public key is node")));
}

TEST(HandshakeTest, AnUnexpectedNodeIsRefusedByName) {
  Pair p(std::nullopt, std::nullopt, std::string(32, 'b'));
  EXPECT_THAT([&] { (void)p.client->onHello(p.serverHello); },
              ::testing::ThrowsMessage<HandshakeError>(
                  HasSubstr("expected node bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb, found node")));
}

TEST(HandshakeTest, AnotherVersionIsNamed) {
  Pair p;
  std::string other = p.clientHello;
  other.replace(other.find("\"version\":1"), 11, "\"version\":2");
  try {
    (void)p.server->onHello(other);
    FAIL() << "version 2 accepted";
  } catch (const HandshakeError& e) {
    EXPECT_EQ(e.code(), "unsupported_version");
    EXPECT_THAT(e.what(), HasSubstr("version 2; this node speaks 1"));
  }
}

TEST(HandshakeTest, GarbageInsteadOfAHelloIsABadMessage) {
  Pair p;
  try {
    (void)p.server->onHello("GET / HTTP/1.1");
    FAIL() << "garbage accepted";
  } catch (const HandshakeError& e) {
    EXPECT_EQ(e.code(), "bad_message");
  }
}

TEST(HandshakeTest, ATamperedOrReorderedSealedFrameDoesNotOpen) {
  Pair p;
  const std::string clientAuth = bodyOf(p.client->onHello(p.serverHello));
  const std::string serverAuth = bodyOf(p.server->onHello(p.clientHello));
  p.client->onAuth(serverAuth);
  p.server->onAuth(clientAuth);
  std::string first = bodyOf(p.client->channel().seal("{\"n\":1}"));
  const std::string second = bodyOf(p.client->channel().seal("{\"n\":2}"));
  EXPECT_THROW((void)p.server->channel().open(second), HandshakeError);  // Out of order.
  first[3] = static_cast<char>(first[3] ^ 1);
  EXPECT_THROW((void)p.server->channel().open(first), HandshakeError);  // Altered.
}

}  // namespace
}  // namespace snow::testing
