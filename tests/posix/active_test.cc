#include "snow/posix/active.h"

#include <memory>
#include <sstream>
#include <stdexcept>
#include <system_error>

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spdlog/logger.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include "mocks/mock_posix.h"

namespace snow::posix {
namespace {

using testing::HasSubstr;
using testing::NiceMock;

// Every test starts and ends without an active layer, whatever order the tests run in.
class ActiveTest : public testing::Test {
 protected:
  void SetUp() override { ASSERT_FALSE(hasActive()) << "a previous test leaked the active layer"; }
  void TearDown() override { setActive(nullptr); }
};

TEST_F(ActiveTest, ThrowsAClearLogicErrorBeforeALayerIsSet) {
  try {
    active();
    FAIL() << "active() returned without a layer set";
  } catch (const std::logic_error& error) {
    EXPECT_STREQ(error.what(),
                 "snow::posix::active() called before the POSIX layer was set: call "
                 "snow::posix::setActive() at start-up (or use posix::ScopedInjector in tests)");
  }
}

TEST_F(ActiveTest, SetActiveInstallsAndNullptrUninstalls) {
  RealPosix layer;

  setActive(&layer);
  EXPECT_TRUE(hasActive());
  EXPECT_EQ(&active(), &layer);

  setActive(nullptr);
  EXPECT_FALSE(hasActive());
  EXPECT_THROW(active(), std::logic_error);
}

TEST_F(ActiveTest, ScopedInjectorInstallsAndRestoresThePreviousLayer) {
  RealPosix installed;
  NiceMock<MockPosix> injected;
  setActive(&installed);

  {
    ScopedInjector injector(injected);
    EXPECT_EQ(&active(), &injected);
  }

  EXPECT_EQ(&active(), &installed);
}

TEST_F(ActiveTest, NestedInjectorsRestoreInReverseOrder) {
  NiceMock<MockPosix> outer;
  NiceMock<MockPosix> inner;

  {
    ScopedInjector outerInjector(outer);
    {
      ScopedInjector innerInjector(inner);
      EXPECT_EQ(&active(), &inner);
    }
    EXPECT_EQ(&active(), &outer);
  }

  EXPECT_FALSE(hasActive());
}

TEST_F(ActiveTest, DefaultLayerReachesTheOsAndThrowsOnFailure) {
  const PosixPtr layer = makeDefaultPosix();
  ScopedInjector injector(*layer);

  EXPECT_GT(active().getpid().value, 0);
  try {
    active().open("/no/such/snow-default-layer", O_RDONLY | O_CLOEXEC, 0);
    FAIL() << "open of a missing path did not throw";
  } catch (const std::system_error& error) {
    EXPECT_EQ(error.code().value(), ENOENT);
    EXPECT_THAT(error.what(), HasSubstr("open(\"/no/such/snow-default-layer\")"));
  }
}

TEST_F(ActiveTest, DefaultLayerTracesCallsOnlyWhenAsked) {
  std::ostringstream out;
  auto logger = std::make_shared<spdlog::logger>(
      "trace", std::make_shared<spdlog::sinks::ostream_sink_st>(out));
  logger->set_level(spdlog::level::trace);
  logger->set_pattern("%v");
  const std::shared_ptr<spdlog::logger> previous = spdlog::default_logger();
  spdlog::set_default_logger(logger);

  makeDefaultPosix(false)->getpid();
  const std::string untraced = out.str();
  makeDefaultPosix(true)->getpid();
  spdlog::set_default_logger(previous);

  EXPECT_EQ(untraced, "");
  EXPECT_THAT(out.str(), HasSubstr("getpid() = "));
}

}  // namespace
}  // namespace snow::posix
