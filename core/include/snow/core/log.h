#pragma once

// Logging: spdlog, with the event a line belongs to.
//
// A line logged while an event's handler runs (EventTree::current()) carries that event's id and,
// when a real tracer is in use, its trace id, so that a log line leads to its trace in Jaeger:
//   text: 2026-11-24T16:33:52.123Z info  snow [ev=3f9a0c1e5b7d2a64-2a trace=9c0f..]: started
//   json: {"time":"2026-11-24T16:33:52.123456Z","level":"info","logger":"snow",
//          "event_id":"3f9a0c1e5b7d2a64-2a","trace_id":"9c0f..","msg":"started"}
// Code that logs from a later continuation of a handler re-enters the event with
// log::EventScope.
//
// Thread: configure() at start-up, before other threads log. Formatting is thread-safe.

#include <memory>
#include <optional>
#include <string_view>

#include <spdlog/formatter.h>
#include <spdlog/logger.h>

namespace snow {
class Event;
}

namespace snow::log {

enum class Format { Text, Json };

std::optional<Format> parseFormat(std::string_view name) noexcept;
std::optional<spdlog::level::level_enum> parseLevel(std::string_view name) noexcept;

// A formatter for `format` that adds the current event's ids.
std::unique_ptr<spdlog::formatter> makeFormatter(Format format);

// Makes a stderr logger with `level` and `format` spdlog's default logger, named `name`.
std::shared_ptr<spdlog::logger> configure(std::string_view name, spdlog::level::level_enum level,
                                          Format format);

// Makes `event` the current one for this thread while in scope (handlers get this for free).
class EventScope {
 public:
  explicit EventScope(const Event& event) noexcept;
  ~EventScope();
  EventScope(const EventScope&) = delete;
  EventScope& operator=(const EventScope&) = delete;

 private:
  const Event* previous_;
};

}  // namespace snow::log
