// The Docker Engine API client (modules/containers/docker.h) against a real dockerd that the
// suite starts (dockerd.h), with real images built FROM scratch and real containers; and its
// stream parsers on their own.

#include "docker.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <set>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <opentracing/ext/tags.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "snow/core/dispatcher.h"
#include "snow/core/future.h"
#include "snow/core/tracer.h"
#include "snow/posix/active.h"

#include "containers/dockerd.h"
#include "docker_stream.h"
#include "support/files.h"

namespace snow::containers {
namespace {

using namespace std::chrono_literals;
using ::testing::Contains;
using testing::DockerdTest;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;
using ::testing::UnorderedElementsAre;

using Clock = std::chrono::steady_clock;

// Real containers start in tenths of seconds, but a loaded CI machine can be slow: a deadline
// that only a hang reaches.
constexpr Duration kDeadline = 60s;
constexpr const char* kTestLabel = "snow.test";

double millisecondsSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// The outcome of a settled future, for expectations on rejections.
template <typename T>
DockerError dockerErrorOf(const Future<T>& future) {
  try {
    std::rethrow_exception(future.error());
  } catch (const DockerError& e) {
    return e;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "rejected with something else than a DockerError: " << e.what();
  }
  return DockerError(-1, "", "");
}

class RootDockerdEngineTest : public DockerdTest {
 protected:
  void SetUp() override {
    DockerdTest::SetUp();
    if (HasFatalFailure()) {
      return;
    }
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    label_ = std::string(info->name()) + "-" + std::to_string(::getpid());
    engine_ = makeEngine();
  }

  void TearDown() override {
    if (label_.empty()) {
      return;  // SetUp failed: no dockerd, so no container either.
    }
    // Every container this test made goes, whatever happened to the test.
    if (!engine_) {
      engine_ = makeEngine();
    }
    for (const ContainerSummary& c : await(engine_->list({{kTestLabel, label_}}))) {
      await(engine_->remove(c.id, /*force=*/true));
    }
    engine_.reset();
  }

  DockerEnginePtr makeEngine(std::shared_ptr<opentracing::Tracer> tracer = nullptr) {
    DockerOptions options;
    options.socketPath = dockerd().socketPath();
    options.tracer = std::move(tracer);
    return std::make_unique<DockerEngine>(*loop_, std::move(options));
  }

  // Runs the loop until `future` settles; its value, or its error thrown (which fails the test).
  template <typename T>
  T await(Future<T> future, Duration deadline = kDeadline) {
    if (!loop_->runUntil([&] { return future.isReady(); }, deadline)) {
      throw std::runtime_error("the future did not settle within the deadline");
    }
    if constexpr (std::is_void_v<T>) {
      future.value();
    } else {
      return future.value();
    }
  }

  // Runs the loop until `future` settles, which must be a rejection.
  template <typename T>
  Future<T> awaitRejection(Future<T> future) {
    EXPECT_TRUE(loop_->runUntil([&] { return future.isReady(); }, kDeadline));
    EXPECT_TRUE(future.isReady() && future.hasError()) << "expected a rejection";
    (void)future.error();  // Observed: the tests look at it, or only cared that it rejected.
    return future;
  }

  // Builds a busybox image running `cmd`; returns its id.
  std::string buildImage(const std::string& tag, const std::vector<std::string>& cmd) {
    BuildOptions options;
    options.tags = {tag};
    return await(engine_->build(testing::busyboxContextTar(cmd), options, nullptr));
  }

  // A container of `image` with the test's label (TearDown removes it).
  std::string create(const std::string& image, std::optional<std::vector<std::string>> cmd = {},
                     std::map<std::string, std::string> labels = {}) {
    ContainerSpec spec;
    spec.image = image;
    spec.cmd = std::move(cmd);
    spec.labels = std::move(labels);
    spec.labels[kTestLabel] = label_;
    return await(engine_->createContainer(spec));
  }

