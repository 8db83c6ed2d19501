// Traces of real daemons: two snow-core processes with the relay module (tests/daemon/plugins),
// one dispatching an event to the other, both exporting to the independent OTLP receiver; the
// `tracing:` section's checks; and a tracer library we did not write, loaded by configuration.

#include <csignal>
#include <cstdlib>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "snow/core/dispatcher.h"
#include "snow/posix/active.h"

#include "daemon/daemon_process.h"
#include "support/await.h"
#include "support/files.h"
#include "tracing/otlp_receiver.h"

namespace snow::testing {
namespace {

using ::testing::HasSubstr;

class TracingDaemonTest : public ::testing::Test {
 protected:
  TracingDaemonTest() : os_(posix::makeDefaultPosix()), injected_(*os_) {}

  // A daemon named `name` with the relay module's section `relay` and the tracing section
  // `tracing` (YAML lines, indented by two).
  std::unique_ptr<DaemonProcess> startNode(const std::string& name, const std::string& relay,
                                           const std::string& tracing) {
    const std::string config = writeConfig(name, relay, tracing);
    auto node = std::make_unique<DaemonProcess>(
        *loop_, std::vector<std::string>{"--modules", SNOW_RPC_TEST_PLUGINS, "--config", config},
        std::vector<std::string>{"SNOW_RPC_SOCKET=" + dir_.file(name + ".sock")});
    EXPECT_NE(node->waitForLog("ready:"), std::string::npos) << node->log();
    return node;
  }

  std::string writeConfig(const std::string& name, const std::string& relay,
                          const std::string& tracing) {
    std::string path = dir_.file(name + ".yaml");
    std::ofstream(path) << fmt::format(
        "rpc:\n  unix_socket: {}\ntracing:\n{}modules:\n  relay:\n{}", dir_.file(name + ".sock"),
        tracing, relay);
    return path;
  }

  std::string otlpSection(const std::string& service) {
    return fmt::format("  service_name: {}\n  batch_delay: 20ms\n  otlp:\n    endpoint: {}\n",
                       service, receiver_.endpoint());
  }

  nlohmann::json status(const std::string& name) {
    auto [code, out] = runProgram(
        *loop_, SNOWCTL, {"--node", "unix:" + dir_.file(name + ".sock"), "--json", "status"});
    EXPECT_EQ(code, 0) << out;
    return nlohmann::json::parse(out, nullptr, false);
  }

