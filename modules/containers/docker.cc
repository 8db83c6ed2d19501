#include "docker.h"

#include <exception>
#include <type_traits>
#include <unordered_map>
#include <utility>

#include <opentracing/ext/tags.h>

#include <nlohmann/json.hpp>

#include "snow/core/tracing.h"

#include "docker_stream.h"
#include "docker_transport.h"

namespace snow::containers {
namespace detail {
namespace {

using Json = nlohmann::json;

// Percent-encodes everything but RFC 3986's unreserved characters.
std::string escape(std::string_view text) {
  static constexpr std::string_view kHex = "0123456789ABCDEF";
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if ((u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') || (u >= '0' && u <= '9') || c == '-' ||
        c == '.' || c == '_' || c == '~') {
      out += c;
    } else {
      out += '%';
      out += kHex[u >> 4U];
      out += kHex[u & 0xFU];
    }
  }
  return out;
}

// A query string, built one parameter at a time.
class Query {
 public:
  Query& add(std::string_view key, std::string_view value) {
    if (!text_.empty()) {
      text_ += '&';
    }
    text_ += key;
    text_ += '=';
    text_ += escape(value);
    return *this;
  }
  Query& flag(std::string_view key, bool value) {
    return add(key, value ? std::string_view("1") : std::string_view("0"));
  }
  std::string take() { return std::move(text_); }

 private:
  std::string text_;
};

std::string containerPath(const std::string& id, std::string_view rest = {}) {
  std::string path = "/containers/" + escape(id);
  path += rest;
  return path;
}

// Fields of a JSON object, tolerating what is missing or null (Docker writes null for empty
// maps and lists).
std::string stringField(const Json& object, const char* key) {
  const auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

int64_t integerField(const Json& object, const char* key) {
  const auto it = object.find(key);
  return it != object.end() && it->is_number_integer() ? it->get<int64_t>() : 0;
}

bool boolField(const Json& object, const char* key) {
  const auto it = object.find(key);
  return it != object.end() && it->is_boolean() && it->get<bool>();
}

const Json& objectField(const Json& object, const char* key) {
  static const Json kEmpty = Json::object();
  const auto it = object.find(key);
  return it != object.end() && it->is_object() ? *it : kEmpty;
}

std::map<std::string, std::string> labelsField(const Json& object, const char* key) {
  std::map<std::string, std::string> labels;
  for (const auto& [name, value] : objectField(object, key).items()) {
    if (value.is_string()) {
      labels.emplace(name, value.get<std::string>());
    }
  }
  return labels;
}

}  // namespace

// What one call asks of the engine.
struct RequestSpec {
  RequestSpec(const char* m, std::string r, std::string p)
      : method(m), route(std::move(r)), path(std::move(p)) {}

  const char* method;
  std::string route;  // The path with placeholders, naming the span: "/containers/{id}/start".
  std::string path;   // The path asked for, without the version prefix.
  std::string query;  // Escaped; "" for none.
  std::string body;
  const char* contentType = nullptr;
  bool versioned = true;  // Prefix /v<apiVersion>.
};

// One call in flight, on the loop side: it turns the engine's answer into its future's outcome.
class Call {
 public:
  Call() = default;
  virtual ~Call() = default;
  Call(const Call&) = delete;
  Call& operator=(const Call&) = delete;

  // Body bytes of an answer with `status`, in order. Every call keeps an error answer whole, for
  // the DockerError it makes; a successful one goes to consume().
  void data(long status, std::string_view bytes) {
    if (status >= 400) {
      body.append(bytes);
    } else {
      consume(bytes);
    }
  }
  // Bytes of a successful answer: kept for complete(), unless the call streams them on.
  virtual void consume(std::string_view bytes) { body.append(bytes); }
  // A complete answer with a status below 400: settle the future with its value, or throw what
  // it should reject with.
  virtual void complete(long status) = 0;
  // Rejects the future (if not settled yet).
  virtual void fail(std::exception_ptr error) = 0;
  virtual void onCancel(Callback hook) = 0;

  std::string body;
  std::string what;  // "GET /v1.41/containers/abc/json", for messages.
  std::unique_ptr<opentracing::Span> span;
};

template <typename T>
class PromisedCall : public Call {
 public:
  explicit PromisedCall(Dispatcher& loop) : promise_(loop) {}

