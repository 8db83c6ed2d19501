#pragma once

// Status codes and the error every failed call rejects with.
//
// The codes are gRPC's (same numbers), so that a code read in our logs means what gRPC's
// documentation says it means. A handler chooses the code its caller sees by throwing (or
// rejecting its future with) RpcError; any other exception reaches the caller as INTERNAL with
// the exception's message.

#include <stdexcept>
#include <string>
#include <string_view>

namespace snow::rpc {

enum class Code : int {
  Ok = 0,
  Cancelled = 1,
  Unknown = 2,
  InvalidArgument = 3,
  DeadlineExceeded = 4,
  NotFound = 5,
  AlreadyExists = 6,
  PermissionDenied = 7,
  ResourceExhausted = 8,
  FailedPrecondition = 9,
  Aborted = 10,
  OutOfRange = 11,
  Unimplemented = 12,
  Internal = 13,
  Unavailable = 14,
  DataLoss = 15,
  Unauthenticated = 16,
};

// "UNAVAILABLE", "DEADLINE_EXCEEDED", ... as gRPC spells them.
std::string_view codeName(Code code) noexcept;

// Whether a failed attempt may be sent again. Only UNAVAILABLE: gRPC reports it when the call
// could not be delivered or the connection broke, and the server answers it while shutting
// down. Any other code may mean the handler ran; a retry could do the work twice.
// (Dispatch is also safe after an ambiguous failure because the receiver deduplicates it.)
constexpr bool retryable(Code code) noexcept {
  return code == Code::Unavailable;
}

class RpcError : public std::runtime_error {
 public:
  // Thrown by handlers: `message` goes to the caller as the status message.
  RpcError(Code code, const std::string& message)
      : std::runtime_error(message), code_(code), message_(message) {}
  // Raised on the caller's side: what() reads
  //   "/snow.rpc.v1.Node/Ping on unix:/run/snow-core/rpc.sock: UNAVAILABLE: connection refused".
  RpcError(Code code, std::string_view message, std::string_view method, std::string_view peer);

  [[nodiscard]] Code code() const noexcept { return code_; }
  // The status message alone, without method, peer and code.
  [[nodiscard]] const std::string& statusMessage() const noexcept { return message_; }

 private:
  Code code_;
  std::string message_;
};

}  // namespace snow::rpc
