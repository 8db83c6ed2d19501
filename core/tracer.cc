#include "snow/core/tracer.h"

#include <algorithm>
#include <cstring>
#include <istream>
#include <mutex>
#include <optional>
#include <ostream>
#include <stdexcept>

#include <fmt/format.h>
#include <opentracing/ext/tags.h>

#include "snow/core/trace_context.h"

#include "span_pipeline.h"

namespace snow::tracing {
namespace {

constexpr std::string_view kTraceparent = "traceparent";
constexpr std::string_view kTracestate = "tracestate";
constexpr std::string_view kBaggage = "baggage";
constexpr std::string_view kUberTraceId = "uber-trace-id";
constexpr std::string_view kUberBaggagePrefix = "uberctx-";
constexpr size_t kTypicalAttributes = 6;

using Baggage = std::vector<std::pair<std::string, std::string>>;

uint64_t splitmix64(uint64_t x) noexcept {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30U)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27U)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31U);
}

uint64_t unixNanos(opentracing::SystemTime t) noexcept {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count());
}

bool equalsIgnoringCase(std::string_view a, std::string_view b) noexcept {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

bool startsWithIgnoringCase(std::string_view s, std::string_view prefix) noexcept {
  return s.size() >= prefix.size() && equalsIgnoringCase(s.substr(0, prefix.size()), prefix);
}

std::string_view view(opentracing::string_view s) noexcept {
  return {s.data(), s.size()};
}

// Baggage values travel percent-encoded (W3C baggage): anything outside the safe set.
std::string percentEncode(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (const char c : in) {
    const auto u = static_cast<unsigned char>(c);
    if (std::isalnum(u) != 0 || c == '-' || c == '_' || c == '.' || c == '~' || c == '/') {
      out.push_back(c);
    } else {
      out += fmt::format("%{:02X}", u);
    }
  }
  return out;
}

std::string percentDecode(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '%' && i + 2 < in.size() &&
        std::isxdigit(static_cast<unsigned char>(in[i + 1])) != 0 &&
        std::isxdigit(static_cast<unsigned char>(in[i + 2])) != 0) {
      out.push_back(static_cast<char>(std::stoi(std::string(in.substr(i + 1, 2)), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(in[i]);
    }
  }
  return out;
}

std::string_view trim(std::string_view s) noexcept {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
    s.remove_prefix(1);
  }
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) {
    s.remove_suffix(1);
  }
  return s;
}

// A header token (RFC 9110 tchar): what a W3C baggage key may be. Other keys cannot travel.
bool isToken(std::string_view key) noexcept {
  return !key.empty() && std::all_of(key.begin(), key.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0 ||
           std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
  });
}

// "k1=v1,k2=v2;prop" (W3C baggage): properties after ';' are ignored.
void parseBaggageHeader(std::string_view header, Baggage& out) {
  while (!header.empty()) {
    const size_t comma = header.find(',');
    std::string_view member = header.substr(0, comma);
    header = comma == std::string_view::npos ? std::string_view() : header.substr(comma + 1);
    member = member.substr(0, member.find(';'));
    const size_t eq = member.find('=');
    if (eq == std::string_view::npos) {
      continue;
    }
    const std::string_view key = trim(member.substr(0, eq));
    if (isToken(key)) {
      out.emplace_back(std::string(key), percentDecode(trim(member.substr(eq + 1))));
    }
  }
}

std::string hex64(uint64_t v) {
  return fmt::format("{:016x}", v);
}

}  // namespace

// The context of one of our spans, or of one extracted from a carrier.
class OwnSpanContext final : public opentracing::SpanContext {
 public:
  TraceId traceId{};
  uint64_t spanId = 0;
  bool sampled = false;
  bool remote = false;  // Extracted from a carrier rather than made here.
  std::string traceState;
  Baggage baggage;

  void ForeachBaggageItem(
      std::function<bool(const std::string&, const std::string&)> f) const override {
    for (const auto& [key, value] : baggage) {
      if (!f(key, value)) {
        return;
      }
    }
  }
  [[nodiscard]] std::unique_ptr<opentracing::SpanContext> Clone() const noexcept override {
    try {
      return std::make_unique<OwnSpanContext>(*this);
    } catch (...) {
      return nullptr;
    }
  }
  [[nodiscard]] std::string ToTraceID() const noexcept override {
    try {
      return TraceContext{traceId, spanId, sampled}.traceIdHex();
    } catch (...) {
      return {};
    }
  }
  [[nodiscard]] std::string ToSpanID() const noexcept override {
    try {
      return hex64(spanId);
    } catch (...) {
      return {};
    }
  }
  [[nodiscard]] TraceContext wire() const noexcept { return {traceId, spanId, sampled}; }
};

