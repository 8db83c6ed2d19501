#include "snow/contexts/resources.h"

#include <gtest/gtest.h>

#include "snow/contexts/dynamic_context.h"

namespace snow {
namespace {

struct Socket : Resource {
  explicit Socket(int& closed) : closed_(closed) {}
  ~Socket() override { ++closed_; }
  int& closed_;
};

struct Other : Resource {};

TEST(ResourcesTest, AnUnchangedKeyMovesIntoTheNextGenerationInsteadOfBeingRemade) {
  int closed = 0;
  int made = 0;
  auto make = [&] {
    ++made;
    return std::make_shared<Socket>(closed);
  };
  auto first = std::make_shared<DynamicContext>(1, "first");
  auto socket = first->resources().acquire<Socket>("greeter/listen/127.0.0.1:1", make);
  EXPECT_FALSE(first->resources().inherited("greeter/listen/127.0.0.1:1"));

  auto second = std::make_shared<DynamicContext>(2, "second", first.get());
  auto again = second->resources().acquire<Socket>("greeter/listen/127.0.0.1:1", make);
  EXPECT_EQ(again, socket) << "the same address must reuse the same socket";
  EXPECT_TRUE(second->resources().inherited("greeter/listen/127.0.0.1:1"));
  EXPECT_EQ(made, 1);

  second->resources().forgetPrevious();
  socket.reset();
  again.reset();
  first.reset();  // The old generation goes; the inherited socket lives on in the new one.
  EXPECT_EQ(closed, 0);
  second.reset();
  EXPECT_EQ(closed, 1);
}

TEST(ResourcesTest, WhatTheNextGenerationDoesNotTakeDiesWithTheOldOne) {
  int closed = 0;
  auto first = std::make_shared<DynamicContext>(1, "first");
  first->resources().acquire<Socket>("greeter/listen/a",
                                     [&] { return std::make_shared<Socket>(closed); });
  auto second = std::make_shared<DynamicContext>(2, "second", first.get());
  second->resources().acquire<Socket>("greeter/listen/b",
                                      [&] { return std::make_shared<Socket>(closed); });
  second->resources().forgetPrevious();
  EXPECT_EQ(closed, 0) << "nothing closes before the old generation is dropped";
  first.reset();
  EXPECT_EQ(closed, 1);
  EXPECT_EQ(second->resources().keys(), std::vector<std::string>{"greeter/listen/b"});
}

TEST(ResourcesTest, AnAbortedGenerationLeavesTheCurrentOneIntact) {
  int closed = 0;
  auto current = std::make_shared<DynamicContext>(1, "current");
  current->resources().acquire<Socket>("k", [&] { return std::make_shared<Socket>(closed); });
  {
    DynamicContext aborted(2, "aborted", current.get());
    (void)aborted.resources().inherit("k");
    aborted.resources().acquire<Socket>("new", [&] { return std::make_shared<Socket>(closed); });
  }
  EXPECT_EQ(closed, 1) << "only what the aborted generation opened itself is closed";
  EXPECT_NE(current->resources().inherit("k"), nullptr);
}

TEST(ResourcesTest, AKeyOfAnotherTypeIsALogicError) {
  ResourceTable table;
  table.put("k", std::make_shared<Other>());
  int closed = 0;
  EXPECT_THROW(table.acquire<Socket>("k", [&] { return std::make_shared<Socket>(closed); }),
               std::logic_error);
}

}  // namespace
}  // namespace snow
