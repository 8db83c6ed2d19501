#pragma once

// The method table the RPC server serves from, and how a module adds its own service.
//
// A service is declared in a .proto (`service Jobs { rpc Submit(...) returns (...); }`); protoc's
// plain C++ output is enough, no gRPC code generator is needed. A module registers a handler per
// method, usually in start(), and keeps the returned Registration for as long as it serves:
//
//   registration_ = services.addUnary<jobs::v1::SubmitRequest, jobs::v1::SubmitReply>(
//       "/jobs.v1.Jobs/Submit",
//       [this](const rpc::CallContext& call, const jobs::v1::SubmitRequest& request) {
//         return submit(request);  // Future<std::shared_ptr<const SubmitReply>>
//       });
//
// Contract:
//   - Thread: loop thread, both registration and handlers. A handler never blocks: it returns a
//     future and the call is answered when it settles.
//   - Errors: a handler that throws or rejects with RpcError answers with its code and message;
//     any other exception answers INTERNAL with its message. add*() throws std::logic_error when
//     the method is registered already, or when the method is declared in a linked .proto with
//     other request or reply types than the handler's.
//   - Ownership: a Registration unregisters its method when destroyed; it must not outlive the
//     Services. Calls in flight when a method is unregistered finish normally.

#include <chrono>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include <google/protobuf/message.h>
#include <opentracing/span.h>

#include "snow/core/event.h"
#include "snow/core/function.h"
#include "snow/core/future.h"
#include "snow/rpc/status.h"

namespace snow::rpc {

// What a handler knows of the call it answers.
class CallContext {
 public:
  virtual ~CallContext() = default;
  [[nodiscard]] virtual const std::string& method() const = 0;
  // The caller's address as gRPC reports it, e.g. "ipv4:127.0.0.1:53012" or "unix:".
  [[nodiscard]] virtual std::string peer() const = 0;
  // The first value of a metadata key (lower case), or empty.
  [[nodiscard]] virtual std::string_view metadata(std::string_view key) const = 0;
  // The caller's span context, extracted from the call's metadata; null when it sent none.
  [[nodiscard]] virtual const opentracing::SpanContext* traceParent() const = 0;
  // The caller's deadline (std::chrono::system_clock::time_point::max() for none).
  [[nodiscard]] virtual std::chrono::system_clock::time_point deadline() const = 0;
};

// The server side of a server-streaming call.
class ServerStream {
 public:
  virtual ~ServerStream() = default;
  // Queues `message` for the client. Returns false when the client is gone or too slow: the
  // stream keeps at most `kMaxQueued` messages, drops what does not fit and counts it
  // (dropped()), so a slow reader never makes the node buffer without bound.
  virtual bool write(const google::protobuf::Message& message) = 0;
  // Messages dropped because the queue was full, since the stream began.
  [[nodiscard]] virtual uint64_t dropped() const = 0;
  // Resolves when the client cancelled or went away; the handler then settles its future.
  [[nodiscard]] virtual Future<void> closed() = 0;
  static constexpr size_t kMaxQueued = 1024;
};
using ServerStreamPtr = std::shared_ptr<ServerStream>;

// The server side of a client-streaming call: the handler pulls the client's messages one at a
// time. The node asks gRPC for a message only when the handler asks for it (read()), so a slow
// handler holds the client back (HTTP/2 flow control) instead of making the node buffer.
// Thread: loop thread. Ownership: shared with the call; it outlives it, reads then reject.
class ClientStream {
 public:
  virtual ~ClientStream() = default;
  // The client's next message, of the method's request type; nullptr once the client half-closed
  // (the end of the stream, then on every later read). Rejects with RpcError CANCELLED when the
  // client cancelled or went away (its deadline passed, the server stops) or the call has ended,
  // INVALID_ARGUMENT when the message does not parse; both for every later read too. Throws
  // std::logic_error while an earlier read's future is pending: one read at a time.
  [[nodiscard]] virtual Future<MessagePtr> read() = 0;

  // read(), as the request type the method was registered with (Req of addClientStream); costs
  // one continuation. Throws std::logic_error (in the future) when Req is another type.
  template <typename Req>
  [[nodiscard]] Future<std::shared_ptr<const Req>> readAs() {
    return this->read().then([](MessagePtr message) {
      auto typed = std::dynamic_pointer_cast<const Req>(message);
      if (message != nullptr && typed == nullptr) {
        throw std::logic_error("ClientStream::readAs(): the stream carries " +
                               message->GetTypeName() + ", not " +
                               Req::default_instance().GetTypeName());
      }
      return typed;
    });
  }
};
using ClientStreamPtr = std::shared_ptr<ClientStream>;

class Services {
 public:
  using UnaryHandler = UniqueFunction<Future<MessagePtr>(const CallContext&, const Message&)>;
  using StreamHandler =
      UniqueFunction<Future<void>(const CallContext&, const Message&, const ServerStreamPtr&)>;
  using ClientStreamHandler =
      UniqueFunction<Future<MessagePtr>(const CallContext&, const ClientStreamPtr&)>;

