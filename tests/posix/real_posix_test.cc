#include "../../posix/real_posix.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

namespace snow::posix {
namespace {

using testing::UnorderedElementsAre;

class RealPosixTest : public testing::Test {
 protected:
  void SetUp() override {
    std::string pathTemplate = testing::TempDir() + "snow-real-posix-XXXXXX";
    ASSERT_NE(posix_.mkdtemp(pathTemplate.data()).value, nullptr) << pathTemplate;
    directory_ = pathTemplate;
  }

  // The directory holds plain files and empty directories only.
  void TearDown() override {
    for (const DirectoryEntry& entry : posix_.readDirectory(directory_.c_str()).value) {
      const std::string path = inDirectory(entry.name);
      if (!posix_.unlink(path.c_str()).ok()) {
        posix_.rmdir(path.c_str());
      }
    }
    EXPECT_TRUE(posix_.rmdir(directory_.c_str()).ok()) << directory_;
  }

  std::string inDirectory(const std::string& name) const { return directory_ + "/" + name; }

  // Creates an empty file; returns its path.
  std::string createFile(const std::string& name) {
    std::string path = inDirectory(name);
    const Result<int> fd = posix_.open(path.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    EXPECT_TRUE(fd.ok()) << fd.errnum;
    posix_.close(fd.value);
    return path;
  }

  RealPosix posix_;
  std::string directory_;
};

// Matches a DirectoryEntry by name and type; DT_UNKNOWN is accepted too, because readdir(3) may
// report it on file systems that do not store types.
MATCHER_P2(IsEntry, name, type, "") {
  return arg.name == name && (arg.type == type || arg.type == DT_UNKNOWN);
}

TEST_F(RealPosixTest, PipeCarriesDataAndHonoursFlags) {
  int fds[2];
  ASSERT_TRUE(posix_.pipe2(fds, O_CLOEXEC).ok());

  EXPECT_EQ(posix_.fcntl(fds[0], F_GETFD, 0).value & FD_CLOEXEC, FD_CLOEXEC);
  EXPECT_EQ(posix_.write(fds[1], "hello", 5).value, 5);
  char buffer[16] = {};
  EXPECT_EQ(posix_.read(fds[0], buffer, sizeof(buffer)).value, 5);
  EXPECT_STREQ(buffer, "hello");

  EXPECT_TRUE(posix_.close(fds[1]).ok());
  EXPECT_EQ(posix_.read(fds[0], buffer, sizeof(buffer)).value, 0);  // End of file.
  EXPECT_TRUE(posix_.close(fds[0]).ok());
}

TEST_F(RealPosixTest, ScatterGatherRoundTrip) {
  int fds[2];
  ASSERT_TRUE(posix_.pipe2(fds, O_CLOEXEC).ok());
  char hello[] = "hello ";
  char world[] = "world";
  const std::array<iovec, 2> out{{{hello, 6}, {world, 5}}};
  std::array<char, 6> first{};
  std::array<char, 5> second{};
  const std::array<iovec, 2> in{{{first.data(), first.size()}, {second.data(), second.size()}}};

  EXPECT_EQ(posix_.writev(fds[1], out.data(), 2).value, 11);
  EXPECT_EQ(posix_.readv(fds[0], in.data(), 2).value, 11);

  EXPECT_EQ(std::string(first.data(), first.size()), "hello ");
  EXPECT_EQ(std::string(second.data(), second.size()), "world");
  posix_.close(fds[0]);
  posix_.close(fds[1]);
}

TEST_F(RealPosixTest, SocketpairCarriesDataBothWays) {
  int fds[2];
  ASSERT_TRUE(posix_.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds).ok());
  char buffer[8] = {};

  EXPECT_EQ(posix_.write(fds[0], "ping", 4).value, 4);
  EXPECT_EQ(posix_.read(fds[1], buffer, sizeof(buffer)).value, 4);
  EXPECT_EQ(posix_.write(fds[1], "pong", 4).value, 4);
  EXPECT_EQ(posix_.read(fds[0], buffer, sizeof(buffer)).value, 4);
  EXPECT_STREQ(buffer, "pong");

