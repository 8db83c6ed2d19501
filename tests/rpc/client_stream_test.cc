// Client streaming (Client::upload, Services::addClientStream) between a real server and client on
// a unix socket: order, the end of the stream, errors both ways, flow control, cancellation,
// deadlines, size limits and what happens to a call when either side goes away.

#include <cstdint>
#include <functional>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <opentracing/mocktracer/in_memory_recorder.h>
#include <opentracing/mocktracer/tracer.h>

#include "snow/rpc/client.h"
#include "snow/rpc/node.h"
#include "snow/rpc/server.h"
#include "snow/rpc/services.h"

#include "rpc/rpc_support.h"
#include "support/throws.h"

namespace snow::testing {
namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;
namespace pb = rpc::v1;

using Reply = std::shared_ptr<const pb::PingReply>;

constexpr const char* kUpload = "/snow.test.Upload/Put";

uint64_t fnv1a(uint64_t hash, std::string_view bytes) {
  for (const char c : bytes) {
    hash = (hash ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
  }
  return hash;
}
constexpr uint64_t kFnvBasis = 0xcbf29ce484222325ULL;

std::string chunkPayload(int index, size_t size) {
  std::string payload = fmt::format("{:06}", index);
  if (payload.size() < size) {
    payload.resize(size, 'x');
  }
  return payload;
}

// The client's side of an upload: serves `count` chunks (forever when count < 0), then the end,
// or, when `hold`, a future left pending (whose cancellation it records). Counts what it was
// asked for.
struct Source {
  int count = 0;
  size_t size = 16;
  bool hold = false;
  int asked = 0;
  std::optional<Promise<MessagePtr>> held{};
  bool heldCancelled = false;

  UniqueFunction<Future<MessagePtr>()> next(Dispatcher& loop) {
    return [this, &loop]() -> Future<MessagePtr> {
      const int index = asked++;
      if (count < 0 || index < count) {
        auto chunk = std::make_shared<pb::PingRequest>();
        chunk->set_payload(chunkPayload(index, size));
        return makeReadyFuture<MessagePtr>(std::move(chunk));
      }
      if (!hold) {
        return makeReadyFuture<MessagePtr>(nullptr);
      }
      held.emplace(loop);
      held->onCancel([this] { heldCancelled = true; });
      return held->future();
    };
  }
};

// Reads `stream` to its end with repeat(), giving `each` every message.
Future<void> readAll(const rpc::ClientStreamPtr& stream,
                     std::function<void(const pb::PingRequest&)> each) {
  return repeat([stream, each = std::move(each)]() {
    return stream->readAs<pb::PingRequest>().then(
        [each](const std::shared_ptr<const pb::PingRequest>& m) {
          if (m == nullptr) {
            return Step::Stop;
          }
          each(*m);
          return Step::Continue;
        });
  });
}

// A handler the test drives: it keeps the stream and answers when the test says.
struct Held {
  rpc::ClientStreamPtr stream;
  std::optional<Promise<Reply>> answer;
  bool cancelled = false;
  int calls = 0;
};

class ClientStreamTest : public RpcFixture {
 protected:
  // Registers kUpload: reads every chunk and answers their count (node_id) and the FNV-1a hash
  // of their payloads in order (payload).
  void addSummer() {
    registrations_.push_back(services_.addClientStream<pb::PingRequest, pb::PingReply>(
        kUpload, [this](const rpc::CallContext&, const rpc::ClientStreamPtr& stream) {
          auto sum = std::make_shared<std::pair<int, uint64_t>>(0, kFnvBasis);
          return readAll(stream,
                         [this, sum](const pb::PingRequest& chunk) {
                           ++sum->first;
                           sum->second = fnv1a(sum->second, chunk.payload());
                           seen_.push_back(chunk.payload().substr(0, 6));
                         })
              .then([sum] {
                auto reply = std::make_shared<pb::PingReply>();
                reply->set_node_id(std::to_string(sum->first));
                reply->set_payload(fmt::format("{:016x}", sum->second));
                return Reply(std::move(reply));
              });
        }));
  }

  // Registers kUpload as a handler the test drives (held_).
  void addHeld() {
    registrations_.push_back(services_.addClientStream<pb::PingRequest, pb::PingReply>(
        kUpload, [this](const rpc::CallContext&, const rpc::ClientStreamPtr& stream) {
          ++held_.calls;
          held_.stream = stream;
          held_.answer.emplace(*loop_);
          held_.answer->onCancel([this] { held_.cancelled = true; });
          return held_.answer->future();
        }));
  }

  // Serves kUpload with the held handler and starts an upload from `source`. The handler has the
  // call on return, unless it did not get it within the deadline (held_.stream is null then).
  Future<Reply> uploadToHeld(Source& source) {
    addHeld();
    startServer("rpc.sock");
    auto reply = upload(source);
    EXPECT_TRUE(awaitCondition(*loop_, [&] { return held_.stream != nullptr; }))
        << "the handler never got the call";
    return reply;
  }

  Future<Reply> upload(Source& source, rpc::CallOptions options = {}) {
    return client().upload<pb::PingReply>(unixPeer("rpc.sock"), kUpload, source.next(*loop_),
                                          std::move(options));
  }

  // Reads one message on the held stream and waits for it.
  MessagePtr readOne() {
    auto message = held_.stream->read();
    EXPECT_TRUE(await(*loop_, message));
    EXPECT_TRUE(message.hasValue()) << errorOf(message);
    return message.hasValue() ? message.value() : nullptr;
  }

  std::vector<std::string> seen_;
  Held held_;
};

// ---- The stream and its reply -----------------------------------------------------------------

TEST_F(ClientStreamTest, AThousandChunksArriveInOrderAndTheReplyComesBack) {
  addSummer();
  startServer("rpc.sock");
  Source source{.count = 1000, .size = 100};
  auto reply = upload(source);
  ASSERT_TRUE(await(*loop_, reply));
  ASSERT_TRUE(reply.hasValue()) << errorOf(reply);
  uint64_t expected = kFnvBasis;
  for (int i = 0; i < 1000; ++i) {
    expected = fnv1a(expected, chunkPayload(i, 100));
  }
  EXPECT_EQ(reply.value()->node_id(), "1000");
  EXPECT_EQ(reply.value()->payload(), fmt::format("{:016x}", expected));
  ASSERT_EQ(seen_.size(), 1000U);
  for (int i = 0; i < 1000; ++i) {
    ASSERT_EQ(seen_[i], fmt::format("{:06}", i)) << "chunk " << i << " out of order";
  }
  EXPECT_EQ(source.asked, 1001) << "1000 chunks and the end, each asked for once";
}

TEST_F(ClientStreamTest, AnEmptyStreamGetsTheReply) {
  addSummer();
  startServer("rpc.sock");
  Source source{.count = 0};
  auto reply = upload(source);
  ASSERT_TRUE(await(*loop_, reply));
  ASSERT_TRUE(reply.hasValue()) << errorOf(reply);
  EXPECT_EQ(reply.value()->node_id(), "0");
  EXPECT_EQ(reply.value()->payload(), fmt::format("{:016x}", kFnvBasis));
  EXPECT_EQ(source.asked, 1);
}

TEST_F(ClientStreamTest, TheEndOfTheStreamIsReadAgainOnEveryLaterRead) {
  Source source{.count = 1};
  auto reply = uploadToHeld(source);
  ASSERT_NE(held_.stream, nullptr);
  EXPECT_NE(readOne(), nullptr);
  EXPECT_EQ(readOne(), nullptr);
  EXPECT_EQ(readOne(), nullptr);
  held_.answer->setValue(pingReply("done"));
  ASSERT_TRUE(await(*loop_, reply));
  ASSERT_TRUE(reply.hasValue()) << errorOf(reply);
  EXPECT_EQ(reply.value()->payload(), "done");
}

TEST_F(ClientStreamTest, ASecondReadWhileOneIsPendingIsALogicError) {
  Source source{.count = 1, .hold = true};
  auto reply = uploadToHeld(source);
  ASSERT_NE(held_.stream, nullptr);
  EXPECT_NE(readOne(), nullptr);
  auto pending = held_.stream->read();  // The client holds its second message back.
  EXPECT_FALSE(loop_->runUntil([&] { return pending.isReady(); }, 50ms));
  EXPECT_THAT(logicErrorOf([&] { (void)held_.stream->read(); }),
              HasSubstr("ClientStream::read() called while an earlier read is pending"));
  held_.answer->setValue(pingReply("ok"));
  ASSERT_TRUE(await(*loop_, reply));
  EXPECT_TRUE(reply.hasValue()) << errorOf(reply);
}

TEST_F(ClientStreamTest, AMessageForACancelledReadGoesToTheNextRead) {
  Source source{.count = 1, .hold = true};
  auto reply = uploadToHeld(source);
  ASSERT_NE(held_.stream, nullptr);
  EXPECT_NE(readOne(), nullptr);
  auto abandoned = held_.stream->read();
  ASSERT_TRUE(awaitCondition(*loop_, [&] { return source.held.has_value(); }));
  abandoned.cancel();
  EXPECT_THROW((void)abandoned.value(), Cancelled);
  source.held->setValue(std::make_shared<pb::PingRequest>(pingRequest("late")));
  const MessagePtr late = readOne();
  ASSERT_NE(late, nullptr);
  EXPECT_EQ(static_cast<const pb::PingRequest&>(*late).payload(), "late");
  held_.answer->setValue(pingReply("ok"));
  ASSERT_TRUE(await(*loop_, reply));
  EXPECT_TRUE(reply.hasValue()) << errorOf(reply);
}

// ---- Errors -------------------------------------------------------------------------------------

TEST_F(ClientStreamTest, AHandlerRejectingMidStreamReachesTheClientWhichStopsSending) {
  int read = 0;
  registrations_.push_back(services_.addClientStream<pb::PingRequest, pb::PingReply>(
      kUpload, [&](const rpc::CallContext&, const rpc::ClientStreamPtr& stream) {
        return repeat([&read, stream] {
                 return stream->read().then([&read](const MessagePtr& m) {
                   EXPECT_NE(m, nullptr);
                   if (++read == 10) {
                     throw rpc::RpcError(rpc::Code::FailedPrecondition, "enough after 10");
                   }
                   return Step::Continue;
                 });
               })
            .then([]() -> Reply { return pingReply("never"); });
      }));
  startServer("rpc.sock");
  Source source{.count = -1};  // Would send for ever.
  auto reply = upload(source);
  ASSERT_TRUE(await(*loop_, reply));
  const auto error = rpcErrorOf(reply);
  ASSERT_TRUE(error) << errorOf(reply);
  EXPECT_EQ(error->code(), rpc::Code::FailedPrecondition);
  EXPECT_EQ(error->statusMessage(), "enough after 10");
  EXPECT_EQ(read, 10);
  const int asked = source.asked;
  EXPECT_FALSE(loop_->runUntil([&] { return source.asked != asked; }, 100ms))
      << "next() is still called after the call ended";
}

TEST_F(ClientStreamTest, AHandlerThatAnswersBeforeTheEndRepliesAndTheCallIsFreed) {
  registrations_.push_back(services_.addClientStream<pb::PingRequest, pb::PingReply>(
      kUpload, [&](const rpc::CallContext&, const rpc::ClientStreamPtr& stream) {
        return stream->read().then([stream](const MessagePtr& first) {
          // A read left in flight as the call ends: the call must still be freed.
          stream->read().detach();
          return pingReply("early:" + static_cast<const pb::PingRequest&>(*first).payload());
        });
      }));
  startServer("rpc.sock");
  Source source{.count = -1, .size = 8};
  auto reply = upload(source);
  ASSERT_TRUE(await(*loop_, reply));
  ASSERT_TRUE(reply.hasValue()) << errorOf(reply);
  EXPECT_EQ(reply.value()->payload(), "early:000000xx");
  EXPECT_TRUE(awaitCondition(*loop_, [&] { return servers_[0]->activeCalls() <= 16; }))
      << "finished calls are freed; only the pre-posted ones remain";
}

TEST_F(ClientStreamTest, AChunkThatDoesNotParseIsInvalidArgument) {
  int parsed = 0;
  std::optional<rpc::Code> handlerSaw;
  // The server reads DispatchRequests, whose field 1 is a string: UTF-8 only in proto3.
  registrations_.push_back(services_.addClientStream<pb::DispatchRequest, pb::DispatchReply>(
      kUpload, [&](const rpc::CallContext&, const rpc::ClientStreamPtr& stream) {
        return repeat([&, stream] {
                 return stream->readAs<pb::DispatchRequest>()
                     .then([&](const std::shared_ptr<const pb::DispatchRequest>& m) {
                       EXPECT_NE(m, nullptr);
                       ++parsed;
                       return Step::Continue;
                     })
                     .recover([&](const std::exception_ptr& e) -> Step {
                       try {
                         std::rethrow_exception(e);
                       } catch (const rpc::RpcError& error) {
                         handlerSaw = error.code();
                         throw;  // The handler fails with the read's error.
                       }
                     });
               })
            .then([]() -> MessagePtr { return std::make_shared<pb::DispatchReply>(); });
      }));
  startServer("rpc.sock");
  int asked = 0;
  // A PingRequest's field 1 is bytes: "fine" parses as the string, the second chunk does not.
  auto reply = client().upload<pb::DispatchReply>(
      unixPeer("rpc.sock"), kUpload, [&]() -> Future<MessagePtr> {
        ++asked;
        if (asked <= 2) {
          return makeReadyFuture<MessagePtr>(std::make_shared<pb::PingRequest>(
              pingRequest(asked == 1 ? "fine" : std::string("\xff\xfe\x80", 3))));
        }
        return makeReadyFuture<MessagePtr>(nullptr);
      });
  ASSERT_TRUE(await(*loop_, reply));
  EXPECT_EQ(codeOf(reply), rpc::Code::InvalidArgument) << errorOf(reply);
  EXPECT_THAT(errorOf(reply),
              HasSubstr("message 2 of the stream is not a valid snow.rpc.v1.DispatchRequest"));
  EXPECT_EQ(parsed, 1);
  EXPECT_EQ(handlerSaw, rpc::Code::InvalidArgument);
}

TEST_F(ClientStreamTest, ANextThatRejectsCancelsTheCallWithItsError) {
  Source source{.count = 1, .hold = true};
  auto reply = uploadToHeld(source);
  ASSERT_NE(held_.stream, nullptr);
  EXPECT_NE(readOne(), nullptr);
  ASSERT_TRUE(awaitCondition(*loop_, [&] { return source.held.has_value(); }));
  source.held->reject(std::runtime_error("the build context vanished"));
  ASSERT_TRUE(await(*loop_, reply));
  EXPECT_EQ(errorOf(reply), "the build context vanished") << "next()'s own error, not wrapped";
  EXPECT_FALSE(rpcErrorOf(reply));
  EXPECT_EQ(source.asked, 2);
  EXPECT_TRUE(awaitCondition(*loop_, [&] { return held_.cancelled; }))
      << "the server's handler was not cancelled";
}

TEST_F(ClientStreamTest, ANextThatThrowsFailsTheUploadWithItsError) {
  addSummer();
  startServer("rpc.sock");
  auto reply = client().upload<pb::PingReply>(
      unixPeer("rpc.sock"), kUpload,
      []() -> Future<MessagePtr> { throw std::runtime_error("cannot open the context"); });
  ASSERT_TRUE(await(*loop_, reply));
  EXPECT_EQ(errorOf(reply), "cannot open the context");
}

TEST_F(ClientStreamTest, MessagesOverTheSizeLimitsAreResourceExhaustedNamingTheLimit) {
  addSummer();
  rpc::ServerOptions serverOptions;
  serverOptions.unixSocket = dir_.file("rpc.sock");
  serverOptions.maxMessageBytes = 2048;
  startServer(serverOptions);
  rpc::ClientOptions clientOptions;
  clientOptions.maxMessageBytes = 4096;
  client(clientOptions);
  Source small{.count = 3, .size = 1000};
  Source tooBigToSend{.count = 3, .size = 5000};
  Source tooBigForTheServer{.count = 3, .size = 3000};
  auto fits = upload(small);
  auto refusedHere = upload(tooBigToSend);
  auto refusedThere = upload(tooBigForTheServer);
  for (auto* reply : {&fits, &refusedHere, &refusedThere}) {
    ASSERT_TRUE(await(*loop_, *reply));
  }
  EXPECT_TRUE(fits.hasValue()) << errorOf(fits);
  EXPECT_EQ(codeOf(refusedHere), rpc::Code::ResourceExhausted) << errorOf(refusedHere);
  EXPECT_THAT(errorOf(refusedHere),
              HasSubstr("message 1 of the upload is 5003 bytes, over the client's limit of 4096 "
                        "bytes (ClientOptions::maxMessageBytes)"));
  EXPECT_EQ(tooBigToSend.asked, 1) << "nothing is asked for after the refused message";
  EXPECT_EQ(codeOf(refusedThere), rpc::Code::ResourceExhausted) << errorOf(refusedThere);
  EXPECT_THAT(errorOf(refusedThere), HasSubstr("larger than max (3003 vs. 2048)"));
}

// ---- Flow control -------------------------------------------------------------------------------

TEST_F(ClientStreamTest, ASlowReaderHoldsTheClientBack) {
  // Chunks as large as a build context's. The transport's windows and socket buffers take a few
  // MiB before the server reads (about 7 chunks here, measured); past that, next() waits for the
  // handler. Left alone, the client would have been asked for hundreds within the wait below.
  constexpr size_t kChunk = 1 << 20;
  constexpr int kAhead = 12;  // Chunks next() may run ahead of the handler's reads.
  Source source{.count = -1, .size = kChunk};
  auto reply = uploadToHeld(source);
  ASSERT_NE(held_.stream, nullptr);
  EXPECT_FALSE(loop_->runUntil([&] { return source.asked > kAhead; }, 300ms))
      << "asked for " << source.asked << " chunks while the handler read none";
  for (int read = 1; read <= 20; ++read) {
    const MessagePtr chunk = readOne();
    ASSERT_NE(chunk, nullptr);
    EXPECT_EQ(static_cast<const pb::PingRequest&>(*chunk).payload().substr(0, 6),
              fmt::format("{:06}", read - 1));
    EXPECT_LE(source.asked, read + kAhead) << "after " << read << " reads";
  }
  EXPECT_FALSE(loop_->runUntil([&] { return source.asked > 20 + kAhead; }, 200ms))
      << "asked for " << source.asked << " chunks while the handler read 20";
  EXPECT_GT(source.asked, 20) << "the client kept up with the reader";
  held_.answer->setValue(pingReply("enough"));
  ASSERT_TRUE(await(*loop_, reply));
  ASSERT_TRUE(reply.hasValue()) << errorOf(reply);
  EXPECT_EQ(reply.value()->payload(), "enough");
}

// ---- Cancellation, deadlines, shutdown ----------------------------------------------------------

TEST_F(ClientStreamTest, CancellingTheUploadRejectsTheServersPendingReadAndCancelsTheHandler) {
  Source source{.count = 3, .hold = true};
  auto reply = uploadToHeld(source);
  ASSERT_NE(held_.stream, nullptr);
  for (int i = 0; i < 3; ++i) {
    ASSERT_NE(readOne(), nullptr);
  }
  auto pending = held_.stream->read();
  ASSERT_TRUE(awaitCondition(*loop_, [&] { return source.held.has_value(); }));
  EXPECT_FALSE(pending.isReady());
  reply.cancel();
  ASSERT_TRUE(reply.isReady());
  EXPECT_THROW((void)reply.value(), Cancelled);
  EXPECT_TRUE(source.heldCancelled) << "next()'s pending future was not cancelled";
  ASSERT_TRUE(await(*loop_, pending));
  EXPECT_EQ(codeOf(pending), rpc::Code::Cancelled) << errorOf(pending);
  EXPECT_TRUE(awaitCondition(*loop_, [&] { return held_.cancelled; }));
  auto later = held_.stream->read();
  ASSERT_TRUE(await(*loop_, later));
  EXPECT_EQ(codeOf(later), rpc::Code::Cancelled) << "a read after the cancellation";
}

TEST_F(ClientStreamTest, AnUploadPastItsDeadlineIsDeadlineExceeded) {
  addHeld();
  startServer("rpc.sock");
  Source source{.count = 1, .hold = true};
  rpc::CallOptions options;
  options.timeout = 200ms;
  const auto start = loop_->now();
  auto reply = upload(source, std::move(options));
  ASSERT_TRUE(await(*loop_, reply));
  const Duration took = since(start);
  EXPECT_EQ(codeOf(reply), rpc::Code::DeadlineExceeded) << errorOf(reply);
  EXPECT_THAT(errorOf(reply),
              HasSubstr("DEADLINE_EXCEEDED: the upload did not finish within 200 ms (1 message "
                        "sent)"));
  EXPECT_GE(took, 190ms);
  EXPECT_LT(took, 2s);
  EXPECT_TRUE(source.heldCancelled);
  EXPECT_TRUE(awaitCondition(*loop_, [&] { return held_.cancelled; }));
}

TEST_F(ClientStreamTest, DestroyingTheClientRejectsTheUploadWithCancelled) {
  Source source{.count = 1, .hold = true};
  // Both sides must be in the call: a client destroyed before the server has started the handler
  // cancels a call the handler never sees, and there is nothing of the server's to check.
  auto reply = uploadToHeld(source);
  ASSERT_NE(held_.stream, nullptr);
  ASSERT_TRUE(awaitCondition(*loop_, [&] { return source.held.has_value(); }));
  client_.reset();
  ASSERT_TRUE(await(*loop_, reply));
  EXPECT_EQ(codeOf(reply), rpc::Code::Cancelled) << errorOf(reply);
  EXPECT_THAT(errorOf(reply), HasSubstr("the RPC client was shut down"));
  EXPECT_TRUE(source.heldCancelled);
  EXPECT_TRUE(awaitCondition(*loop_, [&] { return held_.cancelled; }));
}

TEST_F(ClientStreamTest, DestroyingTheServerRejectsAPendingRead) {
  Source source{.count = 1, .hold = true};
  auto reply = uploadToHeld(source);
  ASSERT_NE(held_.stream, nullptr);
  ASSERT_NE(readOne(), nullptr);
  auto pending = held_.stream->read();
  servers_.clear();
  ASSERT_TRUE(await(*loop_, pending));
  EXPECT_EQ(codeOf(pending), rpc::Code::Cancelled) << errorOf(pending);
  EXPECT_TRUE(held_.cancelled);
  ASSERT_TRUE(await(*loop_, reply));
  EXPECT_THAT(codeOf(reply), AnyOf(rpc::Code::Cancelled, rpc::Code::Unavailable)) << errorOf(reply);
}

// ---- Tracing and registration -------------------------------------------------------------------

TEST_F(ClientStreamTest, AnUploadIsAClientSpanAndAServerSpanUnderIt) {
  using namespace opentracing::mocktracer;
  auto* recorder = new InMemoryRecorder();
  MockTracerOptions tracerOptions;
  tracerOptions.recorder.reset(recorder);
  auto tracer = std::make_shared<MockTracer>(std::move(tracerOptions));
  const opentracing::SpanContext* handlerParent = nullptr;
  registrations_.push_back(services_.addClientStream<pb::PingRequest, pb::PingReply>(
      kUpload, [&](const rpc::CallContext& call, const rpc::ClientStreamPtr& stream) {
        handlerParent = call.traceParent();
        return readAll(stream, [](const pb::PingRequest&) {}).then([] { return pingReply(""); });
      }));
  startTraced(tracer);

  auto caller = tracer->StartSpan("caller");
  rpc::CallOptions options;
  options.traceParent = &caller->context();
  Source source{.count = 2};
  auto reply = upload(source, options);
  ASSERT_TRUE(await(*loop_, reply));
  ASSERT_TRUE(reply.hasValue()) << errorOf(reply);
  EXPECT_NE(handlerParent, nullptr);
  caller->Finish();
  const auto spans = recorder->spans();
  ASSERT_EQ(spans.size(), 3U);
  const SpanData* root = nullptr;
  std::vector<const SpanData*> calls;  // The client's and the server's, in either order.
  for (const auto& span : spans) {
    if (span.operation_name == "caller") {
      root = &span;
    } else if (span.operation_name == std::string(kUpload).substr(1)) {
      calls.push_back(&span);
    }
  }
  ASSERT_NE(root, nullptr);
  ASSERT_EQ(calls.size(), 2U);
  ASSERT_EQ(calls[0]->references.size(), 1U);
  ASSERT_EQ(calls[1]->references.size(), 1U);
  const bool clientFirst = calls[0]->references[0].span_id == root->span_context.span_id;
  const SpanData* clientSpan = clientFirst ? calls[0] : calls[1];
  const SpanData* serverSpan = clientFirst ? calls[1] : calls[0];
  EXPECT_EQ(clientSpan->references[0].span_id, root->span_context.span_id);
  EXPECT_EQ(serverSpan->references[0].span_id, clientSpan->span_context.span_id);
  EXPECT_EQ(serverSpan->span_context.trace_id, root->span_context.trace_id);
  EXPECT_EQ(serverSpan->tags.at("rpc.grpc.status_code"), opentracing::Value(0));
}

TEST_F(ClientStreamTest, AClientStreamHandlerNeedsAClientStreamingDeclaration) {
  // Ping is declared unary in node.proto.
  EXPECT_THAT(logicErrorOf([&] {
                (void)services_.addClientStream<pb::PingRequest, pb::PingReply>(
                    std::string(rpc::kPing),
                    [](const rpc::CallContext&, const rpc::ClientStreamPtr&) {
                      return makeReadyFuture<MessagePtr>(nullptr);
                    });
              }),
              HasSubstr("is not declared client-streaming"));
  EXPECT_EQ(services_.find(rpc::kPing), nullptr);
  auto registration = services_.addClientStream<pb::PingRequest, pb::PingReply>(
      kUpload, [](const rpc::CallContext&, const rpc::ClientStreamPtr&) -> Future<MessagePtr> {
        return makeReadyFuture<MessagePtr>(nullptr);
      });
  ASSERT_NE(services_.find(kUpload), nullptr);
  EXPECT_TRUE(services_.find(kUpload)->clientStream);
  EXPECT_FALSE(services_.find(kUpload)->unary);
}

}  // namespace
}  // namespace snow::testing
