#pragma once

// The span of one RPC, client or server side (private to rpc/).
//
// Only calls that belong to a trace get one: a client call made while an event is handled (or
// with CallOptions::traceParent), a server call whose metadata carried a trace context. Health
// pings and snowctl's calls make no root spans of their own, which would bury Jaeger in noise.
// Names and tags follow OpenTelemetry's RPC conventions, as OpenTracing tags: the span is named
// "package.Service/Method", tagged span.kind, rpc.system, rpc.service, rpc.method, peer.address
// and, when it ends, rpc.grpc.status_code (plus error and an error log unless OK).

#include <memory>
#include <string_view>

#include <opentracing/span.h>
#include <opentracing/tracer.h>

#include "snow/rpc/status.h"

namespace snow::rpc::detail {

enum class Side { Client, Server };

// Null when `parent` is null.
std::unique_ptr<opentracing::Span> startCallSpan(const opentracing::Tracer& tracer, Side side,
                                                 std::string_view method, std::string_view peer,
                                                 const opentracing::SpanContext* parent);

// Tags the outcome and finishes `span`; nothing when it is null. Idempotent: the span is reset.
void endCallSpan(std::unique_ptr<opentracing::Span>& span, Code code, std::string_view message);

}  // namespace snow::rpc::detail
