#include "direct_call_check.h"

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace snow::tools {
namespace {

using testing::ElementsAre;
using testing::IsEmpty;

// The functions called directly in `source`, ignoring line numbers.
std::vector<std::string> calledIn(std::string_view source) {
  std::vector<std::string> names;
  for (const DirectCall& call : findDirectCalls(source)) {
    names.push_back(call.function);
  }
  return names;
}

TEST(FindDirectCalls, FlagsGlobalAndUnqualifiedCalls) {
  EXPECT_THAT(calledIn("int fd = ::open(path, O_RDONLY);"), ElementsAre("open"));
  EXPECT_THAT(calledIn("read(fd, buf, n);"), ElementsAre("read"));
  EXPECT_THAT(calledIn("if (x) close (fd);"), ElementsAre("close"));
  EXPECT_THAT(calledIn("return getpid();"), ElementsAre("getpid"));
  EXPECT_THAT(calledIn("return ::close(fd);"), ElementsAre("close"));
  EXPECT_THAT(calledIn("f(a, write(fd, p, 1));"), ElementsAre("write"));
  EXPECT_THAT(calledIn("ok && ::kill(pid, 0) == 0"), ElementsAre("kill"));
  EXPECT_THAT(calledIn("ok && waitpid(pid, &s, 0)"), ElementsAre("waitpid"));
  EXPECT_THAT(calledIn("auto n = static_cast<int>(::read(fd, b, 1));"), ElementsAre("read"));
  EXPECT_THAT(calledIn("[&] { sleep(1); }"), ElementsAre("sleep"));
}

TEST(FindDirectCalls, FlagsStdQualifiedCFunctions) {
  EXPECT_THAT(calledIn("std::signal(SIGINT, handler);"), ElementsAre("signal"));
  EXPECT_THAT(calledIn("auto t = std::time(nullptr);"), ElementsAre("time"));
  EXPECT_THAT(calledIn("const char* home = std::getenv(\"HOME\");"), ElementsAre("getenv"));
  EXPECT_THAT(calledIn("::std::system(cmd);"), ElementsAre("system"));
}

TEST(FindDirectCalls, IgnoresMemberCallsAndOtherNamespaces) {
  EXPECT_THAT(calledIn("posix.read(fd, buf, n);"), IsEmpty());
  EXPECT_THAT(calledIn("p->read(fd, buf, n);"), IsEmpty());
  EXPECT_THAT(calledIn("x.close();"), IsEmpty());
  EXPECT_THAT(calledIn("active().open(path, flags, 0);"), IsEmpty());
  EXPECT_THAT(calledIn("snow::posix::active().close(fd);"), IsEmpty());
  EXPECT_THAT(calledIn("posix::open(path);"), IsEmpty());
  EXPECT_THAT(calledIn("foo::open(path);"), IsEmpty());
  EXPECT_THAT(calledIn("Stream<T>::write(data);"), IsEmpty());
  EXPECT_THAT(calledIn("std::thread worker(run);"), IsEmpty());
}

TEST(FindDirectCalls, IgnoresDeclarationsAndDefinitions) {
  EXPECT_THAT(calledIn("Result<int> open(const char* path, int flags, mode_t mode) override;"),
              IsEmpty());
  EXPECT_THAT(calledIn("virtual Result<int> close(int fd) = 0;"), IsEmpty());
  EXPECT_THAT(calledIn("ssize_t Stream::write(const void* data, size_t n) {"), IsEmpty());
  EXPECT_THAT(calledIn("Buffer* read(size_t n);"), IsEmpty());
  EXPECT_THAT(calledIn("const Config& open(std::string_view name);"), IsEmpty());
  EXPECT_THAT(calledIn("Duration time(3);"), IsEmpty());
}

TEST(FindDirectCalls, IgnoresCommentsAndLiterals) {
  EXPECT_THAT(calledIn("log(\"open(\" + path);"), IsEmpty());
  EXPECT_THAT(calledIn("// write(fd, buf, n);"), IsEmpty());
  EXPECT_THAT(calledIn("/* close(fd);\n read(fd, b, 1); */"), IsEmpty());
  EXPECT_THAT(calledIn("auto s = R\"sql(kill(\")\" read( )sql\";"), IsEmpty());
  EXPECT_THAT(calledIn("char c = '(';  char q = '\\''; auto s = \"\\\"close(\";"), IsEmpty());
  // A digit separator is not a character literal: the call after it is still seen.
  EXPECT_THAT(calledIn("int n = 1'000; close(fd); char c = 'x';"), ElementsAre("close"));
}

TEST(FindDirectCalls, MatchesWholeWordsOnly) {
  EXPECT_THAT(calledIn("reopen(path);"), IsEmpty());
  EXPECT_THAT(calledIn("open_all(path);"), IsEmpty());
  EXPECT_THAT(calledIn("readAll(fd);"), IsEmpty());
  EXPECT_THAT(calledIn("auto timeout = sleep_for(1);"), IsEmpty());
  EXPECT_THAT(calledIn("int open = 3; int x = open + 1;"), IsEmpty());
}

TEST(FindDirectCalls, ReportsLineNumbers) {
  const std::string source =
      "/* a comment\n"
      "   spanning lines */\n"
      "int main() {\n"
      "  const char* s = \"x\";\n"
      "  ::close(3);\n"
      "  posix.close(3);\n"
      "  return fork();\n"
      "}\n";

  EXPECT_THAT(findDirectCalls(source), ElementsAre(DirectCall{5, "close"}, DirectCall{7, "fork"}));
}

TEST(BlankCommentsAndLiterals, KeepsLayoutAndQuotes) {
  EXPECT_EQ(blankCommentsAndLiterals("a(\"xy\"); // c\nb('z');"), "a(\"  \");     \nb(' ');");
}

// A throw-away tree under the test's temporary directory.
class ScanTreeTest : public testing::Test {
 protected:
  void SetUp() override {
    root_ = std::filesystem::path(testing::TempDir()) /
            ("snow-scan-tree-" +
             std::string(testing::UnitTest::GetInstance()->current_test_info()->name()));
    std::filesystem::remove_all(root_);
  }
  void TearDown() override { std::filesystem::remove_all(root_); }

  void write(const std::string& relative, const std::string& contents) {
    const std::filesystem::path path = root_ / relative;
    std::filesystem::create_directories(path.parent_path());
    std::ofstream(path) << contents;
  }

  std::filesystem::path root_;
};

TEST_F(ScanTreeTest, ReportsOffencesOutsideExcludedDirectories) {
  write("core/loop.cc", "void f() {\n  ::close(3);\n}\n");
  write("core/include/snow/core/x.h", "inline int g() { return getpid(); }\n");
  write("core/notes.txt", "::close(3);\n");  // Not a source file.
  write("posix/real_posix.cc", "int f() { return ::close(3); }\n");
  write("tests/posix/t.cc", "int f() { return ::close(3); }\n");
  write("build-x/CMakeCache.txt", "");
  write("build-x/gen.cc", "int f() { return ::close(3); }\n");
  write(".cache/x.cc", "int f() { return ::close(3); }\n");

  const std::vector<Offence> offences = scanTree(root_, {"posix", "tests"});

  EXPECT_EQ(formatOffences(offences),
            "core/include/snow/core/x.h:1: getpid(\n"
            "core/loop.cc:2: close(\n");
}

TEST_F(ScanTreeTest, ACleanTreeHasNoOffences) {
  write("core/loop.cc", "void f(Posix& posix) { posix.close(3); }\n");

  EXPECT_THAT(scanTree(root_, {"posix", "tests"}), IsEmpty());
}

// The check itself: snow-core reaches the OS only through snow::posix.
TEST(DirectCallCheck, NoCodeOutsidePosixAndTestsCallsTheOsDirectly) {
  const std::vector<Offence> offences = scanTree(SNOW_SOURCE_DIR, {"posix", "tests"});

  EXPECT_THAT(offences, IsEmpty())
      << "Direct OS calls outside posix/ (call snow::posix::active() or an injected "
         "snow::posix::Posix instead; see tests/tools/direct_call_check.h for the rules):\n"
      << formatOffences(offences);
}

}  // namespace
}  // namespace snow::tools
