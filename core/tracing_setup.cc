#include "tracing_setup.h"

#include <cstring>

#include <fmt/format.h>
#include <opentracing/dynamic_load.h>
#include <sys/stat.h>

#include "snow/core/config.h"
#include "snow/core/tracer.h"
#include "snow/posix/checked_posix.h"
#include "snow/rpc/otlp_exporter.h"

namespace snow {
namespace {

namespace v1 = core::v1;

constexpr const char* kDefaultEndpoint = "127.0.0.1:4317";

// Each `sampler:` value: the tracer's kind and the name the log and status show.
struct SamplerChoice {
  v1::TracingConfig::SamplerKind config;
  tracing::Sampler::Kind kind;
  std::string_view name;
};
constexpr SamplerChoice kSamplers[] = {
    {v1::TracingConfig::PARENT_BASED, tracing::Sampler::Kind::ParentBased, "parent-based"},
    {v1::TracingConfig::ALWAYS, tracing::Sampler::Kind::Always, "always"},
    {v1::TracingConfig::NEVER, tracing::Sampler::Kind::Never, "never"},
    {v1::TracingConfig::RATIO, tracing::Sampler::Kind::Ratio, "ratio"},
};

// The choice of `kind`; parent-based (the default) for a value this build does not know.
const SamplerChoice& samplerChoice(v1::TracingConfig::SamplerKind kind) {
  for (const auto& choice : kSamplers) {
    if (choice.config == kind) {
      return choice;
    }
  }
  return kSamplers[0];
}

// Keeps a loaded library mapped for as long as its tracer lives. Closing the tracer is the
// daemon's (Daemon::stop()): a second Close() is not harmless for every library.
struct LoadedTracer {
  std::shared_ptr<opentracing::Tracer> tracer;
  std::unique_ptr<opentracing::DynamicTracingLibraryHandle> library;

