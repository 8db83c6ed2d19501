// The receiving side's dedup table and its journal (rpc/src/dispatch_table.h, private).

#include "rpc/src/dispatch_table.h"

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "rpc/rpc_support.h"
#include "support/log_capture.h"

namespace snow::testing {
namespace {

using rpc::detail::DispatchAnswer;
using rpc::detail::DispatchTable;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using State = DispatchTable::State;

EventId id(uint64_t sequence) {
  return EventId{0xaa, sequence};
}

std::vector<std::string> linesOf(const std::string& text) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) {
      end = text.size();
    }
    lines.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return lines;
}

class DispatchTableTest : public ::testing::Test {
 protected:
  DispatchTable table(size_t capacity, const std::string& journal = "") {
    return DispatchTable(*layer_, capacity, journal.empty() ? "" : dir_.file(journal));
  }

  posix::PosixPtr layer_ = posix::makeDefaultPosix();
  posix::ScopedInjector injector_{*layer_};
  DispatcherPtr loop_ = makeDispatcher("dispatch-table-test");
  TempDir dir_;
};

TEST_F(DispatchTableTest, AnIdGoesFromNewToRunningToDoneAndWaitersGetTheAnswer) {
  DispatchTable t = table(10);
  EXPECT_EQ(t.open(), 0U) << "no journal, nothing read";
  EXPECT_EQ(t.state(id(1)), State::New);
  t.begin(id(1));
  EXPECT_EQ(t.state(id(1)), State::Running);
  EXPECT_EQ(t.state(id(2)), State::New);
  auto first = t.wait(id(1));
  auto second = t.wait(id(1));
  EXPECT_FALSE(first.isReady());
  t.complete(id(1), {rpc::Code::Ok, std::string("reply\0bytes", 11)});
  EXPECT_EQ(t.state(id(1)), State::Done);
  EXPECT_EQ(t.answer(id(1)).code, rpc::Code::Ok);
  EXPECT_EQ(t.answer(id(1)).body, std::string("reply\0bytes", 11));
  ASSERT_TRUE(await(*loop_, first));
  ASSERT_TRUE(await(*loop_, second));
  EXPECT_EQ(first.value().body, std::string("reply\0bytes", 11));
  EXPECT_EQ(second.value().code, rpc::Code::Ok);
  EXPECT_EQ(t.size(), 1U);
}

TEST_F(DispatchTableTest, AFailedAnswerIsKeptWithItsCode) {
  DispatchTable t = table(10);
  t.begin(id(7));
  t.complete(id(7), {rpc::Code::NotFound, "no handler for event type 'x'"});
  EXPECT_EQ(t.state(id(7)), State::Done);
  EXPECT_EQ(t.answer(id(7)).code, rpc::Code::NotFound);
  EXPECT_EQ(t.answer(id(7)).body, "no handler for event type 'x'");
}

TEST_F(DispatchTableTest, AForgottenIdGoesBackToNewAndItsWaitersGetTheAnswer) {
  DispatchTable t = table(10, "dispatch.journal");
  t.open();
  t.begin(id(1));
  auto waiter = t.wait(id(1));
  t.forget(id(1), {rpc::Code::NotFound, "no handler"});
  EXPECT_EQ(t.state(id(1)), State::New);
  EXPECT_EQ(t.size(), 0U);
  ASSERT_TRUE(await(*loop_, waiter));
  EXPECT_EQ(waiter.value().code, rpc::Code::NotFound);
  t.forget(id(2), {});  // Unknown: nothing happens.
  // The journal forgets it too: after a restart it is not "interrupted".
  DispatchTable again = table(10, "dispatch.journal");
  EXPECT_EQ(again.open(), 2U);
  EXPECT_EQ(again.state(id(1)), State::New);
  EXPECT_EQ(again.size(), 0U);
}

TEST_F(DispatchTableTest, EvictionAtCapacityDropsTheOldestDoneButKeepsRunningOnes) {
  DispatchTable t = table(2);
  t.begin(id(1));  // Still running while others come and go.
  for (uint64_t s = 2; s <= 6; ++s) {
    t.begin(id(s));
    t.complete(id(s), {rpc::Code::Ok, fmt::format("answer {}", s)});
  }
  EXPECT_EQ(t.state(id(1)), State::Running)
      << "a running entry was evicted: a retry would rerun it";
  EXPECT_EQ(t.state(id(6)), State::Done);
  EXPECT_EQ(t.size(), 2U) << "a handler that never settles must not stop eviction";
  t.complete(id(1), {rpc::Code::Ok, "answer 1"});
  // Settled, everything is evictable again: the table is back within its capacity, oldest out.
  EXPECT_EQ(t.size(), 2U);
  EXPECT_EQ(t.state(id(2)), State::New);
  EXPECT_EQ(t.state(id(3)), State::New);
  EXPECT_EQ(t.state(id(6)), State::Done);
  EXPECT_EQ(t.answer(id(6)).body, "answer 6");
}

