// The container runner in real daemons against the suite's own dockerd, driven by snowctl as an
// operator would: run, its output and exit code, --detach, the job table, removal, bad input
// refused before anything runs, a failing build, a Docker engine that is down, and a daemon that
// restarts and finds its running containers again.

#include <csignal>
#include <regex>
#include <set>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include "snow/containers/v1/containers.pb.h"
#include "snow/rpc/client.h"

#include "daemon/daemon_process.h"
#include "runner_test.h"
#include "support/await.h"
#include "support/files.h"

namespace snow::containers::testing {
namespace {

using namespace std::chrono_literals;
using ::snow::testing::awaitPolled;
using ::snow::testing::DaemonProcess;
using ::snow::testing::runProgram;
using ::snow::testing::writeFile;
using ::testing::HasSubstr;

// `snowctl run`'s code when the job could not run (as `docker run`'s).
constexpr int kCannotRun = 125;

struct JobRow {
  std::string id, node, state;
  int exitCode = 0;
};

class ContainersDaemonTest : public RunnerTest {
 protected:
  ContainersDaemonTest() : RunnerTest("snow-containers-daemon") {}

  std::string config(const std::string& extra = "", const std::string& socket = "") {
    std::string path = dir_.file("snow.yaml");
    writeFile(path, fmt::format("rpc:\n  unix_socket: {}\ndaemon:\n  key_directory: {}\n"
                                "modules:\n  containers:\n    docker_socket: {}\n{}",
                                dir_.file("rpc.sock"), dir_.file("keys"),
                                socket.empty() ? dockerd().socketPath() : socket, extra));
    return path;
  }

  std::unique_ptr<DaemonProcess> start(const std::string& configPath) {
    auto daemon = std::make_unique<DaemonProcess>(
        *loop_, std::vector<std::string>{"--modules", SNOW_PLUGIN_DIR, "--config", configPath},
        std::vector<std::string>{"SNOW_RPC_SOCKET=" + dir_.file("rpc.sock")});
    EXPECT_NE(daemon->waitForLog("ready:"), std::string::npos) << daemon->log();
    const std::smatch id = search(daemon->log(), R"(node id ([0-9a-f]{32}))");
    nodeId_ = id.empty() ? "" : id[1].str();
    return daemon;
  }

  static std::smatch search(const std::string& text, const char* pattern) {
    std::smatch match;
    std::regex_search(text, match, std::regex(pattern));
    return match;
  }

  std::pair<int, std::string> snowctl(std::vector<std::string> args) {
    args.insert(args.begin(), {"--node", "unix:" + dir_.file("rpc.sock")});
    return runProgram(*loop_, SNOWCTL, args);
  }

  // `snowctl --json containers`, by job id.
  std::map<std::string, JobRow> jobs() {
    auto [code, json] = snowctl({"--json", "containers"});
    EXPECT_EQ(code, 0) << json;
    std::map<std::string, JobRow> rows;
    static const std::regex entry(
        R"re("job_id":"([0-9a-f]+)".*?"node":"([0-9a-f]*)","state":"([A-Z]+)".*?"exit_code":"?(-?\d+))re");
    for (std::sregex_iterator it(json.begin(), json.end(), entry), end; it != end; ++it) {
      rows[(*it)[1]] = JobRow{(*it)[1], (*it)[2], (*it)[3], std::stoi((*it)[4])};
    }
    return rows;
  }

  // Waits until the job is in `state`; returns its row.
  JobRow awaitState(const std::string& job, const std::string& state) {
    JobRow row;
    EXPECT_TRUE(awaitPolled(
        *loop_,
        [&] {
          auto rows = jobs();
          row = rows[job];
          return row.state == state;
        },
        30s, 50ms))
        << "job " << job << " is " << row.state << ", not " << state << "\n"
        << snowctl({"containers"}).second;
    return row;
  }