  // The container's logs so far, by stream.
  std::pair<std::string, std::string> logsOf(const std::string& id) {
    std::string out;
    std::string err;
    await(engine_->logs(id, /*follow=*/false, [&](int stream, std::string_view bytes) {
      (stream == kStdout ? out : err).append(bytes);
    }));
    return {out, err};
  }

  // A shell loop printing "line N" every 0.1 s until SIGTERM.
  static std::vector<std::string> printerCmd() {
    return {"/bin/busybox", "sh", "-c",
            "trap 'exit 0' TERM; i=0; while true; do echo \"line $i\"; i=$((i+1)); "
            "/bin/busybox sleep 0.1; done"};
  }

  DispatcherPtr loop_ = makeDispatcher("docker-test");
  DockerEnginePtr engine_;
  std::string label_;
};

TEST_F(RootDockerdEngineTest, PingAndVersionAnswer) {
  await(engine_->ping());
  const EngineVersion version = await(engine_->version());
  EXPECT_EQ(version.apiVersion, "1.41");
  EXPECT_EQ(version.os, "linux");
  EXPECT_FALSE(version.version.empty());
  EXPECT_FALSE(version.minApiVersion.empty());

  std::vector<double> ms;
  for (int i = 0; i < 50; ++i) {
    const auto start = Clock::now();
    await(engine_->ping());
    ms.push_back(millisecondsSince(start));
  }
  std::sort(ms.begin(), ms.end());
  std::printf("[timing] ping through the client: p50 %.3f ms, p90 %.3f ms (50 pings)\n", ms[25],
              ms[45]);
  EXPECT_EQ(engine_->callsInFlight(), 0U);
}

TEST_F(RootDockerdEngineTest, BuildStreamsOutputLinesAndGivesTheImageId) {
  std::vector<std::string> lines;
  BuildOptions options;
  options.tags = {"snow-test/hi:1"};
  options.labels = {{"snow.test.image", "yes"}};
  const std::string tar = testing::busyboxContextTar({"/bin/busybox", "echo", "hi"});
  auto start = Clock::now();
  const std::string id =
      await(engine_->build(tar, options, [&](std::string_view line) { lines.emplace_back(line); }));
  const double firstMs = millisecondsSince(start);
  EXPECT_THAT(id, StartsWith("sha256:"));
  EXPECT_THAT(lines, Contains("Step 1/4 : FROM scratch"));
  EXPECT_THAT(lines, Contains("Step 2/4 : COPY busybox /bin/busybox"));
  EXPECT_THAT(lines, Contains("Step 4/4 : LABEL snow.test.image=yes"));  // BuildOptions.labels.
  EXPECT_THAT(lines, Contains("Successfully tagged snow-test/hi:1"));
  for (const std::string& line : lines) {
    EXPECT_EQ(line.find('\n'), std::string::npos) << line;
  }

  // The same context again: every step from the cache, the same image.
  std::vector<std::string> cached;
  start = Clock::now();
  const std::string again = await(
      engine_->build(tar, options, [&](std::string_view line) { cached.emplace_back(line); }));
  const double cachedMs = millisecondsSince(start);
  EXPECT_EQ(again, id);
  EXPECT_THAT(cached, Contains(HasSubstr("Using cache")));
  std::printf("[timing] build of a 2 MiB busybox context: first %.1f ms, cached %.1f ms\n", firstMs,
              cachedMs);
}

TEST_F(RootDockerdEngineTest, ABrokenDockerfileRejectsWithTheErrorAndTheLogTail) {
  std::vector<std::string> lines;
  auto failed = awaitRejection(
      engine_->build(testing::makeTar({{"Dockerfile", "FROM scratch\nCOPY missing /x\n"}}), {},
                     [&](std::string_view line) { lines.emplace_back(line); }));
  const DockerError error = dockerErrorOf(failed);
  EXPECT_THAT(error.message(), HasSubstr("COPY failed"));
  EXPECT_THAT(error.what(), HasSubstr("docker build failed: COPY failed"));
  EXPECT_THAT(error.what(), HasSubstr("Step 2/2 : COPY missing /x"));  // The log's tail.
  EXPECT_FALSE(error.notFound());
  EXPECT_THAT(lines, Contains("Step 2/2 : COPY missing /x"));

  // A Dockerfile the engine cannot parse is refused before any step runs.
  auto refused = awaitRejection(
      engine_->build(testing::makeTar({{"Dockerfile", "FROMM scratch\n"}}), {}, nullptr));
  const DockerError parse = dockerErrorOf(refused);
  EXPECT_EQ(parse.status(), 400);
  EXPECT_THAT(parse.message(), HasSubstr("unknown instruction: FROMM"));
}

TEST_F(RootDockerdEngineTest, AContainerRunsToItsExitCodeWithStdoutAndStderrApart) {
  const std::string image = buildImage(
      "snow-test/exit3:1", {"/bin/busybox", "sh", "-c", "echo hi; echo oops >&2; exit 3"});
  const std::string name = "snow-exit3-" + std::to_string(::getpid());
  ContainerSpec spec;
  spec.name = name;
  spec.image = image;
  spec.env = {"GREETING=hello"};
  spec.labels = {{kTestLabel, label_}, {"role", "exit3"}};
  spec.memoryBytes = 64 << 20;
  const std::string id = await(engine_->createContainer(spec));
  EXPECT_EQ(await(engine_->inspect(id)).status, "created");

  await(engine_->start(id));
  EXPECT_EQ(await(engine_->wait(id)), 3);
  const auto [out, err] = logsOf(id);
  EXPECT_EQ(out, "hi\n");
  EXPECT_EQ(err, "oops\n");

  const ContainerState state = await(engine_->inspect(id));
  EXPECT_EQ(state.id, id);
  EXPECT_EQ(state.name, "/" + name);
  EXPECT_EQ(state.status, "exited");
  EXPECT_FALSE(state.running);
  EXPECT_EQ(state.exitCode, 3);
  EXPECT_EQ(state.imageId, image);
  EXPECT_EQ(state.labels.at("role"), "exit3");
  EXPECT_THAT(state.finishedAt, Not(StartsWith("0001")));

  await(engine_->remove(id));
  EXPECT_TRUE(dockerErrorOf(awaitRejection(engine_->inspect(id))).notFound());
}

TEST_F(RootDockerdEngineTest, TrueRunsAndExitsZero) {
  const std::string image = buildImage("snow-test/true:1", {"/bin/busybox", "true"});
  std::vector<double> ms;
  for (int i = 0; i < 5; ++i) {
    const auto start = Clock::now();
    const std::string id = create(image);
    await(engine_->start(id));
    EXPECT_EQ(await(engine_->wait(id)), 0);
    ms.push_back(millisecondsSince(start));
    await(engine_->remove(id));
  }
  std::sort(ms.begin(), ms.end());
  std::printf("[timing] create+start+wait of true: min %.1f ms, median %.1f ms, max %.1f ms\n",
              ms[0], ms[2], ms[4]);
}

TEST_F(RootDockerdEngineTest, FollowingLogsDeliversOutputWhileTheContainerRuns) {
  const std::string id = create(buildImage("snow-test/printer:1", printerCmd()));
  await(engine_->start(id));
  std::string out;
  Future<void> follow = engine_->logs(id, /*follow=*/true, [&](int stream, std::string_view bytes) {
    if (stream == kStdout) {
      out.append(bytes);
    }
  });
  ASSERT_TRUE(loop_->runUntil([&] { return out.find("line 1\n") != std::string::npos; }, kDeadline))
      << "got so far: " << out;
  EXPECT_THAT(out, StartsWith("line 0\nline 1\n"));
  EXPECT_TRUE(await(engine_->inspect(id)).running);  // The lines came while it ran.
  EXPECT_FALSE(follow.isReady());

  await(engine_->stop(id, 10));
  await(std::move(follow));                            // The stream ends with the container.
  EXPECT_EQ(await(engine_->inspect(id)).exitCode, 0);  // It obeyed SIGTERM.
}

TEST_F(RootDockerdEngineTest, CancellingAFollowEndsIt) {
  const std::string id = create(buildImage("snow-test/printer:1", printerCmd()));
  await(engine_->start(id));
  size_t chunks = 0;
  Future<void> follow =
      engine_->logs(id, /*follow=*/true, [&](int, std::string_view) { ++chunks; });
  ASSERT_TRUE(loop_->runUntil([&] { return chunks > 0; }, kDeadline));
  follow.cancel();
  ASSERT_TRUE(follow.hasError());
  EXPECT_EQ(describe(follow.error()), "cancelled");
  EXPECT_EQ(engine_->callsInFlight(), 0U);

  // Nothing arrives after the cancel, although the container keeps printing.
  const size_t seen = chunks;
  EXPECT_FALSE(loop_->runUntil([] { return false; }, 500ms));
  EXPECT_EQ(chunks, seen);
  EXPECT_TRUE(await(engine_->inspect(id)).running);
}

TEST_F(RootDockerdEngineTest, ListingByLabelFindsExactlyTheTestsContainers) {
  (void)buildImage("snow-test/true:1", {"/bin/busybox", "true"});
  const std::string image = "snow-test/true:1";
  const std::string a = create(image, {}, {{"group", label_}});
  const std::string b = create(image, {}, {{"group", label_}});
  const std::string other = create(image, {}, {{"group", label_ + "-other"}});

  const auto found = await(engine_->list({{"group", label_}}));
  std::vector<std::string> ids;
  for (const ContainerSummary& c : found) {
    ids.push_back(c.id);
    EXPECT_EQ(c.labels.at("group"), label_);
    EXPECT_EQ(c.state, "created");
    EXPECT_EQ(c.image, "snow-test/true:1");
    ASSERT_EQ(c.names.size(), 1U);
    EXPECT_THAT(c.names[0], StartsWith("/"));
    EXPECT_GT(c.created, 0);
  }
  EXPECT_THAT(ids, UnorderedElementsAre(a, b));
  EXPECT_EQ(await(engine_->list({{"group", label_}, {kTestLabel, label_}})).size(), 2U);
  EXPECT_EQ(await(engine_->list({{"group", ""}, {kTestLabel, label_}})).size(), 3U);
  EXPECT_TRUE(await(engine_->list({{"group", label_}}, /*all=*/false)).empty());  // None runs.
  (void)other;
}

TEST_F(RootDockerdEngineTest, StopAndRemoveEndARunningContainer) {
  const std::string id = create(buildImage("snow-test/printer:1", printerCmd()));
  await(engine_->start(id));
  await(engine_->start(id));  // Already running: not an error.
  EXPECT_TRUE(await(engine_->inspect(id)).running);
  await(engine_->stop(id, 10));
  const ContainerState stopped = await(engine_->inspect(id));
  EXPECT_FALSE(stopped.running);
  EXPECT_EQ(stopped.status, "exited");
  await(engine_->stop(id, 10));  // Already stopped: not an error.
  await(engine_->remove(id));
  EXPECT_TRUE(dockerErrorOf(awaitRejection(engine_->inspect(id))).notFound());
  EXPECT_TRUE(dockerErrorOf(awaitRejection(engine_->remove(id))).notFound());

  // A running one goes with force.
  const std::string forced = create("snow-test/printer:1");
  await(engine_->start(forced));
  const DockerError refused = dockerErrorOf(awaitRejection(engine_->remove(forced)));
  EXPECT_EQ(refused.status(), 409);
  await(engine_->remove(forced, /*force=*/true));
  EXPECT_TRUE(await(engine_->list({{kTestLabel, label_}})).empty());
}

TEST_F(RootDockerdEngineTest, InspectingAMissingContainerIsNotFound) {
  auto missing = awaitRejection(engine_->inspect("snow-no-such-container"));
  const DockerError error = dockerErrorOf(missing);
  EXPECT_TRUE(error.notFound());
  EXPECT_EQ(error.status(), 404);
  EXPECT_THAT(error.message(), HasSubstr("No such container: snow-no-such-container"));
  EXPECT_THAT(error.what(), HasSubstr("GET /v1.41/containers/snow-no-such-container/json"));
  EXPECT_TRUE(dockerErrorOf(awaitRejection(engine_->start("snow-no-such-container"))).notFound());
  EXPECT_TRUE(dockerErrorOf(awaitRejection(engine_->wait("snow-no-such-container"))).notFound());
  EXPECT_TRUE(dockerErrorOf(awaitRejection(engine_->logs("snow-no-such-container", false, nullptr)))
                  .notFound());
}

TEST_F(RootDockerdEngineTest, TwoContainersRunSideBySide) {
  const std::string image = buildImage("snow-test/true:1", {"/bin/busybox", "true"});
  const std::string one =
      create(image, std::vector<std::string>{"/bin/busybox", "sh", "-c",
                                             "echo one; /bin/busybox sleep 0.3; exit 3"});
  const std::string two =
      create(image, std::vector<std::string>{"/bin/busybox", "sh", "-c",
                                             "echo two; /bin/busybox sleep 0.3; exit 4"});
  std::vector<Future<void>> starts;
  starts.push_back(engine_->start(one));
  starts.push_back(engine_->start(two));
  await(all(std::move(starts)));
  Future<int64_t> waitOne = engine_->wait(one);
  Future<int64_t> waitTwo = engine_->wait(two);
  EXPECT_EQ(engine_->callsInFlight(), 2U);  // Both long-polls at once, on one engine thread.
  EXPECT_EQ(await(std::move(waitTwo)), 4);
  EXPECT_EQ(await(std::move(waitOne)), 3);
  EXPECT_EQ(logsOf(one).first, "one\n");
  EXPECT_EQ(logsOf(two).first, "two\n");
}

TEST_F(RootDockerdEngineTest, DestroyingTheEngineRejectsCallsInFlight) {
  const std::string id = create(buildImage("snow-test/printer:1", printerCmd()));
  await(engine_->start(id));
  Future<int64_t> waiting = engine_->wait(id);
  size_t chunks = 0;
  Future<void> follow = engine_->logs(id, true, [&](int, std::string_view) { ++chunks; });
  ASSERT_TRUE(loop_->runUntil([&] { return chunks > 0; }, kDeadline));
  engine_.reset();
  ASSERT_TRUE(waiting.isReady());
  ASSERT_TRUE(follow.isReady());
  EXPECT_EQ(describe(waiting.error()), "cancelled");
  EXPECT_EQ(describe(follow.error()), "cancelled");
  // Batches the engine thread posted before it was joined are dropped.
  const size_t seen = chunks;
  EXPECT_FALSE(loop_->runUntil([] { return false; }, 100ms));
  EXPECT_EQ(chunks, seen);
}

TEST_F(RootDockerdEngineTest, ACallbackThatThrowsRejectsItsCall) {
  const std::string id = create(buildImage("snow-test/printer:1", printerCmd()));
  await(engine_->start(id));
  auto failed = awaitRejection(engine_->logs(
      id, true, [](int, std::string_view) { throw std::runtime_error("the consumer choked"); }));
  EXPECT_EQ(describe(failed.error()), "the consumer choked");
  EXPECT_EQ(engine_->callsInFlight(), 0U);
}

TEST_F(RootDockerdEngineTest, ACallbackMayCancelItsCallOrDestroyTheEngine) {
  const std::string image = buildImage("snow-test/true:1", {"/bin/busybox", "true"});
  const std::string id =
      create(image, std::vector<std::string>{"/bin/busybox", "sh", "-c", "echo 1; echo 2; echo 3"});
  await(engine_->start(id));
  EXPECT_EQ(await(engine_->wait(id)), 0);

  // Three frames, most likely in one chunk: none is delivered after the cancel.
  int calls = 0;
  Future<void> follow;
  follow = engine_->logs(id, true, [&](int, std::string_view) {
    ++calls;
    follow.cancel();
  });
  ASSERT_TRUE(loop_->runUntil([&] { return follow.isReady(); }, kDeadline));
  EXPECT_EQ(describe(follow.error()), "cancelled");
  EXPECT_EQ(calls, 1);

  calls = 0;
  Future<void> last = engine_->logs(id, true, [&](int, std::string_view) {
    ++calls;
    engine_.reset();
  });
  ASSERT_TRUE(loop_->runUntil([&] { return last.isReady(); }, kDeadline));
  EXPECT_EQ(describe(last.error()), "cancelled");
  EXPECT_EQ(calls, 1);
}

// A span exporter that keeps what it is given.
class KeepingExporter final : public tracing::SpanExporter {
 public:
  explicit KeepingExporter(std::vector<tracing::SpanData>& spans) : spans_(spans) {}
  Result exportSpans(std::span<const tracing::SpanData> spans,
                     std::span<const tracing::Attribute> /*resource*/,
                     Clock::time_point /*deadline*/) override {
    spans_.insert(spans_.end(), spans.begin(), spans.end());
    return {};
  }
  [[nodiscard]] std::string describe() const override { return "memory"; }