namespace {

// The context of a reference made by another tracer, when it prints its ids in hex as ours do.
std::optional<OwnSpanContext> adopt(const opentracing::SpanContext& foreign) {
  if (const auto* own = dynamic_cast<const OwnSpanContext*>(&foreign)) {
    return *own;
  }
  const std::string trace = foreign.ToTraceID();
  const std::string span = foreign.ToSpanID();
  if (trace.empty() || span.empty() || trace.size() > 32 || span.size() > 16) {
    return std::nullopt;
  }
  // Reuse the uber-trace-id parser, which takes hex ids of any length up to the maximum.
  const auto parsed = TraceContext::parseUberTraceId(trace + ":" + span + ":0:1");
  if (!parsed) {
    return std::nullopt;
  }
  OwnSpanContext context;
  context.traceId = parsed->traceId;
  context.spanId = parsed->spanId;
  context.sampled = true;
  return context;
}

AttributeValue toAttribute(const opentracing::Value& value);

std::string toText(const opentracing::Value& value) {
  const AttributeValue a = toAttribute(value);
  return std::visit(
      [](const auto& v) -> std::string {
        if constexpr (std::is_same_v<std::decay_t<decltype(v)>, std::string>) {
          return v;
        } else {
          return fmt::format("{}", v);
        }
      },
      a);
}

struct ToAttribute {
  AttributeValue operator()(bool v) const { return v; }
  AttributeValue operator()(double v) const { return v; }
  AttributeValue operator()(int64_t v) const { return v; }
  AttributeValue operator()(uint64_t v) const {
    if (v <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return static_cast<int64_t>(v);
    }
    return std::to_string(v);
  }
  AttributeValue operator()(const std::string& v) const { return v; }
  AttributeValue operator()(opentracing::string_view v) const { return std::string(view(v)); }
  AttributeValue operator()(std::nullptr_t /*v*/) const { return std::string("null"); }
  AttributeValue operator()(const char* v) const { return std::string(v ? v : "null"); }
  AttributeValue operator()(const opentracing::Values& values) const {
    std::string out = "[";
    for (const auto& v : values) {
      out += (out.size() > 1 ? "," : "") + toText(v);
    }
    return out + "]";
  }
  AttributeValue operator()(const opentracing::Dictionary& dictionary) const {
    std::string out = "{";
    for (const auto& [key, v] : dictionary) {
      out += (out.size() > 1 ? "," : "") + key + ":" + toText(v);
    }
    return out + "}";
  }
};

AttributeValue toAttribute(const opentracing::Value& value) {
  return opentracing::util::apply_visitor(ToAttribute{}, value);
}

bool isTrue(const opentracing::Value& value) {
  const AttributeValue a = toAttribute(value);
  if (const bool* b = std::get_if<bool>(&a)) {
    return *b;
  }
  if (const int64_t* i = std::get_if<int64_t>(&a)) {
    return *i != 0;
  }
  if (const std::string* s = std::get_if<std::string>(&a)) {
    return *s == "true";
  }
  return false;
}

std::optional<SpanKind> kindOf(const opentracing::Value& value) {
  const std::string kind = toText(value);
  if (kind == view(opentracing::ext::span_kind_rpc_server)) {
    return SpanKind::Server;
  }
  if (kind == view(opentracing::ext::span_kind_rpc_client)) {
    return SpanKind::Client;
  }
  if (kind == "producer") {
    return SpanKind::Producer;
  }
  if (kind == "consumer") {
    return SpanKind::Consumer;
  }
  return std::nullopt;
}

}  // namespace

// What both kinds of our spans have: the context, its baggage, and the tracer kept alive.
class OwnSpan : public opentracing::Span {
 public:
  OwnSpan(std::shared_ptr<const Tracer> tracer, OwnSpanContext context)
      : tracer_(std::move(tracer)), context_(std::move(context)) {}
  OwnSpan(const OwnSpan&) = delete;
  OwnSpan& operator=(const OwnSpan&) = delete;