  std::string nodeId_;
};

TEST_F(ContainersDaemonTest, RunBuildsRunsShowsTheOutputAndExitsWithTheContainersCode) {
  auto daemon = start(config("    labels:\n      team: infra\n"));
  const std::string ctx = context(
      "ctx", {"/bin/busybox", "sh", "-c", "echo hello from the job; echo oops >&2; exit 3"});
  auto [code, out] = snowctl({"run", "--name", "greeting", "--label", "team=infra", ctx});
  EXPECT_EQ(code, 3) << out;
  EXPECT_THAT(out, HasSubstr("Step 1/3 : FROM scratch")) << "the build's progress";
  EXPECT_THAT(out, HasSubstr("hello from the job"));
  EXPECT_THAT(out, HasSubstr("oops"));
  const std::smatch job = search(out, R"(job ([0-9a-f]{32}) on node ([0-9a-f]{32}))");
  ASSERT_FALSE(job.empty()) << out;
  EXPECT_EQ(job[2].str(), nodeId_);

  const JobRow row = jobs()[job[1].str()];
  EXPECT_EQ(row.state, "EXITED");
  EXPECT_EQ(row.exitCode, 3);
  EXPECT_EQ(row.node, nodeId_);
  // The container carries the job's labels, so that Docker can say whose it is.
  auto [inspected, labels] =
      docker({"inspect", "--format",
              R"({{index .Config.Labels "snow.job"}} {{index .Config.Labels "snow.node"}} )"
              R"({{index .Config.Labels "snow.name"}} {{index .Config.Labels "team"}})",
              "snow-" + job[1].str()});
  EXPECT_EQ(inspected, 0) << labels;
  EXPECT_EQ(labels, fmt::format("{} {} greeting infra\n", job[1].str(), nodeId_));

  auto [table, human] = snowctl({"containers"});
  EXPECT_EQ(table, 0);
  EXPECT_THAT(human, ::testing::ContainsRegex(job[1].str() + " +" + nodeId_.substr(0, 12) +
                                              " +exited \\(3\\) +sha256:[0-9a-f]+ .*greeting"));
}

TEST_F(ContainersDaemonTest, TheCommandAfterDirOrAfterAMarkIsTheContainersWithItsOptions) {
  auto daemon = start(config());
  const std::string ctx = context("ctx", {"/bin/busybox", "echo", "the image's CMD"});
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"run", ctx}, "the image's CMD\n"},
      // -d and --name after DIR are the command's, not snowctl's.
      {{"run", ctx, "/bin/busybox", "echo", "-n", "out:a", "-d", "--name"}, "out:a -d --name"},
      {{"run", ctx, "--", "/bin/busybox", "echo", "-n", "out:b", "-d"}, "out:b -d"},
      {{"run", "--", ctx, "/bin/busybox", "echo", "-n", "out:c", "-d"}, "out:c -d"},
      {{"run", "-e", "A=1", "--", ctx, "/bin/busybox", "sh", "-c", "echo -n out:e$A"}, "out:e1"},
      // A -- inside the command is the command's.
      {{"run", ctx, "/bin/busybox", "echo", "-n", "out:d", "--", "-d"}, "out:d -- -d"},
  };
  for (const auto& [args, output] : cases) {
    auto [code, out] = snowctl(args);
    EXPECT_EQ(code, 0) << out;
    // The container's output comes last, after snowctl's notices and the build's output, once.
    // These containers live a few milliseconds and end without a newline: the last of their
    // output reaches the log after Docker has ended a followed log stream.
    EXPECT_EQ(out.find(output), out.size() - output.size())
        << ::testing::PrintToString(args) << " printed\n"
        << out;
  }
}