 private:
  std::vector<tracing::SpanData>& spans_;
};

std::optional<tracing::AttributeValue> attribute(const tracing::SpanData& span,
                                                 std::string_view key) {
  for (const auto& a : span.attributes) {
    if (a.key == key) {
      return a.value;
    }
  }
  return std::nullopt;
}

TEST_F(RootDockerdEngineTest, EachCallWithAParentMakesOneChildSpan) {
  const posix::PosixPtr os = posix::makeDefaultPosix();
  const posix::ScopedInjector injected(*os);
  std::vector<tracing::SpanData> spans;  // Written by the tracer's thread until flush().
  tracing::TracerOptions options;
  options.sampler.kind = tracing::Sampler::Kind::Always;
  options.batchDelay = 10ms;
  auto tracer = tracing::Tracer::make(options, std::make_unique<KeepingExporter>(spans));
  engine_ = makeEngine(tracer);

  auto parent = tracer->StartSpan("job");
  await(engine_->ping(&parent->context()));
  (void)awaitRejection(engine_->inspect("snow-no-such-container", &parent->context()));
  await(engine_->version());  // No parent: no span.
  parent->Finish();
  ASSERT_TRUE(tracer->flush(10s));

  ASSERT_EQ(spans.size(), 3U);
  const auto named = [&](const std::string& name) -> const tracing::SpanData& {
    const auto it = std::find_if(spans.begin(), spans.end(),
                                 [&](const tracing::SpanData& s) { return s.name == name; });
    EXPECT_NE(it, spans.end()) << "no span " << name;
    return *it;
  };
  const tracing::SpanData& job = named("job");
  const tracing::SpanData& ping = named("docker GET /_ping");
  const tracing::SpanData& inspect = named("docker GET /containers/{id}/json");
  EXPECT_EQ(ping.parentSpanId, job.spanId);
  EXPECT_EQ(inspect.parentSpanId, job.spanId);
  EXPECT_EQ(ping.kind, tracing::SpanKind::Client);
  EXPECT_EQ(attribute(ping, "http.method"), tracing::AttributeValue(std::string("GET")));
  EXPECT_EQ(attribute(ping, "http.url"), tracing::AttributeValue(std::string("/_ping")));
  EXPECT_EQ(attribute(ping, "http.status_code"), tracing::AttributeValue(int64_t{200}));
  EXPECT_NE(ping.status, tracing::StatusCode::Error);
  EXPECT_EQ(attribute(inspect, "http.url"),
            tracing::AttributeValue(std::string("/v1.41/containers/snow-no-such-container/json")));
  EXPECT_EQ(attribute(inspect, "http.status_code"), tracing::AttributeValue(int64_t{404}));
  EXPECT_EQ(inspect.status, tracing::StatusCode::Error);
  EXPECT_THAT(inspect.statusMessage, HasSubstr("No such container"));
  engine_.reset();
}

// Without a dockerd: an engine pointed at a socket that nobody serves.
class DockerEngineWithoutDockerdTest : public ::testing::Test {
 protected:
  DispatcherPtr loop_ = makeDispatcher("docker-test");
  snow::testing::TempDir dir_{"snow-docker"};
};

TEST_F(DockerEngineWithoutDockerdTest, AnEngineWithNothingListeningGivesAClearError) {
  // A path with no socket at all, and a socket bound but not listening (a dead engine's).
  const std::string missing = dir_.file("missing.sock");
  const std::string dead = dir_.file("dead.sock");
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  dead.copy(address.sun_path, sizeof(address.sun_path) - 1);
  ASSERT_EQ(::bind(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)), 0);

