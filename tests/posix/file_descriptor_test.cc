#include "snow/posix/file_descriptor.h"

#include <cerrno>
#include <utility>

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "snow/posix/active.h"
#include "snow/posix/checked_posix.h"

#include "mocks/mock_posix.h"

namespace snow::posix {
namespace {

using testing::NiceMock;
using testing::Return;

class FileDescriptorTest : public testing::Test {
 protected:
  // A fresh pipe; both ends owned by the caller.
  std::pair<int, int> makePipe() {
    int fds[2];
    EXPECT_TRUE(posix_.pipe2(fds, O_CLOEXEC).ok());
    return {fds[0], fds[1]};
  }

  bool isOpen(int fd) {
    const Result<int> flags = posix_.fcntl(fd, F_GETFD, 0);
    EXPECT_TRUE(flags.ok() || flags.errnum == EBADF) << flags.errnum;
    return flags.ok();
  }

  NiceMock<MockPosix> posix_;
  ScopedInjector injector_{posix_};
};

TEST_F(FileDescriptorTest, ClosesOnDestruction) {
  const auto [readEnd, writeEnd] = makePipe();
  {
    FileDescriptor reader(readEnd);
    FileDescriptor writer(writeEnd);
    EXPECT_TRUE(isOpen(readEnd));
  }
  EXPECT_FALSE(isOpen(readEnd));
  EXPECT_FALSE(isOpen(writeEnd));
}

TEST_F(FileDescriptorTest, DefaultIsEmptyAndClosesNothing) {
  EXPECT_CALL(posix_, close).Times(0);
  const FileDescriptor empty;
  EXPECT_FALSE(empty);
  EXPECT_EQ(empty.get(), -1);
}

TEST_F(FileDescriptorTest, ReleaseGivesUpOwnershipWithoutClosing) {
  const auto [readEnd, writeEnd] = makePipe();
  int released = -1;
  {
    FileDescriptor reader(readEnd);
    EXPECT_TRUE(reader);
    released = reader.release();
    EXPECT_FALSE(reader);
  }
  EXPECT_EQ(released, readEnd);
  EXPECT_TRUE(isOpen(readEnd));
  posix_.close(readEnd);
  posix_.close(writeEnd);
}

TEST_F(FileDescriptorTest, ResetClosesTheOldDescriptorAndOwnsTheNew) {
  const auto [readEnd, writeEnd] = makePipe();
  FileDescriptor fd(readEnd);

  fd.reset(writeEnd);
  EXPECT_FALSE(isOpen(readEnd));
  EXPECT_EQ(fd.get(), writeEnd);

  fd.reset(writeEnd);  // Resetting to the owned descriptor must not close it.
  EXPECT_TRUE(isOpen(writeEnd));

  fd.reset();
  EXPECT_FALSE(isOpen(writeEnd));
  EXPECT_FALSE(fd);
}

TEST_F(FileDescriptorTest, MovingTransfersOwnershipAndClosesExactlyOnce) {
  const auto [readEnd, writeEnd] = makePipe();
  EXPECT_CALL(posix_, close(readEnd)).Times(1);
  EXPECT_CALL(posix_, close(writeEnd)).Times(1);
  {
    FileDescriptor first(readEnd);
    FileDescriptor second(std::move(first));
    EXPECT_FALSE(first);  // NOLINT(bugprone-use-after-move): the moved-from state is the contract.
    EXPECT_EQ(second.get(), readEnd);

    FileDescriptor third(writeEnd);
    third = std::move(second);  // Closes writeEnd, takes readEnd.
    EXPECT_FALSE(isOpen(writeEnd));
    EXPECT_EQ(third.get(), readEnd);
  }
  EXPECT_FALSE(isOpen(readEnd));
}

TEST_F(FileDescriptorTest, IgnoresCloseFailuresEvenFromACheckedLayer) {
  CheckedPosix checked(posix_);
  ScopedInjector injector(checked);
  EXPECT_CALL(posix_, close(1000)).WillOnce(Return(Result<int>{-1, EIO}));

  EXPECT_NO_THROW({ FileDescriptor fd(1000); });
}

TEST(FileDescriptorWithoutLayer, DestructionDoesNotThrowWhenNoLayerIsActive) {
  ASSERT_FALSE(hasActive());
  EXPECT_NO_THROW({ FileDescriptor fd(1000); });
}

}  // namespace
}  // namespace snow::posix
