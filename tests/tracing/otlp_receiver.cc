#include "otlp_receiver.h"

#include <charconv>
#include <csignal>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string_view>

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "daemon/daemon_process.h"
#include "support/files.h"

namespace snow::testing {
namespace {

using Json = nlohmann::json;

// Spans reach the file, not a pipe the loop watches: waiting polls it at this pace.
constexpr Duration kPollInterval = std::chrono::milliseconds(10);
constexpr std::chrono::milliseconds kStopDeadline = std::chrono::seconds(10);

std::chrono::milliseconds toMilliseconds(Duration d) {
  return std::chrono::ceil<std::chrono::milliseconds>(d);
}

// The complete lines of the file: a span line being appended while we read has no '\n' yet.
std::vector<std::string_view> completeLines(std::string_view text) {
  std::vector<std::string_view> lines;
  size_t begin = 0;
  for (size_t end = text.find('\n'); end != std::string_view::npos;
       begin = end + 1, end = text.find('\n', begin)) {
    if (end > begin) {
      lines.push_back(text.substr(begin, end - begin));
    }
  }
  return lines;
}

std::string stringify(const Json& value) {
  if (value.is_string()) {
    return value.get<std::string>();
  }
  if (value.is_null()) {
    return "";
  }
  return value.dump();
}

ReceivedSpan::Attributes attributesOf(const Json& object) {
  ReceivedSpan::Attributes attributes;
  for (const auto& [key, value] : object.items()) {
    attributes.emplace(key, stringify(value));
  }
  return attributes;
}

// The receiver writes 64-bit times as decimal strings: a double would round them.
uint64_t nanosecondsOf(const Json& value) {
  const auto text = value.get<std::string>();
  uint64_t ns = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), ns);
  if (error != std::errc() || end != text.data() + text.size()) {
    throw std::runtime_error("otlp-receiver: bad nanoseconds \"" + text + "\"");
  }
  return ns;
}

ReceivedSpan parseSpan(std::string_view line) {
  const Json j = Json::parse(line);
  ReceivedSpan span;
  span.traceId = j.at("traceId").get<std::string>();
  span.spanId = j.at("spanId").get<std::string>();
  span.parentSpanId = j.at("parentSpanId").get<std::string>();
  span.name = j.at("name").get<std::string>();
  span.traceState = j.at("traceState").get<std::string>();
  span.kind = j.at("kind").get<int>();
  span.flags = j.at("flags").get<uint32_t>();
  span.startNs = nanosecondsOf(j.at("startTimeUnixNano"));
  span.endNs = nanosecondsOf(j.at("endTimeUnixNano"));
  span.attributes = attributesOf(j.at("attributes"));
  for (const auto& e : j.at("events")) {
    span.events.push_back({e.at("name").get<std::string>(), nanosecondsOf(e.at("timeUnixNano")),
                           attributesOf(e.at("attributes"))});
  }
  for (const auto& l : j.at("links")) {
    span.links.push_back({l.at("traceId").get<std::string>(), l.at("spanId").get<std::string>(),
                          l.at("traceState").get<std::string>(), attributesOf(l.at("attributes"))});
  }
  span.statusCode = j.at("status").at("code").get<int>();
  span.statusMessage = j.at("status").at("message").get<std::string>();
  span.resource = attributesOf(j.at("resource"));
  span.scopeName = j.at("scope").at("name").get<std::string>();
  span.scopeVersion = j.at("scope").at("version").get<std::string>();
  span.droppedAttributesCount = j.at("droppedAttributesCount").get<uint32_t>();
  span.json = std::string(line);
  return span;
}

}  // namespace

OtlpReceiver::OtlpReceiver(Dispatcher& loop, uint16_t port, int failFirst, bool withHttp)
    : loop_(loop),
      port_(port),
      withHttp_(withHttp),
      directory_("snow-otlp-receiver"),
      outputPath_(directory_.file("spans.jsonl")) {
  start(failFirst);  // A throw here still removes the directory: directory_ is constructed.
}

OtlpReceiver::~OtlpReceiver() {
  stop();  // Before directory_ goes, with the file the receiver writes.
}

std::string OtlpReceiver::node() {
  return SNOW_NODE;
}

