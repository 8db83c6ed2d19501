#include "snow/rpc/server.h"

#include <cerrno>
#include <deque>
#include <thread>
#include <unordered_set>
#include <utility>

#include <fcntl.h>
#include <fmt/format.h>
#include <grpc/grpc.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>
#include <opentracing/propagation.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "snow/core/net.h"
#include "snow/core/tracing.h"
#include "snow/posix/checked_posix.h"
#include "snow/posix/file_descriptor.h"
#include "snow/posix/files.h"

#include "call_span.h"
#include "completion_pump.h"
#include "grpc_glue.h"

namespace snow::rpc {
namespace {

using detail::CompletionOf;

// Calls requested from gRPC ahead of time, so that a burst of new calls does not wait for the
// loop to ask for each.
constexpr int kPrepostedCalls = 16;

class MetadataReader final : public opentracing::TextMapReader {
 public:
  explicit MetadataReader(const std::multimap<grpc::string_ref, grpc::string_ref>& metadata)
      : metadata_(metadata) {}
  opentracing::expected<void> ForeachKey(
      std::function<opentracing::expected<void>(opentracing::string_view, opentracing::string_view)>
          f) const override {
    for (const auto& [key, value] : metadata_) {
      auto result = f(opentracing::string_view(key.data(), key.size()),
                      opentracing::string_view(value.data(), value.size()));
      if (!result) {
        return result;
      }
    }
    return {};
  }

 private:
  const std::multimap<grpc::string_ref, grpc::string_ref>& metadata_;
};

}  // namespace

class Server::Impl {
 public:
  class Call;
  class Stream;
  class Reader;

  Impl(Dispatcher& loop, Services& services, posix::Posix& os, ServerOptions options)
      : loop_(loop),
        services_(services),
        os_(os),
        options_(std::move(options)),
        tracer_(options_.tracer ? options_.tracer : tracing::noopTracer()),
        extractTraces_(!tracing::isNoop(*tracer_)) {}
  ~Impl();

  void start();
  Future<void> stop(Duration grace);
  void requestCall();
  void forget(Call* call);

  Dispatcher& loop_;
  Services& services_;
  posix::Posix& os_;
  ServerOptions options_;
  std::shared_ptr<opentracing::Tracer> tracer_;
  bool extractTraces_;
  grpc::AsyncGenericService generic_;
  std::unique_ptr<grpc::ServerCompletionQueue> queue_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<detail::CompletionPump> pump_;
  std::unordered_set<Call*> calls_;
  std::vector<std::string> endpoints_;
  std::string socketPath_;  // The unix socket file we created, to remove at stop.
  int tcpPort_ = 0;
  bool accepting_ = false;
  std::thread shutdownThread_;
  // stop(): resolved when the last call object is gone (forget()).
  std::unique_ptr<Promise<void>> callsGone_;
  // stop()'s continuations check it: the server may be destroyed before stop() resolved.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);

 private:
  void prepareUnixSocket(const std::string& path);
  void removeUnixSocket();
  void deleteCalls();
};

// The server side of one stream: queued messages, written one at a time.
class Server::Impl::Stream final : public ServerStream {
 public:
  explicit Stream(Call* call) : call_(call) {}
  bool write(const google::protobuf::Message& message) override;
  [[nodiscard]] uint64_t dropped() const override { return dropped_; }
  [[nodiscard]] Future<void> closed() override;

  void detach() { call_ = nullptr; }
  void close() {
    if (!isClosed_) {
      isClosed_ = true;
      if (closedPromise_) {
        closedPromise_->setValue();
      }
    }
  }

  Call* call_;
  std::deque<grpc::ByteBuffer> queue_;
  uint64_t dropped_ = 0;
  bool isClosed_ = false;
  std::unique_ptr<Promise<void>> closedPromise_;
};

// The server side of a client stream. A gRPC read is started only by read(), at most one at a
// time; what it brings goes to the read's promise, or waits in `ready_` when the handler
// cancelled that read's future. The end of the stream and errors are kept, so every later read
// answers the same (gRPC allows no read after a failed one).
class Server::Impl::Reader final : public ClientStream {
 public:
  Reader(Call* call, const Message& prototype) : call_(call), prototype_(prototype) {}
  [[nodiscard]] Future<MessagePtr> read() override;

