#include "mocks/mock_posix.h"

#include <cerrno>
#include <cstring>

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

namespace snow::posix {
namespace {

using testing::NiceMock;
using testing::Return;

TEST(MockPosix, UnmockedCallsReachTheOs) {
  NiceMock<MockPosix> posix;
  int fds[2];

  ASSERT_TRUE(posix.pipe2(fds, O_CLOEXEC).ok());
  EXPECT_EQ(posix.write(fds[1], "ping", 4).value, 4);
  char buffer[8] = {};
  EXPECT_EQ(posix.read(fds[0], buffer, sizeof(buffer)).value, 4);
  EXPECT_STREQ(buffer, "ping");

  EXPECT_TRUE(posix.close(fds[0]).ok());
  EXPECT_TRUE(posix.close(fds[1]).ok());
  EXPECT_EQ(posix.close(fds[1]).errnum, EBADF);
}

TEST(MockPosix, AMockedCallLeavesTheOthersReal) {
  NiceMock<MockPosix> posix;
  EXPECT_CALL(posix, open).WillOnce(Return(Result<int>{-1, EACCES}));

  EXPECT_EQ(posix.open("/", O_RDONLY | O_CLOEXEC, 0).errnum, EACCES);
  struct stat info {};
  ASSERT_TRUE(posix.stat("/", &info).ok());
  EXPECT_TRUE(S_ISDIR(info.st_mode));
}

TEST(MockPosix, ObservesArgumentsOfCallsThatStillHappen) {
  NiceMock<MockPosix> posix;
  int fds[2];
  ASSERT_TRUE(posix.pipe2(fds, O_CLOEXEC).ok());

  EXPECT_CALL(posix, close(fds[0])).Times(1);
  EXPECT_CALL(posix, close(fds[1])).Times(1);

  EXPECT_TRUE(posix.close(fds[0]).ok());
  EXPECT_TRUE(posix.close(fds[1]).ok());
  // The defaults ran: both ends are really closed.
  EXPECT_EQ(posix.fcntl(fds[0], F_GETFD, 0).errnum, EBADF);
}

}  // namespace
}  // namespace snow::posix
