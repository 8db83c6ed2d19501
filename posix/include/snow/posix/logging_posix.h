#pragma once

// A decorator that traces every call, strace-like, at spdlog's trace level:
//   open("/etc/snow/snow.yaml") = 7
//   read(fd=7) = -1 EAGAIN (Resource temporarily unavailable)
// The Result is passed back unchanged; nothing is thrown (put CheckedPosix above this layer, not
// below, so that failures are traced before they become exceptions).
//
// Cost: one should_log() check per call when trace is off; formatting only when it is on.
//
// Thread: as the inner layer; spdlog loggers are thread-safe with *_mt sinks. Ownership: owns the
// inner layer only when given a PosixPtr; shares the logger.

#include <memory>
#include <type_traits>
#include <utility>

#include <spdlog/logger.h>

#include "snow/posix/posix.h"

namespace snow::posix {

class LoggingPosix final : public Posix {
 public:
  // A null `logger` means spdlog's default logger, looked up at each call so that a
  // spdlog::set_default_logger() made after construction (logging set up after the POSIX layer)
  // is followed.
  explicit LoggingPosix(Posix& inner, std::shared_ptr<spdlog::logger> logger = nullptr) noexcept
      : inner_(&inner), logger_(std::move(logger)) {}
  explicit LoggingPosix(PosixPtr inner, std::shared_ptr<spdlog::logger> logger = nullptr) noexcept
      : owned_(std::move(inner)), inner_(owned_.get()), logger_(std::move(logger)) {}

#define SNOW_POSIX_METHOD(Return, name, parameters, arguments, describeArguments) \
  Return name parameters override;
#include "snow/posix/posix_methods.inc"

 private:
  spdlog::logger& logger() const noexcept;

  PosixPtr owned_;
  Posix* inner_;
  std::shared_ptr<spdlog::logger> logger_;
};

static_assert(!std::is_abstract_v<LoggingPosix>, "posix_methods.inc is missing a method");

}  // namespace snow::posix
