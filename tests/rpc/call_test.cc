// Server and Client against each other on real sockets: unary calls and their errors, deadlines,
// cancellation both ways, retries, server streaming, health checks and the unix socket's rules.

#include <cstring>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <opentracing/mocktracer/in_memory_recorder.h>
#include <opentracing/mocktracer/tracer.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "snow/rpc/client.h"
#include "snow/rpc/node.h"
#include "snow/rpc/server.h"

#include "rpc/rpc_support.h"
#include "support/log_capture.h"

namespace snow::testing {
namespace {

using ::testing::AnyOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;
namespace pb = rpc::v1;

using Reply = std::shared_ptr<const pb::PingReply>;

class CallTest : public RpcFixture {};

// ---- Unary round trips ------------------------------------------------------------------------

TEST_F(CallTest, UnaryRoundTripOnAUnixSocket) {
  std::string seenMethod;
  std::string seenMetadata;
  std::chrono::system_clock::time_point seenDeadline;
  registrations_.push_back(services_.addUnary<pb::PingRequest, pb::PingReply>(
      kEcho, [&](const rpc::CallContext& call, const pb::PingRequest& request) {
        seenMethod = call.method();
        seenMetadata = std::string(call.metadata("x-snow-test"));
        seenDeadline = call.deadline();
        EXPECT_EQ(call.traceParent(), nullptr);  // The noop tracer sends no span context.
        return makeReadyFuture<Reply>(pingReply("echo:" + request.payload()));
      }));
  rpc::Server& server = startServer("rpc.sock");
  EXPECT_THAT(server.endpoints(), ElementsAre("unix:" + dir_.file("rpc.sock")));
  EXPECT_EQ(server.tcpPort(), 0);
  struct stat info {};
  ASSERT_EQ(::stat(dir_.file("rpc.sock").c_str(), &info), 0);
  EXPECT_TRUE(S_ISSOCK(info.st_mode));
  EXPECT_EQ(info.st_mode & 0777, 0600U) << "only the daemon's user may use the control socket";

  rpc::CallOptions options;
  options.timeout = 5s;
  options.metadata = {{"x-snow-test", "42"}};
  const auto before = std::chrono::system_clock::now();
  auto reply = client().call<pb::PingReply>(unixPeer("rpc.sock"), kEcho, pingRequest("hello"),
                                            std::move(options));
  ASSERT_TRUE(await(*loop_, reply));
  ASSERT_TRUE(reply.hasValue()) << errorOf(reply);
  EXPECT_EQ(reply.value()->payload(), "echo:hello");
  EXPECT_EQ(seenMethod, kEcho);
  EXPECT_EQ(seenMetadata, "42");
  EXPECT_GT(seenDeadline, before + 4s);
  EXPECT_LT(seenDeadline, before + 6s);
}

TEST_F(CallTest, UnaryRoundTripOnTcpLoopbackWithAPickedPort) {
  addEcho();
  rpc::Server& server = startServer("", /*tcp=*/true);
  ASSERT_GT(server.tcpPort(), 0);
  const std::string address = fmt::format("127.0.0.1:{}", server.tcpPort());
  EXPECT_THAT(server.endpoints(), ElementsAre(address));
  auto reply = client().call<pb::PingReply>(address, kEcho, pingRequest("over tcp"));
  ASSERT_TRUE(await(*loop_, reply));
  ASSERT_TRUE(reply.hasValue()) << errorOf(reply);
  EXPECT_EQ(reply.value()->payload(), "over tcp");
  EXPECT_THAT(reply.value()->node_id(), StartsWith("ipv4:127.0.0.1:")) << "CallContext::peer()";
}

TEST_F(CallTest, ManyCallsInFlightAllGetTheirOwnAnswer) {
  addEcho();
  startServer("rpc.sock");
  std::vector<Future<Reply>> replies;
  for (int i = 0; i < 100; ++i) {
    replies.push_back(
        client().call<pb::PingReply>(unixPeer("rpc.sock"), kEcho, pingRequest(std::to_string(i))));
  }
  ASSERT_TRUE(awaitCondition(*loop_, [&] {
    return std::all_of(replies.begin(), replies.end(), [](auto& r) { return r.isReady(); });
  }));
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(replies[i].hasValue()) << errorOf(replies[i]);
    EXPECT_EQ(replies[i].value()->payload(), std::to_string(i));
  }
  EXPECT_TRUE(awaitCondition(*loop_, [&] { return servers_[0]->activeCalls() <= 16; }))
      << "finished calls are freed; only the pre-posted ones remain";
}

TEST_F(CallTest, AHandlerMayAnswerLaterThroughAPendingFuture) {
  std::optional<Promise<Reply>> answer;
  registrations_.push_back(services_.addUnary<pb::PingRequest, pb::PingReply>(
      kEcho, [&](const rpc::CallContext&, const pb::PingRequest&) {
        answer.emplace(*loop_);
        return answer->future();
      }));
  startServer("rpc.sock");
  auto reply = client().call<pb::PingReply>(unixPeer("rpc.sock"), kEcho, pingRequest(""));
  ASSERT_TRUE(awaitCondition(*loop_, [&] { return answer.has_value(); }));
  // The call waits for the handler's future, however many loop passes that takes.
  EXPECT_FALSE(loop_->runUntil([&] { return reply.isReady(); }, 50ms));
  answer->setValue(pingReply("later"));
  ASSERT_TRUE(await(*loop_, reply));
  ASSERT_TRUE(reply.hasValue()) << errorOf(reply);
  EXPECT_EQ(reply.value()->payload(), "later");
}

TEST_F(CallTest, AnRpcErrorFromAHandlerReachesTheCallerWithItsCodeAndMessage) {
  registrations_.push_back(services_.addUnary<pb::PingRequest, pb::PingReply>(
      kEcho, [](const rpc::CallContext&, const pb::PingRequest& request) -> Future<Reply> {
        if (request.payload() == "throw") {
          throw rpc::RpcError(rpc::Code::PermissionDenied, "not you");
        }
        return makeErrorFuture<Reply>(rpc::RpcError(rpc::Code::FailedPrecondition, "not now"));
      }));
  startServer("rpc.sock");
  auto thrown = client().call<pb::PingReply>(unixPeer("rpc.sock"), kEcho, pingRequest("throw"));
  auto rejected = client().call<pb::PingReply>(unixPeer("rpc.sock"), kEcho, pingRequest("reject"));
  ASSERT_TRUE(await(*loop_, thrown));
  ASSERT_TRUE(await(*loop_, rejected));

  const auto error = rpcErrorOf(thrown);
  ASSERT_TRUE(error) << errorOf(thrown);
  EXPECT_EQ(error->code(), rpc::Code::PermissionDenied);
  EXPECT_EQ(error->statusMessage(), "not you");
  EXPECT_EQ(std::string(error->what()),
            fmt::format("{} on {}: PERMISSION_DENIED: not you", kEcho, unixPeer("rpc.sock")));
  EXPECT_EQ(codeOf(rejected), rpc::Code::FailedPrecondition);
  EXPECT_THAT(errorOf(rejected), HasSubstr("FAILED_PRECONDITION: not now"));
}

TEST_F(CallTest, AnyOtherExceptionFromAHandlerIsInternalWithItsMessage) {
  registrations_.push_back(services_.addUnary<pb::PingRequest, pb::PingReply>(
      kEcho, [](const rpc::CallContext&, const pb::PingRequest& request) -> Future<Reply> {
        if (request.payload() == "throw") {
          throw std::runtime_error("disk on fire");
        }
        return makeReadyFuture<Reply>(nullptr);  // No message at all: also the handler's fault.
      }));
  startServer("rpc.sock");
  auto thrown = client().call<pb::PingReply>(unixPeer("rpc.sock"), kEcho, pingRequest("throw"));
  auto empty = client().call<pb::PingReply>(unixPeer("rpc.sock"), kEcho, pingRequest("null"));
  ASSERT_TRUE(await(*loop_, thrown));
  ASSERT_TRUE(await(*loop_, empty));
  EXPECT_EQ(codeOf(thrown), rpc::Code::Internal) << errorOf(thrown);
  EXPECT_EQ(rpcErrorOf(thrown)->statusMessage(), "disk on fire");
  EXPECT_EQ(codeOf(empty), rpc::Code::Internal) << errorOf(empty);
  EXPECT_THAT(errorOf(empty), HasSubstr("the handler answered with no message"));
}

TEST_F(CallTest, AnUnknownMethodIsUnimplementedAndNamed) {
  addEcho();
  startServer("rpc.sock");
  auto reply =
      client().call<pb::PingReply>(unixPeer("rpc.sock"), "/snow.test.Echo/Nope", pingRequest(""));
  ASSERT_TRUE(await(*loop_, reply));
  EXPECT_EQ(codeOf(reply), rpc::Code::Unimplemented) << errorOf(reply);
  EXPECT_THAT(errorOf(reply), HasSubstr("this node serves no method /snow.test.Echo/Nope"));
}

TEST_F(CallTest, ARequestThatDoesNotParseIsInvalidArgument) {
  bool handled = false;
  // The server expects a DispatchRequest, whose field 1 is a string: UTF-8 only in proto3.
  registrations_.push_back(services_.addUnary<pb::DispatchRequest, pb::DispatchReply>(
      "/snow.test.Strict/Take", [&](const rpc::CallContext&, const pb::DispatchRequest&) {
        handled = true;
        return makeReadyFuture<std::shared_ptr<const pb::DispatchReply>>(
            std::make_shared<pb::DispatchReply>());
      }));
  startServer("rpc.sock");
  // A PingRequest's field 1 is bytes: these are not UTF-8, so they do not parse as the string.
  auto reply = client().call<pb::DispatchReply>(unixPeer("rpc.sock"), "/snow.test.Strict/Take",
                                                pingRequest(std::string("\xff\xfe\x80", 3)));
  ASSERT_TRUE(await(*loop_, reply));
  EXPECT_EQ(codeOf(reply), rpc::Code::InvalidArgument) << errorOf(reply);
  EXPECT_THAT(errorOf(reply), HasSubstr("the request is not a valid snow.rpc.v1.DispatchRequest"));
  EXPECT_FALSE(handled);
}

TEST_F(CallTest, AReplyThatDoesNotParseIsInternalOnTheCallersSide) {
  registrations_.push_back(services_.addUnary<pb::PingRequest, pb::PingReply>(
      kEcho, [](const rpc::CallContext&, const pb::PingRequest&) {
        return makeReadyFuture<Reply>(pingReply(std::string("\xff\xfe", 2)));
      }));
  startServer("rpc.sock");
  // Read as a DispatchRequest (field 1 a string), the PingReply's bytes do not parse.
  auto reply = client().call<pb::DispatchRequest>(unixPeer("rpc.sock"), kEcho, pingRequest(""));
  ASSERT_TRUE(await(*loop_, reply));
  EXPECT_EQ(codeOf(reply), rpc::Code::Internal) << errorOf(reply);
  EXPECT_THAT(errorOf(reply), HasSubstr("the reply is not a valid snow.rpc.v1.DispatchRequest"));
}

TEST_F(CallTest, InvalidMetadataIsRefusedNotFatal) {
  addEcho();
  startServer("rpc.sock");
  for (const auto& [key, value] : std::vector<std::pair<std::string, std::string>>{
           {"X-Upper-Case", "v"}, {"bad key", "v"}, {"x-ok", "line\nbreak"}}) {
    rpc::CallOptions options;
    options.metadata = {{key, value}};
    auto reply =
        client().call<pb::PingReply>(unixPeer("rpc.sock"), kEcho, pingRequest(""), options);
    ASSERT_TRUE(await(*loop_, reply)) << key;
    EXPECT_EQ(codeOf(reply), rpc::Code::InvalidArgument) << key << ": " << errorOf(reply);
    EXPECT_THAT(errorOf(reply), HasSubstr("metadata key '" + key + "'"));
    auto stream = client().stream(
        unixPeer("rpc.sock"), kEcho, pingRequest(""), pb::PingReply::default_instance(),
        [](const MessagePtr&) {}, options);
    ASSERT_TRUE(await(*loop_, stream)) << key;
    EXPECT_EQ(codeOf(stream), rpc::Code::InvalidArgument) << key << ": " << errorOf(stream);
  }
  // Binary values are fine under a "-bin" key.
  rpc::CallOptions binary;
  binary.metadata = {{"x-blob-bin", std::string("\0\xff\n", 3)}};
  auto reply = client().call<pb::PingReply>(unixPeer("rpc.sock"), kEcho, pingRequest("b"), binary);
  ASSERT_TRUE(await(*loop_, reply));
  EXPECT_TRUE(reply.hasValue()) << errorOf(reply);
}

TEST_F(CallTest, AMalformedPeerAddressIsInvalidArgumentAtOnce) {
  for (const char* bad : {"unix:", "localhost", "host:", ":80", "host:http"}) {
    const auto start = loop_->now();
    auto reply = client().call<pb::PingReply>(bad, kEcho, pingRequest(""));
    ASSERT_TRUE(await(*loop_, reply)) << bad;
    EXPECT_LT(since(start), 1s) << bad;
    EXPECT_EQ(codeOf(reply), rpc::Code::InvalidArgument) << bad;
    EXPECT_THAT(errorOf(reply), HasSubstr("bad peer address")) << bad;
  }
  EXPECT_THROW(client().monitor("nowhere"), std::invalid_argument);
}

// ---- Deadlines and cancellation ---------------------------------------------------------------

// A handler that never answers by itself; records whether the server cancelled it.
struct Stuck {
  std::optional<Promise<Reply>> promise;
  bool cancelled = false;
  int calls = 0;
};

class StuckTest : public CallTest {
 protected:
  void SetUp() override {
    registrations_.push_back(services_.addUnary<pb::PingRequest, pb::PingReply>(
        kEcho, [this](const rpc::CallContext&, const pb::PingRequest&) {
          ++stuck_.calls;
          stuck_.promise.emplace(*loop_);
          stuck_.promise->onCancel([this] { stuck_.cancelled = true; });
          return stuck_.promise->future();
        }));
  }
  ~StuckTest() override {
    client_.reset();
    servers_.clear();
  }