  struct Method {
    std::string name;        // "/package.Service/Method"
    const Message* request;  // Default instance of the request type.
    UnaryHandler unary;      // Exactly one of unary, stream and clientStream is set.
    StreamHandler stream;
    ClientStreamHandler clientStream;
  };

  class Registration {
   public:
    Registration() = default;
    Registration(Services& services, std::string name)
        : services_(&services), name_(std::move(name)) {}
    Registration(Registration&& other) noexcept
        : services_(std::exchange(other.services_, nullptr)), name_(std::move(other.name_)) {}
    Registration& operator=(Registration&& other) noexcept;
    Registration(const Registration&) = delete;
    Registration& operator=(const Registration&) = delete;
    ~Registration() { reset(); }
    void reset() noexcept;

   private:
    Services* services_ = nullptr;
    std::string name_;
  };

  Services() = default;
  Services(const Services&) = delete;
  Services& operator=(const Services&) = delete;

  // `handler(const CallContext&, const Req&)` returns Future<std::shared_ptr<const Resp>> (or
  // Future<MessagePtr> holding a Resp).
  template <typename Req, typename Resp, typename F>
  [[nodiscard]] Registration addUnary(std::string name, F handler) {
    checkDeclared(name, Req::default_instance(), Resp::default_instance());
    return add(
        Method{std::move(name), &Req::default_instance(),
               [h = std::move(handler)](const CallContext& call, const Message& request) mutable {
                 auto reply = h(call, static_cast<const Req&>(request));
                 if constexpr (std::is_same_v<decltype(reply), Future<MessagePtr>>) {
                   return reply;
                 } else {  // Costs one continuation; return Future<MessagePtr> on hot paths.
                   return reply.then(
                       [](std::shared_ptr<const Resp> r) { return MessagePtr(std::move(r)); });
                 }
               },
               nullptr, nullptr});
  }

  // `handler(const CallContext&, const Req&, const ServerStreamPtr&)` returns Future<void>;
  // the stream ends with OK when it resolves, with its error when it rejects.
  template <typename Req, typename Resp, typename F>
  [[nodiscard]] Registration addStream(std::string name, F handler) {
    checkDeclared(name, Req::default_instance(), Resp::default_instance());
    return add(Method{std::move(name), &Req::default_instance(), nullptr,
                      [h = std::move(handler)](const CallContext& call, const Message& request,
                                               const ServerStreamPtr& stream) mutable {
                        return h(call, static_cast<const Req&>(request), stream);
                      },
                      nullptr});
  }

  // `handler(const CallContext&, const ClientStreamPtr&)` reads the client's messages (each a Req)
  // and returns Future<std::shared_ptr<const Resp>> (or Future<MessagePtr> holding a Resp): the
  // single reply, or its error. The call ends when the future settles, read to the end or not
  // (what the client sends after is discarded); a client that cancels cancels the future. When
  // the method is declared in a linked .proto, it must be declared client-streaming.
  template <typename Req, typename Resp, typename F>
  [[nodiscard]] Registration addClientStream(std::string name, F handler) {
    checkDeclared(name, Req::default_instance(), Resp::default_instance(), Kind::ClientStream);
    return add(Method{
        std::move(name), &Req::default_instance(), nullptr, nullptr,
        [h = std::move(handler)](const CallContext& call, const ClientStreamPtr& stream) mutable {
          auto reply = h(call, stream);
          if constexpr (std::is_same_v<decltype(reply), Future<MessagePtr>>) {
            return reply;
          } else {
            return reply.then(
                [](std::shared_ptr<const Resp> r) { return MessagePtr(std::move(r)); });
          }
        }});
  }

  [[nodiscard]] Registration add(Method method);
  // The method, or nullptr.
  [[nodiscard]] Method* find(std::string_view name);
  [[nodiscard]] std::vector<std::string> names() const;

 private:
  // Which add*() registers: only client streams are checked against the declared streaming kind
  // (unary and server-streaming registrations predate the check).
  enum class Kind { Other, ClientStream };

  // Throws std::logic_error when `name` is declared in the generated descriptor pool with other
  // types (or, for Kind::ClientStream, not as client-streaming only), or is not of the form
  // "/package.Service/Method".
  static void checkDeclared(std::string_view name, const Message& request, const Message& reply,
                            Kind kind = Kind::Other);

  std::unordered_map<std::string, std::unique_ptr<Method>> methods_;
};

}  // namespace snow::rpc
