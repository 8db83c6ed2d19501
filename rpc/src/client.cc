#include "snow/rpc/client.h"

#include <algorithm>
#include <cerrno>
#include <map>
#include <unordered_set>

#include <fmt/format.h>
#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>
#include <opentracing/propagation.h>
#include <spdlog/spdlog.h>

#include "snow/core/tracing.h"
#include "snow/posix/active.h"
#include "snow/rpc/v1/node.pb.h"

#include "call_span.h"
#include "completion_pump.h"
#include "grpc_glue.h"

namespace snow::rpc {
namespace {

using detail::CompletionOf;
using SystemTime = std::chrono::system_clock::time_point;

constexpr std::string_view kPingMethod = "/snow.rpc.v1.Node/Ping";

// Why gRPC would refuse this metadata entry, or empty. gRPC aborts the process when a call
// carries an illegal key or value (call_op_set.h asserts), so entries are checked first.
std::string checkMetadata(std::string_view key, std::string_view value) {
  const bool keyOk = !key.empty() && std::all_of(key.begin(), key.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.';
  });
  if (!keyOk) {
    return fmt::format("metadata key '{}' is not lower-case letters, digits, '-', '_' and '.'",
                       key);
  }
  const bool binary = key.ends_with("-bin");  // Any bytes: gRPC sends them base64-encoded.
  if (!binary &&
      !std::all_of(value.begin(), value.end(), [](char c) { return c >= 0x20 && c < 0x7f; })) {
    return fmt::format("the value of metadata key '{}' is not printable ASCII", key);
  }
  return "";
}

class MetadataWriter final : public opentracing::TextMapWriter {
 public:
  explicit MetadataWriter(grpc::ClientContext& context) : context_(context) {}
  opentracing::expected<void> Set(opentracing::string_view key,
                                  opentracing::string_view value) const override {
    std::string lower(key.data(), key.size());
    std::transform(lower.begin(), lower.end(), lower.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (!checkMetadata(lower, std::string_view(value.data(), value.size())).empty()) {
      return opentracing::make_unexpected(opentracing::invalid_carrier_error);
    }
    context_.AddMetadata(lower, std::string(value.data(), value.size()));
    return {};
  }

 private:
  grpc::ClientContext& context_;
};

}  // namespace

std::string checkPeerAddress(std::string_view address) {
  if (address.starts_with("unix:")) {
    return address.size() > 5 ? "" : "the unix socket path is empty";
  }
  const auto colon = address.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == address.size()) {
    return "expected unix:/path/to/socket or host:port";
  }
  const std::string_view port = address.substr(colon + 1);
  if (!std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return "the port is not a number";
  }
  return "";
}

namespace {

uint64_t drawSeed() {
  uint64_t seed = 0;
  if (posix::active().getrandom(&seed, sizeof seed, 0).errnum != 0 || seed == 0) {
    seed = 0x9e3779b97f4a7c15ULL;
  }
  return seed;
}

int64_t millis(Duration d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
}

}  // namespace

std::string_view healthName(Health health) noexcept {
  switch (health) {
    case Health::Up:
      return "up";
    case Health::Down:
      return "down";
    case Health::Unknown:
      break;
  }
  return "unknown";
}

class Client::Impl {
 public:
  class Call;
  class SingleReplyCall;
  class UnaryCall;
  class StreamCall;
  class UploadCall;

  struct Peer {
    std::string address;
    std::vector<std::shared_ptr<grpc::Channel>> channels;
    std::vector<std::unique_ptr<grpc::GenericStub>> stubs;
    size_t next = 0;
    // Health, when monitored.
    bool monitored = false;
    PeerHealth health;
    uint32_t failures = 0;
    TimerPtr timer;
    bool pinging = false;

    grpc::GenericStub& stub() { return *stubs[next++ % stubs.size()]; }
  };

  Impl(Dispatcher& loop, ClientOptions options)
      : loop_(loop),
        options_(std::move(options)),
        tracer_(options_.tracer ? options_.tracer : tracing::noopTracer()),
        injectTraces_(!tracing::isNoop(*tracer_)),
        random_(options_.seed != 0 ? options_.seed : drawSeed()) {
    if (options_.poolSize == 0) {
      options_.poolSize = 1;
    }
    detail::routeGrpcLogs();
  }
  ~Impl();