  for (const auto& [path, why] :
       {std::pair{missing, "No such file or directory"}, std::pair{dead, "Connection refused"}}) {
    DockerOptions options;
    options.socketPath = path;
    DockerEngine engine(*loop_, options);
    Future<void> ping = engine.ping();
    Future<EngineVersion> version = engine.version();
    ASSERT_TRUE(loop_->runUntil([&] { return ping.isReady() && version.isReady(); }, 10s));
    for (const std::exception_ptr& error : {ping.error(), version.error()}) {
      ASSERT_TRUE(error);
      try {
        std::rethrow_exception(error);
      } catch (const DockerError& e) {
        EXPECT_TRUE(e.unreachable());
        EXPECT_EQ(e.status(), 0);
        EXPECT_THAT(e.what(), StartsWith("cannot reach the Docker engine at " + path + ": "));
        EXPECT_THAT(e.what(), HasSubstr(why));
      }
    }
  }
  ::close(fd);
}

TEST_F(DockerEngineWithoutDockerdTest, DestroyingAnIdleEngineIsQuick) {
  const auto start = Clock::now();
  {
    DockerOptions options;
    options.socketPath = dir_.file("missing.sock");
    DockerEngine engine(*loop_, options);
  }
  EXPECT_LT(Clock::now() - start, 500ms);  // The thread wakes at once; no poll timeout waited.
}

// The suite's dockerd itself: the vfs fallback, which this machine's overlay2 never needs.
TEST(RootDockerdTest, FallsBackToTheNextStorageDriverWhenOneCannotRun) {
  ASSERT_EQ(testing::missingPrerequisites(), "");
  try {
    (void)testing::TestDockerd::start({"snow-no-such-driver"});
    ADD_FAILURE() << "dockerd started with a storage driver that does not exist";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("did not start with --storage-driver=snow-no-such-driver"));
    EXPECT_THAT(e.what(), HasSubstr("its log ends:"));
  }

