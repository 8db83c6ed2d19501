// Node identity: the key pair on disk and the node id every log, RPC answer and frame uses.

#include "snow/core/identity.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "snow/posix/active.h"

#include "support/files.h"

namespace snow::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::ThrowsMessage;

class IdentityTest : public ::testing::Test {
 protected:
  posix::PosixPtr os_ = posix::makeDefaultPosix();
  posix::ScopedInjector injected_{*os_};
  TempDir dir_{"snow-identity-test"};
};

TEST_F(IdentityTest, TheNodeIdIsTheHashOfThePublicKeyIn32HexDigits) {
  const NodeIdentity a = NodeIdentity::generate(*os_);
  const NodeIdentity b = NodeIdentity::generate(*os_);
  EXPECT_TRUE(NodeIdentity::isNodeId(a.nodeId())) << a.nodeId();
  EXPECT_NE(a.nodeId(), b.nodeId());
  EXPECT_EQ(NodeIdentity::nodeIdOf(a.publicKey()), a.nodeId());
  EXPECT_FALSE(NodeIdentity::isNodeId("ABCDEF0123456789abcdef0123456789"));  // Upper case.
  EXPECT_FALSE(NodeIdentity::isNodeId("abc"));
}

TEST_F(IdentityTest, ASignatureVerifiesOnlyWithItsKeyAndMessage) {
  const NodeIdentity a = NodeIdentity::generate(*os_);
  const NodeIdentity b = NodeIdentity::generate(*os_);
  const Signature signature = a.sign("hello");
  EXPECT_TRUE(NodeIdentity::verify(a.publicKey(), "hello", signature));
  EXPECT_FALSE(NodeIdentity::verify(a.publicKey(), "hellO", signature));
  EXPECT_FALSE(NodeIdentity::verify(b.publicKey(), "hello", signature));
}

TEST_F(IdentityTest, ASavedKeyLoadsAsTheSameNodeAndIsNotReplacedUnlessAsked) {
  const std::string keys = dir_.file("keys");
  const NodeIdentity made = NodeIdentity::generate(*os_);
  made.save(*os_, keys, false);
  struct stat st {};
  ASSERT_EQ(::stat((keys + "/node.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600U);
  ASSERT_EQ(::stat(keys.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700U);
  EXPECT_EQ(NodeIdentity::load(*os_, keys).nodeId(), made.nodeId());

  const NodeIdentity other = NodeIdentity::generate(*os_);
  EXPECT_THAT([&] { other.save(*os_, keys, false); },
              ThrowsMessage<std::runtime_error>(HasSubstr("exists already")));
  EXPECT_EQ(NodeIdentity::load(*os_, keys).nodeId(), made.nodeId());
  other.save(*os_, keys, true);
  EXPECT_EQ(NodeIdentity::load(*os_, keys).nodeId(), other.nodeId());
}

TEST_F(IdentityTest, AKeyOthersCanReadOrThatIsNotAKeyIsRefusedByName) {
  const std::string keys = dir_.file("keys");
  NodeIdentity::generate(*os_).save(*os_, keys, false);
  ASSERT_EQ(::chmod((keys + "/node.key").c_str(), 0640), 0);
  EXPECT_THAT([&] { (void)NodeIdentity::load(*os_, keys); },
              ThrowsMessage<std::runtime_error>(HasSubstr("permissions 0640 are too open")));
  writeFile(keys + "/node.key", "# a comment\nnot hex at all\n");
  ASSERT_EQ(::chmod((keys + "/node.key").c_str(), 0600), 0);
  EXPECT_THAT([&] { (void)NodeIdentity::load(*os_, keys); },
              ThrowsMessage<std::runtime_error>(HasSubstr("not a snow-core node key")));
  EXPECT_THAT([&] { (void)NodeIdentity::load(*os_, dir_.file("nowhere")); },
              ThrowsMessage<std::runtime_error>(HasSubstr("No such file or directory")));
}

TEST(HexTest, RoundTripsAndRefusesWhatIsNotHex) {
  const std::vector<uint8_t> bytes{0x00, 0x7f, 0xff, 0x10};
  EXPECT_EQ(toHex(bytes), "007fff10");
  EXPECT_EQ(fromHex("007FFF10"), bytes);
  EXPECT_FALSE(fromHex("abc").has_value());
  EXPECT_FALSE(fromHex("zz").has_value());
}

}  // namespace
}  // namespace snow::testing