  Peer& peer(std::string_view address);
  // peer(), or nullptr with `error` set when its channels cannot be made (unreadable TLS files).
  Peer* peerOrNull(std::string_view address, std::string& error);

  // What call(), stream() and upload() check and do before anything is sent: the peer's channels
  // and the serialised request (when there is one), or the error the call rejects with.
  struct Prepared {
    Peer* peer = nullptr;
    grpc::ByteBuffer request;
    std::optional<RpcError> error;
  };
  Prepared prepare(std::string_view peer, std::string_view method,
                   const google::protobuf::Message* request, const CallOptions& options);
  // The call's span (call_span.h): child of options.traceParent or the current event's span.
  std::unique_ptr<opentracing::Span> startSpan(std::string_view method, std::string_view peer,
                                               const CallOptions& options) const;
  // The caller's metadata, and the trace context of `span` (when the call is traced).
  void addMetadata(grpc::ClientContext& context, const CallOptions& options,
                   const opentracing::Span* span) const;
  SystemTime deadlineOf(const CallOptions& options, bool forStream) const;
  uint64_t nextSeed() { return random_(); }
  void forget(Call* call);
  void ping(Peer& peer);
  void setHealth(Peer& peer, Health health, std::string error);

  Dispatcher& loop_;
  ClientOptions options_;
  std::shared_ptr<opentracing::Tracer> tracer_;
  bool injectTraces_;
  std::mt19937_64 random_;
  grpc::CompletionQueue queue_;
  std::unique_ptr<detail::CompletionPump> pump_;
  std::map<std::string, std::unique_ptr<Peer>, std::less<>> peers_;
  std::vector<Peer*> monitoredOrder_;
  std::unordered_set<Call*> calls_;
  HealthCallback onHealth_;
  bool closing_ = false;
  // Continuations that may run after the client is gone (a ping's) check this first.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

class Client::Impl::Call {
 public:
  virtual ~Call() = default;
  virtual void cancelForShutdown() = 0;
};

// A call whose caller waits for one reply (unary, upload): what it needs to settle that wait.
class Client::Impl::SingleReplyCall : public Call {
 protected:
  SingleReplyCall(Impl& client, Peer& peer, std::string_view method, const Message& replyPrototype,
                  CallOptions options)
      : client_(client),
        peer_(peer),
        method_(method),
        replyPrototype_(replyPrototype),
        options_(std::move(options)),
        promise_(client.loop_) {}

  // Fulfils the caller's future with `buffer` parsed as the reply, or fails the call with
  // INTERNAL when it is not one.
  void settle(grpc::ByteBuffer& buffer) {
    std::shared_ptr<Message> reply(replyPrototype_.New());
    if (detail::parse(buffer, *reply)) {
      detail::endCallSpan(span_, Code::Ok, "");
      promise_.setValue(std::move(reply));
    } else {
      fail(Code::Internal, fmt::format("the reply is not a valid {}", reply->GetTypeName()));
    }
  }

  void fail(Code code, std::string_view message) {
    detail::endCallSpan(span_, code, message);
    promise_.reject(RpcError(code, message, method_, peer_.address));
  }

  Impl& client_;
  Peer& peer_;
  std::string method_;
  const Message& replyPrototype_;
  CallOptions options_;
  Promise<MessagePtr> promise_;
  std::unique_ptr<opentracing::Span> span_;  // Null when not traced.
};

// One logical unary call: one attempt at a time, retried as status.h allows.
class Client::Impl::UnaryCall final : public SingleReplyCall {
 public:
  UnaryCall(Impl& client, Peer& peer, std::string_view method, const grpc::ByteBuffer& request,
            const Message& replyPrototype, CallOptions options)
      : SingleReplyCall(client, peer, method, replyPrototype, std::move(options)),
        request_(request),  // A reference-counted copy.
        deadline_(client.deadlineOf(options_, false)),
        backoff_(client.options_.backoff, client.nextSeed()) {}

  Future<MessagePtr> start() {
    Future<MessagePtr> future = promise_.future();
    promise_.onCancel([this] {
      if (attempting_) {
        context_->TryCancel();  // Its completion follows and frees the call.
      } else {
        // Waiting to retry: nothing is in flight, the call goes now. Settle the promise first:
        // destroying it unsettled would reject the caller's future with BrokenPromise.
        retry_.reset();
        detail::endCallSpan(span_, Code::Cancelled, "cancelled by the caller");
        promise_.reject(Cancelled());
        client_.forget(this);
      }
    });
    span_ = client_.startSpan(method_, peer_.address, options_);
    attempt();
    return future;
  }

