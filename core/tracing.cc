#include "snow/core/tracing.h"

#include <opentracing/noop.h>

namespace snow::tracing {

std::shared_ptr<opentracing::Tracer> noopTracer() {
  static const std::shared_ptr<opentracing::Tracer> tracer = opentracing::MakeNoopTracer();
  return tracer;
}

bool isNoop(const opentracing::Tracer& tracer) noexcept {
  return &tracer == noopTracer().get();
}

}  // namespace snow::tracing