  void SetBaggageItem(opentracing::string_view key,
                      opentracing::string_view value) noexcept override {
    const std::lock_guard lock(mutex_);
    try {
      for (auto& [k, v] : context_.baggage) {
        if (k == view(key)) {
          v.assign(value.data(), value.size());
          return;
        }
      }
      context_.baggage.emplace_back(std::string(view(key)), std::string(view(value)));
    } catch (...) {
      // Out of memory: the item is not set, as if never asked.
    }
  }

  [[nodiscard]] std::string BaggageItem(opentracing::string_view key) const noexcept override {
    const std::lock_guard lock(mutex_);
    try {
      for (const auto& [k, v] : context_.baggage) {
        if (k == view(key)) {
          return v;
        }
      }
    } catch (...) {
      // Copying failed: report the item as absent.
    }
    return {};
  }

  [[nodiscard]] const opentracing::SpanContext& context() const noexcept override {
    return context_;
  }
  [[nodiscard]] const opentracing::Tracer& tracer() const noexcept override { return *tracer_; }

 protected:
  ~OwnSpan() override = default;

  std::shared_ptr<const Tracer> tracer_;
  OwnSpanContext context_;
  mutable std::mutex mutex_;
};

// An unsampled span: ids and baggage to propagate, nothing recorded, no clock read.
class UnsampledSpan final : public OwnSpan {
 public:
  using OwnSpan::OwnSpan;
  void FinishWithOptions(const opentracing::FinishSpanOptions& /*options*/) noexcept override {}
  void SetOperationName(opentracing::string_view /*name*/) noexcept override {}
  void SetTag(opentracing::string_view /*key*/,
              const opentracing::Value& /*value*/) noexcept override {}
  void Log(std::initializer_list<std::pair<opentracing::string_view, opentracing::Value>>
           /*fields*/) noexcept override {}
  void Log(opentracing::SystemTime /*timestamp*/,
           std::initializer_list<std::pair<opentracing::string_view, opentracing::Value>>
           /*fields*/) noexcept override {}
  void Log(opentracing::SystemTime /*timestamp*/,
           const std::vector<std::pair<opentracing::string_view, opentracing::Value>>&
           /*fields*/) noexcept override {}
};

// A sampled span: records into its SpanData and hands it to the tracer when finished.
class RecordingSpan final : public OwnSpan {
 public:
  RecordingSpan(std::shared_ptr<const Tracer> tracer, OwnSpanContext context,
                opentracing::SystemTime startSystem, opentracing::SteadyTime startSteady)
      : OwnSpan(std::move(tracer), std::move(context)), startSteady_(startSteady) {
    data_.traceId = context_.traceId;
    data_.spanId = context_.spanId;
    data_.traceState = context_.traceState;
    data_.startUnixNano = unixNanos(startSystem);
  }

  ~RecordingSpan() override {
    // OpenTracing: a span destroyed unfinished is finished then.
    if (!finished_) {
      FinishWithOptions({});
    }
  }
  RecordingSpan(const RecordingSpan&) = delete;
  RecordingSpan& operator=(const RecordingSpan&) = delete;

  SpanData& data() noexcept { return data_; }

  void FinishWithOptions(const opentracing::FinishSpanOptions& options) noexcept override {
    const std::lock_guard lock(mutex_);
    if (finished_) {
      return;
    }
    finished_ = true;
    const opentracing::SteadyTime end = options.finish_steady_timestamp == opentracing::SteadyTime()
                                            ? opentracing::SteadyClock::now()
                                            : options.finish_steady_timestamp;
    const auto elapsed = std::chrono::duration_cast<std::chrono::nanoseconds>(end - startSteady_);
    data_.endUnixNano =
        data_.startUnixNano + static_cast<uint64_t>(std::max<int64_t>(0, elapsed.count()));
    try {
      for (const auto& record : options.log_records) {
        std::vector<std::pair<opentracing::string_view, opentracing::Value>> fields;
        fields.reserve(record.fields.size());
        for (const auto& [key, value] : record.fields) {
          fields.emplace_back(key, value);
        }
        logLocked(record.timestamp, fields.begin(), fields.end());
      }
    } catch (...) {
      ++data_.droppedEvents;
    }
    tracer_->finished(std::move(data_));
  }