TEST_F(ContainersDaemonTest, DetachPrintsTheJobIdAndRmRemovesItsContainer) {
  auto daemon = start(config());
  const std::string ctx =
      context("ctx", {"/bin/busybox", "sh", "-c", "echo up; exec /bin/busybox sleep 600"});
  auto [code, out] = snowctl({"run", "--detach", ctx});
  ASSERT_EQ(code, 0) << out;
  const std::string job = out.substr(0, out.find('\n'));
  ASSERT_THAT(job, ::testing::MatchesRegex("[0-9a-f]{32}")) << out;
  awaitState(job, "RUNNING");
  EXPECT_EQ(dockerIds("snow.job=" + job).size(), 1U);

  auto [rm, said] = snowctl({"rm", job});
  EXPECT_EQ(rm, 0) << said;
  EXPECT_THAT(said, HasSubstr(job + ": removed"));
  EXPECT_TRUE(dockerIds("snow.job=" + job).empty()) << "the container is gone";
  EXPECT_FALSE(jobs().contains(job)) << "and so is the job";
  auto [again, why] = snowctl({"rm", job});
  EXPECT_EQ(again, 1);
  EXPECT_THAT(why, HasSubstr("no job " + job));
}

TEST_F(ContainersDaemonTest, LogsShowsAJobsOutputFollowsItAndStopEndsIt) {
  auto daemon = start(config());
  const std::string ctx =
      context("ctx", {"/bin/busybox", "sh", "-c",
                      "trap 'exit 5' TERM; echo first; echo to-stderr >&2; "
                      "while true; do echo tick; /bin/busybox sleep 0.1; done"});
  auto [code, out] = snowctl({"run", "-d", ctx});
  ASSERT_EQ(code, 0) << out;
  const std::string job = out.substr(0, 32);
  awaitState(job, "RUNNING");

  DaemonProcess follow(*loop_, SNOWCTL,
                       {"--node", "unix:" + dir_.file("rpc.sock"), "logs", "-f", job}, {});
  ASSERT_NE(follow.waitForLog("tick\ntick\n"), std::string::npos) << follow.log();
  auto [logs, said] = snowctl({"logs", job});
  EXPECT_EQ(logs, 0) << said;
  // From the beginning, in order on each stream (stdout and stderr are not ordered between them).
  EXPECT_LT(said.find("first\n"), said.find("tick\n")) << said;
  EXPECT_THAT(said, HasSubstr("to-stderr"));

  auto [stop, stopped] = snowctl({"stop", job});
  EXPECT_EQ(stop, 0) << stopped;
  EXPECT_THAT(stopped, HasSubstr(job + ": exited"));
  EXPECT_EQ(follow.waitForExit(), 0) << "the follow ends with the container\n" << follow.log();
  EXPECT_EQ(awaitState(job, "EXITED").exitCode, 5) << "stopped by its SIGTERM";
  auto [service, why] = snowctl({"logs", "no-such-service"});
  EXPECT_EQ(service, 1) << "not a job id: the spawner's verb, which says so";
}

TEST_F(ContainersDaemonTest, TwoContainersRunSideBySideOnOneWorker) {
  auto daemon = start(config());
  const std::string ctx =
      context("ctx", {"/bin/busybox", "sh", "-c", "exec /bin/busybox sleep 600"});
  auto [first, a] = snowctl({"run", "-d", ctx});
  auto [second, b] = snowctl({"run", "-d", ctx});
  ASSERT_EQ(first, 0) << a;
  ASSERT_EQ(second, 0) << b;
  a.pop_back();
  b.pop_back();
  EXPECT_NE(a, b);
  awaitState(a, "RUNNING");
  awaitState(b, "RUNNING");
  auto [code, running] = docker({"ps", "-q", "--filter", "label=snow.node=" + nodeId_});
  EXPECT_EQ(std::count(running.begin(), running.end(), '\n'), 2) << running;
}

