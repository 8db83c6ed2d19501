#include "snow/rpc/otlp_exporter.h"

#include <stdexcept>

#include <fmt/format.h>
#include <google/protobuf/arena.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/codegen/client_unary_call.h>
#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/impl/codegen/rpc_method.h>

#include "snow/otlp/v1/trace.pb.h"
#include "snow/posix/active.h"
#include "snow/rpc/server.h"

#include "grpc_glue.h"

namespace snow::rpc {
namespace {

namespace otlp = snow::otlp::v1;

// The method path is OTLP's; the messages are our own copies of its (snow/otlp/v1/trace.proto).
constexpr const char* kExportMethod = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

struct Target {
  std::string address;
  bool tls = false;
};

std::optional<Target> parseEndpoint(std::string_view endpoint, std::string* problem) {
  Target target;
  std::string_view rest = endpoint;
  if (rest.starts_with("https://")) {
    target.tls = true;
    rest.remove_prefix(8);
  } else if (rest.starts_with("http://")) {
    rest.remove_prefix(7);
  } else if (rest.find("://") != std::string_view::npos) {
    *problem = fmt::format("'{}': the scheme must be http:// or https://", endpoint);
    return std::nullopt;
  }
  while (!rest.empty() && rest.back() == '/') {
    rest.remove_suffix(1);
  }
  if (rest.find('/') != std::string_view::npos) {
    *problem = fmt::format(
        "'{}': an OTLP/gRPC endpoint has no path (give host:port, e.g. 127.0.0.1:4317)", endpoint);
    return std::nullopt;
  }
  const size_t colon = rest.rfind(':');
  const std::string_view port = colon == std::string_view::npos ? "" : rest.substr(colon + 1);
  if (colon == 0 || port.empty() ||
      port.find_first_not_of("0123456789") != std::string_view::npos || port.size() > 5 ||
      std::stoul(std::string(port)) > 65535) {
    *problem = fmt::format("'{}': expected host:port, e.g. 127.0.0.1:4317", endpoint);
    return std::nullopt;
  }
  target.address = std::string(rest);
  return target;
}

void setValue(const tracing::AttributeValue& value, otlp::AnyValue& out) {
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, bool>) {
          out.set_bool_value(v);
        } else if constexpr (std::is_same_v<T, int64_t>) {
          out.set_int_value(v);
        } else if constexpr (std::is_same_v<T, double>) {
          out.set_double_value(v);
        } else {
          out.set_string_value(v);
        }
      },
      value);
}

template <typename Repeated>
void setAttributes(std::span<const tracing::Attribute> attributes, Repeated& out) {
  out.Reserve(static_cast<int>(attributes.size()));
  for (const auto& attribute : attributes) {
    otlp::KeyValue* kv = out.Add();
    kv->set_key(attribute.key);
    setValue(attribute.value, *kv->mutable_value());
  }
}

std::string bytesOf(uint64_t id) {
  std::string out(8, '\0');
  for (size_t i = 0; i < 8; ++i) {
    out[i] = static_cast<char>(id >> (56U - 8U * i));
  }
  return out;
}

std::string bytesOf(const tracing::TraceId& id) {
  return {reinterpret_cast<const char*>(id.data()), id.size()};
}

// W3C trace flags (sampled) plus OTLP's "is the parent remote" bits.
uint32_t flagsOf(const tracing::SpanData& span) {
  constexpr uint32_t kSampled = 0x01;
  constexpr uint32_t kHasIsRemote = 0x100;
  constexpr uint32_t kIsRemote = 0x200;
  return kSampled | kHasIsRemote | (span.parentIsRemote ? kIsRemote : 0U);
}

void encode(const tracing::SpanData& span, otlp::Span& out) {
  out.set_trace_id(bytesOf(span.traceId));
  out.set_span_id(bytesOf(span.spanId));
  if (span.parentSpanId != 0) {
    out.set_parent_span_id(bytesOf(span.parentSpanId));
  }
  if (!span.traceState.empty()) {
    out.set_trace_state(span.traceState);
  }
  out.set_name(span.name);
  out.set_kind(static_cast<otlp::Span::SpanKind>(span.kind));
  out.set_start_time_unix_nano(span.startUnixNano);
  out.set_end_time_unix_nano(span.endUnixNano);
  setAttributes(span.attributes, *out.mutable_attributes());
  out.set_dropped_attributes_count(span.droppedAttributes);
  for (const auto& event : span.events) {
    otlp::Span::Event* e = out.add_events();
    e->set_time_unix_nano(event.timeUnixNano);
    e->set_name(event.name);
    setAttributes(event.attributes, *e->mutable_attributes());
  }
  out.set_dropped_events_count(span.droppedEvents);
  for (const auto& link : span.links) {
    otlp::Span::Link* l = out.add_links();
    l->set_trace_id(bytesOf(link.traceId));
    l->set_span_id(bytesOf(link.spanId));
  }
  if (span.status != tracing::StatusCode::Unset) {
    out.mutable_status()->set_code(static_cast<otlp::Status::StatusCode>(span.status));
    out.mutable_status()->set_message(span.statusMessage);
  }
  out.set_flags(flagsOf(span));
}