TEST_F(DispatchTableTest, TheJournalRemembersAnswersAndInterruptedRunsAcrossAReopen) {
  {
    DispatchTable t = table(100, "dispatch.journal");
    EXPECT_EQ(t.open(), 0U);
    t.begin(id(1));
    t.complete(id(1), {rpc::Code::Ok, std::string("\x00\n\xff binary", 10)});
    t.begin(id(2));  // Killed while handling this one.
    t.begin(id(3));
    t.complete(id(3), {rpc::Code::NotFound, "no handler"});
    t.begin(id(4));
    t.complete(id(4), {rpc::Code::Ok, ""});  // An empty answer.
  }
  DispatchTable t = table(100, "dispatch.journal");
  EXPECT_EQ(t.open(), 7U);
  EXPECT_EQ(t.size(), 4U);
  EXPECT_EQ(t.state(id(1)), State::Done);
  EXPECT_EQ(t.answer(id(1)).body, std::string("\x00\n\xff binary", 10));
  EXPECT_EQ(t.state(id(2)), State::Interrupted);
  EXPECT_EQ(t.state(id(3)), State::Done);
  EXPECT_EQ(t.answer(id(3)).code, rpc::Code::NotFound);
  EXPECT_EQ(t.answer(id(3)).body, "no handler");
  EXPECT_EQ(t.state(id(4)), State::Done);
  EXPECT_EQ(t.answer(id(4)).body, "");
  EXPECT_EQ(t.state(id(5)), State::New);

  // The interrupted one runs again and its answer is journaled like any other.
  t.begin(id(2));
  EXPECT_EQ(t.state(id(2)), State::Running);
  t.complete(id(2), {rpc::Code::Ok, "second try"});
  DispatchTable again = table(100, "dispatch.journal");
  again.open();
  EXPECT_EQ(again.state(id(2)), State::Done);
  EXPECT_EQ(again.answer(id(2)).body, "second try");
}

TEST_F(DispatchTableTest, ATornLastRecordIsIgnoredWithAWarning) {
  {
    DispatchTable t = table(100, "dispatch.journal");
    t.open();
    t.begin(id(1));
    t.complete(id(1), {rpc::Code::Ok, "kept"});
    t.begin(id(2));
  }
  // The daemon was killed in the middle of writing the answer of id 2.
  {
    std::ofstream out(dir_.file("dispatch.journal"), std::ios::app);
    out << "D 00000000000000aa-2 0 6869";
  }
  LogCapture log;
  DispatchTable t = table(100, "dispatch.journal");
  EXPECT_EQ(t.open(), 3U);
  EXPECT_TRUE(log.contains("dispatch journal " + dir_.file("dispatch.journal") +
                           ": ignored 1 incomplete record(s)"))
      << log.text();
  EXPECT_EQ(t.state(id(1)), State::Done);
  EXPECT_EQ(t.answer(id(1)).body, "kept");
  EXPECT_EQ(t.state(id(2)), State::Interrupted) << "a torn answer is no answer";
  // Opening rewrote the journal without the torn record, so appending after it is clean.
  EXPECT_THAT(readFile(dir_.file("dispatch.journal")), Not(HasSubstr("6869")));
  t.begin(id(2));
  t.complete(id(2), {rpc::Code::Ok, "whole"});
  DispatchTable again = table(100, "dispatch.journal");
  LogCapture quiet;
  EXPECT_EQ(again.open(), 5U);  // A1 D1 A2 (rewritten), then A2 D2 appended.
  EXPECT_FALSE(quiet.contains("incomplete")) << quiet.text();
  EXPECT_EQ(again.answer(id(2)).body, "whole");
}

