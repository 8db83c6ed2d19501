#pragma once

// A gmock Posix whose every method, unless a test says otherwise, calls the real OS.
//
// Tests mock the one call they want to fail or observe and let the rest (the pipe, the socket the
// code under test needs) really happen:
//
//   testing::NiceMock<MockPosix> posix;
//   EXPECT_CALL(posix, open).WillOnce(testing::Return(Result<int>{-1, EACCES}));
//   snow::posix::ScopedInjector injector(posix);
//
// Prefer NiceMock: every call is "uninteresting" otherwise, and gmock warns about each one.

#include <gmock/gmock.h>

// RealPosix is private to posix/ (not installed), hence the relative path.
#include "posix/real_posix.h"

namespace snow::posix {

class MockPosix : public RealPosix {
 public:
  // Out of line (mock_posix.cc): with them the vtable and every mocked method are compiled once,
  // not in each test file, which made sanitizer builds of the suite several times slower.
  MockPosix();
  ~MockPosix() override;
  MockPosix(const MockPosix&) = delete;
  MockPosix& operator=(const MockPosix&) = delete;

#define SNOW_POSIX_METHOD(Return, name, parameters, arguments, describeArguments) \
  MOCK_METHOD(Return, name, parameters, (override));
#include "snow/posix/posix_methods.inc"
};

}  // namespace snow::posix
