#include "snow/posix/checked_posix.h"

#include <cerrno>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/un.h>

#include "mocks/mock_posix.h"

namespace snow::posix {
namespace {

using testing::NiceMock;
using testing::Return;

// The std::system_error `call` throws; a test failure (and an empty error) when it throws none.
std::system_error thrownBy(const std::function<void()>& call) {
  try {
    call();
  } catch (const std::system_error& error) {
    return error;
  }
  ADD_FAILURE() << "expected a std::system_error";
  return {std::error_code(), "nothing thrown"};
}

sockaddr_in ipv4(const char* ip, uint16_t port) {
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  inet_pton(AF_INET, ip, &address.sin_addr);
  return address;
}

class CheckedPosixTest : public testing::Test {
 protected:
  NiceMock<MockPosix> mock_;
  CheckedPosix checked_{mock_};
};

TEST_F(CheckedPosixTest, FailedOpenThrowsErrnoAndNamesCallAndPath) {
  EXPECT_CALL(mock_, open).WillOnce(Return(Result<int>{-1, EACCES}));

  const std::system_error error = thrownBy([&] { checked_.open("/etc/secret", O_RDONLY, 0); });

  EXPECT_EQ(error.code(), std::error_code(EACCES, std::system_category()));
  EXPECT_STREQ(error.what(), "open(\"/etc/secret\"): Permission denied");
}

TEST_F(CheckedPosixTest, DescriptorCallsNameTheDescriptor) {
  EXPECT_CALL(mock_, read).WillOnce(Return(Result<ssize_t>{-1, EBADF}));
  char buffer[8];

  const std::system_error error = thrownBy([&] { checked_.read(7, buffer, sizeof(buffer)); });

  EXPECT_EQ(error.code().value(), EBADF);
  EXPECT_STREQ(error.what(), "read(fd=7): Bad file descriptor");
}

TEST_F(CheckedPosixTest, BindNamesDescriptorAndIpv4Address) {
  EXPECT_CALL(mock_, bind).WillOnce(Return(Result<int>{-1, EADDRINUSE}));
  const sockaddr_in address = ipv4("127.0.0.1", 8080);

  const std::system_error error = thrownBy(
      [&] { checked_.bind(7, reinterpret_cast<const sockaddr*>(&address), sizeof(address)); });

  EXPECT_EQ(error.code().value(), EADDRINUSE);
  EXPECT_STREQ(error.what(), "bind(fd=7, 127.0.0.1:8080): Address already in use");
}

TEST_F(CheckedPosixTest, ConnectNamesIpv6Address) {
  EXPECT_CALL(mock_, connect).WillOnce(Return(Result<int>{-1, ECONNREFUSED}));
  sockaddr_in6 address{};
  address.sin6_family = AF_INET6;
  address.sin6_port = htons(443);
  address.sin6_addr = in6addr_loopback;

  const std::system_error error = thrownBy(
      [&] { checked_.connect(3, reinterpret_cast<const sockaddr*>(&address), sizeof(address)); });

  EXPECT_STREQ(error.what(), "connect(fd=3, [::1]:443): Connection refused");
}

TEST_F(CheckedPosixTest, BindNamesUnixSocketPathAndAbstractName) {
  EXPECT_CALL(mock_, bind).WillRepeatedly(Return(Result<int>{-1, EACCES}));
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strcpy(address.sun_path, "/run/snow.sock");
  const auto pathLength =
      static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + std::strlen(address.sun_path) + 1);

  EXPECT_STREQ(thrownBy([&] {
                 checked_.bind(4, reinterpret_cast<const sockaddr*>(&address), pathLength);
               }).what(),
               "bind(fd=4, \"/run/snow.sock\"): Permission denied");

  // An abstract name starts with a NUL byte and ends where the length says.
  std::memcpy(address.sun_path, "\0snow", 5);
  const auto abstractLength = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 5);
  EXPECT_STREQ(thrownBy([&] {
                 checked_.bind(4, reinterpret_cast<const sockaddr*>(&address), abstractLength);
               }).what(),
               "bind(fd=4, @snow): Permission denied");
}

TEST_F(CheckedPosixTest, ProcessCallsNameThePid) {
  EXPECT_CALL(mock_, kill).WillOnce(Return(Result<int>{-1, EPERM}));
  EXPECT_CALL(mock_, waitpid).WillOnce(Return(Result<pid_t>{-1, EINVAL}));
  int status = 0;

  EXPECT_STREQ(thrownBy([&] { checked_.kill(4242, SIGTERM); }).what(),
               "kill(pid=4242, sig=15): Operation not permitted");
  EXPECT_STREQ(thrownBy([&] { checked_.waitpid(4242, &status, 0); }).what(),
               "waitpid(pid=4242): Invalid argument");
}

TEST_F(CheckedPosixTest, RenameNamesBothPaths) {
  EXPECT_CALL(mock_, rename).WillOnce(Return(Result<int>{-1, EXDEV}));

  EXPECT_STREQ(thrownBy([&] { checked_.rename("/a", "/mnt/b"); }).what(),
               "rename(\"/a\", \"/mnt/b\"): Invalid cross-device link");
}

