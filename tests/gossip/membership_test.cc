// The member table's rules (whose word wins), the seen-set and the wire readers.

#include "membership.h"

#include <gmock/gmock.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include "seen_set.h"
#include "wire.h"

namespace snow::gossip {
namespace {

using ::testing::HasSubstr;

const std::string kSelf(32, 'a');
const std::string kOther(32, 'b');

MemberRecord record(const std::string& id, uint64_t incarnation, Status status) {
  MemberRecord r;
  r.id = id;
  r.address = "127.0.0.1:7400";
  r.incarnation = incarnation;
  r.status = status;
  return r;
}

TEST(MemberTableTest, NewerIncarnationsAndWorseStatusesWinOlderNewsNeverDoes) {
  MemberTable table(record(kSelf, 10, v1::Member::ALIVE));
  EXPECT_EQ(table.merge(record(kOther, 5, v1::Member::ALIVE), 1), MemberTable::Outcome::Added);
  EXPECT_EQ(table.merge(record(kOther, 5, v1::Member::ALIVE), 2), MemberTable::Outcome::Unchanged);
  std::optional<Status> previous;
  EXPECT_EQ(table.merge(record(kOther, 5, v1::Member::SUSPECT), 3, &previous),
            MemberTable::Outcome::Updated);
  EXPECT_EQ(previous, v1::Member::ALIVE);
  // Alive at the same incarnation is older news than the suspicion.
  EXPECT_EQ(table.merge(record(kOther, 5, v1::Member::ALIVE), 4), MemberTable::Outcome::Unchanged);
  EXPECT_EQ(table.find(kOther)->status, v1::Member::SUSPECT);
  EXPECT_EQ(table.find(kOther)->sinceUnixNanos, 3);
  // Its refutation (a higher incarnation) wins, dead or not.
  EXPECT_EQ(table.merge(record(kOther, 6, v1::Member::ALIVE), 5), MemberTable::Outcome::Updated);
  EXPECT_EQ(table.find(kOther)->status, v1::Member::ALIVE);
  EXPECT_EQ(table.merge(record(kOther, 6, v1::Member::DEAD), 6), MemberTable::Outcome::Updated);
  EXPECT_EQ(table.merge(record(kOther, 4, v1::Member::ALIVE), 7), MemberTable::Outcome::Unchanged);
  EXPECT_EQ(table.count(v1::Member::DEAD), 1U);
  EXPECT_EQ(table.count(v1::Member::ALIVE), 1U);  // This node.
}

TEST(MemberTableTest, RumoursAboutThisNodeAreRefutedWithAHigherIncarnation) {
  MemberTable table(record(kSelf, 10, v1::Member::ALIVE));
  EXPECT_EQ(table.merge(record(kSelf, 9, v1::Member::DEAD), 1), MemberTable::Outcome::Unchanged);
  EXPECT_EQ(table.merge(record(kSelf, 12, v1::Member::SUSPECT), 1),
            MemberTable::Outcome::AboutSelf);
  table.refute(12);
  EXPECT_EQ(table.self().incarnation, 13U);
  EXPECT_EQ(table.self().status, v1::Member::ALIVE);
  EXPECT_EQ(table.merge(record(kSelf, 13, v1::Member::ALIVE), 1), MemberTable::Outcome::Unchanged);
}

TEST(MemberTableTest, TheDigestFollowsEveryChangeAndAgreesBetweenEqualTables) {
  MemberTable a(record(kSelf, 10, v1::Member::ALIVE));
  MemberTable b(record(kOther, 3, v1::Member::ALIVE));
  a.merge(record(kOther, 3, v1::Member::ALIVE), 1);
  b.merge(record(kSelf, 10, v1::Member::ALIVE), 1);
  EXPECT_EQ(a.digest(), b.digest());
  const uint64_t before = a.digest();
  EXPECT_TRUE(a.mark(kOther, v1::Member::SUSPECT, 2));
  EXPECT_NE(a.digest(), before);
  EXPECT_FALSE(a.mark(kOther, v1::Member::ALIVE, 3)) << "marking never makes a status better";
  EXPECT_FALSE(a.mark(kSelf, v1::Member::DEAD, 3)) << "this node is never marked by itself";
  b.merge(record(kOther, 3, v1::Member::SUSPECT), 2);  // b is kOther: its own rumour.
  a.setSelfMetadata({{"role", "worker"}});
  EXPECT_EQ(a.self().incarnation, 11U);
  EXPECT_EQ(a.self().metadata.at("role"), "worker");
}

TEST(MemberTableTest, MembersDeadOrLeftLongEnoughAreForgottenAndTheirDeathDoesNotComeBack) {
  const std::string third(32, 'c');
  MemberTable table(record(kSelf, 10, v1::Member::ALIVE));
  const uint64_t alone = table.digest();
  table.merge(record(kOther, 5, v1::Member::ALIVE), 1);
  table.merge(record(third, 7, v1::Member::ALIVE), 1);
  EXPECT_TRUE(table.mark(kOther, v1::Member::DEAD, 100));
  table.merge(record(third, 7, v1::Member::LEFT), 200);
  EXPECT_EQ(table.forget(100), 0U) << "dead since 100: not before 100";
  EXPECT_EQ(table.forget(150), 1U);
  EXPECT_EQ(table.find(kOther), nullptr);
  EXPECT_NE(table.find(third), nullptr);
  EXPECT_EQ(table.forget(1000), 1U);
  EXPECT_EQ(table.find(third), nullptr);
  EXPECT_EQ(table.all().size(), 1U) << "this node is never forgotten";
  EXPECT_EQ(table.digest(), alone) << "the digest no longer counts them";

  // A neighbour that has not forgotten yet syncs its table: the deaths stay forgotten...
  EXPECT_EQ(table.merge(record(kOther, 5, v1::Member::DEAD), 2000),
            MemberTable::Outcome::Unchanged);
  EXPECT_EQ(table.merge(record(third, 7, v1::Member::LEFT), 2000), MemberTable::Outcome::Unchanged);
  EXPECT_EQ(table.find(kOther), nullptr);
  // ...and a member that starts again is new.
  EXPECT_EQ(table.merge(record(kOther, 9, v1::Member::ALIVE), 3000), MemberTable::Outcome::Added);
}

TEST(SeenSetTest, RemembersTheLastIdsAndForgetsTheOldestFirst) {
  SeenSet seen(3);
  EXPECT_TRUE(seen.insert("a"));
  EXPECT_FALSE(seen.insert("a"));
  EXPECT_TRUE(seen.insert("b"));
  EXPECT_TRUE(seen.insert("c"));
  EXPECT_TRUE(seen.insert("d"));
  EXPECT_FALSE(seen.contains("a"));
  EXPECT_TRUE(seen.contains("b"));
  EXPECT_EQ(seen.size(), 3U);
}

Value parse(const std::string& json) {
  Value v;
  EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(json, &v).ok()) << json;
  return v;
}

TEST(WireTest, AMemberRecordTravelsAndComesBackTheSame) {
  MemberRecord r = record(kOther, 1795594021344, v1::Member::SUSPECT);
  r.metadata = {{"cpu", "2"}, {"containers", "yes"}};
  MemberRecord back = memberOf(memberValue(r));
  EXPECT_EQ(back.id, r.id);
  EXPECT_EQ(back.address, r.address);
  EXPECT_EQ(back.incarnation, r.incarnation);
  EXPECT_EQ(back.status, r.status);
  EXPECT_EQ(back.metadata, r.metadata);
}

TEST(WireTest, MalformedRecordsAreRefusedNamingWhatIsWrong) {
  auto why = [](const std::string& json) {
    try {
      (void)memberOf(parse(json));
    } catch (const Malformed& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  const std::string id = kOther;
  EXPECT_THAT(why("[1]"), HasSubstr("not a JSON object"));
  EXPECT_THAT(why(R"({"addr":"x:1","inc":1,"status":"alive"})"), HasSubstr("'id' is missing"));
  EXPECT_THAT(why(R"({"id":"zz","addr":"x:1","inc":1,"status":"alive"})"),
              HasSubstr("not a node id"));
  EXPECT_THAT(why(R"({"id":")" + id + R"(","addr":"x:1","inc":-1,"status":"alive"})"),
              HasSubstr("'inc' is not a non-negative integer"));
  EXPECT_THAT(why(R"({"id":")" + id + R"(","addr":"x:1","inc":1.5,"status":"alive"})"),
              HasSubstr("'inc' is not a non-negative integer"));
  EXPECT_THAT(why(R"({"id":")" + id + R"(","addr":"x:1","inc":1,"status":"zombie"})"),
              HasSubstr("'zombie' is not alive, suspect, dead or left"));
  EXPECT_THAT(why(R"({"id":")" + id + R"(","addr":"x:1","inc":1,"status":"alive","meta":{"k":1}})"),
              HasSubstr("'meta' entries are strings"));
  EXPECT_EQ(why(R"({"id":")" + id + R"(","addr":"x:1","inc":1,"status":"alive"})"), "accepted");
}

TEST(WireTest, TopicsAndBase64) {
  EXPECT_TRUE(isTopic("jobs/v1.placed_x-y"));
  EXPECT_FALSE(isTopic(""));
  EXPECT_FALSE(isTopic("has space"));
  EXPECT_FALSE(isTopic(std::string(129, 'a')));
  const std::string bytes("\0\xff\x10zz", 5);
  EXPECT_EQ(fromBase64(toBase64(bytes)), bytes);
  EXPECT_EQ(toBase64("hello"), "aGVsbG8=");
  EXPECT_FALSE(fromBase64("not base64!").has_value());
}

}  // namespace
}  // namespace snow::gossip