  void SetOperationName(opentracing::string_view name) noexcept override {
    const std::lock_guard lock(mutex_);
    if (!finished_) {
      try {
        data_.name.assign(name.data(), name.size());
      } catch (...) {
        // Out of memory: the old name stays.
      }
    }
  }

  void SetTag(opentracing::string_view key, const opentracing::Value& value) noexcept override {
    const std::lock_guard lock(mutex_);
    if (!finished_) {
      try {
        setTagLocked(view(key), value);
      } catch (...) {
        ++data_.droppedAttributes;
      }
    }
  }

  void Log(std::initializer_list<std::pair<opentracing::string_view, opentracing::Value>>
               fields) noexcept override {
    Log(opentracing::SystemClock::now(), fields);
  }

  void Log(opentracing::SystemTime timestamp,
           std::initializer_list<std::pair<opentracing::string_view, opentracing::Value>>
               fields) noexcept override {
    log(timestamp, fields.begin(), fields.end());
  }

  void Log(opentracing::SystemTime timestamp,
           const std::vector<std::pair<opentracing::string_view, opentracing::Value>>&
               fields) noexcept override {
    log(timestamp, fields.begin(), fields.end());
  }

  void setTagLocked(std::string_view key, const opentracing::Value& value) {
    if (key == view(opentracing::ext::span_kind)) {
      if (auto kind = kindOf(value)) {
        data_.kind = *kind;
        return;
      }
    } else if (key == view(opentracing::ext::error)) {
      data_.status = isTrue(value) ? StatusCode::Error : StatusCode::Unset;
      return;
    }
    for (auto& attribute : data_.attributes) {
      if (attribute.key == key) {
        attribute.value = toAttribute(value);
        return;
      }
    }
    if (data_.attributes.size() >= kMaxAttributes) {
      ++data_.droppedAttributes;
      return;
    }
    data_.attributes.push_back({std::string(key), toAttribute(value)});
  }

 private:
  template <typename It>
  void log(opentracing::SystemTime timestamp, It begin, It end) noexcept {
    const std::lock_guard lock(mutex_);
    if (!finished_) {
      try {
        logLocked(timestamp, begin, end);
      } catch (...) {
        ++data_.droppedEvents;
      }
    }
  }

  template <typename It>
  void logLocked(opentracing::SystemTime timestamp, It begin, It end) {
    if (data_.events.size() >= kMaxEvents) {
      ++data_.droppedEvents;
      return;
    }
    SpanData::Event event;
    event.timeUnixNano = unixNanos(timestamp);
    bool isError = false;
    std::string message;
    for (It field = begin; field != end; ++field) {
      const std::string_view key = view(field->first);
      if (key == "event") {
        event.name = toText(field->second);
        isError = event.name == "error";
        continue;
      }
      if ((key == "message" || key == "error.object") && message.empty()) {
        message = toText(field->second);
      }
      event.attributes.push_back({std::string(key), toAttribute(field->second)});
    }
    if (event.name.empty()) {
      event.name = "log";
    }
    if (isError && data_.statusMessage.empty()) {
      data_.statusMessage = std::move(message);
    }
    data_.events.push_back(std::move(event));
  }

  opentracing::SteadyTime startSteady_;
  SpanData data_;
  bool finished_ = false;
};

bool Sampler::sample(const TraceId& traceId, std::optional<bool> parentSampled) const noexcept {
  switch (kind) {
    case Kind::Always:
      return true;
    case Kind::Never:
      return false;
    case Kind::ParentBased:
      if (parentSampled) {
        return *parentSampled;
      }
      break;
    case Kind::Ratio:
      break;
  }
  if (ratio >= 1.0) {
    return true;
  }
  if (ratio <= 0.0) {
    return false;
  }
  uint64_t low = 0;
  for (size_t i = 8; i < 16; ++i) {
    low = (low << 8U) | traceId[i];
  }
  // Compare in the top 63 bits, where a double holds the bound exactly enough.
  const auto bound = static_cast<uint64_t>(ratio * static_cast<double>(uint64_t{1} << 63U));
  return (low >> 1U) < bound;
}