  posix::PosixPtr os_;
  posix::ScopedInjector injected_;
  DispatcherPtr loop_ = makeDispatcher("test");
  TempDir dir_{"snow-tracing-test"};
  OtlpReceiver receiver_{*loop_};
};

// The issue's check: two daemons, one dispatched event, one trace. The sender's event span is the
// parent of its RPC client span, whose child is the receiver's server span, whose child is the
// receiver's event span; each carries its own node's service name and node id.
TEST_F(TracingDaemonTest, AnEventDispatchedToAnotherNodeIsOneTraceAcrossBoth) {
  auto b = startNode("b", fmt::format("    handled_file: {}\n", dir_.file("handled")),
                     otlpSection("snow-b"));
  auto a = startNode("a",
                     fmt::format("    peer: unix:{}\n    count: 1\n    outcome_file: {}\n",
                                 dir_.file("b.sock"), dir_.file("outcomes")),
                     otlpSection("snow-a"));
  ASSERT_NE(a->waitForLog("relay: all 1 settled: 1 ok, 0 failed"), std::string::npos) << a->log();
  const std::string idA = status("a")["node_id"];
  const std::string idB = status("b")["node_id"];
  ASSERT_NE(idA, idB);
  ASSERT_TRUE(receiver_.waitForSpans(4)) << receiver_.log();

  const auto spans = receiver_.spans();
  auto find = [&](const std::string& name, int kind) -> const ReceivedSpan* {
    for (const auto& span : spans) {
      if (span.name == name && span.kind == kind) {
        return &span;
      }
    }
    ADD_FAILURE() << "no span " << name << " of kind " << kind << " in " << receiver_.log();
    return nullptr;
  };
  const ReceivedSpan* send = find("test.send", 1);
  const ReceivedSpan* client = find("snow.rpc.v1.Node/Dispatch", 3);
  const ReceivedSpan* server = find("snow.rpc.v1.Node/Dispatch", 2);
  const ReceivedSpan* work = find("test.work", 1);
  ASSERT_TRUE(send && client && server && work);
  for (const ReceivedSpan* span : {client, server, work}) {
    EXPECT_EQ(span->traceId, send->traceId) << span->json;
  }
  EXPECT_EQ(send->parentSpanId, "");
  EXPECT_EQ(client->parentSpanId, send->spanId);
  EXPECT_EQ(server->parentSpanId, client->spanId) << "the remote span's parent is the local span";
  EXPECT_EQ(work->parentSpanId, server->spanId);
  EXPECT_EQ(server->flags & 0x300U, 0x300U) << "its parent is remote";
  for (const ReceivedSpan* span : {send, client}) {
    EXPECT_EQ(span->resource.at("service.name"), "snow-a");
    EXPECT_EQ(span->resource.at("snow.node.id"), idA);
  }
  for (const ReceivedSpan* span : {server, work}) {
    EXPECT_EQ(span->resource.at("service.name"), "snow-b");
    EXPECT_EQ(span->resource.at("snow.node.id"), idB);
    EXPECT_EQ(span->resource.at("service.instance.id"), idB);
  }
  EXPECT_EQ(client->attributes.at("rpc.system"), "grpc");
  EXPECT_EQ(client->attributes.at("rpc.grpc.status_code"), "0");
  EXPECT_EQ(work->attributes.at("snow.event.type"), "test.work");
  EXPECT_EQ(work->attributes.at("snow.event.remote_parent"), send->attributes.at("snow.event.id"));

  // The tracer's counters are visible through snowctl. The receiver stores spans before it
  // answers, so the tracer may count them a moment after they arrived.
  nlohmann::json tracing;
  for (int attempt = 0; attempt < 100; ++attempt) {
    tracing = status("a")["tracing"];
    if (std::stoull(tracing.value("exported", std::string("0"))) >= 2) {
      break;
    }
  }
  EXPECT_THAT(std::string(tracing["tracer"]), HasSubstr("OTLP/gRPC " + receiver_.endpoint()));
  EXPECT_THAT(std::string(tracing["tracer"]), HasSubstr("service snow-a"));
  EXPECT_TRUE(tracing["own"]);
  EXPECT_GE(std::stoull(tracing.value("exported", std::string("0"))), 2U);
  auto [code, human] =
      runProgram(*loop_, SNOWCTL, {"--node", "unix:" + dir_.file("a.sock"), "status"});
  EXPECT_EQ(code, 0);
  EXPECT_THAT(human, HasSubstr("tracing    OTLP/gRPC " + receiver_.endpoint()));
  EXPECT_THAT(human, HasSubstr("spans exported"));
  EXPECT_THAT(human, HasSubstr("0 dropped (queue full)"));
}

// What an operator sees while the collector is down: the node keeps serving, snowctl status
// shows the failing exports and why, and nothing is lost once the collector is back.
TEST_F(TracingDaemonTest, ACollectorOutageShowsInStatusAndLosesNothingWithinTheQueue) {
  receiver_.stop();
  auto b = startNode("b", fmt::format("    handled_file: {}\n", dir_.file("handled")),
                     "  batch_delay: 20ms\n  retry_initial: 50ms\n  retry_max: 200ms\n"
                     "  otlp:\n    endpoint: " +
                         receiver_.endpoint() + "\n");
  auto a = startNode("a",
                     fmt::format("    peer: unix:{}\n    count: 5\n    outcome_file: {}\n",
                                 dir_.file("b.sock"), dir_.file("outcomes")),
                     "");
  ASSERT_NE(a->waitForLog("relay: all 5 settled: 5 ok, 0 failed"), std::string::npos) << a->log();
  ASSERT_NE(b->waitForLog("tracing: cannot export"), std::string::npos) << b->log();
  const nlohmann::json down = status("b")["tracing"];
  EXPECT_GE(std::stoull(down.value("failed_exports", std::string("0"))), 1U) << down.dump();
  EXPECT_THAT(down.value("last_error", std::string()), HasSubstr("UNAVAILABLE"));
  EXPECT_EQ(down.value("dropped", std::string("0")), "0");
  EXPECT_EQ(down.value("queued", std::string("0")), "5") << "the five events' spans wait";

  receiver_.restart();
  ASSERT_TRUE(receiver_.waitForSpans(5)) << b->log();
  ASSERT_NE(b->waitForLog("tracing: exporting to OTLP/gRPC"), std::string::npos) << b->log();
  std::vector<std::string> names;
  for (const auto& span : receiver_.spans()) {
    names.push_back(span.name);
  }
  EXPECT_EQ(std::count(names.begin(), names.end(), "test.work"), 5);
}

TEST_F(TracingDaemonTest, ADaemonStoppedWithSpansQueuedExportsThemBeforeItExits) {
  auto b = startNode("b", fmt::format("    handled_file: {}\n", dir_.file("handled")),
                     "  batch_delay: 1h\n  otlp:\n    endpoint: " + receiver_.endpoint() + "\n");
  auto a = startNode("a",
                     fmt::format("    peer: unix:{}\n    count: 3\n    outcome_file: {}\n",
                                 dir_.file("b.sock"), dir_.file("outcomes")),
                     "");
  ASSERT_NE(a->waitForLog("relay: all 3 settled: 3 ok, 0 failed"), std::string::npos) << a->log();
  EXPECT_EQ(receiver_.spanCount(), 0U) << "an hour's batch delay: nothing sent yet";
  b->signal(SIGTERM);
  ASSERT_EQ(b->waitForExit(), 0) << b->log();
  std::vector<std::string> names;
  for (const auto& span : receiver_.spans()) {
    names.push_back(span.name);
  }
  EXPECT_EQ(std::count(names.begin(), names.end(), "test.work"), 3) << receiver_.log();
}

TEST_F(TracingDaemonTest, CheckConfigExplainsABrokenTracingSection) {
  const std::pair<std::string, std::string> cases[] = {
      {"  otlp:\n    endpoint: http://jaeger:4318/v1/traces\n",
       "tracing.otlp.endpoint: 'http://jaeger:4318/v1/traces': an OTLP/gRPC endpoint has no path"},
      {"  otlp: {}\n  library:\n    path: /nonexistent/tracer.so\n",
       "give either 'otlp' (snow-core's tracer) or 'library' (another tracer), not both"},
      {"  library:\n    path: /nonexistent/tracer.so\n",
       "tracing.library.path: /nonexistent/tracer.so: No such file or directory"},
      {"  otlp: {}\n  ratio: 2\n", "tracing.ratio: 2 is not in [0, 1]"},
      {"  otlp: {}\n  sampler: SOMETIMES\n", "tracing.sampler"},
      {"  otlp: {}\n  queue_size: 10\n  batch_size: 20\n",
       "tracing.batch_size: 20 is larger than the queue (10 spans)"},
      {"  otlp:\n    endpont: x:1\n", "tracing.otlp.endpont: unknown key"},
  };
  for (const auto& [section, expected] : cases) {
    const std::string config = writeConfig("bad", "    {}\n", section);
    auto [code, log] = runDaemon(
        *loop_, {"--modules", SNOW_RPC_TEST_PLUGINS, "--config", config, "--check-config"});
    EXPECT_EQ(code, 1) << section;
    EXPECT_THAT(log, HasSubstr(expected)) << section;
  }
}

// A library that is not an OpenTracing tracer plugin, or one that refuses its configuration,
// stops the start-up with the library's own reason, and the daemon exits 1.
TEST_F(TracingDaemonTest, ATracerLibraryThatCannotBeLoadedStopsTheStartClearly) {
  const std::pair<std::string, std::string> cases[] = {
      {fmt::format("  library:\n    path: {}\n", SNOW_NOT_A_TRACER_LIBRARY),
       "tracing.library: cannot load " SNOW_NOT_A_TRACER_LIBRARY},
      {fmt::format("  library:\n    path: {}\n    config: 'not json'\n", SNOW_MOCKTRACER_LIBRARY),
       "tracing.library: " SNOW_MOCKTRACER_LIBRARY " refused its configuration"},
  };
  for (const auto& [section, expected] : cases) {
    const std::string config = writeConfig("lib", "    {}\n", section);
    auto [code, log] = runDaemon(*loop_, {"--modules", SNOW_RPC_TEST_PLUGINS, "--config", config});
    EXPECT_EQ(code, 1) << log;
    EXPECT_THAT(log, HasSubstr("cannot start: " + expected)) << log;
  }
}

// A tracer library we did not write: OpenTracing's own mocktracer, as Debian ships it, loaded
// through opentracing::DynamicallyLoadTracingLibrary. Both daemons use it, so the context also
// crosses the RPC in the mocktracer's own format; it writes its spans as JSON when closed.
TEST_F(TracingDaemonTest, ATracerLibraryNamedInTheConfigurationTracesTheDaemon) {
  auto section = [&](const std::string& name) {
    return fmt::format("  library:\n    path: {}\n    config: '{{\"output_file\": \"{}\"}}'\n",
                       SNOW_MOCKTRACER_LIBRARY, dir_.file(name + "-spans.json"));
  };
  auto b =
      startNode("b", fmt::format("    handled_file: {}\n", dir_.file("handled")), section("b"));
  EXPECT_THAT(b->log(), HasSubstr("tracing: OpenTracing library " SNOW_MOCKTRACER_LIBRARY));
  auto a = startNode("a",
                     fmt::format("    peer: unix:{}\n    count: 1\n    outcome_file: {}\n",
                                 dir_.file("b.sock"), dir_.file("outcomes")),
                     section("a"));
  ASSERT_NE(a->waitForLog("relay: all 1 settled: 1 ok, 0 failed"), std::string::npos) << a->log();
  EXPECT_THAT(std::string(status("a")["tracing"]["tracer"]),
              HasSubstr("OpenTracing library " SNOW_MOCKTRACER_LIBRARY));
  for (auto* node : {&a, &b}) {
    (*node)->signal(SIGTERM);
    ASSERT_EQ((*node)->waitForExit(), 0) << (*node)->log();
  }
  // Each daemon's spans as (operation name, trace id). Read with a pattern, not a JSON parser:
  // the JSON recorder of Debian's mocktracer 1.6.0 leaves its stream in hex after printing the
  // first span's ids, so later spans' timestamps come out as bare hex digits, which is not JSON.
  const auto spansOf = [&](const std::string& name) {
    const std::string text = readFile(dir_.file(name + "-spans.json"));
    EXPECT_TRUE(text.starts_with("[{\"span_context\"")) << name << ": " << text;
    std::multimap<std::string, std::string> spans;
    const std::regex span(
        R"re(\{"span_context":\{"trace_id":"([0-9a-f]+)".*?"operation_name":"([^"]+)")re");
    for (auto it = std::sregex_iterator(text.begin(), text.end(), span);
         it != std::sregex_iterator(); ++it) {
      spans.emplace((*it)[2].str(), (*it)[1].str());
    }
    return spans;
  };
  const auto fromA = spansOf("a");
  const auto fromB = spansOf("b");
  ASSERT_EQ(fromA.count("test.send"), 1U) << readFile(dir_.file("a-spans.json"));
  ASSERT_EQ(fromB.count("test.work"), 1U) << readFile(dir_.file("b-spans.json"));
  EXPECT_EQ(fromA.count("snow.rpc.v1.Node/Dispatch"), 1U) << "the client span";
  EXPECT_EQ(fromB.count("snow.rpc.v1.Node/Dispatch"), 1U) << "the server span";
  EXPECT_EQ(fromB.find("test.work")->second, fromA.find("test.send")->second)
      << "one trace across both daemons, in the library's own propagation format";
}

}  // namespace
}  // namespace snow::testing
