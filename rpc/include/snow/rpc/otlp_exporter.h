#pragma once

// The OTLP/gRPC span exporter: sends the tracer's batches (tracer.h) to an OpenTelemetry
// collector's TraceService/Export, which is how Jaeger (1.35 and later) ingests spans natively,
// on port 4317 by default.
//
// Endpoint forms: "host:port" and "http://host:port" (plaintext), "https://host:port" (TLS,
// checked against `caFile` or gRPC's default roots). The channel reconnects with `reconnect`
// (the tracer's retry policy), so a collector that comes back is used again within one backoff
// step.
//
// Contract: the exporter is driven by the tracer's export thread only (SpanExporter). Each call
// blocks that thread until the collector answered or the deadline passed, never the loop.
// Errors: gRPC codes OTLP calls retryable (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED,
// ABORTED, CANCELLED, OUT_OF_RANGE, DATA_LOSS) give Retry; any other (INVALID_ARGUMENT,
// UNIMPLEMENTED: not an OTLP endpoint, UNAUTHENTICATED, ...) gives Rejected.

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "snow/core/backoff.h"
#include "snow/core/tracer.h"

namespace snow::rpc {

struct OtlpExporterOptions {
  std::string endpoint = "127.0.0.1:4317";
  std::string caFile;  // PEM roots for https://; empty: gRPC's defaults.
  // Sent as gRPC metadata with every export (an ingestion token, say); keys lower case.
  std::vector<std::pair<std::string, std::string>> headers;
  BackoffPolicy reconnect;
  std::string scopeName = "snow-core";  // The instrumentation scope of every span.
  std::string scopeVersion;
};

// Throws std::invalid_argument for an endpoint that is not one of the forms above, and
// std::runtime_error when caFile cannot be read.
std::unique_ptr<tracing::SpanExporter> makeOtlpGrpcExporter(OtlpExporterOptions options);

// The problem with `endpoint`, or nullopt when it has one of the accepted forms.
std::optional<std::string> checkOtlpEndpoint(std::string_view endpoint);

}  // namespace snow::rpc
