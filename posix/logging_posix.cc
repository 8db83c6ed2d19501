#include "snow/posix/logging_posix.h"

#include <spdlog/spdlog.h>

#include "describe.h"

namespace snow::posix {

spdlog::logger& LoggingPosix::logger() const noexcept {
  return logger_ ? *logger_ : *spdlog::default_logger_raw();
}

// The arguments are described only when the line will be written: tracing is off in production.
#define SNOW_POSIX_METHOD(Return, name, parameters, arguments, describeArguments)     \
  Return LoggingPosix::name parameters {                                              \
    auto result = inner_->name arguments;                                             \
    if (spdlog::logger& target = logger(); target.should_log(spdlog::level::trace)) { \
      target.trace("{}", describe::outcome(#name, describeArguments, result));        \
    }                                                                                 \
    return result;                                                                    \
  }
#include "snow/posix/posix_methods.inc"

}  // namespace snow::posix
