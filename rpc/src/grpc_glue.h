#pragma once

// Small pieces shared by the server and the client (private to rpc/).

#include <exception>
#include <string>

#include <google/protobuf/message.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/channel_arguments.h>
#include <grpcpp/support/status.h>

#include "snow/core/backoff.h"
#include "snow/rpc/status.h"

namespace snow::rpc::detail {

// Sends gRPC's own log lines (gpr_log) to spdlog, once per process: errors as warnings prefixed
// "grpc:", the rest at debug level. Otherwise they go to stderr, outside our log format.
void routeGrpcLogs();

// Makes a channel reconnect as `policy` says: gRPC's own backoff between attempts (initial, max),
// the time one attempt may take (minConnectTimeout), and re-resolution of the peer's name after a
// failure no rarer than `initial` (gRPC's default waits 30 s, ignoring a peer that came back).
void setReconnect(grpc::ChannelArguments& args, const BackoffPolicy& policy);

bool serialize(const google::protobuf::Message& message, grpc::ByteBuffer& out);
bool parse(grpc::ByteBuffer& in, google::protobuf::Message& message);

// The status a handler's error answers with (status.h).
grpc::Status statusOf(const std::exception_ptr& error);

inline Code codeOf(const grpc::Status& status) {
  return static_cast<Code>(status.error_code());
}

}  // namespace snow::rpc::detail