  void markInternal() { internal_ = true; }

  void cancelForShutdown() override {
    if (attempting_) {
      context_->TryCancel();
    }
    if (internal_ && !promise_.isSettled()) {
      // A health ping: nobody will read it once the client is gone, so no rejection to report.
      promise_.setValue(MessagePtr());
    }
    if (!promise_.isSettled()) {
      fail(Code::Cancelled, "the RPC client was shut down");
    }
  }

 private:
  void attempt() {
    context_ = std::make_unique<grpc::ClientContext>();
    context_->set_deadline(deadline_);
    client_.addMetadata(*context_, options_, span_.get());
    reader_ = peer_.stub().PrepareUnaryCall(context_.get(), method_, request_, &client_.queue_);
    reader_->StartCall();
    reader_->Finish(&response_, &status_, &finished_);
    attempting_ = true;
    ++attempts_;
  }

  void onFinished(bool /*ok*/) {
    attempting_ = false;
    if (promise_.isSettled()) {  // Cancelled by the caller, or the client shut down.
      detail::endCallSpan(span_, Code::Cancelled, "cancelled by the caller");
      client_.forget(this);
      return;
    }
    if (status_.ok()) {
      settle(response_);
      client_.forget(this);
      return;
    }
    const Code code = detail::codeOf(status_);
    if (retryable(code) && options_.idempotent) {
      const Duration delay = backoff_.next();
      const auto now = std::chrono::system_clock::now();
      if (now + delay < deadline_) {
        lastError_ = fmt::format("{}: {}", codeName(code), status_.error_message());
        if (span_) {
          span_->Log({{"event", "retry"}, {"attempt", attempts_ + 1}, {"message", lastError_}});
        }
        if (!retry_) {  // Made once and re-armed: a timer must not free itself as it fires.
          retry_ = client_.loop_.createTimer([this] { attempt(); });
        }
        retry_->enable(delay);
        return;
      }
    }
    std::string message = status_.error_message();
    if (code == Code::DeadlineExceeded) {
      message = fmt::format("no answer within {} ms ({} attempt{}{})",
                            millis(options_.timeout.count() != 0 ? options_.timeout
                                                                 : client_.options_.defaultTimeout),
                            attempts_, attempts_ == 1 ? "" : "s",
                            lastError_.empty() ? "" : "; last error " + lastError_);
    } else if (attempts_ > 1) {
      message += fmt::format(" (after {} attempts)", attempts_);
    }
    fail(code, message);
    client_.forget(this);
  }

  grpc::ByteBuffer request_;
  SystemTime deadline_;
  Backoff backoff_;

  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> reader_;
  grpc::ByteBuffer response_;
  grpc::Status status_;
  TimerPtr retry_;
  std::string lastError_;
  int attempts_ = 0;
  bool attempting_ = false;
  bool internal_ = false;  // The client's own (a health ping), not a caller's.
  CompletionOf<UnaryCall, &UnaryCall::onFinished> finished_{this};
};

// A server-streaming call: start, write the request, half-close, read until the end, finish.
class Client::Impl::StreamCall final : public Call {
 public:
  StreamCall(Impl& client, Peer& peer, std::string_view method, const grpc::ByteBuffer& request,
             const Message& replyPrototype, UniqueFunction<void(MessagePtr)> onMessage,
             CallOptions options)
      : client_(client),
        peer_(peer),
        method_(method),
        request_(request),  // A reference-counted copy.
        replyPrototype_(replyPrototype),
        onMessage_(std::move(onMessage)),
        options_(std::move(options)),
        promise_(client.loop_) {}

  Future<void> start() {
    Future<void> future = promise_.future();
    promise_.onCancel([this] { context_.TryCancel(); });
    if (options_.timeout.count() != 0) {
      context_.set_deadline(client_.deadlineOf(options_, true));
    }
    span_ = client_.startSpan(method_, peer_.address, options_);
    client_.addMetadata(context_, options_, span_.get());
    stream_ = peer_.stub().PrepareCall(&context_, method_, &client_.queue_);
    stream_->StartCall(&started_);
    ++pending_;
    return future;
  }

