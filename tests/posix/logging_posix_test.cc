#include "snow/posix/logging_posix.h"

#include <cerrno>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include "mocks/mock_posix.h"

namespace snow::posix {
namespace {

using testing::ElementsAre;
using testing::MatchesRegex;
using testing::NiceMock;
using testing::Return;

class LoggingPosixTest : public testing::Test {
 protected:
  LoggingPosixTest() {
    logger_->set_level(spdlog::level::trace);
    logger_->set_pattern("%l %v");
  }

  std::vector<std::string> lines() const {
    std::vector<std::string> result;
    std::istringstream in(out_.str());
    for (std::string line; std::getline(in, line);) {
      result.push_back(line);
    }
    return result;
  }

  std::ostringstream out_;
  std::shared_ptr<spdlog::logger> logger_ = std::make_shared<spdlog::logger>(
      "posix", std::make_shared<spdlog::sinks::ostream_sink_st>(out_));
  NiceMock<MockPosix> inner_;
  LoggingPosix logging_{inner_, logger_};
};

TEST_F(LoggingPosixTest, WritesOneTraceLinePerCall) {
  int fds[2];
  ASSERT_TRUE(logging_.pipe2(fds, O_CLOEXEC).ok());
  logging_.write(fds[1], "ping", 4);
  char buffer[4];
  logging_.read(fds[0], buffer, sizeof(buffer));
  logging_.close(fds[0]);
  logging_.close(fds[1]);

  EXPECT_THAT(lines(), ElementsAre("trace pipe2(flags=0x80000) = 0",
                                   "trace write(fd=" + std::to_string(fds[1]) + ") = 4",
                                   "trace read(fd=" + std::to_string(fds[0]) + ") = 4",
                                   "trace close(fd=" + std::to_string(fds[0]) + ") = 0",
                                   "trace close(fd=" + std::to_string(fds[1]) + ") = 0"));
}

TEST_F(LoggingPosixTest, FailuresShowErrnoNameAndMessageAndPassThroughUnchanged) {
  EXPECT_CALL(inner_, open).WillOnce(Return(Result<int>{-1, ENOENT}));

  Result<int> result;
  EXPECT_NO_THROW(result = logging_.open("/no/such", O_RDONLY, 0));

  EXPECT_EQ(result.value, -1);
  EXPECT_EQ(result.errnum, ENOENT);
  EXPECT_THAT(lines(),
              ElementsAre("trace open(\"/no/such\") = -1 ENOENT (No such file or directory)"));
}

TEST_F(LoggingPosixTest, DescribesNonIntegerResults) {
  EXPECT_CALL(inner_, readDirectory)
      .WillOnce(Return(Result<std::vector<DirectoryEntry>>{{{"a", DT_REG}, {"b", DT_DIR}}}));
  EXPECT_CALL(inner_, mkdtemp).WillOnce(Return(Result<char*>{nullptr, EEXIST}));
  char pathTemplate[] = "/tmp/x-XXXXXX";

  logging_.readDirectory("/srv");
  logging_.mkdtemp(pathTemplate);

  EXPECT_THAT(lines(), ElementsAre("trace readDirectory(\"/srv\") = 2 entries",
                                   MatchesRegex("trace mkdtemp\\(\"/tmp/x-XXXXXX\"\\) = nullptr "
                                                "EEXIST \\(File exists\\)")));
}

TEST_F(LoggingPosixTest, WritesNothingAboveTraceLevel) {
  logger_->set_level(spdlog::level::debug);

  EXPECT_GT(logging_.getpid().value, 0);

  EXPECT_EQ(out_.str(), "");
}

TEST_F(LoggingPosixTest, WithoutALoggerFollowsTheCurrentDefaultLogger) {
  LoggingPosix logging(inner_);
  const std::shared_ptr<spdlog::logger> previous = spdlog::default_logger();
  spdlog::set_default_logger(logger_);  // Installed after construction on purpose.

  logging.getpid();
  spdlog::set_default_logger(previous);

  EXPECT_THAT(lines(), ElementsAre(MatchesRegex("trace getpid\\(\\) = [0-9]+")));
}

}  // namespace
}  // namespace snow::posix