  // What one gRPC read brought: a message in `buffer` when `ok`; else the end of the stream, or
  // the call's failure when `failed` (gRPC tells the two apart, see Call::failedBeforeEnd()).
  void arrived(bool ok, bool failed, grpc::ByteBuffer& buffer);
  // This read and every later one reject with `error` (the first error given stays).
  void fail(const std::exception_ptr& error);
  void detach() {
    call_ = nullptr;
    fail(std::make_exception_ptr(RpcError(Code::Cancelled, "the call has ended")));
  }

  Call* call_;
  const Message& prototype_;
  uint64_t received_ = 0;  // Messages parsed, to name the one that is not.
  bool inFlight_ = false;  // A gRPC read is started and not completed.
  bool ended_ = false;     // The client half-closed.
  std::exception_ptr error_;
  MessagePtr ready_;  // Arrived after its read's future was cancelled; the next read's.
  std::unique_ptr<Promise<MessagePtr>> waiter_;
};

// One call, from RequestCall to the done notification. Deletes itself when nothing is pending:
// not gRPC's operations, not the handler.
class Server::Impl::Call final : public CallContext {
 public:
  explicit Call(Impl& server) : server_(server), stream_(&context_) {}
  ~Call() override {
    if (streamState_) {
      streamState_->detach();
      streamState_->close();
    }
    if (reader_) {
      reader_->detach();
    }
    // Destroyed with its handler still working (the server was destroyed without stop()): the
    // handler is cancelled, as stop() would have. Its continuation finds alive_ gone.
    if (handling_.valid()) {
      handling_.cancel();
    }
  }

  void request() {
    context_.AsyncNotifyWhenDone(&done_);
    server_.generic_.RequestCall(&context_, &stream_, server_.queue_.get(), server_.queue_.get(),
                                 detail::withArrival(&requested_));
    ++pending_;
  }

  [[nodiscard]] const std::string& method() const override { return context_.method(); }
  [[nodiscard]] std::string peer() const override { return context_.peer(); }
  [[nodiscard]] std::string_view metadata(std::string_view key) const override {
    const auto& metadata = context_.client_metadata();
    auto it = metadata.find(grpc::string_ref(key.data(), key.size()));
    return it == metadata.end() ? std::string_view()
                                : std::string_view(it->second.data(), it->second.size());
  }
  [[nodiscard]] const opentracing::SpanContext* traceParent() const override {
    return span_ ? &span_->context() : traceParent_.get();
  }
  [[nodiscard]] std::chrono::system_clock::time_point deadline() const override {
    return context_.deadline();
  }

  void writeNext();
  void readNext();
  void finish(const grpc::Status& status);

 private:
  friend class Impl::Stream;
  friend class Impl::Reader;

  // A new call's completion starts reading its request message at once, on the pump thread.
  // The message has mostly arrived with the call, so the read completes in the same batch and
  // the loop is woken once for the call and its request, not once for each.
  class Requested final : public detail::Completion {
   public:
    explicit Requested(Call* call) : call_(call) {}
    void arrived(bool ok) override {
      if (ok) {
        call_->stream_.Read(&call_->buffer_, &call_->read_);
        call_->reading_ = true;
      }
    }
    void complete(bool ok) override { call_->onRequested(ok); }

   private:
    Call* call_;
  };

  void onRequested(bool ok);
  void onRead(bool ok);
  void onStreamRead(bool ok);
  void onWritten(bool ok);
  void onFinished(bool ok);
  void onDone(bool ok);

  void handle(Services::Method& method);
  void handleClientStream(Services::Method& method, bool ok);
  void startSpan();
  // Replies when `outcome` (the handler's) settles: now, or later through handling_.
  void answer(Future<MessagePtr> outcome);
  void reply(const Future<MessagePtr>& outcome);
  void endStream(const Future<void>& outcome);
  void settled() {
    --pending_;
    collect();
  }
  void collect() {
    if (pending_ == 0) {
      server_.forget(this);
    }
  }
  // After a read that brought nothing: true when the call failed (cancelled, deadline, connection
  // lost), false when the client half-closed. The flag gRPC's callback API reads for the same.
  bool failedBeforeEnd() { return grpc_call_failed_before_recv_message(context_.c_call()) != 0; }