  Stuck stuck_;
};

TEST_F(StuckTest, AHandlerThatNeverAnswersEndsInDeadlineExceededAndIsCancelled) {
  startServer("rpc.sock");
  rpc::CallOptions options;
  options.timeout = 200ms;
  const auto start = loop_->now();
  auto reply = client().call<pb::PingReply>(unixPeer("rpc.sock"), kEcho, pingRequest(""),
                                            std::move(options));
  ASSERT_TRUE(await(*loop_, reply));
  const Duration took = since(start);
  EXPECT_EQ(codeOf(reply), rpc::Code::DeadlineExceeded) << errorOf(reply);
  EXPECT_THAT(errorOf(reply), HasSubstr("DEADLINE_EXCEEDED: no answer within 200 ms (1 attempt)"));
  EXPECT_GE(took, 190ms);
  EXPECT_LT(took, 1500ms);
  // The server saw the caller's deadline pass and cancelled the handler's future.
  EXPECT_TRUE(awaitCondition(*loop_, [&] { return stuck_.cancelled; }));
  EXPECT_EQ(stuck_.calls, 1);
}

TEST_F(StuckTest, CancellingTheCallersFutureCancelsTheHandler) {
  startServer("rpc.sock");
  auto reply = client().call<pb::PingReply>(unixPeer("rpc.sock"), kEcho, pingRequest(""));
  ASSERT_TRUE(awaitCondition(*loop_, [&] { return stuck_.calls == 1; }));
  reply.cancel();
  ASSERT_TRUE(reply.isReady());
  EXPECT_THROW((void)reply.value(), Cancelled);
  EXPECT_TRUE(awaitCondition(*loop_, [&] { return stuck_.cancelled; }))
      << "the server was not told that the caller gave up";
}

TEST_F(StuckTest, StoppingTheServerCancelsAPendingHandlerAndFailsTheCall) {
  rpc::Server& server = startServer("rpc.sock");
  rpc::CallOptions options;
  options.idempotent = false;
  auto reply = client().call<pb::PingReply>(unixPeer("rpc.sock"), kEcho, pingRequest(""),
                                            std::move(options));
  ASSERT_TRUE(awaitCondition(*loop_, [&] { return stuck_.calls == 1; }));
  auto stopped = server.stop(50ms);
  ASSERT_TRUE(await(*loop_, stopped));
  EXPECT_TRUE(stopped.hasValue()) << errorOf(stopped);
  ASSERT_TRUE(await(*loop_, reply));
  EXPECT_THAT(codeOf(reply), AnyOf(rpc::Code::Cancelled, rpc::Code::Unavailable)) << errorOf(reply);
  EXPECT_TRUE(awaitCondition(*loop_, [&] { return stuck_.cancelled; }));
  EXPECT_TRUE(awaitCondition(*loop_, [&] { return server.activeCalls() == 0; }));
  struct stat info {};
  EXPECT_NE(::stat(dir_.file("rpc.sock").c_str(), &info), 0) << "stop() removes the socket file";
}

TEST_F(StuckTest, DestroyingTheServerCancelsAPendingHandler) {
  startServer("rpc.sock");
  rpc::CallOptions options;
  options.idempotent = false;
  auto reply = client().call<pb::PingReply>(unixPeer("rpc.sock"), kEcho, pingRequest(""),
                                            std::move(options));
  ASSERT_TRUE(awaitCondition(*loop_, [&] { return stuck_.calls == 1; }));
  servers_.clear();
  EXPECT_TRUE(awaitCondition(*loop_, [&] { return stuck_.cancelled; }))
      << "the handler of a call the destroyed server dropped was never cancelled";
  ASSERT_TRUE(await(*loop_, reply));
  EXPECT_THAT(codeOf(reply), AnyOf(rpc::Code::Cancelled, rpc::Code::Unavailable)) << errorOf(reply);
}

TEST_F(StuckTest, DestroyingTheServerWhileItStopsIsSafe) {
  rpc::Server& server = startServer("rpc.sock");
  auto reply = client().call<pb::PingReply>(unixPeer("rpc.sock"), kEcho, pingRequest(""));
  ASSERT_TRUE(awaitCondition(*loop_, [&] { return stuck_.calls == 1; }));
  auto stopping = server.stop(50ms);
  servers_.clear();  // Before stop() resolved: the daemon gave up waiting.
  ASSERT_TRUE(await(*loop_, stopping));
  EXPECT_THAT(errorOf(stopping), HasSubstr("the RPC server was destroyed before it stopped"));
  EXPECT_TRUE(stuck_.cancelled);
  ASSERT_TRUE(await(*loop_, reply));
  // Whatever was still posted to the loop by the server is dropped, not run on freed memory.
  bool ticked = false;
  TimerPtr tick = loop_->createTimer([&] { ticked = true; });
  tick->enable(100ms);
  ASSERT_TRUE(awaitCondition(*loop_, [&] { return ticked; }));
}

TEST_F(StuckTest, DestroyingTheClientRejectsItsCallsWithCancelled) {
  startServer("rpc.sock");
  auto reply = client().call<pb::PingReply>(unixPeer("rpc.sock"), kEcho, pingRequest(""));
  ASSERT_TRUE(awaitCondition(*loop_, [&] { return stuck_.calls == 1; }));
  client_.reset();
  ASSERT_TRUE(await(*loop_, reply));
  EXPECT_EQ(codeOf(reply), rpc::Code::Cancelled) << errorOf(reply);
  EXPECT_THAT(errorOf(reply), HasSubstr("the RPC client was shut down"));
  EXPECT_TRUE(awaitCondition(*loop_, [&] { return stuck_.cancelled; }));
}

// ---- Retries ----------------------------------------------------------------------------------

TEST_F(CallTest, AnIdempotentCallIsRetriedUntilTheServerComesUp) {
  addEcho();
  rpc::ClientOptions clientOptions;
  clientOptions.backoff.initial = 50ms;
  clientOptions.backoff.max = 400ms;
  client(clientOptions);
  bool started = false;
  TimerPtr starter = loop_->createTimer([&] {
    startServer("late.sock");
    started = true;
  });
  starter->enable(300ms);
  rpc::CallOptions options;
  options.timeout = 3s;
  options.idempotent = true;
  const auto start = loop_->now();
  auto reply = client().call<pb::PingReply>(unixPeer("late.sock"), kEcho, pingRequest("at last"),
                                            std::move(options));
  ASSERT_TRUE(await(*loop_, reply));
  ASSERT_TRUE(started);
  ASSERT_TRUE(reply.hasValue()) << errorOf(reply);
  EXPECT_EQ(reply.value()->payload(), "at last");
  EXPECT_GE(since(start), 300ms);
  EXPECT_LT(since(start), 2s);
}

TEST_F(CallTest, ANonIdempotentCallFailsAtOnceWithUnavailable) {
  rpc::CallOptions options;
  options.timeout = 3s;
  options.idempotent = false;
  const auto start = loop_->now();
  auto reply = client().call<pb::PingReply>(unixPeer("nobody.sock"), kEcho, pingRequest(""),
                                            std::move(options));
  ASSERT_TRUE(await(*loop_, reply));
  EXPECT_EQ(codeOf(reply), rpc::Code::Unavailable) << errorOf(reply);
  EXPECT_THAT(errorOf(reply), HasSubstr(unixPeer("nobody.sock")));
  EXPECT_THAT(errorOf(reply), Not(HasSubstr("attempts")));
  EXPECT_LT(since(start), 1s);
}

TEST_F(CallTest, AnIdempotentCallToNobodyEndsByItsDeadlineNamingTheLastError) {
  rpc::ClientOptions clientOptions;
  clientOptions.backoff.initial = 20ms;
  clientOptions.backoff.max = 50ms;
  client(clientOptions);
  rpc::CallOptions options;
  options.timeout = 300ms;
  options.idempotent = true;
  const auto start = loop_->now();
  auto reply = client().call<pb::PingReply>(unixPeer("nobody.sock"), kEcho, pingRequest(""),
                                            std::move(options));
  ASSERT_TRUE(await(*loop_, reply));
  EXPECT_THAT(codeOf(reply), AnyOf(rpc::Code::Unavailable, rpc::Code::DeadlineExceeded))
      << errorOf(reply);
  EXPECT_THAT(errorOf(reply), HasSubstr("attempts")) << "it was retried";
  EXPECT_LT(since(start), 1s);
}

TEST_F(CallTest, CancellingACallWaitingToBeRetriedRejectsItWithCancelled) {
  rpc::ClientOptions clientOptions;
  clientOptions.backoff.initial = 10s;  // The retry waits far longer than the test.
  clientOptions.backoff.jitter = 0;
  client(clientOptions);
  rpc::CallOptions options;
  options.timeout = 60s;
  options.idempotent = true;
  // The untyped call: its future is the call's own promise's, not a continuation of it.
  auto reply = client().call(unixPeer("nobody.sock"), kEcho, pingRequest(""),
                             pb::PingReply::default_instance(), options);
  auto typed =
      client().call<pb::PingReply>(unixPeer("nobody.sock"), kEcho, pingRequest(""), options);
  // The first attempts fail at once (nobody listens); the calls then wait for their retries.
  EXPECT_FALSE(loop_->runUntil([&] { return reply.isReady() || typed.isReady(); }, 200ms));
  reply.cancel();
  typed.cancel();
  ASSERT_TRUE(reply.isReady());
  EXPECT_THROW((void)reply.value(), Cancelled) << errorOf(reply);
  ASSERT_TRUE(typed.isReady());
  EXPECT_THROW((void)typed.value(), Cancelled) << errorOf(typed);
}

// ---- Server streaming -------------------------------------------------------------------------

TEST_F(CallTest, AStreamDeliversEveryMessageInOrderThenEndsWithOk) {
  constexpr int kCount = 200;
  registrations_.push_back(services_.addStream<pb::PingRequest, pb::PingReply>(
      "/snow.test.Feed/Count", [](const rpc::CallContext&, const pb::PingRequest& request,
                                  const rpc::ServerStreamPtr& stream) {
        const int count = std::stoi(request.payload());
        for (int i = 0; i < count; ++i) {
          EXPECT_TRUE(stream->write(*pingReply(std::to_string(i))));
        }
        EXPECT_EQ(stream->dropped(), 0U);
        return makeReadyFuture();
      }));
  startServer("rpc.sock");
  std::vector<std::string> received;
  auto done = client().stream(
      unixPeer("rpc.sock"), "/snow.test.Feed/Count", pingRequest(std::to_string(kCount)),
      pb::PingReply::default_instance(), [&](MessagePtr message) {
        received.push_back(static_cast<const pb::PingReply&>(*message).payload());
      });
  ASSERT_TRUE(await(*loop_, done));
  ASSERT_TRUE(done.hasValue()) << errorOf(done);
  ASSERT_EQ(received.size(), static_cast<size_t>(kCount));
  for (int i = 0; i < kCount; ++i) {
    EXPECT_EQ(received[i], std::to_string(i));
  }
}

TEST_F(CallTest, AStreamEndsWithTheHandlersErrorAfterItsMessages) {
  registrations_.push_back(services_.addStream<pb::PingRequest, pb::PingReply>(
      "/snow.test.Feed/Fail",
      [](const rpc::CallContext&, const pb::PingRequest&, const rpc::ServerStreamPtr& stream) {
        stream->write(*pingReply("first"));
        stream->write(*pingReply("second"));
        return makeErrorFuture<void>(rpc::RpcError(rpc::Code::ResourceExhausted, "enough"));
      }));
  startServer("rpc.sock");
  std::vector<std::string> received;
  auto done =
      client().stream(unixPeer("rpc.sock"), "/snow.test.Feed/Fail", pingRequest(""),
                      pb::PingReply::default_instance(), [&](MessagePtr message) {
                        received.push_back(static_cast<const pb::PingReply&>(*message).payload());
                      });
  ASSERT_TRUE(await(*loop_, done));
  EXPECT_EQ(codeOf(done), rpc::Code::ResourceExhausted) << errorOf(done);
  EXPECT_THAT(errorOf(done), HasSubstr("RESOURCE_EXHAUSTED: enough"));
  EXPECT_THAT(received, ElementsAre("first", "second"));
}

TEST_F(CallTest, CancellingAStreamClosesItOnTheServer) {
  rpc::ServerStreamPtr serverStream;
  std::optional<Future<void>> closed;
  bool handlerCancelled = false;
  std::optional<Promise<void>> handler;
  registrations_.push_back(services_.addStream<pb::PingRequest, pb::PingReply>(
      "/snow.test.Feed/Watch",
      [&](const rpc::CallContext&, const pb::PingRequest&, const rpc::ServerStreamPtr& stream) {
        serverStream = stream;
        closed.emplace(stream->closed());
        stream->write(*pingReply("hello"));
        handler.emplace(*loop_);
        handler->onCancel([&] { handlerCancelled = true; });
        return handler->future();
      }));
  startServer("rpc.sock");
  int received = 0;
  auto done =
      client().stream(unixPeer("rpc.sock"), "/snow.test.Feed/Watch", pingRequest(""),
                      pb::PingReply::default_instance(), [&](const MessagePtr&) { ++received; });
  ASSERT_TRUE(awaitCondition(*loop_, [&] { return received == 1; }));
  ASSERT_TRUE(closed.has_value());
  EXPECT_FALSE(closed->isReady());
  done.cancel();
  ASSERT_TRUE(done.isReady());
  EXPECT_THROW(done.value(), Cancelled);
  ASSERT_TRUE(await(*loop_, *closed));
  EXPECT_TRUE(closed->hasValue());
  EXPECT_TRUE(awaitCondition(*loop_, [&] { return handlerCancelled; }));
  EXPECT_FALSE(serverStream->write(*pingReply("too late"))) << "writing to a closed stream";
}

TEST_F(CallTest, AStreamWithATimeoutEndsWithDeadlineExceeded) {
  std::optional<Promise<void>> handler;
  registrations_.push_back(services_.addStream<pb::PingRequest, pb::PingReply>(
      "/snow.test.Feed/Forever",
      [&](const rpc::CallContext&, const pb::PingRequest&, const rpc::ServerStreamPtr&) {
        handler.emplace(*loop_);
        return handler->future();
      }));
  startServer("rpc.sock");
  rpc::CallOptions options;
  options.timeout = 150ms;
  auto done = client().stream(
      unixPeer("rpc.sock"), "/snow.test.Feed/Forever", pingRequest(""),
      pb::PingReply::default_instance(), [](const MessagePtr&) {}, std::move(options));
  ASSERT_TRUE(await(*loop_, done));
  EXPECT_EQ(codeOf(done), rpc::Code::DeadlineExceeded) << errorOf(done);
}

TEST_F(CallTest, AStreamThatOutrunsItsReaderDropsAndCountsWhatDoesNotFit) {
  constexpr size_t kWritten = rpc::ServerStream::kMaxQueued + 100;
  rpc::ServerStreamPtr serverStream;
  std::optional<Promise<void>> handler;
  size_t accepted = 0;
  registrations_.push_back(services_.addStream<pb::PingRequest, pb::PingReply>(
      "/snow.test.Feed/Flood",
      [&](const rpc::CallContext&, const pb::PingRequest&, const rpc::ServerStreamPtr& stream) {
        serverStream = stream;
        for (size_t i = 0; i < kWritten; ++i) {
          accepted += stream->write(*pingReply(std::to_string(i))) ? 1 : 0;
        }
        handler.emplace(*loop_);
        return handler->future();
      }));
  startServer("rpc.sock");
  std::vector<std::string> received;
  auto done =
      client().stream(unixPeer("rpc.sock"), "/snow.test.Feed/Flood", pingRequest(""),
                      pb::PingReply::default_instance(), [&](MessagePtr message) {
                        received.push_back(static_cast<const pb::PingReply&>(*message).payload());
                      });
  ASSERT_TRUE(awaitCondition(*loop_, [&] { return serverStream && received.size() == accepted; }));
  // One message on the wire and kMaxQueued behind it; the rest was dropped and counted.
  EXPECT_EQ(accepted, rpc::ServerStream::kMaxQueued + 1);
  EXPECT_EQ(serverStream->dropped(), kWritten - accepted);
  for (size_t i = 0; i < received.size(); ++i) {
    ASSERT_EQ(received[i], std::to_string(i)) << "what was queued arrives in order";
  }
  // Drained: writing works again; the count is of the whole stream.
  EXPECT_TRUE(serverStream->write(*pingReply("after")));
  EXPECT_EQ(serverStream->dropped(), kWritten - accepted);
  ASSERT_TRUE(awaitCondition(*loop_, [&] { return received.size() == accepted + 1; }));
  EXPECT_EQ(received.back(), "after");
  handler->setValue();
  ASSERT_TRUE(await(*loop_, done));
  EXPECT_TRUE(done.hasValue()) << errorOf(done);
}

TEST_F(CallTest, MessagesOverTheSizeLimitAreResourceExhausted) {
  registrations_.push_back(services_.addUnary<pb::PingRequest, pb::PingReply>(
      kEcho, [](const rpc::CallContext&, const pb::PingRequest& request) {
        // "big": a reply far larger than the request.
        return makeReadyFuture<Reply>(
            pingReply(request.payload() == "big" ? std::string(8192, 'r') : request.payload()));
      }));
  rpc::ServerOptions serverOptions;
  serverOptions.unixSocket = dir_.file("rpc.sock");
  serverOptions.maxMessageBytes = 2048;
  startServer(serverOptions);
  rpc::ClientOptions clientOptions;
  clientOptions.maxMessageBytes = 4096;
  client(clientOptions);
  auto small = client().call<pb::PingReply>(unixPeer("rpc.sock"), kEcho,
                                            pingRequest(std::string(1000, 's')));
  auto tooBigForTheServer = client().call<pb::PingReply>(unixPeer("rpc.sock"), kEcho,
                                                         pingRequest(std::string(3000, 'x')));
  auto tooBigToSend = client().call<pb::PingReply>(unixPeer("rpc.sock"), kEcho,
                                                   pingRequest(std::string(5000, 'x')));
  auto tooBigAReply = client().call<pb::PingReply>(unixPeer("rpc.sock"), kEcho, pingRequest("big"));
  for (auto* reply : {&small, &tooBigForTheServer, &tooBigToSend, &tooBigAReply}) {
    ASSERT_TRUE(await(*loop_, *reply));
  }
  EXPECT_TRUE(small.hasValue()) << errorOf(small);
  EXPECT_EQ(codeOf(tooBigForTheServer), rpc::Code::ResourceExhausted)
      << errorOf(tooBigForTheServer);
  EXPECT_EQ(codeOf(tooBigToSend), rpc::Code::ResourceExhausted) << errorOf(tooBigToSend);
  EXPECT_EQ(codeOf(tooBigAReply), rpc::Code::ResourceExhausted) << errorOf(tooBigAReply);
}

TEST_F(CallTest, ACallIsAClientAndAServerSpanBetweenTheCallerAndTheHandler) {
  using namespace opentracing::mocktracer;
  auto* recorder = new InMemoryRecorder();
  MockTracerOptions tracerOptions;
  tracerOptions.recorder.reset(recorder);
  auto tracer = std::make_shared<MockTracer>(std::move(tracerOptions));
  registrations_.push_back(services_.addUnary<pb::PingRequest, pb::PingReply>(
      kEcho, [&](const rpc::CallContext& call, const pb::PingRequest&) {
        EXPECT_NE(call.traceParent(), nullptr) << "no span context arrived";
        if (call.traceParent() != nullptr) {
          tracer->StartSpan("handler", {opentracing::ChildOf(call.traceParent())})->Finish();
        }
        return makeReadyFuture<Reply>(pingReply(""));
      }));
  startTraced(tracer);

  auto caller = tracer->StartSpan("caller");
  rpc::CallOptions options;
  options.traceParent = &caller->context();
  auto reply = client().call<pb::PingReply>(unixPeer("rpc.sock"), kEcho, pingRequest(""), options);
  ASSERT_TRUE(await(*loop_, reply));
  ASSERT_TRUE(reply.hasValue()) << errorOf(reply);
  caller->Finish();
  // caller -> client span -> (metadata) -> server span -> handler, one trace.
  const auto spans = recorder->spans();
  ASSERT_EQ(spans.size(), 4U);
  auto named = [&](const std::string& name) -> const SpanData& {
    for (const auto& span : spans) {
      if (span.operation_name == name) {
        return span;
      }
    }
    ADD_FAILURE() << "no span named " << name;
    return spans[0];
  };
  const std::string method = std::string(kEcho).substr(1);
  // Tags hold whichever string type the instrumentation passed.
  auto text = [](const opentracing::Value& value) -> std::string {
    if (value.is<std::string>()) {
      return value.get<std::string>();
    }
    if (value.is<opentracing::string_view>()) {
      const auto v = value.get<opentracing::string_view>();
      return {v.data(), v.size()};
    }
    return value.is<const char*>() ? value.get<const char*>() : "";
  };
  const SpanData& root = named("caller");
  const SpanData* client = nullptr;
  const SpanData* server = nullptr;
  for (const auto& span : spans) {
    if (span.operation_name == method) {
      const auto kind = span.tags.find("span.kind");
      ASSERT_NE(kind, span.tags.end());
      (text(kind->second) == "client" ? client : server) = &span;
    }
  }
  ASSERT_NE(client, nullptr);
  ASSERT_NE(server, nullptr);
  const SpanData& handler = named("handler");
  for (const SpanData* span : {client, server, &handler}) {
    EXPECT_EQ(span->span_context.trace_id, root.span_context.trace_id);
    ASSERT_EQ(span->references.size(), 1U);
  }
  EXPECT_EQ(client->references[0].span_id, root.span_context.span_id);
  EXPECT_EQ(server->references[0].span_id, client->span_context.span_id);
  EXPECT_EQ(handler.references[0].span_id, server->span_context.span_id);
  EXPECT_EQ(text(server->tags.at("span.kind")), "server");
  EXPECT_EQ(text(server->tags.at("rpc.system")), "grpc");
  EXPECT_EQ(server->tags.at("rpc.grpc.status_code"), opentracing::Value(0));
}

TEST_F(CallTest, StartTwiceIsALogicErrorAndStopTwiceIsHarmless) {
  addEcho();
  rpc::Server& server = startServer("rpc.sock");
  EXPECT_THROW(server.start(), std::logic_error);
  auto first = server.stop(0ms);
  ASSERT_TRUE(await(*loop_, first));
  EXPECT_TRUE(first.hasValue()) << errorOf(first);
  auto second = server.stop(0ms);
  ASSERT_TRUE(await(*loop_, second));
  EXPECT_TRUE(second.hasValue()) << errorOf(second);
  rpc::Server never(*loop_, services_, *layer_, {});
  auto unstarted = never.stop();
  ASSERT_TRUE(await(*loop_, unstarted));
  EXPECT_TRUE(unstarted.hasValue());
}

// ---- Health -----------------------------------------------------------------------------------

TEST_F(CallTest, MonitorReportsUpDownAndUpAgainAsTheServerComesAndGoes) {
  registrations_.push_back(services_.addUnary<pb::PingRequest, pb::PingReply>(
      std::string(rpc::kPing), [](const rpc::CallContext&, const pb::PingRequest&) {
        return makeReadyFuture<Reply>(pingReply(""));
      }));
  rpc::ClientOptions options;
  options.health = {.interval = 100ms, .timeout = 100ms, .failures = 2};
  options.backoff.initial = 50ms;  // Reconnect soon after the server is back.
  options.backoff.max = 100ms;
  client(options);
  std::vector<rpc::Health> changes;
  client().onHealth([&](const rpc::PeerHealth& health) {
    EXPECT_EQ(health.address, unixPeer("rpc.sock"));
    changes.push_back(health.health);
  });
  rpc::Server& first = startServer("rpc.sock");
  client().monitor(unixPeer("rpc.sock"));
  client().monitor(unixPeer("rpc.sock"));  // Idempotent.
  ASSERT_EQ(client().health().size(), 1U);

  ASSERT_TRUE(awaitCondition(*loop_, [&] { return !changes.empty(); }));
  EXPECT_EQ(changes.back(), rpc::Health::Up);
  EXPECT_EQ(client().health()[0].health, rpc::Health::Up);
  EXPECT_GT(client().health()[0].roundTrip.count(), 0);

  auto stopped = first.stop(0ms);
  ASSERT_TRUE(await(*loop_, stopped));
  ASSERT_TRUE(awaitCondition(*loop_, [&] { return changes.back() == rpc::Health::Down; }));
  EXPECT_EQ(client().health()[0].health, rpc::Health::Down);
  EXPECT_FALSE(client().health()[0].lastError.empty());

  startServer("rpc.sock");
  ASSERT_TRUE(awaitCondition(*loop_, [&] { return changes.back() == rpc::Health::Up; }));
  EXPECT_EQ(client().health()[0].health, rpc::Health::Up);
  EXPECT_TRUE(client().health()[0].lastError.empty());
  EXPECT_THAT(changes, ElementsAre(rpc::Health::Up, rpc::Health::Down, rpc::Health::Up));
}

TEST_F(CallTest, APeerThatNeverAnswersIsReportedDown) {
  rpc::ClientOptions options;
  options.health = {.interval = 50ms, .timeout = 100ms, .failures = 2};
  client(options);
  std::vector<rpc::PeerHealth> changes;
  client().onHealth([&](const rpc::PeerHealth& health) { changes.push_back(health); });
  client().monitor(unixPeer("nobody.sock"));
  ASSERT_TRUE(awaitCondition(
      *loop_, [&] { return !changes.empty(); }, 2s));
  EXPECT_EQ(changes[0].health, rpc::Health::Down);
  EXPECT_THAT(changes[0].lastError, HasSubstr("UNAVAILABLE"));
  EXPECT_EQ(rpc::healthName(changes[0].health), "down");
}

// ---- The unix socket --------------------------------------------------------------------------

TEST_F(CallTest, ASecondServerOnALiveSocketIsRefused) {
  addEcho();
  startServer("rpc.sock");
  rpc::ServerOptions options;
  options.unixSocket = dir_.file("rpc.sock");
  rpc::Server second(*loop_, services_, *layer_, options);
  try {
    second.start();
    FAIL() << "a second server started on a socket in use";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("cannot serve RPC on " + dir_.file("rpc.sock")));
    EXPECT_THAT(e.what(), HasSubstr("another process (a running snow-core?) is serving there"));
  }
  // The first one still serves.
  auto reply = client().call<pb::PingReply>(unixPeer("rpc.sock"), kEcho, pingRequest("still"));
  ASSERT_TRUE(await(*loop_, reply));
  EXPECT_TRUE(reply.hasValue()) << errorOf(reply);
}