  void cancelForShutdown() override {
    context_.TryCancel();
    if (!promise_.isSettled()) {
      detail::endCallSpan(span_, Code::Cancelled, "the RPC client was shut down");
      promise_.reject(
          RpcError(Code::Cancelled, "the RPC client was shut down", method_, peer_.address));
    }
  }

 private:
  void onStarted(bool ok) {
    --pending_;
    if (!ok) {
      finish();
      return;
    }
    stream_->Write(request_, &wrote_);
    ++pending_;
  }
  void onWrote(bool ok) {
    --pending_;
    if (!ok) {
      finish();
      return;
    }
    stream_->WritesDone(&halfClosed_);
    ++pending_;
  }
  void onHalfClosed(bool ok) {
    --pending_;
    if (!ok) {
      finish();
      return;
    }
    readNext();
  }
  void readNext() {
    stream_->Read(&buffer_, &read_);
    ++pending_;
  }
  void onRead(bool ok) {
    --pending_;
    if (!ok) {
      finish();
      return;
    }
    std::shared_ptr<Message> message(replyPrototype_.New());
    if (!detail::parse(buffer_, *message)) {
      context_.TryCancel();
      protocolError_ = fmt::format("a streamed message is not a valid {}", message->GetTypeName());
      finish();
      return;
    }
    if (!promise_.isSettled() && onMessage_) {
      onMessage_(std::move(message));
    }
    readNext();
  }
  void finish() {
    stream_->Finish(&status_, &finished_);
    ++pending_;
  }
  void onFinished(bool /*ok*/) {
    --pending_;
    if (!promise_.isSettled()) {
      if (!protocolError_.empty()) {
        detail::endCallSpan(span_, Code::Internal, protocolError_);
        promise_.reject(RpcError(Code::Internal, protocolError_, method_, peer_.address));
      } else if (status_.ok()) {
        detail::endCallSpan(span_, Code::Ok, "");
        promise_.setValue();
      } else {
        detail::endCallSpan(span_, detail::codeOf(status_), status_.error_message());
        promise_.reject(
            RpcError(detail::codeOf(status_), status_.error_message(), method_, peer_.address));
      }
    }
    client_.forget(this);
  }

  Impl& client_;
  Peer& peer_;
  std::string method_;
  grpc::ByteBuffer request_;
  const Message& replyPrototype_;
  UniqueFunction<void(MessagePtr)> onMessage_;
  CallOptions options_;
  Promise<void> promise_;
  std::unique_ptr<opentracing::Span> span_;  // Null when not traced.
  grpc::ClientContext context_;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> stream_;
  grpc::ByteBuffer buffer_;
  grpc::Status status_;
  std::string protocolError_;
  int pending_ = 0;
  CompletionOf<StreamCall, &StreamCall::onStarted> started_{this};
  CompletionOf<StreamCall, &StreamCall::onWrote> wrote_{this};
  CompletionOf<StreamCall, &StreamCall::onHalfClosed> halfClosed_{this};
  CompletionOf<StreamCall, &StreamCall::onRead> read_{this};
  CompletionOf<StreamCall, &StreamCall::onFinished> finished_{this};
};

// A client-streaming call. gRPC allows one read and one write in flight, so two lanes run at
// once: the writes of what next() produces, one at a time, then WritesDone; and, from the start,
// the read of the reply, which also completes when the server ends the call early (so the
// writes stop without waiting for one to fail). Whatever stops the call (the reply, the server's
// end, an error here, the caller), Finish is asked once neither lane nor next() is busy, and its
// status and what stopped the call decide the outcome.
class Client::Impl::UploadCall final : public SingleReplyCall {
 public:
  UploadCall(Impl& client, Peer& peer, std::string_view method, const Message& replyPrototype,
             UniqueFunction<Future<MessagePtr>()> next, CallOptions options)
      : SingleReplyCall(client, peer, method, replyPrototype, std::move(options)),
        next_(std::move(next)) {}

  Future<MessagePtr> start() {
    Future<MessagePtr> future = promise_.future();
    promise_.onCancel([this] { stop(); });
    context_.set_deadline(client_.deadlineOf(options_, false));
    span_ = client_.startSpan(method_, peer_.address, options_);
    client_.addMetadata(context_, options_, span_.get());
    stream_ = peer_.stub().PrepareCall(&context_, method_, &client_.queue_);
    starting_ = true;
    stream_->StartCall(&started_);
    return future;
  }

