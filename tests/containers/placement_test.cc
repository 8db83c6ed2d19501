// The placement policy (placement.h) on member lists made by hand.

#include "placement.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace snow::containers {
namespace {

using ::testing::HasSubstr;

Candidate worker(const std::string& id, uint32_t jobs, uint64_t freeMib,
                 const std::map<std::string, std::string>& labels = {}) {
  return Candidate{id, true, advertised("127.0.0.1:7400", jobs, freeMib, labels), 0};
}

TEST(PlacementTest, TheFewestJobsWinThenTheMostFreeMemoryThenTheId) {
  EXPECT_EQ(place({worker("a", 2, 900), worker("b", 1, 100), worker("c", 3, 9000)}, "", {}).nodeId,
            "b");
  EXPECT_EQ(place({worker("a", 1, 100), worker("b", 1, 900)}, "", {}).nodeId, "b");
  EXPECT_EQ(place({worker("b", 1, 100), worker("a", 1, 100)}, "", {}).nodeId, "a");
}

TEST(PlacementTest, JobsPlacedSinceTheLastAdvertisementCount) {
  Candidate a = worker("a", 0, 100);
  a.placedSince = 2;
  EXPECT_EQ(place({a, worker("b", 1, 100)}, "", {}).nodeId, "b");
}

TEST(PlacementTest, LabelsMustAllMatch) {
  const std::vector<Candidate> members = {worker("a", 0, 100, {{"zone", "a"}}),
                                          worker("b", 5, 100, {{"zone", "b"}, {"gpu", "yes"}})};
  EXPECT_EQ(place(members, "", {{"zone", "b"}}).nodeId, "b");
  EXPECT_EQ(place(members, "", {{"zone", "b"}, {"gpu", "yes"}}).nodeId, "b");
  const Placement none = place(members, "", {{"zone", "a"}, {"gpu", "yes"}});
  EXPECT_EQ(none.nodeId, "");
  EXPECT_THAT(none.why, HasSubstr("none of the 2 live workers has the labels gpu=yes, zone=a"));
}

TEST(PlacementTest, DeadMembersNonWorkersAndExcludedOnesAreNeverChosen) {
  Candidate dead = worker("a", 0, 100);
  dead.alive = false;
  Candidate receiver{"b", true, {}, 0};
  EXPECT_EQ(place({dead, receiver}, "", {}).why, "no live worker in the cluster");
  EXPECT_EQ(place({dead, receiver, worker("c", 9, 1)}, "", {}).nodeId, "c");
  EXPECT_EQ(place({worker("c", 0, 1), worker("d", 9, 1)}, "", {}, {"c"}).nodeId, "d");
}

TEST(PlacementTest, PinningNamesTheNodeOrSaysWhyNot) {
  Candidate dead = worker("a", 0, 100);
  dead.alive = false;
  const std::vector<Candidate> members = {dead, Candidate{"b", true, {}, 0}, worker("c", 9, 1),
                                          worker("d", 0, 900)};
  EXPECT_EQ(place(members, "c", {}).nodeId, "c") << "pinned beats the policy";
  EXPECT_EQ(place(members, "a", {}).why, "node a is not alive");
  EXPECT_EQ(place(members, "b", {}).why, "node b runs no jobs (not a container worker)");
  EXPECT_EQ(place(members, "e", {}).why, "no node e in the cluster");
  EXPECT_EQ(place(members, "c", {}, {"c"}).why, "node c failed this job already");
}

}  // namespace
}  // namespace snow::containers
