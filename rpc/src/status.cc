#include "snow/rpc/status.h"

#include <array>

#include <fmt/format.h>

namespace snow::rpc {

std::string_view codeName(Code code) noexcept {
  static constexpr std::array<std::string_view, 17> kNames = {"OK",
                                                              "CANCELLED",
                                                              "UNKNOWN",
                                                              "INVALID_ARGUMENT",
                                                              "DEADLINE_EXCEEDED",
                                                              "NOT_FOUND",
                                                              "ALREADY_EXISTS",
                                                              "PERMISSION_DENIED",
                                                              "RESOURCE_EXHAUSTED",
                                                              "FAILED_PRECONDITION",
                                                              "ABORTED",
                                                              "OUT_OF_RANGE",
                                                              "UNIMPLEMENTED",
                                                              "INTERNAL",
                                                              "UNAVAILABLE",
                                                              "DATA_LOSS",
                                                              "UNAUTHENTICATED"};
  const auto index = static_cast<size_t>(code);
  return index < kNames.size() ? kNames[index] : std::string_view("UNKNOWN");
}

RpcError::RpcError(Code code, std::string_view message, std::string_view method,
                   std::string_view peer)
    : std::runtime_error(fmt::format("{} on {}: {}: {}", method, peer, codeName(code), message)),
      code_(code),
      message_(message) {}

}  // namespace snow::rpc
