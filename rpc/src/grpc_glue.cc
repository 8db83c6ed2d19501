#include "grpc_glue.h"

#include <mutex>

#include <grpc/support/log.h>
#include <grpcpp/impl/codegen/proto_utils.h>
#include <spdlog/spdlog.h>

#include "snow/core/future.h"

namespace snow::rpc::detail {
namespace {

void toSpdlog(gpr_log_func_args* args) {
  const auto level =
      args->severity == GPR_LOG_SEVERITY_ERROR ? spdlog::level::warn : spdlog::level::debug;
  spdlog::log(level, "grpc: {} ({}:{})", args->message, args->file, args->line);
}

}  // namespace

void routeGrpcLogs() {
  static std::once_flag once;
  std::call_once(once, [] { gpr_set_log_function(&toSpdlog); });
}

void setReconnect(grpc::ChannelArguments& args, const BackoffPolicy& policy) {
  const auto ms = [](Duration d) {
    return static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(d).count());
  };
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, ms(policy.initial));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, ms(policy.max));
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, ms(policy.minConnectTimeout));
  args.SetInt(GRPC_ARG_DNS_MIN_TIME_BETWEEN_RESOLUTIONS_MS, ms(policy.initial));
}

bool serialize(const google::protobuf::Message& message, grpc::ByteBuffer& out) {
  bool ownBuffer = false;
  return grpc::SerializationTraits<google::protobuf::Message>::Serialize(message, &out, &ownBuffer)
      .ok();
}

bool parse(grpc::ByteBuffer& in, google::protobuf::Message& message) {
  return grpc::SerializationTraits<google::protobuf::Message>::Deserialize(&in, &message).ok();
}

grpc::Status statusOf(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const RpcError& e) {
    return {static_cast<grpc::StatusCode>(e.code()), e.statusMessage()};
  } catch (const Cancelled& e) {
    return {grpc::StatusCode::CANCELLED, e.what()};
  } catch (const TimeoutError& e) {
    return {grpc::StatusCode::DEADLINE_EXCEEDED, e.what()};
  } catch (const std::exception& e) {
    return {grpc::StatusCode::INTERNAL, e.what()};
  } catch (...) {
    return {grpc::StatusCode::INTERNAL, describe(error)};
  }
}

}  // namespace snow::rpc::detail