TEST_F(DispatchTableTest, CorruptRecordsAreSkippedAndTheRestIsRead) {
  writeFile(dir_.file("dispatch.journal"),
            "A 00000000000000aa-1\n"
            "D 00000000000000aa-1 0 6f6b\n"
            "A not-an-id\n"
            "D 00000000000000aa-2 13\n"      // No answer field.
            "D 00000000000000aa-3 x 6f6b\n"  // No code.
            "D 00000000000000aa-4 0 6f6\n"   // Odd hex.
            "Q 00000000000000aa-5\n"         // Unknown record.
            "\n"
            "A 00000000000000aa-6\n");
  LogCapture log;
  DispatchTable t = table(100, "dispatch.journal");
  EXPECT_EQ(t.open(), 3U);
  EXPECT_TRUE(log.contains("ignored 6 incomplete record(s)")) << log.text();
  EXPECT_EQ(t.state(id(1)), State::Done);
  EXPECT_EQ(t.answer(id(1)).body, "ok");
  for (uint64_t s = 2; s <= 5; ++s) {
    EXPECT_EQ(t.state(id(s)), State::New) << s;
  }
  EXPECT_EQ(t.state(id(6)), State::Interrupted);
}

TEST_F(DispatchTableTest, CompactionOnOpenKeepsWhatIsRemembered) {
  {
    DispatchTable t = table(1000, "dispatch.journal");
    t.open();
    for (uint64_t s = 1; s <= 10; ++s) {
      t.begin(id(s));
      t.complete(id(s), {rpc::Code::Ok, fmt::format("{}", s)});
    }
  }
  // Re-opened with room for three: the three newest are remembered, and the journal holds just
  // their records.
  DispatchTable t = table(3, "dispatch.journal");
  EXPECT_EQ(t.open(), 20U);
  EXPECT_EQ(t.size(), 3U);
  EXPECT_EQ(t.state(id(7)), State::New);
  EXPECT_EQ(t.answer(id(8)).body, "8");
  EXPECT_EQ(t.answer(id(10)).body, "10");
  EXPECT_THAT(linesOf(readFile(dir_.file("dispatch.journal"))),
              ElementsAre("A 00000000000000aa-8", "D 00000000000000aa-8 0 38",
                          "A 00000000000000aa-9", "D 00000000000000aa-9 0 39",
                          "A 00000000000000aa-a", "D 00000000000000aa-a 0 3130"));
  DispatchTable again = table(3, "dispatch.journal");
  EXPECT_EQ(again.open(), 6U);
  EXPECT_EQ(again.answer(id(9)).body, "9");
}

TEST_F(DispatchTableTest, TheJournalIsCompactedWhileItGrows) {
  DispatchTable t = table(2, "dispatch.journal");
  t.open();
  // Compaction starts past 2 * capacity + 1024 records.
  for (uint64_t s = 1; s <= 600; ++s) {
    t.begin(id(s));
    t.complete(id(s), {rpc::Code::Ok, "x"});
  }
  const auto lines = linesOf(readFile(dir_.file("dispatch.journal")));
  EXPECT_LT(lines.size(), 2U * 2 + 1024) << "the journal grows without bound";
  EXPECT_GT(lines.size(), 4U);
  DispatchTable again = table(2, "dispatch.journal");
  again.open();
  EXPECT_EQ(again.size(), 2U);
  EXPECT_EQ(again.state(id(600)), State::Done);
  EXPECT_EQ(again.state(id(599)), State::Done);
  EXPECT_EQ(again.state(id(1)), State::New);
}

TEST_F(DispatchTableTest, AJournalThatCannotBeWrittenFailsOpenNamingTheFile) {
  DispatchTable t(*layer_, 10, dir_.file("no/such/dir/dispatch.journal"));
  try {
    t.open();
    FAIL() << "opened a journal in a missing directory";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), HasSubstr(dir_.file("no/such/dir/dispatch.journal")));
  }
}

TEST(HexTest, RoundTripsAndRejectsWhatIsNotHex) {
  const std::string bytes("\x00\x01\x7f\x80\xff", 5);
  EXPECT_EQ(rpc::detail::toHex(bytes), "00017f80ff");
  EXPECT_EQ(rpc::detail::fromHex("00017f80ff"), bytes);
  EXPECT_EQ(rpc::detail::fromHex("00017F80FF"), bytes);
  EXPECT_EQ(rpc::detail::fromHex(""), "");
  EXPECT_EQ(rpc::detail::fromHex("abc"), std::nullopt);
  EXPECT_EQ(rpc::detail::fromHex("zz"), std::nullopt);
  EXPECT_EQ(rpc::detail::fromHex("0g"), std::nullopt);
  EXPECT_EQ(rpc::detail::fromHex("+1"), std::nullopt);
}

}  // namespace
}  // namespace snow::testing
