#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "snow/contexts/dynamic_context.h"
#include "snow/contexts/static_context.h"
#include "snow/posix/active.h"

#include "support/await.h"
#include "support/throws.h"

namespace snow {
namespace {

using ::testing::HasSubstr;

class ContextsTest : public ::testing::Test {
 protected:
  posix::PosixPtr layer_ = posix::makeDefaultPosix();
  posix::ScopedInjector injector_{*layer_};
};

using snow::testing::logicErrorOf;

TEST_F(ContextsTest, InstanceExistsExactlyWhileAStaticContextLives) {
  EXPECT_FALSE(StaticContext::exists());
  EXPECT_THAT(logicErrorOf([] { (void)StaticContext::instance(); }),
              HasSubstr("before a StaticContext was created"));
  {
    StaticContext context;
    EXPECT_EQ(&StaticContext::instance(), &context);
    EXPECT_EQ(&context.posix(), layer_.get());
    EXPECT_NE(context.origin(), 0U);
    EXPECT_EQ(context.events().origin(), context.origin());
    EXPECT_THAT(logicErrorOf([] { StaticContext another; }), HasSubstr("exists already"));
    EXPECT_EQ(&StaticContext::instance(), &context)
        << "the failed second context replaced the first";
  }
  EXPECT_FALSE(StaticContext::exists());
}

TEST_F(ContextsTest, OriginsDifferBetweenContexts) {
  uint64_t first = 0;
  {
    StaticContext context;
    first = context.origin();
  }
  StaticContext second;
  EXPECT_NE(second.origin(), first);
}

TEST(ContextsWithoutPosixTest, AStaticContextNeedsThePosixLayer) {
  posix::setActive(nullptr);
  EXPECT_THAT(logicErrorOf([] { StaticContext context; }), HasSubstr("setActive"));
}

TEST_F(ContextsTest, DynamicInstanceNeedsAnInstalledGeneration) {
  StaticContext context;
  EXPECT_THAT(logicErrorOf([] { (void)DynamicContext::instance(); }),
              HasSubstr("before a configuration was applied"));
  context.install(std::make_shared<DynamicContext>(1, "built-in default"));
  EXPECT_EQ(DynamicContext::instance()->generation(), 1U);
  EXPECT_EQ(DynamicContext::instance()->source(), "built-in default");
}

// An async operation keeps the generation it started in, to its end, across a swap.
TEST_F(ContextsTest, AnInFlightOperationKeepsItsGenerationAliveAcrossASwap) {
  StaticContext context;
  context.install(std::make_shared<DynamicContext>(1, "first"));
  std::weak_ptr<DynamicContext> first = DynamicContext::instance();

  Promise<void> slowStep;
  auto startOperation = [&] {
    DynamicContextPtr pinned = DynamicContext::instance();
    return slowStep.future().then([pinned] { return pinned->generation(); });
  };
  Future<uint64_t> operation = startOperation();

  DynamicContextPtr replaced = context.install(std::make_shared<DynamicContext>(2, "second"));
  EXPECT_EQ(replaced->generation(), 1U);
  replaced.reset();
  EXPECT_EQ(DynamicContext::instance()->generation(), 2U) << "new code must see the new generation";
  EXPECT_FALSE(first.expired()) << "the swap freed a generation an operation still uses";

  slowStep.setValue();
  ASSERT_TRUE(testing::await(context.loop(), operation));
  EXPECT_EQ(operation.value(), 1U) << "the operation did not finish on its own generation";
  operation = {};
  ASSERT_TRUE(testing::awaitCondition(context.loop(), [&] { return first.expired(); }))
      << "the old generation outlived the last operation that used it";
}

}  // namespace
}  // namespace snow