Tracer::Tracer(TracerOptions options, std::unique_ptr<SpanExporter> exporter)
    : options_(std::move(options)) {
  if (!exporter) {
    throw std::invalid_argument("a tracer needs an exporter");
  }
  if (options_.queueSize == 0 || options_.batchSize == 0 ||
      options_.batchSize > options_.queueSize) {
    throw std::invalid_argument(
        fmt::format("tracing: batch size ({}) must be at least 1 and at most the queue size ({})",
                    options_.batchSize, options_.queueSize));
  }
  if (!(options_.sampler.ratio >= 0.0 && options_.sampler.ratio <= 1.0)) {
    throw std::invalid_argument(
        fmt::format("tracing: the sampling ratio {} is not in [0, 1]", options_.sampler.ratio));
  }
  seed_ = options_.seed != 0
              ? options_.seed
              : splitmix64(static_cast<uint64_t>(
                               std::chrono::steady_clock::now().time_since_epoch().count()) ^
                           reinterpret_cast<uintptr_t>(this));
  std::vector<Attribute> resource;
  resource.push_back({"service.name", options_.serviceName});
  for (const auto& attribute : options_.resource) {
    resource.push_back(attribute);
  }
  resource.push_back({"telemetry.sdk.name", std::string("snow-core")});
  resource.push_back({"telemetry.sdk.language", std::string("cpp")});
  pipeline_ = std::make_unique<SpanPipeline>(options_, std::move(exporter), std::move(resource));
}

Tracer::~Tracer() {
  Close();
}

std::shared_ptr<Tracer> Tracer::make(TracerOptions options,
                                     std::unique_ptr<SpanExporter> exporter) {
  return std::shared_ptr<Tracer>(new Tracer(std::move(options), std::move(exporter)));
}

uint64_t Tracer::nextId() const noexcept {
  // splitmix64 is a bijection, so distinct counters give distinct ids within this tracer; the
  // random seed keeps them apart from other processes'.
  while (true) {
    const uint64_t id =
        splitmix64(seed_ + idCounter_.fetch_add(0x9e3779b97f4a7c15ULL, std::memory_order_relaxed));
    if (id != 0) {
      return id;
    }
  }
}

std::unique_ptr<opentracing::Span> Tracer::StartSpanWithOptions(
    opentracing::string_view operationName,
    const opentracing::StartSpanOptions& options) const noexcept {
  try {
    started_.fetch_add(1, std::memory_order_relaxed);
    OwnSpanContext context;
    std::optional<OwnSpanContext> parent;
    bool parentIsChildOf = false;
    std::vector<SpanData::Link> links;
    for (const auto& [type, reference] : options.references) {
      if (reference == nullptr) {
        continue;
      }
      std::optional<OwnSpanContext> adopted = adopt(*reference);
      if (!adopted) {
        continue;
      }
      // The first ChildOf is the parent; before one is seen, the first FollowsFrom is.
      const bool childOf = type == opentracing::SpanReferenceType::ChildOfRef;
      if (!parent || (childOf && !parentIsChildOf)) {
        if (parent) {
          links.push_back({parent->traceId, parent->spanId});
        }
        for (const auto& item : adopted->baggage) {
          context.baggage.push_back(item);
        }
        parent = std::move(adopted);
        parentIsChildOf = childOf;
      } else {
        links.push_back({adopted->traceId, adopted->spanId});
        for (auto& item : adopted->baggage) {
          context.baggage.push_back(std::move(item));
        }
      }
    }
    if (parent) {
      context.traceId = parent->traceId;
      context.traceState = parent->traceState;
    } else {
      const uint64_t high = nextId();
      const uint64_t low = nextId();
      for (size_t i = 0; i < 8; ++i) {
        context.traceId[i] = static_cast<uint8_t>(high >> (56U - 8U * i));
        context.traceId[8 + i] = static_cast<uint8_t>(low >> (56U - 8U * i));
      }
    }
    context.spanId = nextId();
    context.sampled = options_.sampler.sample(
        context.traceId, parent ? std::optional<bool>(parent->sampled) : std::nullopt);
    for (const auto& [key, value] : options.tags) {
      if (key == view(opentracing::ext::sampling_priority)) {
        context.sampled = isTrue(value);  // OpenTracing's way to force a decision.
      }
    }

    // An unsampled span records nothing: no clock is read for it.
    if (!context.sampled) {
      return std::make_unique<UnsampledSpan>(shared_from_this(), std::move(context));
    }
    const bool noTimes = options.start_system_timestamp == opentracing::SystemTime() &&
                         options.start_steady_timestamp == opentracing::SteadyTime();
    const opentracing::SystemTime startSystem =
        noTimes ? opentracing::SystemClock::now()
                : (options.start_system_timestamp != opentracing::SystemTime()
                       ? options.start_system_timestamp
                       : opentracing::convert_time_point<opentracing::SystemClock>(
                             options.start_steady_timestamp));
    const opentracing::SteadyTime startSteady =
        noTimes ? opentracing::SteadyClock::now()
                : (options.start_steady_timestamp != opentracing::SteadyTime()
                       ? options.start_steady_timestamp
                       : opentracing::convert_time_point<opentracing::SteadyClock>(
                             options.start_system_timestamp));
    auto span = std::make_unique<RecordingSpan>(shared_from_this(), std::move(context), startSystem,
                                                startSteady);
    {
      SpanData& data = span->data();
      data.name.assign(operationName.data(), operationName.size());
      if (parent) {
        data.parentSpanId = parent->spanId;
        data.parentIsRemote = parent->remote;
      }
      data.links = std::move(links);
      // Room for the few tags most spans get (the event tree's two, an RPC's five), in one
      // allocation rather than one per growth step.
      data.attributes.reserve(kTypicalAttributes);
      for (const auto& [key, value] : options.tags) {
        span->setTagLocked(key, value);
      }
    }
    return span;
  } catch (...) {
    return nullptr;
  }
}