TEST_F(ContainersDaemonTest, BadInputIsRefusedBeforeAnythingRuns) {
  auto daemon = start(config("    max_context_bytes: 4000000\n"));
  const std::string good = context("good", {"/bin/busybox", "true"});
  const auto before = dockerIds();

  struct Case {
    std::string what;
    std::vector<std::string> args;
    std::string error;
  };
  const std::string noDockerfile = dir_.file("empty");
  ASSERT_EQ(::mkdir(noDockerfile.c_str(), 0755), 0);
  const std::string escaping = context("escaping", {"/bin/busybox", "true"});
  ASSERT_EQ(::symlink("/etc/passwd", (escaping + "/passwd").c_str()), 0);
  const std::string broken = context("broken", {"/bin/busybox", "true"});
  writeFile(broken + "/Dockerfile", "COPY busybox /bin/busybox\n");
  const std::string big = context("big", {"/bin/busybox", "true"});
  writeFile(big + "/blob", std::string(5'000'000, 'x'));
  const std::vector<Case> cases = {
      {"no Dockerfile", {"run", noDockerfile}, "Dockerfile"},
      {"a symlink out of the context", {"run", escaping}, "\"/etc/passwd\""},
      {"a Dockerfile without FROM", {"run", broken}, "FROM"},
      {"a context over the node's limit", {"run", big}, "over this node's limit of 4000000"},
      {"an unknown node", {"run", "--node", std::string(32, 'a'), good}, "no node aaaa"},
      {"a missing directory", {"run", dir_.file("nowhere")}, "nowhere"},
  };
  for (const auto& c : cases) {
    auto [code, out] = snowctl(c.args);
    EXPECT_EQ(code, kCannotRun) << c.what << ":\n" << out;
    EXPECT_THAT(out, HasSubstr(c.error)) << c.what;
  }
  EXPECT_EQ(dockerIds(), before) << "no container was made";
  EXPECT_TRUE(jobs().empty()) << "and no job";
}

// What snowctl would never send, sent anyway: the node checks the context itself.
TEST_F(ContainersDaemonTest, TheNodeRefusesABadContextThatDidNotComeFromSnowctl) {
  auto daemon = start(config());
  rpc::Client client(*loop_, rpc::ClientOptions{});
  auto submit = [&](std::vector<std::shared_ptr<v1::SubmitChunk>> messages) {
    auto next = [messages = std::move(messages), i = size_t{0}]() mutable {
      return makeReadyFuture<MessagePtr>(i < messages.size() ? messages[i++] : nullptr);
    };
    auto reply = client.upload<v1::SubmitReply>(daemon->node(),
                                                "/snow.containers.v1.Containers/Submit", next);
    EXPECT_TRUE(snow::testing::await(*loop_, reply));
    return reply.hasError() ? describe(reply.error()) : std::string("accepted");
  };
  auto spec = [](const std::string& dockerfile = "Dockerfile") {
    auto chunk = std::make_shared<v1::SubmitChunk>();
    chunk->mutable_spec()->set_job_id(std::string(32, 'c'));
    chunk->mutable_spec()->set_dockerfile(dockerfile);
    return chunk;
  };
  auto tar = [](const std::vector<std::pair<std::string, std::string>>& files) {
    auto chunk = std::make_shared<v1::SubmitChunk>();
    chunk->set_context(makeTar(files));
    return chunk;
  };
  const std::string dockerfile = busyboxDockerfile({"/bin/busybox", "true"});
  EXPECT_THAT(submit({spec(), tar({{"Dockerfile", dockerfile}, {"../escape", "x"}})}),
              HasSubstr("INVALID_ARGUMENT"));
  EXPECT_THAT(submit({spec(), tar({{"Dockerfile", dockerfile}, {"/etc/cron.d/x", "x"}})}),
              HasSubstr("absolute"));
  EXPECT_THAT(submit({spec(), tar({{"busybox", "x"}})}), HasSubstr("Dockerfile"));
  EXPECT_THAT(submit({spec(), tar({{"Dockerfile", "RUN true\n"}})}), HasSubstr("FROM"));
  EXPECT_THAT(submit({tar({{"Dockerfile", dockerfile}})}),
              HasSubstr("a Submit stream starts with the job's spec"));
  auto truncated = tar({{"Dockerfile", dockerfile}});
  truncated->mutable_context()->resize(700);
  EXPECT_THAT(submit({spec(), truncated}), HasSubstr("INVALID_ARGUMENT"));
  auto badId = spec();
  badId->mutable_spec()->set_job_id("../../etc");
  EXPECT_THAT(submit({badId, tar({{"Dockerfile", dockerfile}})}),
              HasSubstr("is not 32 lower-case hex digits"));
  EXPECT_TRUE(jobs().empty()) << "nothing was run";
  EXPECT_TRUE(dockerIds().empty());

  // The same job id twice (a client retrying after a lost answer): one job, one container.
  const std::string context = busyboxContextTar({"/bin/busybox", "true"});
  auto good = [&] {
    auto chunk = std::make_shared<v1::SubmitChunk>();
    chunk->set_context(context);
    return chunk;
  };
  EXPECT_EQ(submit({spec(), good()}), "accepted");
  EXPECT_EQ(submit({spec(), good()}), "accepted");
  EXPECT_EQ(jobs().size(), 1U);
  EXPECT_EQ(awaitState(std::string(32, 'c'), "EXITED").exitCode, 0);
  EXPECT_EQ(dockerIds().size(), 1U);
}