  Future<T> future() { return promise_.future(); }
  // Also from the promise's cancel hook, where the promise counts as cancelled but has not
  // settled yet: settling it here (with Cancelled) keeps the Promise's destructor from calling it
  // broken.
  void fail(std::exception_ptr error) override {
    if (!settled_) {
      settled_ = true;
      promise_.setError(std::move(error));
    }
  }
  void onCancel(Callback hook) override { promise_.onCancel(std::move(hook)); }
  // Settled here, or cancelled by the consumer (whose Cancelled may still be on its way).
  [[nodiscard]] bool settled() const noexcept { return settled_ || promise_.isCancelled(); }

 protected:
  template <typename... A>
  void succeed(A&&... value) {
    if (!settled_) {  // A callback may have failed it meanwhile.
      settled_ = true;
      promise_.setValue(std::forward<A>(value)...);  // Ignored if the consumer cancelled.
    }
  }

 private:
  Promise<T> promise_;
  bool settled_ = false;
};

// A call whose answer is read whole, then parsed.
template <typename T>
class CallOf final : public PromisedCall<T> {
 public:
  using Parse = UniqueFunction<T(long status, const std::string& body)>;

  CallOf(Dispatcher& loop, Parse parse) : PromisedCall<T>(loop), parse_(std::move(parse)) {}

  void complete(long status) override {
    if constexpr (std::is_void_v<T>) {
      parse_(status, this->body);
      this->succeed();
    } else {
      this->succeed(parse_(status, this->body));
    }
  }

 private:
  Parse parse_;
};

// POST /build: output lines as they come, the image id at the end.
class BuildCall final : public PromisedCall<std::string> {
 public:
  BuildCall(Dispatcher& loop, BuildOutput output)
      : PromisedCall<std::string>(loop), output_(std::move(output)) {}

  void consume(std::string_view bytes) override { stream_.feed(bytes, sink_); }

  void complete(long status) override {
    stream_.finish(sink_);
    if (const auto& error = stream_.error()) {
      std::string text = "docker build failed: " + *error;
      if (const std::string tail = stream_.tail(); !tail.empty()) {
        text += "\nThe last lines of the build log:\n" + tail;
      }
      throw DockerError(static_cast<int>(status), *error, text);
    }
    if (stream_.imageId().empty()) {
      throw DockerError(static_cast<int>(status), "no image id in the build's output",
                        "docker build: the engine reported success but no image id");
    }
    succeed(stream_.imageId());
  }

 private:
  BuildOutput output_;
  // Once the call ended (a callback cancelled it, or destroyed the engine), the rest of the
  // chunk being parsed goes nowhere.
  BuildStream::Sink sink_ = [this](std::string_view line) {
    if (!settled() && output_) {
      output_(line);
    }
  };
  BuildStream stream_;
};

// GET /containers/{id}/logs: the multiplexed stream, demultiplexed as it comes.
class LogsCall final : public PromisedCall<void> {
 public:
  LogsCall(Dispatcher& loop, LogOutput output)
      : PromisedCall<void>(loop), output_(std::move(output)) {}

  void consume(std::string_view bytes) override { demuxer_.feed(bytes, sink_); }

  void complete(long status) override {
    if (!demuxer_.atBoundary()) {
      throw DockerError(static_cast<int>(status), "the log stream ended inside a frame",
                        what + ": the log stream ended inside a frame");
    }
    succeed();
  }

 private:
  LogOutput output_;
  LogDemuxer::Sink sink_ = [this](int stream, std::string_view bytes) {  // As BuildCall's.
    if (!settled() && output_) {
      output_(stream, bytes);
    }
  };
  LogDemuxer demuxer_;
};

// The loop side of a DockerEngine: the calls in flight, by transfer id. Shared with the posts
// of the engine thread, which hold it weakly: a batch that arrives after the engine was destroyed
// finds nothing and is dropped.
class EngineCore : public std::enable_shared_from_this<EngineCore> {
 public:
  EngineCore(Dispatcher& loop, DockerOptions options) : loop_(loop), options_(std::move(options)) {
    if (!options_.tracer) {
      options_.tracer = tracing::noopTracer();
    }
  }