void Tracer::finished(SpanData&& span) const noexcept {
  pipeline_->push(std::move(span));
}

namespace {

const OwnSpanContext* ownContext(const opentracing::SpanContext& context) {
  return dynamic_cast<const OwnSpanContext*>(&context);
}

// Writes our headers through `set`; the one place that decides what goes on the wire.
template <typename Set>
opentracing::expected<void> injectHeaders(const opentracing::SpanContext& context, Set&& set) {
  const OwnSpanContext* own = ownContext(context);
  if (own == nullptr) {
    return opentracing::make_unexpected(opentracing::invalid_span_context_error);
  }
  if (auto r = set(kTraceparent, own->wire().traceparent()); !r) {
    return r;
  }
  if (!own->traceState.empty()) {
    if (auto r = set(kTracestate, own->traceState); !r) {
      return r;
    }
  }
  if (!own->baggage.empty()) {
    std::string header;
    for (const auto& [key, value] : own->baggage) {
      if (isToken(key)) {  // Set with a key no header can carry: it stays on this node.
        header += (header.empty() ? "" : ",") + key + "=" + percentEncode(value);
      }
    }
    if (!header.empty()) {
      if (auto r = set(kBaggage, header); !r) {
        return r;
      }
    }
  }
  return {};
}

// Reads our headers from (key, value) pairs; the one place that decides what is accepted.
class HeaderCollector {
 public:
  void offer(std::string_view key, std::string_view value) {
    if (equalsIgnoringCase(key, kTraceparent)) {
      traceparent_ = std::string(value);
    } else if (equalsIgnoringCase(key, kTracestate)) {
      // Several tracestate headers are one list (W3C).
      traceState_ += (traceState_.empty() ? "" : ",") + std::string(trim(value));
    } else if (equalsIgnoringCase(key, kUberTraceId)) {
      uberTraceId_ = std::string(value);
    } else if (equalsIgnoringCase(key, kBaggage)) {
      parseBaggageHeader(value, baggage_);
    } else if (startsWithIgnoringCase(key, kUberBaggagePrefix) &&
               isToken(key.substr(kUberBaggagePrefix.size()))) {
      uberBaggage_.emplace_back(std::string(key.substr(kUberBaggagePrefix.size())),
                                percentDecode(value));
    }
  }

