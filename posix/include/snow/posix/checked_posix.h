#pragma once

// A decorator that turns failed calls into exceptions.
//
// Every method forwards to the inner layer; a failure throws std::system_error whose code() is
// the errno (in std::system_category()) and whose what() names the call and its main argument:
//   open("/etc/snow/missing.yaml"): No such file or directory
//   bind(fd=7, 127.0.0.1:8080): Address already in use
//   kill(pid=4242, sig=15): Operation not permitted
// Paths are quoted, descriptors are `fd=N`, processes `pid=N`, socket addresses `ip:port`,
// `[ipv6]:port` or the unix socket path; posix_methods.inc says what each call names.
//
// Passed through instead of thrown, because they are answers rather than failures, come back in
// the Result as usual (so callers of those calls must still look at errnum):
//   - for every call, the flow-control errnos of non-blocking I/O: EAGAIN/EWOULDBLOCK,
//     EINPROGRESS, EINTR;
//   - ECHILD from waitpid (the "no more children" of a WNOHANG reaping loop);
//   - ESRCH from kill (the "no such process" of a kill(pid, 0) probe);
//   - ENOENT from dlsym (the "no such symbol" of a plugin probe);
//   - ENOENT from lookupUser and lookupGroup (no such account);
//   - EACCES and ENOENT from access (the answer access() exists to give).
//
// Thread: as the inner layer. Ownership: owns the inner layer only when given a PosixPtr.

#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>

#include "snow/posix/posix.h"

namespace snow::posix {

class CheckedPosix final : public Posix {
 public:
  explicit CheckedPosix(Posix& inner) noexcept : inner_(&inner) {}
  explicit CheckedPosix(PosixPtr inner) noexcept : owned_(std::move(inner)), inner_(owned_.get()) {}

  // True for the errnos every call passes through (EAGAIN/EWOULDBLOCK, EINPROGRESS, EINTR).
  static bool isFlowControl(int errnum) noexcept;

  // True when `call` (a method name, e.g. "waitpid") failing with `errnum` returns instead of
  // throwing: the flow-control errnos, plus the per-call answers listed above.
  static bool passesThrough(std::string_view call, int errnum) noexcept;

#define SNOW_POSIX_METHOD(Return, name, parameters, arguments, describeArguments) \
  Return name parameters override;
#include "snow/posix/posix_methods.inc"

 private:
  PosixPtr owned_;
  Posix* inner_;
};

// Runs `call` (a call on a Posix layer, checked or not) and returns its Result either way: a
// std::system_error thrown by CheckedPosix comes back as the Result's errnum. For callers that
// expect and handle a particular errno (EEXIST from mkdir, ENOENT from open, ECONNREFUSED from a
// probing connect) without making the whole stack unchecked.
template <typename F>
auto tolerant(F&& call) -> decltype(call()) {
  try {
    return call();
  } catch (const std::system_error& e) {
    decltype(call()) failed{};
    failed.errnum = e.code().value();
    return failed;
  }
}

// A method of Posix missing from posix_methods.inc would leave this class abstract.
static_assert(!std::is_abstract_v<CheckedPosix>, "posix_methods.inc is missing a method");

}  // namespace snow::posix
