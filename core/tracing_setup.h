#pragma once

// The daemon's `tracing:` section (core/proto/snow/core/v1/tracing.proto) turned into a tracer:
// snow-core's own exporting OTLP, one loaded from an OpenTracing tracer library, or none.
// Private to the daemon.

#include <memory>
#include <string>
#include <vector>

#include <opentracing/tracer.h>
#include <spdlog/logger.h>

#include "snow/core/v1/tracing.pb.h"
#include "snow/posix/posix.h"

namespace snow {

struct TracingSetup {
  std::shared_ptr<opentracing::Tracer> tracer;  // Null: tracing is off (the noop tracer).
  std::string description;  // For the log and `snowctl status`: "OTLP/gRPC 127.0.0.1:4317".
};

// Every problem of the section ("tracing.<key>: <problem>"); empty when it is usable. Checks
// what can be checked without side effects: the endpoint's form, that files exist, the numbers.
std::vector<std::string> checkTracingConfig(const core::v1::TracingConfig& config,
                                            posix::Posix& os);

// Makes the tracer of a checked section. `nodeId` and `version` become resource attributes.
// Throws std::runtime_error when the library cannot be loaded or refuses its configuration.
// A loaded library stays loaded for as long as its tracer lives.
TracingSetup makeTracer(const core::v1::TracingConfig& config, const std::string& nodeId,
                        const std::string& version, uint64_t seed,
                        std::shared_ptr<spdlog::logger> logger);

}  // namespace snow