  [[nodiscard]] Dispatcher& loop() const noexcept { return loop_; }
  [[nodiscard]] const DockerOptions& options() const noexcept { return options_; }
  [[nodiscard]] size_t inFlight() const noexcept { return calls_.size(); }
  void attach(EngineThread* thread) noexcept { thread_ = thread; }

  template <typename T>
  Future<T> call(RequestSpec spec, SpanParent parent, typename CallOf<T>::Parse parse) {
    return begin(std::make_shared<CallOf<T>>(loop_, std::move(parse)), std::move(spec), parent);
  }

  template <typename C>
  auto begin(std::shared_ptr<C> call, RequestSpec&& spec, SpanParent parent) {
    auto future = call->future();
    start(std::move(call), std::move(spec), parent);
    return future;
  }

  // The engine thread's batch, in order (loop thread).
  void deliver(std::vector<HttpEvent>& events) {
    for (HttpEvent& event : events) {
      const auto it = calls_.find(event.id);
      if (it == calls_.end()) {
        continue;  // Cancelled meanwhile.
      }
      if (event.kind == HttpEvent::Kind::Data) {
        const std::shared_ptr<Call> call = it->second;  // Alive even if a callback cancels it.
        try {
          call->data(event.status, event.bytes);
        } catch (...) {
          abandon(event.id, std::current_exception());
        }
        continue;
      }
      const std::shared_ptr<Call> call = std::move(it->second);
      calls_.erase(it);
      std::exception_ptr error;
      if (!event.error.empty()) {
        error = transportError(*call, event);
      } else if (event.status >= 400 || event.status == 0) {
        error = answerError(*call, event.status);
      } else {
        try {
          call->complete(event.status);
        } catch (...) {
          error = std::current_exception();
        }
      }
      if (error) {
        call->fail(error);
      }
      endSpan(*call, event.status, error);
    }
  }

  // The engine thread is gone: every call still in flight is cancelled.
  void shutdown() {
    thread_ = nullptr;
    auto calls = std::exchange(calls_, {});
    for (auto& [id, call] : calls) {
      const auto error = std::make_exception_ptr(Cancelled());
      call->fail(error);
      endSpan(*call, 0, error);
    }
  }

 private:
  void start(std::shared_ptr<Call> call, RequestSpec spec, SpanParent parent) {
    const uint64_t id = ++nextId_;
    auto request = std::make_unique<HttpRequest>();
    request->id = id;
    request->method = spec.method;
    request->target = spec.versioned ? "/v" + options_.apiVersion + spec.path : spec.path;
    call->what = std::string(spec.method) + " " + request->target;
    if (!spec.query.empty()) {
      request->target += '?';
      request->target += spec.query;
    }
    request->body = std::move(spec.body);
    request->contentType = spec.contentType;
    if (parent != nullptr) {
      call->span = startSpan(spec, call->what.substr(call->what.find(' ') + 1), parent);
    }
    call->onCancel([weak = weak_from_this(), id] {
      if (const auto core = weak.lock()) {
        core->abandon(id, std::make_exception_ptr(Cancelled()));
      }
    });
    if (thread_ == nullptr) {  // Only while the engine is being destroyed.
      const auto error = std::make_exception_ptr(Cancelled());
      call->fail(error);
      endSpan(*call, 0, error);
      return;
    }
    calls_.emplace(id, std::move(call));
    thread_->submit(std::move(request));
  }

  // Ends a call before its answer did: the future rejects with `error`, the transfer is dropped.
  void abandon(uint64_t id, const std::exception_ptr& error) {
    const auto it = calls_.find(id);
    if (it == calls_.end()) {
      return;
    }
    const std::shared_ptr<Call> call = std::move(it->second);
    calls_.erase(it);
    call->fail(error);
    endSpan(*call, 0, error);
    if (thread_ != nullptr) {
      thread_->abort(id);
    }
  }