TEST_F(CallTest, AStaleSocketFileIsReplaced) {
  const std::string path = dir_.file("rpc.sock");
  {  // A socket file whose process is gone: bound, closed, never unlinked.
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path.c_str(), sizeof address.sun_path - 1);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
    ::close(fd);
  }
  struct stat info {};
  ASSERT_EQ(::stat(path.c_str(), &info), 0);
  ASSERT_TRUE(S_ISSOCK(info.st_mode));
  addEcho();
  LogCapture log;
  startServer("rpc.sock");
  EXPECT_TRUE(log.contains("removing the stale RPC socket " + path)) << log.text();
  auto reply = client().call<pb::PingReply>(unixPeer("rpc.sock"), kEcho, pingRequest("fresh"));
  ASSERT_TRUE(await(*loop_, reply));
  ASSERT_TRUE(reply.hasValue()) << errorOf(reply);
  EXPECT_EQ(reply.value()->payload(), "fresh");
}

TEST_F(CallTest, APathThatIsNotASocketIsLeftAloneAndRefused) {
  writeFile(dir_.file("rpc.sock"), "precious");
  rpc::ServerOptions options;
  options.unixSocket = dir_.file("rpc.sock");
  rpc::Server server(*loop_, services_, *layer_, options);
  try {
    server.start();
    FAIL() << "served over a regular file";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("the path exists and is not a socket"));
  }
  EXPECT_EQ(readFile(dir_.file("rpc.sock")), "precious");
}