TEST_F(CheckedPosixTest, FlowControlErrnosPassThroughEveryCall) {
  for (const int errnum : {EAGAIN, EWOULDBLOCK, EINPROGRESS, EINTR}) {
    SCOPED_TRACE(errnum);
    EXPECT_CALL(mock_, read).WillOnce(Return(Result<ssize_t>{-1, errnum}));
    EXPECT_CALL(mock_, connect).WillOnce(Return(Result<int>{-1, errnum}));
    char buffer[8];
    const sockaddr_in address = ipv4("127.0.0.1", 1);

    Result<ssize_t> read;
    Result<int> connect;
    EXPECT_NO_THROW(read = checked_.read(3, buffer, sizeof(buffer)));
    EXPECT_NO_THROW(connect = checked_.connect(3, reinterpret_cast<const sockaddr*>(&address),
                                               sizeof(address)));

    EXPECT_EQ(read.value, -1);
    EXPECT_EQ(read.errnum, errnum);
    EXPECT_EQ(connect.errnum, errnum);
  }
}

TEST_F(CheckedPosixTest, WaitpidPassesEchildAndKillPassesEsrch) {
  EXPECT_CALL(mock_, waitpid).WillOnce(Return(Result<pid_t>{-1, ECHILD}));
  EXPECT_CALL(mock_, kill).WillOnce(Return(Result<int>{-1, ESRCH}));
  int status = 0;

  Result<pid_t> reaped;
  Result<int> probed;
  EXPECT_NO_THROW(reaped = checked_.waitpid(-1, &status, 0));
  EXPECT_NO_THROW(probed = checked_.kill(4242, 0));

  EXPECT_EQ(reaped.errnum, ECHILD);
  EXPECT_EQ(probed.errnum, ESRCH);
}

TEST_F(CheckedPosixTest, PerCallAnswersStillThrowFromOtherCalls) {
  EXPECT_CALL(mock_, kill).WillOnce(Return(Result<int>{-1, ECHILD}));
  EXPECT_CALL(mock_, waitpid).WillOnce(Return(Result<pid_t>{-1, ESRCH}));
  EXPECT_CALL(mock_, close).WillOnce(Return(Result<int>{-1, ESRCH}));
  int status = 0;

  EXPECT_EQ(thrownBy([&] { checked_.kill(1, 0); }).code().value(), ECHILD);
  EXPECT_EQ(thrownBy([&] { checked_.waitpid(1, &status, 0); }).code().value(), ESRCH);
  EXPECT_EQ(thrownBy([&] { checked_.close(5); }).code().value(), ESRCH);
}

TEST_F(CheckedPosixTest, SuccessfulResultsComeBackUnchanged) {
  EXPECT_CALL(mock_, write).WillOnce(Return(Result<ssize_t>{5, 0}));
  const std::vector<DirectoryEntry> entries{{"a", DT_REG}, {"b", DT_DIR}};
  EXPECT_CALL(mock_, readDirectory).WillOnce(Return(Result<std::vector<DirectoryEntry>>{entries}));

  EXPECT_EQ(checked_.write(3, "hello", 5).value, 5);
  const auto listed = checked_.readDirectory("/x");
  ASSERT_EQ(listed.value.size(), 2U);
  EXPECT_EQ(listed.value[1].name, "b");
  EXPECT_EQ(listed.value[1].type, DT_DIR);
}

TEST(CheckedPosixOverRealPosix, OpeningAMissingPathThrowsEnoentNamingThePath) {
  CheckedPosix checked(std::make_unique<RealPosix>());

  const std::system_error error =
      thrownBy([&] { checked.open("/no/such/snow-test-file", O_RDONLY | O_CLOEXEC, 0); });

  EXPECT_EQ(error.code(), std::error_code(ENOENT, std::system_category()));
  EXPECT_STREQ(error.what(), "open(\"/no/such/snow-test-file\"): No such file or directory");
}

TEST(CheckedPosixOverRealPosix, ReadingAnEmptyNonBlockingPipeReturnsEagain) {
  CheckedPosix checked(std::make_unique<RealPosix>());
  int fds[2];
  ASSERT_TRUE(checked.pipe2(fds, O_NONBLOCK | O_CLOEXEC).ok());
  char buffer[8];

  const Result<ssize_t> read = checked.read(fds[0], buffer, sizeof(buffer));

  EXPECT_EQ(read.errnum, EAGAIN);
  checked.close(fds[0]);
  checked.close(fds[1]);
}

TEST(CheckedPosixFlowControl, ClassifiesErrnos) {
  EXPECT_TRUE(CheckedPosix::isFlowControl(EAGAIN));
  EXPECT_TRUE(CheckedPosix::isFlowControl(EINTR));
  EXPECT_TRUE(CheckedPosix::isFlowControl(EINPROGRESS));
  EXPECT_FALSE(CheckedPosix::isFlowControl(ENOENT));
  EXPECT_FALSE(CheckedPosix::isFlowControl(ECHILD));
  EXPECT_TRUE(CheckedPosix::passesThrough("waitpid", ECHILD));
  EXPECT_FALSE(CheckedPosix::passesThrough("read", ECHILD));
  EXPECT_TRUE(CheckedPosix::passesThrough("kill", ESRCH));
  EXPECT_FALSE(CheckedPosix::passesThrough("kill", EPERM));
}

}  // namespace
}  // namespace snow::posix
