// libFuzzer target: what snow-core's tracer reads from a carrier (core/tracer.h: Extract over
// HTTP headers and over a stream). Headers come from the network: any input must neither crash
// nor read out of bounds, and a context that was accepted must survive Inject and Extract again
// with the same ids and baggage.
//
// Input: "key: value" lines, as the stream carrier writes them.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "snow/core/tracer.h"

namespace {

// Spans never finish here; an exporter is required all the same.
class NoExporter final : public snow::tracing::SpanExporter {
 public:
  Result exportSpans(std::span<const snow::tracing::SpanData> /*spans*/,
                     std::span<const snow::tracing::Attribute> /*resource*/,
                     std::chrono::steady_clock::time_point /*deadline*/) override {
    return {};
  }
  [[nodiscard]] std::string describe() const override { return "nowhere"; }
};

using Headers = std::vector<std::pair<std::string, std::string>>;
using Callback =
    std::function<opentracing::expected<void>(opentracing::string_view, opentracing::string_view)>;

class Reader final : public opentracing::HTTPHeadersReader {
 public:
  explicit Reader(const Headers& headers) : headers_(headers) {}
  opentracing::expected<void> ForeachKey(Callback f) const override {
    for (const auto& [key, value] : headers_) {
      if (auto r = f(key, value); !r) {
        return r;
      }
    }
    return {};
  }

 private:
  const Headers& headers_;
};

class Writer final : public opentracing::HTTPHeadersWriter {
 public:
  explicit Writer(Headers& headers) : headers_(headers) {}
  opentracing::expected<void> Set(opentracing::string_view key,
                                  opentracing::string_view value) const override {
    headers_.emplace_back(std::string(key), std::string(value));
    return {};
  }

 private:
  Headers& headers_;
};

std::map<std::string, std::string> baggageOf(const opentracing::SpanContext& context) {
  std::map<std::string, std::string> out;
  context.ForeachBaggageItem([&](const std::string& key, const std::string& value) {
    out.emplace(key, value);  // The first of equal keys, as on both sides alike.
    return true;
  });
  return out;
}

const snow::tracing::Tracer& tracer() {
  static const std::shared_ptr<snow::tracing::Tracer> instance = [] {
    snow::tracing::TracerOptions options;
    options.seed = 1;
    return snow::tracing::Tracer::make(options, std::make_unique<NoExporter>());
  }();
  return *instance;
}

void checkRoundTrip(const opentracing::SpanContext& context) {
  Headers written;
  if (!tracer().Inject(context, Writer(written))) {
    std::abort();  // Our own context must always inject.
  }
  auto again = tracer().Extract(Reader(written));
  if (!again || *again == nullptr || (*again)->ToTraceID() != context.ToTraceID() ||
      (*again)->ToSpanID() != context.ToSpanID() || baggageOf(**again) != baggageOf(context)) {
    std::abort();  // Accepted, but not carried faithfully: a propagation bug.
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  Headers headers;
  std::istringstream lines(input);
  for (std::string line; std::getline(lines, line);) {
    const size_t colon = line.find(':');
    if (colon != std::string::npos) {
      headers.emplace_back(line.substr(0, colon), line.substr(colon + 1));
    }
  }
  if (auto context = tracer().Extract(Reader(headers)); context && *context) {
    checkRoundTrip(**context);
  }
  std::istringstream stream(input);
  if (auto context = tracer().Extract(stream); context && *context) {
    checkRoundTrip(**context);
  }
  return 0;
}