  opentracing::expected<std::unique_ptr<opentracing::SpanContext>> result() {
    std::optional<TraceContext> wire;
    if (traceparent_) {
      wire = TraceContext::parseTraceparent(*traceparent_);
    } else if (uberTraceId_) {
      wire = TraceContext::parseUberTraceId(*uberTraceId_);
      traceState_.clear();  // Jaeger's header has none; a stray one belongs to nothing.
      baggage_.insert(baggage_.end(), uberBaggage_.begin(), uberBaggage_.end());
    } else {
      return std::unique_ptr<opentracing::SpanContext>();
    }
    if (!wire || !wire->valid()) {
      return opentracing::make_unexpected(opentracing::span_context_corrupted_error);
    }
    auto context = std::make_unique<OwnSpanContext>();
    context->traceId = wire->traceId;
    context->spanId = wire->spanId;
    context->sampled = wire->sampled;
    context->remote = true;
    context->traceState = std::move(traceState_);
    context->baggage = std::move(baggage_);
    return std::unique_ptr<opentracing::SpanContext>(std::move(context));
  }

 private:
  std::optional<std::string> traceparent_;
  std::optional<std::string> uberTraceId_;
  std::string traceState_;
  Baggage baggage_;
  Baggage uberBaggage_;
};

opentracing::expected<std::unique_ptr<opentracing::SpanContext>> extractTextMap(
    const opentracing::TextMapReader& reader) {
  HeaderCollector headers;
  auto walked =
      reader.ForeachKey([&](opentracing::string_view key,
                            opentracing::string_view value) -> opentracing::expected<void> {
        headers.offer(view(key), view(value));
        return {};
      });
  if (!walked) {
    return opentracing::make_unexpected(walked.error());
  }
  return headers.result();
}

}  // namespace

opentracing::expected<void> Tracer::Inject(const opentracing::SpanContext& context,
                                           std::ostream& writer) const {
  // One "key: value" line per header, the same headers as a text map.
  auto written = injectHeaders(context, [&](std::string_view key, const std::string& value) {
    writer << key << ": " << value << '\n';
    return opentracing::expected<void>();
  });
  if (written && !writer.good()) {
    return opentracing::make_unexpected(std::make_error_code(std::errc::io_error));
  }
  return written;
}

opentracing::expected<void> Tracer::Inject(const opentracing::SpanContext& context,
                                           const opentracing::TextMapWriter& writer) const {
  return injectHeaders(context, [&](std::string_view key, const std::string& value) {
    return writer.Set(opentracing::string_view(key.data(), key.size()), value);
  });
}

opentracing::expected<void> Tracer::Inject(const opentracing::SpanContext& context,
                                           const opentracing::HTTPHeadersWriter& writer) const {
  return Inject(context, static_cast<const opentracing::TextMapWriter&>(writer));
}

opentracing::expected<void> Tracer::Inject(const opentracing::SpanContext& context,
                                           const opentracing::CustomCarrierWriter& writer) const {
  return writer.Inject(*this, context);
}

opentracing::expected<std::unique_ptr<opentracing::SpanContext>> Tracer::Extract(
    std::istream& reader) const {
  HeaderCollector headers;
  std::string line;
  while (std::getline(reader, line)) {
    const size_t colon = line.find(':');
    if (colon != std::string::npos) {
      headers.offer(trim(std::string_view(line).substr(0, colon)),
                    trim(std::string_view(line).substr(colon + 1)));
    }
  }
  if (reader.bad()) {
    return opentracing::make_unexpected(std::make_error_code(std::errc::io_error));
  }
  return headers.result();
}

opentracing::expected<std::unique_ptr<opentracing::SpanContext>> Tracer::Extract(
    const opentracing::TextMapReader& reader) const {
  return extractTextMap(reader);
}

opentracing::expected<std::unique_ptr<opentracing::SpanContext>> Tracer::Extract(
    const opentracing::HTTPHeadersReader& reader) const {
  return extractTextMap(reader);
}

opentracing::expected<std::unique_ptr<opentracing::SpanContext>> Tracer::Extract(
    const opentracing::CustomCarrierReader& reader) const {
  return reader.Extract(*this);
}

void Tracer::Close() noexcept {
  pipeline_->stop();
}

bool Tracer::flush(Duration timeout) noexcept {
  return pipeline_->flush(timeout);
}

TracerStats Tracer::stats() const {
  TracerStats stats = pipeline_->stats();
  stats.started = started_.load(std::memory_order_relaxed);
  return stats;
}

Tracer* asOwnTracer(opentracing::Tracer& tracer) noexcept {
  return dynamic_cast<Tracer*>(&tracer);
}

}  // namespace snow::tracing
