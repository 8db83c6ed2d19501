#pragma once

// The implementation of Posix that calls the operating system.
//
// Each method is the system call of the same name (posixSpawn: posix_spawn, clockGettime:
// clock_gettime, readDirectory: opendir/readdir/closedir), with errno captured right after the
// call. Not final: tests/mocks/mock_posix.h derives from it so that calls a test does not mock
// still reach the OS.
//
// Thread: any thread; holds no state. Errors: never throws (std::bad_alloc from readDirectory
// aside); failures come back as Result::errnum.

#include "snow/posix/posix.h"

namespace snow::posix {

class RealPosix : public Posix {
 public:
#define SNOW_POSIX_METHOD(Return, name, parameters, arguments, describeArguments) \
  Return name parameters override;
#include "snow/posix/posix_methods.inc"
};

}  // namespace snow::posix