  const auto dockerd = testing::TestDockerd::start({"snow-no-such-driver", "vfs"});
  EXPECT_EQ(dockerd->storageDriver(), "vfs");
  const DispatcherPtr loop = makeDispatcher("docker-test");
  DockerOptions options;
  options.socketPath = dockerd->socketPath();
  DockerEngine engine(*loop, options);
  Future<std::string> built =
      engine.build(testing::busyboxContextTar({"/bin/busybox", "sh", "-c", "exit 7"}), {}, nullptr);
  ASSERT_TRUE(loop->runUntil([&] { return built.isReady(); }, kDeadline));
  ContainerSpec spec;
  spec.image = built.value();
  Future<int64_t> exitCode = engine.createContainer(spec).then([&](const std::string& id) {
    return engine.start(id)
        .then([&engine, id] { return engine.wait(id); })
        .then([&engine, id](int64_t code) {
          return engine.remove(id).then([code] { return code; });
        });
  });
  ASSERT_TRUE(loop->runUntil([&] { return exitCode.isReady(); }, kDeadline));
  EXPECT_EQ(exitCode.value(), 7);
}

// The parsers, fed every way chunks can cut a stream.

std::string frame(int stream, std::string_view payload) {
  std::string f(8, '\0');
  f[0] = static_cast<char>(stream);
  const auto size = static_cast<uint32_t>(payload.size());
  f[4] = static_cast<char>(size >> 24U);
  f[5] = static_cast<char>(size >> 16U);
  f[6] = static_cast<char>(size >> 8U);
  f[7] = static_cast<char>(size);
  return f.append(payload);
}