TEST_F(ContainersDaemonTest, AFailingBuildSaysWhyWithTheBuildsLastLinesAndLeavesNothing) {
  auto daemon = start(config());
  const std::string ctx =
      context("ctx", {"/bin/busybox", "true"}, "COPY no-such-file /etc/no-such-file");
  auto [code, out] = snowctl({"run", ctx});
  EXPECT_EQ(code, kCannotRun) << out;
  EXPECT_THAT(out, HasSubstr("failed"));
  EXPECT_THAT(out, HasSubstr("no-such-file"));
  EXPECT_THAT(out, HasSubstr("the build's last lines:"));
  EXPECT_THAT(out, HasSubstr("Step 3/4 : COPY no-such-file"));
  const std::smatch job = search(out, R"(job ([0-9a-f]{32}) on node)");
  ASSERT_FALSE(job.empty()) << out;
  EXPECT_EQ(jobs()[job[1].str()].state, "FAILED");
  EXPECT_TRUE(dockerIds("snow.job=" + job[1].str()).empty());
}

TEST_F(ContainersDaemonTest, ADockerEngineThatIsDownIsAClearError) {
  auto daemon = start(config("", dir_.file("no-docker.sock")));
  EXPECT_THAT(daemon->log(), HasSubstr("cannot list this node's containers"));
  const std::string ctx = context("ctx", {"/bin/busybox", "true"});
  auto [code, out] = snowctl({"run", ctx});
  EXPECT_EQ(code, kCannotRun) << out;
  EXPECT_THAT(out, HasSubstr("cannot reach the Docker engine at " + dir_.file("no-docker.sock")));
}

TEST_F(ContainersDaemonTest, ARestartedDaemonFindsItsRunningContainersAgain) {
  const std::string path = config();
  auto daemon = start(path);
  const std::string ctx =
      context("ctx", {"/bin/busybox", "sh", "-c", "exec /bin/busybox sleep 600"});
  auto [code, out] = snowctl({"run", "-d", "--name", "survivor", ctx});
  ASSERT_EQ(code, 0) << out;
  const std::string job = out.substr(0, 32);
  awaitState(job, "RUNNING");

  daemon->signal(SIGKILL);
  EXPECT_EQ(daemon->waitForExit(), 128 + SIGKILL);
  daemon = start(path);
  const JobRow row = awaitState(job, "RUNNING");
  EXPECT_EQ(row.node, nodeId_);
  EXPECT_EQ(dockerIds("snow.job=" + job).size(), 1U) << "the same container, not a second";
  auto [table, human] = snowctl({"containers"});
  EXPECT_THAT(human, HasSubstr("survivor"));

  // Still the runner's to stop: its end is seen.
  auto [stopped, said] = docker({"stop", "-t", "1", "snow-" + job});
  EXPECT_EQ(stopped, 0) << said;
  EXPECT_EQ(awaitState(job, "EXITED").exitCode, 137);
}

}  // namespace
}  // namespace snow::containers::testing