  Impl& server_;
  grpc::GenericServerContext context_;
  grpc::GenericServerAsyncReaderWriter stream_;
  grpc::ByteBuffer buffer_;
  std::unique_ptr<opentracing::SpanContext> traceParent_;  // The caller's, from the metadata.
  std::unique_ptr<opentracing::Span> span_;                // This call's, child of traceParent_.
  std::shared_ptr<Stream> streamState_;
  std::shared_ptr<Reader> reader_;  // Client streams only.
  grpc::ByteBuffer readBuffer_;     // A client stream's reads; buffer_ may carry the reply.
  std::optional<grpc::Status> finishAfterWrites_;
  Future<void> handling_;        // The handler's outcome, while it is pending.
  std::shared_ptr<bool> alive_;  // Made only when the handler does not answer at once.
  int pending_ = 0;
  bool writing_ = false;
  bool finished_ = false;
  bool reading_ = false;  // Set on the pump thread before onRequested() runs (Requested).
  Requested requested_{this};
  CompletionOf<Call, &Call::onRead> read_{this};
  CompletionOf<Call, &Call::onStreamRead> streamRead_{this};
  CompletionOf<Call, &Call::onWritten> written_{this};
  CompletionOf<Call, &Call::onFinished> finishedOp_{this};
  CompletionOf<Call, &Call::onDone> done_{this};
};

// ---- Call ----------------------------------------------------------------------------------

void Server::Impl::Call::onRequested(bool ok) {
  --pending_;
  if (!ok) {  // The server is shutting down; gRPC sends no done notification for this one.
    collect();
    return;
  }
  ++pending_;  // The done notification, now certain to come.
  if (server_.accepting_) {
    server_.requestCall();
  }
  // Not reading: the pump was shutting down, the call is cancelled and only done is to come.
  if (reading_) {
    ++pending_;
  }
}

void Server::Impl::Call::onRead(bool ok) {
  --pending_;
  Services::Method* method = server_.services_.find(context_.method());
  if (method == nullptr) {
    finish({grpc::StatusCode::UNIMPLEMENTED,
            fmt::format("this node serves no method {}", context_.method())});
  } else if (method->clientStream) {
    handleClientStream(*method, ok);
  } else if (!ok) {
    finish({grpc::StatusCode::INVALID_ARGUMENT, "the call carried no request message"});
  } else {
    handle(*method);
  }
  collect();
}

void Server::Impl::Call::handle(Services::Method& method) {
  std::unique_ptr<Message> request(method.request->New());
  if (!detail::parse(buffer_, *request)) {
    finish({grpc::StatusCode::INVALID_ARGUMENT,
            fmt::format("the request is not a valid {}", request->GetTypeName())});
    return;
  }
  buffer_.Clear();
  startSpan();
  if (method.unary) {
    Future<MessagePtr> outcome;
    try {
      outcome = method.unary(*this, *request);
    } catch (...) {
      outcome = makeErrorFuture<MessagePtr>(std::current_exception());
    }
    answer(std::move(outcome));
    return;
  }
  streamState_ = std::make_shared<Stream>(this);
  Future<void> outcome;
  try {
    outcome = method.stream(*this, *request, streamState_);
  } catch (...) {
    outcome = makeErrorFuture<void>(std::current_exception());
  }
  ++pending_;
  alive_ = std::make_shared<bool>(true);
  handling_ =
      outcome.whenSettled([this, alive = std::weak_ptr<bool>(alive_)](const Future<void>& done) {
        if (alive.expired()) {
          (void)done.error();
          return;
        }
        handling_.detach();
        endStream(done);
        settled();
      });
}

// The first message was read eagerly, as for every call (Requested); the handler gets it from
// its first read(). Later messages are read only when the handler asks.
void Server::Impl::Call::handleClientStream(Services::Method& method, bool ok) {
  if (!ok && failedBeforeEnd()) {  // Gone before its first message: nobody to answer.
    finish({grpc::StatusCode::CANCELLED, "the client cancelled the call"});
    return;
  }
  startSpan();
  reader_ = std::make_shared<Reader>(this, *method.request);
  reader_->arrived(ok, false, buffer_);
  buffer_.Clear();
  Future<MessagePtr> outcome;
  try {
    outcome = method.clientStream(*this, reader_);
  } catch (...) {
    outcome = makeErrorFuture<MessagePtr>(std::current_exception());
  }
  answer(std::move(outcome));
}

void Server::Impl::Call::startSpan() {
  if (!server_.extractTraces_) {
    return;
  }
  MetadataReader reader(context_.client_metadata());
  if (auto extracted = server_.tracer_->Extract(reader); extracted && *extracted) {
    traceParent_ = std::move(*extracted);
    span_ = detail::startCallSpan(*server_.tracer_, detail::Side::Server, context_.method(),
                                  context_.peer(), traceParent_.get());
  }
}

void Server::Impl::Call::answer(Future<MessagePtr> outcome) {
  if (outcome.isReady()) {
    reply(outcome);
    return;
  }
  ++pending_;
  alive_ = std::make_shared<bool>(true);
  handling_ = outcome.whenSettled(
      [this, alive = std::weak_ptr<bool>(alive_)](const Future<MessagePtr>& settledOutcome) {
        if (alive.expired()) {
          (void)settledOutcome.error();
          return;
        }
        handling_.detach();
        reply(settledOutcome);
        settled();
      });
}

void Server::Impl::Call::readNext() {
  reader_->inFlight_ = true;
  stream_.Read(&readBuffer_, &streamRead_);
  ++pending_;
}

void Server::Impl::Call::onStreamRead(bool ok) {
  --pending_;
  reader_->arrived(ok, !ok && failedBeforeEnd(), readBuffer_);
  readBuffer_.Clear();
  collect();
}

void Server::Impl::Call::reply(const Future<MessagePtr>& outcome) {
  if (outcome.hasError()) {
    finish(detail::statusOf(outcome.error()));
    return;
  }
  const MessagePtr& message = outcome.value();
  if (message == nullptr) {
    finish({grpc::StatusCode::INTERNAL, "the handler answered with no message"});
    return;
  }
  if (!detail::serialize(*message, buffer_)) {
    finish({grpc::StatusCode::INTERNAL, "the reply could not be serialised"});
    return;
  }
  finished_ = true;
  detail::endCallSpan(span_, Code::Ok, "");
  stream_.WriteAndFinish(buffer_, grpc::WriteOptions(), grpc::Status::OK, &finishedOp_);
  ++pending_;
}

void Server::Impl::Call::endStream(const Future<void>& outcome) {
  const grpc::Status status =
      outcome.hasError() ? detail::statusOf(outcome.error()) : grpc::Status::OK;
  if (writing_) {
    finishAfterWrites_ = status;
  } else {
    finish(status);
  }
}

void Server::Impl::Call::finish(const grpc::Status& status) {
  if (finished_) {
    return;
  }
  finished_ = true;
  if (streamState_) {
    streamState_->queue_.clear();
  }
  detail::endCallSpan(span_, detail::codeOf(status), status.error_message());
  stream_.Finish(status, &finishedOp_);
  ++pending_;
}

void Server::Impl::Call::writeNext() {
  if (writing_ || finished_ || streamState_->queue_.empty()) {
    return;
  }
  writing_ = true;
  buffer_ = streamState_->queue_.front();  // ByteBuffer copies share the slices.
  streamState_->queue_.pop_front();
  stream_.Write(buffer_, &written_);
  ++pending_;
}

void Server::Impl::Call::onWritten(bool ok) {
  --pending_;
  writing_ = false;
  if (!ok) {  // The client is gone; the done notification follows.
    streamState_->queue_.clear();
    streamState_->close();
  } else if (!streamState_->queue_.empty()) {
    writeNext();
  } else if (finishAfterWrites_) {
    finish(*finishAfterWrites_);
  }
  collect();
}

void Server::Impl::Call::onFinished(bool /*ok*/) {
  settled();
}

void Server::Impl::Call::onDone(bool /*ok*/) {
  --pending_;
  if (context_.IsCancelled()) {
    if (streamState_) {
      streamState_->close();
    }
    if (reader_) {
      reader_->fail(std::make_exception_ptr(
          RpcError(Code::Cancelled, "the client cancelled the call or went away")));
    }
    if (handling_.valid()) {  // Cancellation flows to the handler (and an event's subtree).
      handling_.cancel();
    }
  }
  collect();
}

// ---- Stream --------------------------------------------------------------------------------

bool Server::Impl::Stream::write(const google::protobuf::Message& message) {
  if (call_ == nullptr || isClosed_ || call_->finished_) {
    return false;
  }
  if (queue_.size() >= kMaxQueued) {
    ++dropped_;
    return false;
  }
  grpc::ByteBuffer buffer;
  if (!detail::serialize(message, buffer)) {
    return false;
  }
  queue_.push_back(std::move(buffer));
  call_->writeNext();
  return true;
}

Future<void> Server::Impl::Stream::closed() {
  if (closedPromise_) {
    throw std::logic_error("ServerStream::closed() called twice");
  }
  closedPromise_ = std::make_unique<Promise<void>>(
      Dispatcher::current() != nullptr ? *Dispatcher::current() : call_->server_.loop_);
  Future<void> future = closedPromise_->future();
  if (isClosed_) {
    closedPromise_->setValue();
  }
  return future;
}

// ---- Reader --------------------------------------------------------------------------------

Future<MessagePtr> Server::Impl::Reader::read() {
  if (waiter_ && !waiter_->isSettled()) {
    throw std::logic_error("ClientStream::read() called while an earlier read is pending");
  }
  if (ready_ != nullptr) {
    return makeReadyFuture<MessagePtr>(std::exchange(ready_, nullptr));
  }
  if (error_) {
    return makeErrorFuture<MessagePtr>(error_);
  }
  if (ended_) {
    return makeReadyFuture<MessagePtr>(nullptr);
  }
  if (!inFlight_) {
    if (call_->finished_) {  // The handler answered already; no operation may start now.
      fail(std::make_exception_ptr(RpcError(Code::Cancelled, "the call has ended")));
      return makeErrorFuture<MessagePtr>(error_);
    }
    call_->readNext();
  }
  waiter_ = std::make_unique<Promise<MessagePtr>>(call_->server_.loop_);
  return waiter_->future();
}

void Server::Impl::Reader::arrived(bool ok, bool failed, grpc::ByteBuffer& buffer) {
  inFlight_ = false;
  if (error_) {  // Cancelled meanwhile: what the read brought is not wanted.
    return;
  }
  MessagePtr message;
  if (ok) {
    std::shared_ptr<Message> parsed(prototype_.New());
    if (!detail::parse(buffer, *parsed)) {
      fail(std::make_exception_ptr(
          RpcError(Code::InvalidArgument, fmt::format("message {} of the stream is not a valid {}",
                                                      received_ + 1, parsed->GetTypeName()))));
      return;
    }
    ++received_;
    message = std::move(parsed);
  } else if (failed) {
    fail(std::make_exception_ptr(
        RpcError(Code::Cancelled, "the client cancelled the call or went away")));
    return;
  } else {
    ended_ = true;
  }
  if (waiter_ && !waiter_->isSettled()) {
    waiter_->setValue(std::move(message));
  } else {
    ready_ = std::move(message);
  }
}

void Server::Impl::Reader::fail(const std::exception_ptr& error) {
  if (!error_) {
    error_ = error;
  }
  if (waiter_ && !waiter_->isSettled()) {
    waiter_->setError(error_);
  }
}

// ---- Impl ----------------------------------------------------------------------------------

Server::Impl::~Impl() {
  if (server_) {
    accepting_ = false;
    server_->Shutdown(std::chrono::system_clock::now());
  }
  if (shutdownThread_.joinable()) {
    shutdownThread_.join();
  }
  if (pump_) {
    pump_->stopNow();
  }
  deleteCalls();
  server_.reset();
  queue_.reset();
  removeUnixSocket();
}

void Server::Impl::deleteCalls() {
  for (Call* call : calls_) {
    delete call;
  }
  calls_.clear();
}

void Server::Impl::forget(Call* call) {
  calls_.erase(call);
  delete call;
  if (calls_.empty() && callsGone_) {
    std::exchange(callsGone_, nullptr)->setValue();
  }
}

void Server::Impl::requestCall() {
  auto* call = new Call(*this);
  calls_.insert(call);
  call->request();
}

void Server::Impl::prepareUnixSocket(const std::string& path) {
  const net::Address address = net::Address::parse("unix:" + path);
  // The directory: created private to this user when missing, so that only the daemon's user
  // can reach the control socket.
  const auto slash = path.rfind('/');
  if (slash != std::string::npos && slash > 0) {
    const std::string directory = path.substr(0, slash);
    if (auto made = posix::tolerant([&] { return os_.mkdir(directory.c_str(), 0700); });
        made.errnum != 0 && made.errnum != EEXIST) {
      throw std::runtime_error(fmt::format("cannot create the directory of the RPC socket {}: {}",
                                           path, std::generic_category().message(made.errnum)));
    }
    // Whoever can write the directory can replace the socket and impersonate the daemon to
    // snowctl: it must be ours (or root's), and writable by others only with the sticky bit
    // (as /tmp), which keeps them from replacing our file.
    struct stat dir {};
    const auto checked = posix::tolerant([&] { return os_.stat(directory.c_str(), &dir); });
    const auto uid = os_.geteuid().value;
    if (checked.errnum != 0 || !S_ISDIR(dir.st_mode)) {
      throw std::runtime_error(
          fmt::format("cannot serve RPC on {}: {} is not a directory", path, directory));
    }
    if ((dir.st_uid != uid && dir.st_uid != 0) ||
        ((dir.st_mode & (S_IWGRP | S_IWOTH)) != 0 && (dir.st_mode & S_ISVTX) == 0)) {
      throw std::runtime_error(fmt::format(
          "refusing to serve RPC on {}: its directory {} belongs to uid {} with mode {:o}; it must "
          "belong to uid {} (or root) and not be writable by others",
          path, directory, dir.st_uid, dir.st_mode & 07777, uid));
    }
  }
  struct stat info {};
  if (posix::tolerant([&] { return os_.lstat(path.c_str(), &info); }).errnum != 0) {
    return;  // Nothing there.
  }
  if (!S_ISSOCK(info.st_mode)) {
    throw std::runtime_error(
        fmt::format("cannot serve RPC on {}: the path exists and is not a socket", path));
  }
  // A socket file: in use by a running daemon, or left behind by one that died.
  auto probe = os_.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (probe.errnum != 0) {
    throw std::system_error(probe.errnum, std::generic_category(), "socket(AF_UNIX)");
  }
  posix::FileDescriptor fd(probe.value);
  if (posix::tolerant([&] {
        return os_.connect(fd.get(), address.get(), address.length());
      }).errnum == 0) {
    throw std::runtime_error(fmt::format(
        "cannot serve RPC on {}: another process (a running snow-core?) is serving there", path));
  }
  spdlog::info("removing the stale RPC socket {} left by an earlier run", path);
  os_.unlink(path.c_str());
}

void Server::Impl::removeUnixSocket() {
  if (!socketPath_.empty()) {
    (void)posix::tolerant([&] { return os_.unlink(socketPath_.c_str()); });
    socketPath_.clear();
  }
}

void Server::Impl::start() {
  if (server_) {
    throw std::logic_error("rpc::Server::start() called twice");
  }
  detail::routeGrpcLogs();
  grpc::ServerBuilder builder;
  builder.SetMaxReceiveMessageSize(options_.maxMessageBytes);
  builder.SetMaxSendMessageSize(options_.maxMessageBytes);
  // Without this, gRPC binds TCP ports with SO_REUSEPORT and a second daemon on the same port
  // would silently share it.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // Clients ping idle connections to find dead peers (client.cc); accept those pings.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  builder.RegisterAsyncGenericService(&generic_);
  std::vector<std::string> wanted;
  if (!options_.unixSocket.empty()) {
    prepareUnixSocket(options_.unixSocket);
    wanted.push_back("unix:" + options_.unixSocket);
    builder.AddListeningPort(wanted.back(), grpc::InsecureServerCredentials());
  }
  if (!options_.tcpListen.empty()) {
    const net::Address address = net::Address::parse(options_.tcpListen);
    if (address.family() == AF_UNIX) {
      throw std::runtime_error(fmt::format(
          "rpc listen address {} is a unix socket; use unix_socket for that", options_.tcpListen));
    }
    std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
    if (options_.tls) {
      grpc::SslServerCredentialsOptions ssl(
          options_.tls->requireClientCert
              ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
              : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
      if (!options_.tls->caFile.empty()) {
        ssl.pem_root_certs = readPemFile(os_, options_.tls->caFile, "TLS CA bundle");
      } else if (options_.tls->requireClientCert) {
        throw std::runtime_error("rpc tls: require_client_cert needs ca_file");
      }
      ssl.pem_key_cert_pairs.push_back(
          {readPemFile(os_, options_.tls->keyFile, "TLS key"),
           readPemFile(os_, options_.tls->certFile, "TLS certificate")});
      credentials = grpc::SslServerCredentials(ssl);
    }
    wanted.push_back(address.toString());
    builder.AddListeningPort(wanted.back(), credentials, &tcpPort_);
  }
  queue_ = builder.AddCompletionQueue();
  server_ = builder.BuildAndStart();
  if (!server_ || (!options_.tcpListen.empty() && tcpPort_ == 0)) {
    server_.reset();
    throw std::runtime_error(fmt::format(
        "cannot serve RPC on {}: gRPC could not listen (address in use or not available)",
        fmt::join(wanted, ", ")));
  }
  if (!options_.unixSocket.empty()) {
    socketPath_ = options_.unixSocket;
    os_.chmod(socketPath_.c_str(), 0600);
  }
  endpoints_ = wanted;
  if (!options_.tcpListen.empty()) {
    const net::Address address = net::Address::parse(options_.tcpListen);
    const std::string host = address.toString().substr(0, address.toString().rfind(':'));
    endpoints_.back() = fmt::format("{}:{}", host, tcpPort_);
  }
  pump_ = std::make_unique<detail::CompletionPump>(loop_, *queue_, "rpc-server");
  accepting_ = true;
  for (int i = 0; i < kPrepostedCalls; ++i) {
    requestCall();
  }
}

Future<void> Server::Impl::stop(Duration grace) {
  if (!server_ || !accepting_) {
    return makeReadyFuture();
  }
  accepting_ = false;
  // Shutdown() waits for calls in flight, whose handlers run on this loop: wait elsewhere.
  const auto deadline = std::chrono::system_clock::now() + grace;
  auto shutDown = std::make_shared<Promise<void>>(loop_);
  Future<void> returned = shutDown->future();
  shutdownThread_ = std::thread([this, deadline, shutDown] {
    server_->Shutdown(deadline);
    loop_.post([shutDown] { shutDown->setValue(); });
  });
  return returned
      .then([this, alive = std::weak_ptr<bool>(alive_)] {
        if (alive.expired()) {  // The destructor joined the thread and cancelled the calls.
          throw std::runtime_error("the RPC server was destroyed before it stopped");
        }
        shutdownThread_.join();
        // Shutdown() cancelled every call, but a cancelled call still finishes on the loop: its
        // handler's future settles (cancelled), then it sends its status. Starting that operation
        // on a completion queue already shut down aborts the process (gRPC asserts), so the
        // queue goes only once every call object is gone.
        if (calls_.empty()) {
          return makeReadyFuture();
        }
        callsGone_ = std::make_unique<Promise<void>>(loop_);
        return callsGone_->future();
      })
      .then([this] { return pump_->shutdown(); })
      .then([this] { removeUnixSocket(); });
}

// ---- Server --------------------------------------------------------------------------------

Server::Server(Dispatcher& loop, Services& services, posix::Posix& os, ServerOptions options)
    : impl_(std::make_unique<Impl>(loop, services, os, std::move(options))) {}

Server::~Server() = default;

void Server::start() {
  impl_->start();
}

Future<void> Server::stop(Duration grace) {
  return impl_->stop(grace);
}

std::vector<std::string> Server::endpoints() const {
  return impl_->endpoints_;
}

int Server::tcpPort() const {
  return impl_->tcpPort_;
}

size_t Server::activeCalls() const {
  return impl_->calls_.size();
}

std::string readPemFile(posix::Posix& os, const std::string& path, const char* what) {
  if (path.empty()) {
    throw std::runtime_error(fmt::format("rpc tls: the {} file is not set", what));
  }
  auto read = posix::readFile(os, path);
  if (!read.ok()) {
    throw std::runtime_error(fmt::format("cannot read the {} {}: {}", what, path,
                                         std::generic_category().message(read.errnum)));
  }
  std::string content = std::move(read.value);
  if (content.find("-----BEGIN") == std::string::npos) {
    throw std::runtime_error(fmt::format("the {} {} is not in PEM format", what, path));
  }
  return content;
}

}  // namespace snow::rpc