TEST(LogDemuxerTest, FramesCutAnywhereComeOutWhole) {
  const std::string big(70000, 'x');  // Beyond 16 bits of size.
  const std::string stream =
      frame(1, "hello\n") + frame(2, "oops\n") + frame(1, "") + frame(1, big) + frame(2, "bye");
  for (const size_t cut :
       {size_t{1}, size_t{3}, size_t{7}, size_t{8}, size_t{9}, size_t{4096}, stream.size()}) {
    detail::LogDemuxer demuxer;
    std::string out;
    std::string err;
    detail::LogDemuxer::Sink sink = [&](int s, std::string_view bytes) {
      (s == kStdout ? out : err).append(bytes);
    };
    for (size_t at = 0; at < stream.size(); at += cut) {
      demuxer.feed(std::string_view(stream).substr(at, cut), sink);
    }
    EXPECT_EQ(out, "hello\n" + big) << "cut " << cut;
    EXPECT_EQ(err, "oops\nbye") << "cut " << cut;
    EXPECT_TRUE(demuxer.atBoundary());
  }
  detail::LogDemuxer cutShort;
  detail::LogDemuxer::Sink ignore = [](int, std::string_view) {};
  cutShort.feed(frame(1, "hello").substr(0, 10), ignore);
  EXPECT_FALSE(cutShort.atBoundary());
}