bool retryable(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
    case grpc::StatusCode::ABORTED:
    case grpc::StatusCode::CANCELLED:
    case grpc::StatusCode::OUT_OF_RANGE:
    case grpc::StatusCode::DATA_LOSS:
      return true;
    default:
      return false;
  }
}

class OtlpGrpcExporter final : public tracing::SpanExporter {
 public:
  explicit OtlpGrpcExporter(OtlpExporterOptions options)
      : options_(std::move(options)),
        method_(kExportMethod, grpc::internal::RpcMethod::NORMAL_RPC) {
    detail::routeGrpcLogs();
    std::string problem;
    const std::optional<Target> target = parseEndpoint(options_.endpoint, &problem);
    if (!target) {
      throw std::invalid_argument("tracing: otlp endpoint " + problem);
    }
    std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
    if (target->tls) {
      grpc::SslCredentialsOptions ssl;
      if (!options_.caFile.empty()) {
        ssl.pem_root_certs = readPemFile(posix::active(), options_.caFile, "tracing: otlp ca_file");
      }
      credentials = grpc::SslCredentials(ssl);
    }
    grpc::ChannelArguments args;
    detail::setReconnect(args, options_.reconnect);
    // Its own connection: the tracer must not share fate (or a subchannel) with RPC peers.
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    channel_ = grpc::CreateCustomChannel(target->address, credentials, args);
    describe_ = fmt::format("OTLP/gRPC {}{}", target->tls ? "https://" : "", target->address);
  }

  Result exportSpans(std::span<const tracing::SpanData> spans,
                     std::span<const tracing::Attribute> resource,
                     std::chrono::steady_clock::time_point deadline) override {
    google::protobuf::Arena arena;
    auto* request = google::protobuf::Arena::CreateMessage<otlp::ExportTraceServiceRequest>(&arena);
    otlp::ResourceSpans* resourceSpans = request->add_resource_spans();
    setAttributes(resource, *resourceSpans->mutable_resource()->mutable_attributes());
    otlp::ScopeSpans* scopeSpans = resourceSpans->add_scope_spans();
    scopeSpans->mutable_scope()->set_name(options_.scopeName);
    scopeSpans->mutable_scope()->set_version(options_.scopeVersion);
    scopeSpans->mutable_spans()->Reserve(static_cast<int>(spans.size()));
    for (const auto& span : spans) {
      encode(span, *scopeSpans->add_spans());
    }
    auto* response =
        google::protobuf::Arena::CreateMessage<otlp::ExportTraceServiceResponse>(&arena);

    grpc::ClientContext context;
    // gRPC takes system_clock deadlines; ours is steady, immune to clock steps.
    context.set_deadline(std::chrono::system_clock::now() +
                         (deadline - std::chrono::steady_clock::now()));
    for (const auto& [key, value] : options_.headers) {
      context.AddMetadata(key, value);
    }
    const grpc::Status status = grpc::internal::BlockingUnaryCall<otlp::ExportTraceServiceRequest,
                                                                  otlp::ExportTraceServiceResponse>(
        channel_.get(), method_, &context, *request, response);
    Result result;
    if (status.ok()) {
      result.outcome = Result::Outcome::Exported;
      if (response->has_partial_success()) {
        result.rejected = static_cast<uint64_t>(
            std::max<int64_t>(0, response->partial_success().rejected_spans()));
        result.error = response->partial_success().error_message();
      }
      return result;
    }
    result.outcome =
        retryable(status.error_code()) ? Result::Outcome::Retry : Result::Outcome::Rejected;
    result.error = fmt::format("{}: {}", codeName(detail::codeOf(status)), status.error_message());
    return result;
  }

  [[nodiscard]] std::string describe() const override { return describe_; }

 private:
  OtlpExporterOptions options_;
  grpc::internal::RpcMethod method_;
  std::shared_ptr<grpc::Channel> channel_;
  std::string describe_;
};

}  // namespace

std::unique_ptr<tracing::SpanExporter> makeOtlpGrpcExporter(OtlpExporterOptions options) {
  return std::make_unique<OtlpGrpcExporter>(std::move(options));
}

std::optional<std::string> checkOtlpEndpoint(std::string_view endpoint) {
  std::string problem;
  if (parseEndpoint(endpoint, &problem)) {
    return std::nullopt;
  }
  return problem;
}

}  // namespace snow::rpc
