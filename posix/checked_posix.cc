#include "snow/posix/checked_posix.h"

#include <cerrno>
#include <string>

#include <fmt/format.h>

#include "describe.h"

namespace snow::posix {
namespace {

template <typename T, typename DescribeArguments>
Result<T> checked(std::string_view call, Result<T> result,
                  const DescribeArguments& describeArguments) {
  if (result.ok() || CheckedPosix::passesThrough(call, result.errnum)) {
    return result;
  }
  throw std::system_error(result.errnum, std::system_category(),
                          fmt::format("{}({})", call, describeArguments()));
}

}  // namespace

bool CheckedPosix::isFlowControl(int errnum) noexcept {
  // EWOULDBLOCK is EAGAIN on Linux, but POSIX allows them to differ.
  return errnum == EAGAIN || errnum == EWOULDBLOCK || errnum == EINPROGRESS || errnum == EINTR;
}

bool CheckedPosix::passesThrough(std::string_view call, int errnum) noexcept {
  // Probes, whose "no" is an answer rather than a failure: is there a child left to reap, is this
  // process alive, does this plugin export this symbol, is there such a user or group, may this
  // file be executed.
  return isFlowControl(errnum) || (call == "waitpid" && errnum == ECHILD) ||
         (call == "kill" && errnum == ESRCH) || (call == "dlsym" && errnum == ENOENT) ||
         ((call == "lookupUser" || call == "lookupGroup") && errnum == ENOENT) ||
         (call == "access" && (errnum == EACCES || errnum == ENOENT));
}

#define SNOW_POSIX_METHOD(Return, name, parameters, arguments, describeArguments)     \
  Return CheckedPosix::name parameters {                                              \
    return checked(#name, inner_->name arguments, [&] { return describeArguments; }); \
  }
#include "snow/posix/posix_methods.inc"

}  // namespace snow::posix
