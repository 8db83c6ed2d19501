#pragma once

// The tracing seam of the core: which OpenTracing tracer is in use.
//
// Core code instruments through the OpenTracing C++ API only; which tracer implements it (the
// noop one, ours exporting OTLP, or one loaded from a library) is chosen by the StaticContext.

#include <memory>

#include <opentracing/tracer.h>

namespace snow::tracing {

// The process-wide noop tracer (OpenTracing's). Thread-safe.
std::shared_ptr<opentracing::Tracer> noopTracer();

// True for the tracer noopTracer() returns: instrumentation skips work (tags, strings) whose only
// reader would be a real tracer.
bool isNoop(const opentracing::Tracer& tracer) noexcept;

}  // namespace snow::tracing