  EXPECT_TRUE(posix_.shutdown(fds[0], SHUT_WR).ok());
  EXPECT_EQ(posix_.read(fds[1], buffer, sizeof(buffer)).value, 0);
  posix_.close(fds[0]);
  posix_.close(fds[1]);
}

TEST_F(RealPosixTest, DupAndDup3GiveWorkingCopies) {
  int fds[2];
  ASSERT_TRUE(posix_.pipe2(fds, O_CLOEXEC).ok());
  const Result<int> copy = posix_.dup(fds[1]);
  ASSERT_TRUE(copy.ok());
  const Result<int> target = posix_.dup(fds[1]);
  ASSERT_TRUE(target.ok());

  EXPECT_EQ(posix_.dup3(copy.value, target.value, O_CLOEXEC).value, target.value);
  EXPECT_EQ(posix_.write(target.value, "x", 1).value, 1);
  char buffer = 0;
  EXPECT_EQ(posix_.read(fds[0], &buffer, 1).value, 1);
  EXPECT_EQ(buffer, 'x');
  for (const int fd : {fds[0], fds[1], copy.value, target.value}) {
    EXPECT_TRUE(posix_.close(fd).ok());
  }
}

TEST_F(RealPosixTest, FailuresReportMinusOneAndErrno) {
  const Result<int> open = posix_.open(inDirectory("missing").c_str(), O_RDONLY | O_CLOEXEC, 0);
  EXPECT_EQ(open.value, -1);
  EXPECT_EQ(open.errnum, ENOENT);
  EXPECT_FALSE(open.ok());

  const Result<int> fcntl = posix_.fcntl(-1, F_GETFD, 0);
  EXPECT_EQ(fcntl.value, -1);
  EXPECT_EQ(fcntl.errnum, EBADF);
}

TEST_F(RealPosixTest, FilesCanBeStattedRenamedChmoddedAndUnlinked) {
  const std::string path = createFile("a");
  const std::string renamed = inDirectory("b");

  ASSERT_TRUE(posix_.rename(path.c_str(), renamed.c_str()).ok());
  struct stat info {};
  EXPECT_EQ(posix_.stat(path.c_str(), &info).errnum, ENOENT);
  ASSERT_TRUE(posix_.chmod(renamed.c_str(), 0640).ok());
  ASSERT_TRUE(posix_.lstat(renamed.c_str(), &info).ok());
  EXPECT_TRUE(S_ISREG(info.st_mode));
  EXPECT_EQ(info.st_mode & 0777, 0640U);

  const Result<int> fd = posix_.open(renamed.c_str(), O_RDONLY | O_CLOEXEC, 0);
  ASSERT_TRUE(fd.ok());
  struct stat byFd {};
  EXPECT_TRUE(posix_.fstat(fd.value, &byFd).ok());
  EXPECT_EQ(byFd.st_ino, info.st_ino);
  posix_.close(fd.value);

  EXPECT_TRUE(posix_.unlink(renamed.c_str()).ok());
  EXPECT_EQ(posix_.unlink(renamed.c_str()).errnum, ENOENT);
}

TEST_F(RealPosixTest, MkdtempMakesAPrivateDirectory) {
  struct stat info {};
  ASSERT_TRUE(posix_.stat(directory_.c_str(), &info).ok());
  EXPECT_TRUE(S_ISDIR(info.st_mode));
  EXPECT_EQ(info.st_mode & 0777, 0700U);
  EXPECT_EQ(directory_.find("XXXXXX"), std::string::npos);

  char notATemplate[] = "/tmp/no-x";
  EXPECT_EQ(posix_.mkdtemp(notATemplate).errnum, EINVAL);
}

TEST_F(RealPosixTest, ReadDirectoryListsEntriesWithoutDotAndDotDot) {
  createFile("file");
  ASSERT_TRUE(posix_.mkdir(inDirectory("subdirectory").c_str(), 0700).ok());
  EXPECT_EQ(posix_.mkdir(inDirectory("subdirectory").c_str(), 0700).errnum, EEXIST);

  const Result<std::vector<DirectoryEntry>> listed = posix_.readDirectory(directory_.c_str());

  ASSERT_TRUE(listed.ok());
  EXPECT_THAT(listed.value,
              UnorderedElementsAre(IsEntry("file", DT_REG), IsEntry("subdirectory", DT_DIR)));
  EXPECT_TRUE(posix_.rmdir(inDirectory("subdirectory").c_str()).ok());
}

TEST_F(RealPosixTest, ReadDirectoryOfAMissingPathReportsEnoent) {
  const auto listed = posix_.readDirectory(inDirectory("missing").c_str());

  EXPECT_EQ(listed.errnum, ENOENT);
  EXPECT_TRUE(listed.value.empty());
}

TEST_F(RealPosixTest, TcpOnLoopbackConnectsAcceptsAndNamesBothEnds) {
  const Result<int> listener = posix_.socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_TRUE(listener.ok());
  const int one = 1;
  ASSERT_TRUE(posix_.setsockopt(listener.value, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)).ok());
  int reuse = 0;
  socklen_t reuseLength = sizeof(reuse);
  ASSERT_TRUE(
      posix_.getsockopt(listener.value, SOL_SOCKET, SO_REUSEADDR, &reuse, &reuseLength).ok());
  EXPECT_NE(reuse, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;  // Any free port.
  auto* generic = reinterpret_cast<sockaddr*>(&address);
  ASSERT_TRUE(posix_.bind(listener.value, generic, sizeof(address)).ok());
  ASSERT_TRUE(posix_.listen(listener.value, 4).ok());
  socklen_t length = sizeof(address);
  ASSERT_TRUE(posix_.getsockname(listener.value, generic, &length).ok());
  EXPECT_NE(address.sin_port, 0);

  const Result<int> client = posix_.socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE(posix_.connect(client.value, generic, sizeof(address)).ok());
  sockaddr_in peer{};
  socklen_t peerLength = sizeof(peer);
  const Result<int> accepted =
      posix_.accept4(listener.value, reinterpret_cast<sockaddr*>(&peer), &peerLength, SOCK_CLOEXEC);
  ASSERT_TRUE(accepted.ok());

  sockaddr_in clientName{};
  socklen_t clientNameLength = sizeof(clientName);
  ASSERT_TRUE(
      posix_
          .getpeername(accepted.value, reinterpret_cast<sockaddr*>(&clientName), &clientNameLength)
          .ok());
  EXPECT_EQ(clientName.sin_port, peer.sin_port);
  EXPECT_EQ(posix_.write(client.value, "hi", 2).value, 2);
  char buffer[2];
  EXPECT_EQ(posix_.read(accepted.value, buffer, 2).value, 2);
  for (const int fd : {accepted.value, client.value, listener.value}) {
    posix_.close(fd);
  }
}

TEST_F(RealPosixTest, PosixSpawnRunsAProgramAndWaitpidReapsIt) {
  char sh[] = "/bin/sh";
  char dashC[] = "-c";
  char script[] = "exit 3";
  char* const argv[] = {sh, dashC, script, nullptr};
  char* const envp[] = {nullptr};

  const Result<pid_t> child = posix_.posixSpawn(sh, nullptr, nullptr, argv, envp);
  ASSERT_TRUE(child.ok()) << child.errnum;
  ASSERT_GT(child.value, 0);
  int status = 0;

  EXPECT_EQ(posix_.waitpid(child.value, &status, 0).value, child.value);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 3);
  EXPECT_EQ(posix_.waitpid(-1, &status, WNOHANG).errnum, ECHILD);
}

TEST_F(RealPosixTest, PosixSpawnReportsItsErrorCodeAsErrnum) {
  char program[] = "/no/such/program";
  char* const argv[] = {program, nullptr};
  char* const envp[] = {nullptr};

  const Result<pid_t> child = posix_.posixSpawn(program, nullptr, nullptr, argv, envp);

  EXPECT_EQ(child.value, -1);
  EXPECT_EQ(child.errnum, ENOENT);
}

TEST_F(RealPosixTest, KillProbesProcesses) {
  const Result<pid_t> self = posix_.getpid();
  ASSERT_TRUE(self.ok());
  EXPECT_EQ(self.value, ::getpid());

  EXPECT_TRUE(posix_.kill(self.value, 0).ok());
  EXPECT_EQ(posix_.kill(0x7ffffff0, 0).errnum, ESRCH);
}

TEST_F(RealPosixTest, SigprocmaskBlocksAndRestores) {
  sigset_t blocked;
  sigemptyset(&blocked);
  sigaddset(&blocked, SIGUSR2);
  sigset_t before;
  ASSERT_TRUE(posix_.sigprocmask(SIG_BLOCK, &blocked, &before).ok());
  sigset_t during;
  ASSERT_TRUE(posix_.sigprocmask(SIG_BLOCK, nullptr, &during).ok());

  EXPECT_EQ(sigismember(&during, SIGUSR2), 1);
  EXPECT_TRUE(posix_.sigprocmask(SIG_SETMASK, &before, nullptr).ok());
  EXPECT_EQ(posix_.sigprocmask(-1, &blocked, nullptr).errnum, EINVAL);
}

TEST_F(RealPosixTest, PrctlReadsProcessAttributes) {
  const Result<int> dumpable = posix_.prctl(PR_GET_DUMPABLE, 0);
  ASSERT_TRUE(dumpable.ok());
  EXPECT_GE(dumpable.value, 0);
  EXPECT_EQ(posix_.prctl(-1, 0).errnum, EINVAL);
}

TEST_F(RealPosixTest, ClockAndRandomness) {
  timespec now{};
  ASSERT_TRUE(posix_.clockGettime(CLOCK_MONOTONIC, &now).ok());
  EXPECT_TRUE(now.tv_sec > 0 || now.tv_nsec > 0);
  EXPECT_EQ(posix_.clockGettime(-42, &now).errnum, EINVAL);

  std::array<unsigned char, 32> random{};
  EXPECT_EQ(posix_.getrandom(random.data(), random.size(), 0).value, 32);
  // 32 zero bytes from a working generator: probability 2^-256.
  EXPECT_TRUE(std::any_of(random.begin(), random.end(), [](unsigned char b) { return b != 0; }));
}

}  // namespace
}  // namespace snow::posix