TEST_F(CallTest, TheSocketsDirectoryIsCreatedPrivate) {
  addEcho();
  startServer(dir_.file("run/rpc.sock"));
  struct stat info {};
  ASSERT_EQ(::stat(dir_.file("run").c_str(), &info), 0);
  EXPECT_TRUE(S_ISDIR(info.st_mode));
  EXPECT_EQ(info.st_mode & 0777, 0700U);
  auto reply =
      client().call<pb::PingReply>("unix:" + dir_.file("run/rpc.sock"), kEcho, pingRequest("x"));
  ASSERT_TRUE(await(*loop_, reply));
  EXPECT_TRUE(reply.hasValue()) << errorOf(reply);
}

TEST_F(CallTest, ASocketDirectoryOthersCanWriteIsRefused) {
  addEcho();
  const std::string shared = dir_.file("shared");
  ASSERT_EQ(::mkdir(shared.c_str(), 0777), 0);
  ASSERT_EQ(::chmod(shared.c_str(), 0777), 0);  // Past the umask: writable by everyone.
  rpc::ServerOptions options;
  options.unixSocket = shared + "/rpc.sock";
  rpc::Server server(*loop_, services_, *layer_, options);
  try {
    server.start();
    FAIL() << "served in a directory anyone can write";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("refusing to serve RPC on " + options.unixSocket));
    EXPECT_THAT(e.what(), HasSubstr("not be writable by others"));
  }
  // With the sticky bit (as /tmp) others cannot replace our file: that is fine.
  ASSERT_EQ(::chmod(shared.c_str(), 01777), 0);
  rpc::Server sticky(*loop_, services_, *layer_, options);
  EXPECT_NO_THROW(sticky.start());
}

TEST_F(CallTest, ATakenTcpPortIsRefusedWithTheAddress) {
  addEcho();
  rpc::Server& first = startServer("", /*tcp=*/true);
  rpc::ServerOptions options;
  options.tcpListen = fmt::format("127.0.0.1:{}", first.tcpPort());
  rpc::Server second(*loop_, services_, *layer_, options);
  try {
    second.start();
    FAIL() << "two servers on one port";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), HasSubstr(options.tcpListen));
  }
}

}  // namespace
}  // namespace snow::testing
