#include "call_span.h"

#include <opentracing/ext/tags.h>

namespace snow::rpc::detail {

std::unique_ptr<opentracing::Span> startCallSpan(const opentracing::Tracer& tracer, Side side,
                                                 std::string_view method, std::string_view peer,
                                                 const opentracing::SpanContext* parent) {
  if (parent == nullptr) {
    return nullptr;
  }
  // "/snow.rpc.v1.Node/Dispatch": the span is "snow.rpc.v1.Node/Dispatch".
  const std::string_view name = method.starts_with('/') ? method.substr(1) : method;
  const size_t slash = name.rfind('/');
  const std::string_view service = slash == std::string_view::npos ? "" : name.substr(0, slash);
  const std::string_view bare = slash == std::string_view::npos ? name : name.substr(slash + 1);
  auto span = tracer.StartSpan(
      opentracing::string_view(name.data(), name.size()),
      {opentracing::ChildOf(parent),
       opentracing::SetTag(opentracing::ext::span_kind,
                           side == Side::Client ? opentracing::ext::span_kind_rpc_client
                                                : opentracing::ext::span_kind_rpc_server),
       opentracing::SetTag("rpc.system", "grpc"),
       // Owned strings: a tracer may keep a tag's value until the span is long finished.
       opentracing::SetTag("rpc.service", std::string(service)),
       opentracing::SetTag("rpc.method", std::string(bare)),
       opentracing::SetTag(opentracing::ext::peer_address, std::string(peer))});
  return span;
}

void endCallSpan(std::unique_ptr<opentracing::Span>& span, Code code, std::string_view message) {
  if (!span) {
    return;
  }
  span->SetTag("rpc.grpc.status_code", static_cast<int64_t>(code));
  if (code != Code::Ok) {
    span->SetTag(opentracing::ext::error, true);
    span->Log({{"event", "error"},
               {"message", std::string(message)},
               {"rpc.grpc.status", std::string(codeName(code))}});
  }
  span->Finish();
  span.reset();
}

}  // namespace snow::rpc::detail
