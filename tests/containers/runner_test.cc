#include "runner_test.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include "daemon/daemon_process.h"
#include "support/lines.h"

namespace snow::containers::testing {

RunnerTest::RunnerTest(const std::string& name)
    : os_(posix::makeDefaultPosix()), injected_(*os_), loop_(makeDispatcher("test")), dir_(name) {}

void RunnerTest::TearDown() {
  for (const auto& id : dockerIds()) {
    (void)docker({"rm", "-f", id});
  }
}

std::pair<int, std::string> RunnerTest::docker(std::vector<std::string> args) {
  args.insert(args.begin(), {"-H", "unix://" + dockerd().socketPath()});
  return snow::testing::runProgram(*loop_, "/usr/bin/docker", args);
}

std::set<std::string> RunnerTest::dockerIds(const std::string& label) {
  auto [code, out] = docker({"ps", "-aq", "--no-trunc", "--filter", "label=" + label});
  EXPECT_EQ(code, 0) << out;
  const auto lines = snow::testing::nonEmptyLines(out);
  return {lines.begin(), lines.end()};
}

std::string RunnerTest::context(const std::string& name, const std::vector<std::string>& cmd,
                                const std::string& extra) {
  std::string path = dir_.file(name);
  EXPECT_EQ(::mkdir(path.c_str(), 0755), 0) << path;
  writeBusyboxContext(path, cmd, extra);
  return path;
}

}  // namespace snow::containers::testing
