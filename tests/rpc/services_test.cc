// The method table: what add*() refuses, and how a Registration removes its method (services.h).

#include "snow/rpc/services.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "snow/rpc/node.h"

#include "rpc/rpc_support.h"
#include "support/throws.h"

namespace snow::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;
namespace pb = rpc::v1;

using snow::testing::logicErrorOf;

auto echoHandler() {
  return [](const rpc::CallContext&, const pb::PingRequest& request) {
    return makeReadyFuture<std::shared_ptr<const pb::PingReply>>(pingReply(request.payload()));
  };
}

class ServicesTest : public RpcFixture {};

TEST_F(ServicesTest, ADuplicateMethodIsRefused) {
  auto first = services_.addUnary<pb::PingRequest, pb::PingReply>(kEcho, echoHandler());
  EXPECT_THAT(logicErrorOf([&] {
                (void)services_.addUnary<pb::PingRequest, pb::PingReply>(kEcho, echoHandler());
              }),
              HasSubstr("method /snow.test.Echo/Echo is registered already"));
  EXPECT_THAT(logicErrorOf([&] {
                (void)services_.addStream<pb::PingRequest, pb::PingReply>(
                    kEcho, [](const rpc::CallContext&, const pb::PingRequest&,
                              const rpc::ServerStreamPtr&) { return makeReadyFuture(); });
              }),
              HasSubstr("registered already"));
  // The refused registration did not take the first one's place.
  ASSERT_NE(services_.find(kEcho), nullptr);
  EXPECT_TRUE(services_.find(kEcho)->unary);
}

TEST_F(ServicesTest, AMethodDeclaredInNodeProtoMustKeepItsTypes) {
  // Ping is declared (PingRequest) returns (PingReply): other types are refused.
  EXPECT_THAT(logicErrorOf([&] {
                (void)services_.addUnary<pb::PingRequest, pb::NodeStatus>(
                    std::string(rpc::kPing), [](const rpc::CallContext&, const pb::PingRequest&) {
                      return makeReadyFuture<MessagePtr>(nullptr);
                    });
              }),
              HasSubstr("is declared as (snow.rpc.v1.PingRequest) returns (snow.rpc.v1.PingReply), "
                        "the handler takes (snow.rpc.v1.PingRequest) returns "
                        "(snow.rpc.v1.NodeStatus)"));
  EXPECT_THAT(logicErrorOf([&] {
                (void)services_.addUnary<pb::GetStatusRequest, pb::PingReply>(
                    std::string(rpc::kPing),
                    [](const rpc::CallContext&, const pb::GetStatusRequest&) {
                      return makeReadyFuture<MessagePtr>(nullptr);
                    });
              }),
              HasSubstr("is declared as"));
  // A method the declared service does not have, and names not of the form /pkg.Service/Method.
  EXPECT_THAT(logicErrorOf([&] {
                (void)services_.addUnary<pb::PingRequest, pb::PingReply>("/snow.rpc.v1.Node/Pong",
                                                                         echoHandler());
              }),
              HasSubstr("service snow.rpc.v1.Node declares no method Pong"));
  for (const char* bad : {"", "Echo", "/snow.test.Echo/", "snow.test.Echo/Echo", "/x"}) {
    EXPECT_THAT(logicErrorOf([&] {
                  (void)services_.addUnary<pb::PingRequest, pb::PingReply>(bad, echoHandler());
                }),
                HasSubstr("is not of the form /package.Service/Method"))
        << "name '" << bad << "'";
  }
  EXPECT_TRUE(services_.names().empty());
  // The declared types are accepted.
  auto ping =
      services_.addUnary<pb::PingRequest, pb::PingReply>(std::string(rpc::kPing), echoHandler());
  EXPECT_NE(services_.find(rpc::kPing), nullptr);
}

TEST_F(ServicesTest, AMethodNeedsExactlyOneHandler) {
  EXPECT_THAT(logicErrorOf([&] {
                (void)services_.add({"/snow.test.Echo/None", &pb::PingRequest::default_instance(),
                                     nullptr, nullptr, nullptr});
              }),
              HasSubstr("needs a request type and one handler"));
  EXPECT_THAT(logicErrorOf([&] {
                (void)services_.add({"/snow.test.Echo/NoType", nullptr,
                                     [](const rpc::CallContext&, const Message&) {
                                       return makeReadyFuture<MessagePtr>(nullptr);
                                     },
                                     nullptr, nullptr});
              }),
              HasSubstr("needs a request type"));
}

TEST_F(ServicesTest, ARegistrationRemovesItsMethodWhenResetMovedOrDestroyed) {
  auto a = services_.addUnary<pb::PingRequest, pb::PingReply>("/snow.test.Echo/A", echoHandler());
  {
    auto b = services_.addUnary<pb::PingRequest, pb::PingReply>("/snow.test.Echo/B", echoHandler());
    EXPECT_THAT(services_.names(), UnorderedElementsAre("/snow.test.Echo/A", "/snow.test.Echo/B"));
  }
  EXPECT_THAT(services_.names(), UnorderedElementsAre("/snow.test.Echo/A"));
  rpc::Services::Registration moved = std::move(a);
  a.reset();  // Moved from: owns nothing.
  EXPECT_NE(services_.find("/snow.test.Echo/A"), nullptr);
  moved = services_.addUnary<pb::PingRequest, pb::PingReply>("/snow.test.Echo/C", echoHandler());
  EXPECT_EQ(services_.find("/snow.test.Echo/A"), nullptr) << "assigning over it unregisters it";
  EXPECT_NE(services_.find("/snow.test.Echo/C"), nullptr);
  moved.reset();
  EXPECT_TRUE(services_.names().empty());
  // Once removed, the name may be registered again.
  auto again =
      services_.addUnary<pb::PingRequest, pb::PingReply>("/snow.test.Echo/C", echoHandler());
  EXPECT_NE(services_.find("/snow.test.Echo/C"), nullptr);
}

TEST_F(ServicesTest, CallsToAResetRegistrationGetUnimplemented) {
  auto registration = services_.addUnary<pb::PingRequest, pb::PingReply>(kEcho, echoHandler());
  startServer("rpc.sock");
  auto first = client().call<pb::PingReply>(unixPeer("rpc.sock"), kEcho, pingRequest("one"));
  ASSERT_TRUE(await(*loop_, first));
  ASSERT_TRUE(first.hasValue()) << errorOf(first);
  EXPECT_EQ(first.value()->payload(), "one");

  registration.reset();
  auto second = client().call<pb::PingReply>(unixPeer("rpc.sock"), kEcho, pingRequest("two"));
  ASSERT_TRUE(await(*loop_, second));
  EXPECT_EQ(codeOf(second), rpc::Code::Unimplemented) << errorOf(second);
  EXPECT_THAT(errorOf(second), HasSubstr("this node serves no method /snow.test.Echo/Echo"));
}

}  // namespace
}  // namespace snow::testing