  std::exception_ptr transportError(const Call& call, const HttpEvent& event) const {
    const std::string& socket = options_.socketPath;
    if (event.connectFailed) {
      return std::make_exception_ptr(DockerError(
          0, event.error, "cannot reach the Docker engine at " + socket + ": " + event.error));
    }
    return std::make_exception_ptr(
        DockerError(0, event.error,
                    "the Docker engine at " + socket +
                        (event.status == 0 ? " did not answer " : " broke off its answer to ") +
                        call.what + ": " + event.error));
  }

  static std::exception_ptr answerError(const Call& call, long status) {
    std::string message;
    const Json answer = Json::parse(call.body, nullptr, /*allow_exceptions=*/false);
    if (answer.is_object()) {
      message = stringField(answer, "message");
    }
    if (message.empty()) {
      message = call.body;
      while (!message.empty() && (message.back() == '\n' || message.back() == '\r')) {
        message.pop_back();
      }
    }
    if (message.empty()) {
      message = "no message";
    }
    return std::make_exception_ptr(DockerError(
        static_cast<int>(status), message,
        call.what + ": the Docker engine answered " + std::to_string(status) + ": " + message));
  }

  std::unique_ptr<opentracing::Span> startSpan(const RequestSpec& spec, std::string_view path,
                                               SpanParent parent) const {
    const std::string name = std::string("docker ") + spec.method + " " + spec.route;
    return options_.tracer->StartSpan(
        name,
        {opentracing::ChildOf(parent),
         opentracing::SetTag(opentracing::ext::span_kind, opentracing::ext::span_kind_rpc_client),
         opentracing::SetTag(opentracing::ext::http_method, std::string(spec.method)),
         // Owned strings: a tracer may keep a tag's value until the span is long finished.
         opentracing::SetTag(opentracing::ext::http_url, std::string(path)),
         opentracing::SetTag(opentracing::ext::peer_address, options_.socketPath)});
  }

  static void endSpan(Call& call, long status, const std::exception_ptr& error) {
    if (!call.span) {
      return;
    }
    if (status != 0) {
      call.span->SetTag(opentracing::ext::http_status_code, static_cast<int64_t>(status));
    }
    if (error) {
      call.span->SetTag(opentracing::ext::error, true);
      call.span->Log({{"event", "error"}, {"message", describe(error)}});
    }
    call.span->Finish();
    call.span.reset();
  }