  void cancelForShutdown() override {
    stop();
    if (!promise_.isSettled()) {
      fail(Code::Cancelled, "the RPC client was shut down");
    }
  }

 private:
  // Gives up from this side: nothing more is sent, and gRPC ends the lanes in flight.
  void stop() {
    stopping_ = true;
    context_.TryCancel();
    // Not valid while next() itself runs. Once cancelled, its continuation still runs and
    // finishes the call.
    if (producing_ && production_.valid()) {
      production_.cancel();
    }
    finishWhenQuiet();
  }

  void onStarted(bool ok) {
    starting_ = false;
    if (!ok || stopping_) {
      stopping_ = true;
      finishWhenQuiet();
      return;
    }
    reading_ = true;
    stream_->Read(&reply_, &read_);
    produce();
  }

  void produce() {
    producing_ = true;
    Future<MessagePtr> produced;
    try {
      produced = next_();
      if (!produced.valid()) {
        throw std::logic_error("the upload's next() returned an empty future");
      }
    } catch (...) {
      produced = makeErrorFuture<MessagePtr>(std::current_exception());
    }
    production_ = produced.whenSettled(
        [this, alive = std::weak_ptr<bool>(alive_)](const Future<MessagePtr>& message) {
          if (alive.expired()) {  // The client was destroyed meanwhile.
            (void)message.error();
            return;
          }
          production_.detach();
          onProduced(message);
        });
    if (stopping_) {  // next() cancelled the call itself.
      production_.cancel();
    }
  }

  void onProduced(const Future<MessagePtr>& produced) {
    producing_ = false;
    if (stopping_) {
      (void)produced.error();
      finishWhenQuiet();
      return;
    }
    if (produced.hasError()) {
      producerError_ = produced.error();
      stop();
      return;
    }
    const MessagePtr& message = produced.value();
    if (message == nullptr) {
      writing_ = true;
      stream_->WritesDone(&halfClosed_);
      return;
    }
    buffer_.Clear();  // gRPC serialises only into an empty buffer.
    if (!detail::serialize(*message, buffer_)) {
      failHere(Code::InvalidArgument,
               fmt::format("message {} of the upload could not be serialised", sent_ + 1));
      return;
    }
    // gRPC would refuse it too, but with a status that names no limit of ours.
    if (buffer_.Length() > static_cast<size_t>(client_.options_.maxMessageBytes)) {
      failHere(Code::ResourceExhausted,
               fmt::format("message {} of the upload is {} bytes, over the client's limit of {} "
                           "bytes (ClientOptions::maxMessageBytes)",
                           sent_ + 1, buffer_.Length(), client_.options_.maxMessageBytes));
      return;
    }
    writing_ = true;
    ++sent_;
    stream_->Write(buffer_, &wrote_);
  }

  void failHere(Code code, std::string_view message) {
    localError_ = RpcError(code, message, method_, peer_.address);
    stop();
  }

  void onWrote(bool ok) {
    writing_ = false;
    if (!ok) {  // The call ended (the server answered, or it broke); the read lane sees it too.
      stopping_ = true;
    }
    if (stopping_) {
      finishWhenQuiet();
      return;
    }
    produce();
  }

  void onHalfClosed(bool /*ok*/) {
    writing_ = false;
    stopping_ = true;  // Sent all, or the call ended: either way the reply (or its end) follows.
    finishWhenQuiet();
  }

  void onRead(bool ok) {
    reading_ = false;
    gotReply_ = ok;
    // The server answered (or the call ended): what is still to send would be discarded.
    stopping_ = true;
    if (producing_) {
      production_.cancel();
    }
    finishWhenQuiet();
  }

  void finishWhenQuiet() {
    if (finishing_ || starting_ || reading_ || writing_ || producing_) {
      return;
    }
    finishing_ = true;
    stream_->Finish(&status_, &finished_);
  }

