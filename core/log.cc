#include "snow/core/log.h"

#include <chrono>

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include "snow/core/event.h"

namespace snow::log {
namespace {

struct EventIds {
  std::string eventId;
  std::string traceId;
};

std::optional<EventIds> currentIds() {
  const Event* event = EventTree::current();
  if (event == nullptr) {
    return std::nullopt;
  }
  return EventIds{event->id().toString(), event->span().context().ToTraceID()};
}

// %E in text patterns: " [ev=<id> trace=<id>]" inside an event, nothing outside.
class EventFlag final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg&, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    auto ids = currentIds();
    if (!ids) {
      return;
    }
    fmt::format_to(std::back_inserter(dest), " [ev={}", ids->eventId);
    if (!ids->traceId.empty()) {
      fmt::format_to(std::back_inserter(dest), " trace={}", ids->traceId);
    }
    dest.push_back(']');
  }
  [[nodiscard]] std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<EventFlag>();
  }
};

void appendJsonString(spdlog::memory_buf_t& dest, std::string_view text) {
  dest.push_back('"');
  for (const char c : text) {
    switch (c) {
      case '"':
        dest.append(std::string_view("\\\""));
        break;
      case '\\':
        dest.append(std::string_view("\\\\"));
        break;
      case '\n':
        dest.append(std::string_view("\\n"));
        break;
      case '\r':
        dest.append(std::string_view("\\r"));
        break;
      case '\t':
        dest.append(std::string_view("\\t"));
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          fmt::format_to(std::back_inserter(dest), "\\u{:04x}", static_cast<unsigned>(c));
        } else {
          dest.push_back(c);
        }
    }
  }
  dest.push_back('"');
}

// One JSON object per line, for log shippers.
class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    const auto micros =
        std::chrono::duration_cast<std::chrono::microseconds>(msg.time.time_since_epoch()).count();
    const std::time_t seconds = static_cast<std::time_t>(micros / 1'000'000);
    fmt::format_to(std::back_inserter(dest), R"({{"time":"{:%Y-%m-%dT%H:%M:%S}.{:06}Z","level":)",
                   fmt::gmtime(seconds), micros % 1'000'000);
    const auto level = spdlog::level::to_string_view(msg.level);
    appendJsonString(dest, std::string_view(level.data(), level.size()));
    dest.append(std::string_view(R"(,"logger":)"));
    appendJsonString(dest, std::string_view(msg.logger_name.data(), msg.logger_name.size()));
    if (auto ids = currentIds()) {
      dest.append(std::string_view(R"(,"event_id":)"));
      appendJsonString(dest, ids->eventId);
      if (!ids->traceId.empty()) {
        dest.append(std::string_view(R"(,"trace_id":)"));
        appendJsonString(dest, ids->traceId);
      }
    }
    dest.append(std::string_view(R"(,"msg":)"));
    appendJsonString(dest, std::string_view(msg.payload.data(), msg.payload.size()));
    dest.append(std::string_view("}\n"));
  }
  [[nodiscard]] std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonFormatter>();
  }
};

}  // namespace

std::optional<Format> parseFormat(std::string_view name) noexcept {
  if (name == "text") {
    return Format::Text;
  }
  if (name == "json") {
    return Format::Json;
  }
  return std::nullopt;
}

std::optional<spdlog::level::level_enum> parseLevel(std::string_view name) noexcept {
  for (int level = spdlog::level::trace; level < spdlog::level::n_levels; ++level) {
    const auto candidate = static_cast<spdlog::level::level_enum>(level);
    const auto text = spdlog::level::to_string_view(candidate);
    if (name == std::string_view(text.data(), text.size())) {
      return candidate;
    }
  }
  if (name == "warning") {
    return spdlog::level::warn;
  }
  if (name == "error") {
    return spdlog::level::err;
  }
  return std::nullopt;
}

std::unique_ptr<spdlog::formatter> makeFormatter(Format format) {
  if (format == Format::Json) {
    return std::make_unique<JsonFormatter>();
  }
  auto formatter = std::make_unique<spdlog::pattern_formatter>(spdlog::pattern_time_type::utc);
  formatter->add_flag<EventFlag>('E').set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %^%-5l%$ %n%E: %v");
  return formatter;
}

std::shared_ptr<spdlog::logger> configure(std::string_view name, spdlog::level::level_enum level,
                                          Format format) {
  auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  auto logger = std::make_shared<spdlog::logger>(std::string(name), std::move(sink));
  logger->set_formatter(makeFormatter(format));
  logger->set_level(level);
  logger->flush_on(spdlog::level::warn);
  spdlog::set_default_logger(logger);
  return logger;
}

EventScope::EventScope(const Event& event) noexcept
    : previous_(EventTree::exchangeCurrent(&event)) {}

EventScope::~EventScope() {
  EventTree::exchangeCurrent(previous_);
}

}  // namespace snow::log