  Dispatcher& loop_;
  DockerOptions options_;
  EngineThread* thread_ = nullptr;
  uint64_t nextId_ = 0;
  std::unordered_map<uint64_t, std::shared_ptr<Call>> calls_;
};

namespace {

Json parseJson(long status, const std::string& body, std::string_view what) {
  Json json = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) {
    throw DockerError(static_cast<int>(status), "malformed JSON in the answer",
                      std::string(what) + ": malformed JSON in the Docker engine's answer");
  }
  return json;
}

Json labelsJson(const std::map<std::string, std::string>& labels) {
  Json json = Json::object();
  for (const auto& [key, value] : labels) {
    json[key] = value;
  }
  return json;
}

const char* conditionName(WaitCondition condition) {
  switch (condition) {
    case WaitCondition::NotRunning:
      return "not-running";
    case WaitCondition::NextExit:
      return "next-exit";
    case WaitCondition::Removed:
      return "removed";
  }
  return "not-running";
}

}  // namespace
}  // namespace detail

using detail::Json;
using detail::Query;
using detail::RequestSpec;

DockerEngine::DockerEngine(Dispatcher& loop, DockerOptions options)
    : core_(std::make_shared<detail::EngineCore>(loop, std::move(options))) {
  std::weak_ptr<detail::EngineCore> weak = core_;
  thread_ = std::make_unique<detail::EngineThread>(
      core_->options().socketPath, core_->options().connectTimeout,
      [weak = std::move(weak), &loop](std::vector<detail::HttpEvent>&& events) {
        loop.post([weak, events = std::move(events)]() mutable {
          if (const auto core = weak.lock()) {
            core->deliver(events);
          }
        });
      });
  core_->attach(thread_.get());
}

DockerEngine::~DockerEngine() {
  core_->attach(nullptr);
  thread_.reset();  // Joins: nothing is posted from here on.
  core_->shutdown();
}

const std::string& DockerEngine::socketPath() const noexcept {
  return core_->options().socketPath;
}

size_t DockerEngine::callsInFlight() const noexcept {
  return core_->inFlight();
}

Future<void> DockerEngine::ping(SpanParent parent) {
  RequestSpec spec("GET", "/_ping", "/_ping");
  spec.versioned = false;
  return core_->call<void>(std::move(spec), parent, [](long, const std::string&) {});
}

Future<EngineVersion> DockerEngine::version(SpanParent parent) {
  return core_->call<EngineVersion>(
      RequestSpec("GET", "/version", "/version"), parent, [](long status, const std::string& body) {
        const Json json = detail::parseJson(status, body, "GET /version");
        EngineVersion version;
        version.version = detail::stringField(json, "Version");
        version.apiVersion = detail::stringField(json, "ApiVersion");
        version.minApiVersion = detail::stringField(json, "MinAPIVersion");
        version.os = detail::stringField(json, "Os");
        version.arch = detail::stringField(json, "Arch");
        version.kernelVersion = detail::stringField(json, "KernelVersion");
        return version;
      });
}

Future<std::string> DockerEngine::build(std::string tarContext, const BuildOptions& options,
                                        BuildOutput onOutput, SpanParent parent) {
  Query query;
  query.add("dockerfile", options.dockerfile);
  for (const std::string& tag : options.tags) {
    query.add("t", tag);
  }
  if (!options.labels.empty()) {
    query.add("labels", detail::labelsJson(options.labels).dump());
  }
  if (!options.buildArgs.empty()) {
    query.add("buildargs", detail::labelsJson(options.buildArgs).dump());
  }
  if (options.noCache) {
    query.flag("nocache", true);
  }
  // Intermediate containers go, whether the build succeeds or not.
  query.flag("rm", true).flag("forcerm", true);
  if (!options.networkMode.empty()) {
    query.add("networkmode", options.networkMode);
  }
  RequestSpec spec("POST", "/build", "/build");
  spec.query = query.take();
  spec.body = std::move(tarContext);  // Moved all the way to the upload: never copied.
  spec.contentType = "application/x-tar";
  return core_->begin(std::make_shared<detail::BuildCall>(core_->loop(), std::move(onOutput)),
                      std::move(spec), parent);
}

Future<std::string> DockerEngine::createContainer(const ContainerSpec& container,
                                                  SpanParent parent) {
  Json body = {{"Image", container.image},
               {"Env", container.env},
               {"Labels", detail::labelsJson(container.labels)},
               {"HostConfig", {{"NetworkMode", container.networkMode}}}};
  if (container.cmd) {
    body["Cmd"] = *container.cmd;
  }
  if (container.memoryBytes) {
    body["HostConfig"]["Memory"] = *container.memoryBytes;
  }
  RequestSpec spec("POST", "/containers/create", "/containers/create");
  if (!container.name.empty()) {
    spec.query = Query().add("name", container.name).take();
  }
  spec.body = body.dump();
  spec.contentType = "application/json";
  return core_->call<std::string>(
      std::move(spec), parent, [](long status, const std::string& answer) {
        const Json json = detail::parseJson(status, answer, "POST /containers/create");
        std::string id = detail::stringField(json, "Id");
        if (id.empty()) {
          throw DockerError(static_cast<int>(status), "no Id in the answer",
                            "POST /containers/create: no Id in the Docker engine's answer");
        }
        return id;
      });
}

Future<void> DockerEngine::start(const std::string& id, SpanParent parent) {
  return core_->call<void>(
      RequestSpec("POST", "/containers/{id}/start", detail::containerPath(id, "/start")), parent,
      [](long, const std::string&) {});
}

Future<int64_t> DockerEngine::wait(const std::string& id, WaitCondition condition,
                                   SpanParent parent) {
  RequestSpec spec("POST", "/containers/{id}/wait", detail::containerPath(id, "/wait"));
  spec.query = Query().add("condition", detail::conditionName(condition)).take();
  return core_->call<int64_t>(std::move(spec), parent, [](long status, const std::string& body) {
    const Json json = detail::parseJson(status, body, "POST /containers/{id}/wait");
    const std::string error = detail::stringField(detail::objectField(json, "Error"), "Message");
    if (!error.empty()) {
      throw DockerError(static_cast<int>(status), error, "POST /containers/{id}/wait: " + error);
    }
    return detail::integerField(json, "StatusCode");
  });
}

Future<void> DockerEngine::stop(const std::string& id, int timeoutSeconds, SpanParent parent) {
  RequestSpec spec("POST", "/containers/{id}/stop", detail::containerPath(id, "/stop"));
  spec.query = Query().add("t", std::to_string(timeoutSeconds)).take();
  return core_->call<void>(std::move(spec), parent, [](long, const std::string&) {});
}

Future<void> DockerEngine::remove(const std::string& id, bool force, SpanParent parent) {
  RequestSpec spec("DELETE", "/containers/{id}", detail::containerPath(id));
  spec.query = Query().flag("force", force).flag("v", true).take();
  return core_->call<void>(std::move(spec), parent, [](long, const std::string&) {});
}

Future<ContainerState> DockerEngine::inspect(const std::string& id, SpanParent parent) {
  return core_->call<ContainerState>(
      RequestSpec("GET", "/containers/{id}/json", detail::containerPath(id, "/json")), parent,
      [](long status, const std::string& body) {
        const Json json = detail::parseJson(status, body, "GET /containers/{id}/json");
        const Json& state = detail::objectField(json, "State");
        const Json& config = detail::objectField(json, "Config");
        ContainerState result;
        result.id = detail::stringField(json, "Id");
        result.name = detail::stringField(json, "Name");
        result.image = detail::stringField(config, "Image");
        result.imageId = detail::stringField(json, "Image");
        result.status = detail::stringField(state, "Status");
        result.running = detail::boolField(state, "Running");
        result.oomKilled = detail::boolField(state, "OOMKilled");
        result.exitCode = detail::integerField(state, "ExitCode");
        result.error = detail::stringField(state, "Error");
        result.startedAt = detail::stringField(state, "StartedAt");
        result.finishedAt = detail::stringField(state, "FinishedAt");
        result.labels = detail::labelsField(config, "Labels");
        return result;
      });
}

Future<std::vector<ContainerSummary>> DockerEngine::list(
    const std::map<std::string, std::string>& labels, bool all, SpanParent parent) {
  Query query;
  query.flag("all", all);
  if (!labels.empty()) {
    Json filters = {{"label", Json::array()}};
    for (const auto& [key, value] : labels) {
      std::string filter = key;
      if (!value.empty()) {
        filter += '=';
        filter += value;
      }
      filters["label"].push_back(std::move(filter));
    }
    query.add("filters", filters.dump());
  }
  RequestSpec spec("GET", "/containers/json", "/containers/json");
  spec.query = query.take();
  return core_->call<std::vector<ContainerSummary>>(
      std::move(spec), parent, [](long status, const std::string& body) {
        const Json json = detail::parseJson(status, body, "GET /containers/json");
        if (!json.is_array()) {
          throw DockerError(static_cast<int>(status), "the answer is not a list",
                            "GET /containers/json: the Docker engine's answer is not a list");
        }
        std::vector<ContainerSummary> containers;
        containers.reserve(json.size());
        for (const Json& entry : json) {
          ContainerSummary& summary = containers.emplace_back();
          summary.id = detail::stringField(entry, "Id");
          summary.image = detail::stringField(entry, "Image");
          summary.state = detail::stringField(entry, "State");
          summary.status = detail::stringField(entry, "Status");
          summary.labels = detail::labelsField(entry, "Labels");
          summary.created = detail::integerField(entry, "Created");
          if (const auto names = entry.find("Names"); names != entry.end() && names->is_array()) {
            for (const Json& name : *names) {
              if (name.is_string()) {
                summary.names.push_back(name.get<std::string>());
              }
            }
          }
        }
        return containers;
      });
}

Future<void> DockerEngine::logs(const std::string& id, bool follow, LogOutput onOutput,
                                SpanParent parent) {
  RequestSpec spec("GET", "/containers/{id}/logs", detail::containerPath(id, "/logs"));
  spec.query = Query().flag("stdout", true).flag("stderr", true).flag("follow", follow).take();
  return core_->begin(std::make_shared<detail::LogsCall>(core_->loop(), std::move(onOutput)),
                      std::move(spec), parent);
}

}  // namespace snow::containers