std::string OtlpReceiver::script(const std::string& name) {
  return std::string(SNOW_OTLP_RECEIVER_DIR) + "/" + name;
}

void OtlpReceiver::start(int failFirst) {
  std::vector<std::string> args{script("receiver.mjs"), "--out", outputPath_};
  args.insert(args.end(), {"--port", std::to_string(port_), "--fail", std::to_string(failFirst)});
  if (withHttp_) {
    args.insert(args.end(), {"--http-port", std::to_string(httpPort_)});
  }
  process_ = std::make_unique<DaemonProcess>(loop_, node(), args, std::vector<std::string>{});
  const uint16_t port = waitForPort("otlp-receiver listening on 127.0.0.1:");
  if (port == 0) {
    failToStart("no gRPC listening line");
  }
  if (port_ != 0 && port != port_) {
    failToStart(fmt::format("listening on port {}, not {}", port, port_));
  }
  port_ = port;
  if (withHttp_) {
    httpPort_ = waitForPort("otlp-receiver http on 127.0.0.1:");
    if (httpPort_ == 0) {
      failToStart("no HTTP listening line");
    }
  }
}

uint16_t OtlpReceiver::waitForPort(const std::string& prefix) {
  const auto deadline = toMilliseconds(kDefaultDeadline);
  const size_t at = process_->waitForLog(prefix, 0, deadline);
  if (at == std::string::npos) {
    return 0;
  }
  const size_t begin = at + prefix.size();
  const size_t end = process_->waitForLog("\n", begin, deadline);
  if (end == std::string::npos) {
    return 0;
  }
  const std::string& text = process_->log();
  uint16_t port = 0;
  auto [last, error] = std::from_chars(text.data() + begin, text.data() + end, port);
  return error == std::errc() && last == text.data() + end ? port : 0;
}

void OtlpReceiver::failToStart(const std::string& why) {
  (void)stop();
  throw std::runtime_error(fmt::format(
      "otlp-receiver did not start ({}; is it installed? scripts/otlp-receiver-install, the "
      "otlp_receiver test fixture). Its log:\n{}",
      why, pastLogs_));
}

int OtlpReceiver::stop() {
  if (!process_) {
    return -1;
  }
  process_->signal(SIGTERM);
  int code = process_->waitForExit(kStopDeadline);
  if (code < 0) {
    process_->signal(SIGKILL);
    code = process_->waitForExit(kStopDeadline);
  }
  pastLogs_ += process_->log();
  process_.reset();  // Reaps it if even SIGKILL was not seen to end it.
  return code;
}

void OtlpReceiver::restart(int failFirst) {
  (void)stop();
  start(failFirst);
}

std::string OtlpReceiver::endpoint() const {
  return fmt::format("127.0.0.1:{}", port_);
}

std::string OtlpReceiver::httpUrl() const {
  return withHttp_ ? fmt::format("http://127.0.0.1:{}/v1/traces", httpPort_) : std::string();
}

std::vector<ReceivedSpan> OtlpReceiver::spans() const {
  const std::string text = readFile(outputPath_);
  std::vector<ReceivedSpan> result;
  for (const auto line : completeLines(text)) {
    try {
      result.push_back(parseSpan(line));
    } catch (const std::exception& e) {
      throw std::runtime_error(
          fmt::format("otlp-receiver: unreadable span line ({}): {}", e.what(), line));
    }
  }
  return result;
}

size_t OtlpReceiver::spanCount() const {
  return completeLines(readFile(outputPath_)).size();
}

bool OtlpReceiver::waitForSpans(size_t count, Duration deadline) {
  TimerPtr poll;
  poll = loop_.createTimer([&poll] { poll->enable(kPollInterval); });
  poll->enable(kPollInterval);
  return loop_.runUntil([&] { return spanCount() >= count; }, deadline);
}

std::string OtlpReceiver::log() const {
  return process_ ? pastLogs_ + process_->log() : pastLogs_;
}

size_t OtlpReceiver::waitForLog(const std::string& text, size_t from, Duration deadline) {
  if (!process_) {
    return std::string::npos;
  }
  return process_->waitForLog(text, from, toMilliseconds(deadline));
}

}  // namespace snow::testing
