#include "mocks/mock_posix.h"

namespace snow::posix {

MockPosix::MockPosix() {
  // The lambda takes the method's own parameter list, so the default is exact for each method.
#define SNOW_POSIX_METHOD(Return, name, parameters, arguments, describeArguments) \
  ON_CALL(*this, name).WillByDefault([this] parameters { return RealPosix::name arguments; });
#include "snow/posix/posix_methods.inc"
}

MockPosix::~MockPosix() = default;

}  // namespace snow::posix