  void onFinished(bool /*ok*/) {
    if (promise_.isSettled()) {  // Cancelled by the caller, or the client shut down.
      detail::endCallSpan(span_, Code::Cancelled, "cancelled by the caller");
    } else if (producerError_) {
      const grpc::Status status = detail::statusOf(producerError_);
      detail::endCallSpan(span_, detail::codeOf(status), status.error_message());
      promise_.setError(producerError_);
    } else if (localError_) {
      detail::endCallSpan(span_, localError_->code(), localError_->statusMessage());
      promise_.reject(*localError_);
    } else if (!status_.ok()) {
      const Code code = detail::codeOf(status_);
      std::string message = status_.error_message();
      if (code == Code::DeadlineExceeded) {
        message =
            fmt::format("the upload did not finish within {} ms ({} message{} sent)",
                        millis(options_.timeout.count() != 0 ? options_.timeout
                                                             : client_.options_.defaultTimeout),
                        sent_, sent_ == 1 ? "" : "s");
      }
      fail(code, message);
    } else if (!gotReply_) {
      fail(Code::Internal, "the server ended the upload with OK but sent no reply");
    } else {
      settle(reply_);
    }
    client_.forget(this);
  }

  UniqueFunction<Future<MessagePtr>()> next_;

  grpc::ClientContext context_;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> stream_;
  grpc::ByteBuffer buffer_;  // The message being written.
  grpc::ByteBuffer reply_;
  grpc::Status status_;
  Future<void> production_;  // next()'s future, while it is pending.
  std::exception_ptr producerError_;
  std::optional<RpcError> localError_;
  uint64_t sent_ = 0;
  bool starting_ = false;
  bool reading_ = false;
  bool writing_ = false;    // A Write or WritesDone.
  bool producing_ = false;  // Waiting for next()'s future.
  bool stopping_ = false;   // No more next() nor writes.
  bool finishing_ = false;
  bool gotReply_ = false;
  // production_'s continuation checks it: the client may delete this call before it runs.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  CompletionOf<UploadCall, &UploadCall::onStarted> started_{this};
  CompletionOf<UploadCall, &UploadCall::onWrote> wrote_{this};
  CompletionOf<UploadCall, &UploadCall::onHalfClosed> halfClosed_{this};
  CompletionOf<UploadCall, &UploadCall::onRead> read_{this};
  CompletionOf<UploadCall, &UploadCall::onFinished> finished_{this};
};

// ---- Impl --------------------------------------------------------------------------------------

Client::Impl::~Impl() {
  closing_ = true;
  for (auto& [address, peer] : peers_) {
    peer->timer.reset();
  }
  // Copy: cancelling may not free a call (its completion is still to come), but be safe.
  const std::vector<Call*> calls(calls_.begin(), calls_.end());
  for (Call* call : calls) {
    call->cancelForShutdown();
  }
  if (pump_) {
    pump_->stopNow();  // Every cancelled operation completes; then the thread ends.
  }
  for (Call* call : calls_) {
    delete call;
  }
  calls_.clear();
}

void Client::Impl::forget(Call* call) {
  if (calls_.erase(call) != 0) {
    delete call;
  }
}

Client::Impl::Peer& Client::Impl::peer(std::string_view address) {
  if (auto it = peers_.find(address); it != peers_.end()) {
    return *it->second;
  }
  // The pump starts with the first peer, which every call needs. Not before: a thread idle in
  // CompletionQueue::Next() is not free. gRPC passes the polling role around every such thread of
  // the process, so it would be woken for each call the node's server serves.
  if (!pump_) {
    pump_ = std::make_unique<detail::CompletionPump>(loop_, queue_, "rpc-client");
  }
  auto peer = std::make_unique<Peer>();
  peer->address = std::string(address);
  peer->health.address = peer->address;
  grpc::ChannelArguments args;
  // Each channel of the pool gets its own connection rather than sharing one.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  detail::setReconnect(args, options_.backoff);
  // Dead peers are found by keepalive pings on idle streams too (a watch that hears nothing).
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  // gRPC stops pinging after 2 pings without data by default: a quiet watch stream to a frozen
  // peer would then hang for ever.
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // Retries are ours (status.h), so that they follow our rules and show in our errors.
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  args.SetMaxReceiveMessageSize(options_.maxMessageBytes);
  args.SetMaxSendMessageSize(options_.maxMessageBytes);
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (options_.tls && !address.starts_with("unix:")) {
    grpc::SslCredentialsOptions ssl;
    posix::Posix& os = posix::active();
    if (!options_.tls->caFile.empty()) {
      ssl.pem_root_certs = readPemFile(os, options_.tls->caFile, "TLS CA bundle");
    }
    if (!options_.tls->certFile.empty()) {
      ssl.pem_cert_chain = readPemFile(os, options_.tls->certFile, "TLS certificate");
      ssl.pem_private_key = readPemFile(os, options_.tls->keyFile, "TLS key");
    }
    if (!options_.tls->serverName.empty()) {
      args.SetSslTargetNameOverride(options_.tls->serverName);
    }
    credentials = grpc::SslCredentials(ssl);
  }
  for (uint32_t i = 0; i < options_.poolSize; ++i) {
    auto channel = grpc::CreateCustomChannel(peer->address, credentials, args);
    peer->stubs.push_back(std::make_unique<grpc::GenericStub>(channel));
    peer->channels.push_back(std::move(channel));
  }
  Peer& result = *peer;
  peers_.emplace(peer->address, std::move(peer));
  return result;
}

Client::Impl::Peer* Client::Impl::peerOrNull(std::string_view address, std::string& error) {
  try {
    return &peer(address);
  } catch (const std::exception& e) {
    error = e.what();
    return nullptr;
  }
}

std::unique_ptr<opentracing::Span> Client::Impl::startSpan(std::string_view method,
                                                           std::string_view peer,
                                                           const CallOptions& options) const {
  if (!injectTraces_) {
    return nullptr;
  }
  const opentracing::SpanContext* parent = options.traceParent;
  if (parent == nullptr && EventTree::current() != nullptr) {
    parent = &EventTree::current()->span().context();
  }
  return detail::startCallSpan(*tracer_, detail::Side::Client, method, peer, parent);
}

void Client::Impl::addMetadata(grpc::ClientContext& context, const CallOptions& options,
                               const opentracing::Span* span) const {
  for (const auto& [key, value] : options.metadata) {
    context.AddMetadata(key, value);
  }
  if (span != nullptr) {
    MetadataWriter writer(context);
    (void)tracer_->Inject(span->context(), writer);
  }
}

SystemTime Client::Impl::deadlineOf(const CallOptions& options, bool forStream) const {
  const Duration timeout = options.timeout.count() != 0 ? options.timeout : options_.defaultTimeout;
  (void)forStream;
  return std::chrono::system_clock::now() +
         std::chrono::duration_cast<std::chrono::system_clock::duration>(timeout);
}

void Client::Impl::setHealth(Peer& peer, Health health, std::string error) {
  peer.health.lastError = std::move(error);
  if (peer.health.health == health) {
    return;
  }
  peer.health.health = health;
  peer.health.since = std::chrono::system_clock::now();
  if (onHealth_) {
    onHealth_(peer.health);
  }
}

void Client::Impl::ping(Peer& peer) {
  if (peer.pinging || closing_) {
    return;
  }
  peer.pinging = true;
  snow::rpc::v1::PingRequest request;
  grpc::ByteBuffer buffer;
  detail::serialize(request, buffer);
  CallOptions options;
  options.timeout = options_.health.timeout;
  options.idempotent = false;  // One ping is one probe; the next interval is the retry.
  auto* call = new UnaryCall(*this, peer, kPingMethod, buffer,
                             snow::rpc::v1::PingReply::default_instance(), std::move(options));
  call->markInternal();
  calls_.insert(call);
  const MonotonicTime sent = loop_.now();
  call->start()
      .whenSettled([this, &peer, sent,
                    alive = std::weak_ptr<bool>(alive_)](const Future<MessagePtr>& reply) {
        if (alive.expired()) {
          (void)reply.error();
          return;
        }
        peer.pinging = false;
        if (reply.hasValue()) {
          peer.failures = 0;
          peer.health.roundTrip = loop_.now() - sent;
          setHealth(peer, Health::Up, "");
        } else {
          const std::string why = describe(reply.error());
          if (++peer.failures >= std::max<uint32_t>(options_.health.failures, 1)) {
            setHealth(peer, Health::Down, why);
          } else {
            peer.health.lastError = why;
          }
        }
        if (peer.timer) {
          peer.timer->enable(options_.health.interval);
        }
      })
      .detach();
}

// ---- Client ------------------------------------------------------------------------------------

Client::Client(Dispatcher& loop, ClientOptions options)
    : impl_(std::make_unique<Impl>(loop, std::move(options))) {}

Client::~Client() = default;

const ClientOptions& Client::options() const noexcept {
  return impl_->options_;
}

Client::Impl::Prepared Client::Impl::prepare(std::string_view peer, std::string_view method,
                                             const google::protobuf::Message* request,
                                             const CallOptions& options) {
  Prepared out;
  auto fail = [&](Code code, std::string_view why) {
    out.error = RpcError(code, why, method, peer);
    return std::move(out);
  };
  if (std::string why = checkPeerAddress(peer); !why.empty()) {
    return fail(Code::InvalidArgument, fmt::format("bad peer address: {}", why));
  }
  for (const auto& [key, value] : options.metadata) {
    if (std::string why = checkMetadata(key, value); !why.empty()) {
      return fail(Code::InvalidArgument, why);
    }
  }
  if (request != nullptr && !detail::serialize(*request, out.request)) {
    return fail(Code::InvalidArgument, "the request could not be serialised");
  }
  std::string error;
  out.peer = peerOrNull(peer, error);
  if (out.peer == nullptr) {  // Its TLS files could not be read.
    return fail(Code::FailedPrecondition, error);
  }
  return out;
}

Future<MessagePtr> Client::call(std::string_view peer, std::string_view method,
                                const google::protobuf::Message& request,
                                const google::protobuf::Message& replyPrototype,
                                CallOptions options) {
  Impl::Prepared prepared = impl_->prepare(peer, method, &request, options);
  if (prepared.error) {
    return makeErrorFuture<MessagePtr>(std::move(*prepared.error));
  }
  auto* call = new Impl::UnaryCall(*impl_, *prepared.peer, method, prepared.request, replyPrototype,
                                   std::move(options));
  impl_->calls_.insert(call);
  return call->start();
}

Future<void> Client::stream(std::string_view peer, std::string_view method,
                            const google::protobuf::Message& request,
                            const google::protobuf::Message& replyPrototype,
                            UniqueFunction<void(MessagePtr)> onMessage, CallOptions options) {
  Impl::Prepared prepared = impl_->prepare(peer, method, &request, options);
  if (prepared.error) {
    return makeErrorFuture<void>(std::move(*prepared.error));
  }
  auto* call = new Impl::StreamCall(*impl_, *prepared.peer, method, prepared.request,
                                    replyPrototype, std::move(onMessage), std::move(options));
  impl_->calls_.insert(call);
  return call->start();
}

Future<MessagePtr> Client::upload(std::string_view peer, std::string_view method,
                                  const google::protobuf::Message& replyPrototype,
                                  UniqueFunction<Future<MessagePtr>()> next, CallOptions options) {
  Impl::Prepared prepared = impl_->prepare(peer, method, nullptr, options);
  if (prepared.error) {
    return makeErrorFuture<MessagePtr>(std::move(*prepared.error));
  }
  if (!next) {
    return makeErrorFuture<MessagePtr>(
        RpcError(Code::InvalidArgument, "the upload has no next()", method, peer));
  }
  auto* call = new Impl::UploadCall(*impl_, *prepared.peer, method, replyPrototype, std::move(next),
                                    std::move(options));
  impl_->calls_.insert(call);
  return call->start();
}

void Client::monitor(std::string_view address) {
  if (std::string why = checkPeerAddress(address); !why.empty()) {
    throw std::invalid_argument(fmt::format("cannot monitor peer {}: {}", address, why));
  }
  Impl::Peer& peer = impl_->peer(address);
  if (peer.monitored) {
    return;
  }
  peer.monitored = true;
  impl_->monitoredOrder_.push_back(&peer);
  Impl* impl = impl_.get();
  peer.timer = impl_->loop_.createTimer([impl, &peer] { impl->ping(peer); });
  impl->ping(peer);
}

void Client::stopMonitoring() {
  for (Impl::Peer* peer : impl_->monitoredOrder_) {
    peer->timer.reset();
    peer->monitored = false;
  }
  impl_->monitoredOrder_.clear();
}

void Client::onHealth(HealthCallback callback) {
  impl_->onHealth_ = std::move(callback);
}

std::vector<PeerHealth> Client::health() const {
  std::vector<PeerHealth> out;
  out.reserve(impl_->monitoredOrder_.size());
  for (const Impl::Peer* peer : impl_->monitoredOrder_) {
    out.push_back(peer->health);
  }
  return out;
}

}  // namespace snow::rpc