  LoadedTracer() = default;
  LoadedTracer(const LoadedTracer&) = delete;
  LoadedTracer& operator=(const LoadedTracer&) = delete;
  ~LoadedTracer() {
    tracer.reset();  // Its code lives in the library: gone before the library is unloaded.
    library.reset();
  }
};

TracingSetup loadLibrary(const v1::TracingConfig::Library& config) {
  std::string error;
  auto handle = opentracing::DynamicallyLoadTracingLibrary(config.path().c_str(), error);
  if (!handle) {
    throw std::runtime_error(fmt::format("tracing.library: cannot load {}: {}{}", config.path(),
                                         handle.error().message(),
                                         error.empty() ? "" : " (" + error + ")"));
  }
  auto loaded = std::make_shared<LoadedTracer>();
  loaded->library = std::make_unique<opentracing::DynamicTracingLibraryHandle>(std::move(*handle));
  const std::string json = config.config().empty() ? "{}" : config.config();
  auto tracer = loaded->library->tracer_factory().MakeTracer(json.c_str(), error);
  if (!tracer || !*tracer) {
    throw std::runtime_error(fmt::format(
        "tracing.library: {} refused its configuration: {}{}", config.path(),
        tracer ? "no tracer" : tracer.error().message(), error.empty() ? "" : " (" + error + ")"));
  }
  loaded->tracer = std::move(*tracer);
  opentracing::Tracer* raw = loaded->tracer.get();
  return {std::shared_ptr<opentracing::Tracer>(std::move(loaded), raw),
          "OpenTracing library " + config.path()};
}

}  // namespace

std::vector<std::string> checkTracingConfig(const v1::TracingConfig& config, posix::Posix& os) {
  std::vector<std::string> problems;
  if (config.has_otlp() && config.has_library()) {
    problems.emplace_back(
        "tracing: give either 'otlp' (snow-core's tracer) or 'library' (another tracer), not "
        "both");
  }
  if (config.has_otlp()) {
    const std::string& endpoint = config.otlp().endpoint();
    if (!endpoint.empty()) {
      if (auto problem = rpc::checkOtlpEndpoint(endpoint)) {
        problems.push_back("tracing.otlp.endpoint: " + *problem);
      }
    }
    for (const auto& [key, value] : config.otlp().headers()) {
      if (key.empty() || key.find_first_of("ABCDEFGHIJKLMNOPQRSTUVWXYZ :") != std::string::npos) {
        problems.push_back(fmt::format(
            "tracing.otlp.headers: '{}': gRPC metadata keys are lower case, without spaces or "
            "':'",
            key));
      }
    }
  }
  const auto mustExist = [&](const std::string& path, const char* key) {
    struct stat st {};
    if (auto r = posix::tolerant([&] { return os.stat(path.c_str(), &st); }); !r.ok()) {
      problems.push_back(fmt::format("tracing.{}: {}: {}", key, path, std::strerror(r.errnum)));
    }
  };
  if (config.has_otlp() && !config.otlp().ca_file().empty()) {
    mustExist(config.otlp().ca_file(), "otlp.ca_file");
  }
  if (config.has_library()) {
    if (config.library().path().empty()) {
      problems.emplace_back("tracing.library.path: the tracer library to load is missing");
    } else {
      mustExist(config.library().path(), "library.path");
    }
  }
  if (config.has_ratio() && !(config.ratio() >= 0.0 && config.ratio() <= 1.0)) {
    problems.push_back(fmt::format("tracing.ratio: {} is not in [0, 1]", config.ratio()));
  }
  const size_t queue =
      config.queue_size() != 0 ? config.queue_size() : tracing::TracerOptions{}.queueSize;
  if (config.batch_size() > queue) {
    problems.push_back(fmt::format("tracing.batch_size: {} is larger than the queue ({} spans)",
                                   config.batch_size(), queue));
  }
  return problems;
}

TracingSetup makeTracer(const v1::TracingConfig& config, const std::string& nodeId,
                        const std::string& version, uint64_t seed,
                        std::shared_ptr<spdlog::logger> logger) {
  if (config.has_library()) {
    return loadLibrary(config.library());
  }
  if (!config.has_otlp()) {
    return {nullptr, "off"};
  }
  tracing::TracerOptions options;
  if (!config.service_name().empty()) {
    options.serviceName = config.service_name();
  }
  options.resource = {
      {"service.instance.id", nodeId}, {"snow.node.id", nodeId}, {"service.version", version}};
  const SamplerChoice& sampler = samplerChoice(config.sampler());
  options.sampler.kind = sampler.kind;
  options.sampler.ratio = config.has_ratio() ? config.ratio() : 1.0;
  if (config.queue_size() != 0) {
    options.queueSize = config.queue_size();
  }
  if (config.batch_size() != 0) {
    options.batchSize = config.batch_size();
  }
  options.batchSize = std::min(options.batchSize, options.queueSize);
  options.batchDelay = config::durationOr(config.batch_delay(), options.batchDelay);
  options.exportTimeout = config::durationOr(config.otlp().timeout(), options.exportTimeout);
  options.retry.initial = config::durationOr(config.retry_initial(), options.retry.initial);
  options.retry.max =
      std::max(options.retry.initial, config::durationOr(config.retry_max(), options.retry.max));
  options.shutdownTimeout = config::durationOr(config.shutdown_timeout(), options.shutdownTimeout);
  options.seed = seed;
  options.logger = std::move(logger);

  rpc::OtlpExporterOptions exporter;
  exporter.endpoint =
      config.otlp().endpoint().empty() ? kDefaultEndpoint : config.otlp().endpoint();
  exporter.caFile = config.otlp().ca_file();
  for (const auto& [key, value] : config.otlp().headers()) {
    exporter.headers.emplace_back(key, value);
  }
  exporter.reconnect = options.retry;
  exporter.scopeVersion = version;
  auto tracer = tracing::Tracer::make(options, rpc::makeOtlpGrpcExporter(std::move(exporter)));
  // The ratio only where it decides something.
  const bool usesRatio = sampler.kind == tracing::Sampler::Kind::Ratio ||
                         sampler.kind == tracing::Sampler::Kind::ParentBased;
  std::string description =
      fmt::format("{}, service {}, sampler {}{}", tracer->stats().destination, options.serviceName,
                  sampler.name, usesRatio ? fmt::format(" {}", options.sampler.ratio) : "");
  return {std::move(tracer), std::move(description)};
}

}  // namespace snow