TEST(BuildStreamTest, OutputLinesAreWholeHoweverMessagesAndChunksCutThem) {
  // As dockerd 20.10 sends it: a step's title and its newline in two messages.
  const std::string answer =
      "{\"stream\":\"Step 1/2 : FROM scratch\"}\r\n{\"stream\":\"\\n\"}\r\n"
      "{\"stream\":\" ---\\u003e \\n\"}\r\n{\"stream\":\"two\\nlines\\n\"}\r\n"
      "{\"aux\":{\"ID\":\"sha256:abc\"}}\r\n{\"stream\":\"Successfully built abc\\n\"}\r\n"
      "{\"stream\":\"no newline at the end\"}";
  for (const size_t cut : {size_t{1}, size_t{5}, answer.size()}) {
    detail::BuildStream stream;
    std::vector<std::string> lines;
    detail::BuildStream::Sink sink = [&](std::string_view line) { lines.emplace_back(line); };
    for (size_t at = 0; at < answer.size(); at += cut) {
      stream.feed(std::string_view(answer).substr(at, cut), sink);
    }
    stream.finish(sink);
    EXPECT_THAT(lines, ::testing::ElementsAre("Step 1/2 : FROM scratch", " ---> ", "two", "lines",
                                              "Successfully built abc", "no newline at the end"));
    EXPECT_EQ(stream.imageId(), "sha256:abc");
    EXPECT_FALSE(stream.error());
  }
}

TEST(BuildStreamTest, AnErrorKeepsTheTailOfTheLog) {
  detail::BuildStream stream(3);
  std::string answer;
  for (int i = 0; i < 10; ++i) {
    answer += "{\"stream\":\"step " + std::to_string(i) + "\\n\"}\r\n";
  }
  answer += R"({"errorDetail":{"message":"it broke"},"error":"it broke"})";
  answer += "\r\n";
  detail::BuildStream::Sink sink = [](std::string_view) {};
  stream.feed(answer, sink);
  stream.finish(sink);
  ASSERT_TRUE(stream.error());
  EXPECT_EQ(*stream.error(), "it broke");
  EXPECT_EQ(stream.tail(), "step 7\nstep 8\nstep 9");
  EXPECT_EQ(stream.imageId(), "");
}

}  // namespace
}  // namespace snow::containers
