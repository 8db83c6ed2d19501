#include "snow/core/config.h"

#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <fcntl.h>
#include <gmock/gmock.h>
#include <google/protobuf/empty.pb.h>
#include <gtest/gtest.h>

#include "snow/core/daemon.h"
#include "snow/core/v1/daemon.pb.h"
#include "snow/posix/active.h"
#include "snow/posix/file_descriptor.h"
#include "snow/test/v1/config_test.pb.h"

namespace snow {
namespace {

using config::ConfigError;
using config::Document;
using config::parseDurationNanos;
using test::v1::ConfigTest;
using ::testing::ElementsAre;
using ::testing::IsEmpty;

constexpr int64_t kSecond = 1'000'000'000;

// The problems decode() reports for `text` decoded at "s" into a ConfigTest; empty when none.
std::vector<std::string> problemsOf(const std::string& text) {
  ConfigTest out;
  try {
    Document::parseString(text, "t.yaml").decode("s", out);
  } catch (const ConfigError& e) {
    return e.problems();
  }
  return {};
}

// The message of the ConfigError `f` throws; fails the test when it throws none.
std::string configErrorOf(const std::function<void()>& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no ConfigError thrown";
  return "";
}

ConfigTest decoded(const std::string& text) {
  ConfigTest out;
  Document::parseString(text, "t.yaml").decode("s", out);
  return out;
}

TEST(ConfigDecodeTest, EveryFieldKindDecodes) {
  const ConfigTest out = decoded(R"(s:
  i32: -42
  i64: -9000000000
  u32: 4000000000
  u64: 18446744073709551615
  ratio: 0.5
  weight: 2.25
  enabled: true
  name: snow
  mode: SAFE
  endpoint:
    host: example.org
    port: 443
    timeout: 250ms
  tags: [a, b, c]
  ports:
    - 80
    - 443
  endpoints:
    - host: one
      port: 1
    - {host: two, port: 2}
  limits:
    cpu: 2
    memory: 512
  routes:
    api: {host: api.local, port: 8080}
    web:
      host: web.local
  timeout: 1.5m
  max_bytes: 1048576
  retries: 3
  modes: [FAST, SAFE]
)");
  EXPECT_EQ(out.i32(), -42);
  EXPECT_EQ(out.i64(), -9'000'000'000);
  EXPECT_EQ(out.u32(), 4'000'000'000U);
  EXPECT_EQ(out.u64(), std::numeric_limits<uint64_t>::max());
  EXPECT_FLOAT_EQ(out.ratio(), 0.5F);
  EXPECT_DOUBLE_EQ(out.weight(), 2.25);
  EXPECT_TRUE(out.enabled());
  EXPECT_EQ(out.name(), "snow");
  EXPECT_EQ(out.mode(), ConfigTest::SAFE);
  ASSERT_TRUE(out.has_endpoint());
  EXPECT_EQ(out.endpoint().host(), "example.org");
  EXPECT_EQ(out.endpoint().port(), 443);
  EXPECT_EQ(out.endpoint().timeout().seconds(), 0);
  EXPECT_EQ(out.endpoint().timeout().nanos(), 250'000'000);
  EXPECT_THAT(out.tags(), ElementsAre("a", "b", "c"));
  EXPECT_THAT(out.ports(), ElementsAre(80, 443));
  ASSERT_EQ(out.endpoints_size(), 2);
  EXPECT_EQ(out.endpoints(0).host(), "one");
  EXPECT_EQ(out.endpoints(0).port(), 1);
  EXPECT_EQ(out.endpoints(1).host(), "two");
  EXPECT_EQ(out.endpoints(1).port(), 2);
  EXPECT_EQ(out.limits().size(), 2U);
  EXPECT_EQ(out.limits().at("cpu"), 2);
  EXPECT_EQ(out.limits().at("memory"), 512);
  ASSERT_EQ(out.routes().size(), 2U);
  EXPECT_EQ(out.routes().at("api").host(), "api.local");
  EXPECT_EQ(out.routes().at("api").port(), 8080);
  EXPECT_EQ(out.routes().at("web").host(), "web.local");
  EXPECT_EQ(out.routes().at("web").port(), 0);
  EXPECT_EQ(out.timeout().seconds(), 90);
  EXPECT_EQ(out.timeout().nanos(), 0);
  EXPECT_EQ(out.max_bytes(), 1'048'576U);
  EXPECT_EQ(out.retry_count(), 3);
  EXPECT_THAT(out.modes(), ElementsAre(ConfigTest::FAST, ConfigTest::SAFE));
}

TEST(ConfigDecodeTest, JsonNamesAreAcceptedAsWellAsFieldNames) {
  EXPECT_EQ(decoded("s: {maxBytes: 7}").max_bytes(), 7U);
  EXPECT_EQ(decoded("s: {max_bytes: 8}").max_bytes(), 8U);
  EXPECT_EQ(decoded("s: {retries: 2}").retry_count(), 2);
  EXPECT_EQ(decoded("s: {retry_count: 4}").retry_count(), 4);
}

TEST(ConfigDecodeTest, EnumValuesAreCaseInsensitive) {
  EXPECT_EQ(decoded("s: {mode: safe}").mode(), ConfigTest::SAFE);
  EXPECT_EQ(decoded("s: {mode: Fast}").mode(), ConfigTest::FAST);
  EXPECT_THAT(decoded("s: {modes: [fast, SAFE, sAfE]}").modes(),
              ElementsAre(ConfigTest::FAST, ConfigTest::SAFE, ConfigTest::SAFE));
  // The error still lists the canonical names.
  EXPECT_THAT(problemsOf("s: {mode: turbo}"),
              ElementsAre("t.yaml:1:11: s.mode: 'turbo' is not one of: MODE_UNSPECIFIED, FAST, "
                          "SAFE"));
}

TEST(ConfigDecodeTest, UnknownKeyNamesPositionPathSuggestionAndKnownKeys) {
  // Lines and columns are 1-based and point at the key itself.
  EXPECT_THAT(problemsOf("s:\n"
                         "  endpoint:\n"
                         "    host: a\n"
                         "    prot: 80\n"),
              ElementsAre("t.yaml:4:5: s.endpoint.prot: unknown key (did you mean 'port'?); "
                          "known keys: host, port, timeout"));
  EXPECT_THAT(problemsOf("s:\n  endpoint: {host: a,   zzzzzz: 1}\n"),
              ElementsAre("t.yaml:2:25: s.endpoint.zzzzzz: unknown key; known keys: host, port, "
                          "timeout"));
}

TEST(ConfigDecodeTest, UnknownKeySuggestsTheClosestName) {
  // "u63" is within two edits of both u32 and u64; u64 is one edit away.
  const auto problems = problemsOf("s:\n  u63: 1\n");
  ASSERT_EQ(problems.size(), 1U);
  EXPECT_THAT(problems[0], ::testing::StartsWith("t.yaml:2:3: s.u63: unknown key (did you mean "
                                                 "'u64'?); known keys: i32, i64, u32, u64, "));
}

TEST(ConfigDecodeTest, ASectionWithoutFieldsTakesNoKeys) {
  google::protobuf::Empty out;
  EXPECT_EQ(configErrorOf([&] { Document::parseString("s: {x: 1}", "t.yaml").decode("s", out); }),
            "t.yaml:1:5: s.x: unknown key; this section takes no keys");
}

TEST(ConfigDecodeTest, WrongTypesAreReportedWithTheirPositions) {
  struct Case {
    const char* yaml;
    const char* problem;
  };
  const Case cases[] = {
      {"s:\n  i32: lots", "t.yaml:2:8: s.i32: 'lots' is not a 32-bit integer"},
      {"s:\n  i32: 1099511627776", "t.yaml:2:8: s.i32: '1099511627776' is not a 32-bit integer"},
      {"s:\n  i64: 1.5", "t.yaml:2:8: s.i64: '1.5' is not a 64-bit integer"},
      {"s:\n  u32: -1", "t.yaml:2:8: s.u32: '-1' is not an unsigned 32-bit integer"},
      {"s:\n  u64: 18446744073709551616",
       "t.yaml:2:8: s.u64: '18446744073709551616' is not an unsigned 64-bit integer"},
      {"s:\n  weight: heavy", "t.yaml:2:11: s.weight: 'heavy' is not a number"},
      {"s:\n  enabled: maybe", "t.yaml:2:12: s.enabled: 'maybe' is not true or false"},
      {"s:\n  mode: TURBO",
       "t.yaml:2:9: s.mode: 'TURBO' is not one of: MODE_UNSPECIFIED, FAST, SAFE"},
      {"s:\n  name: [a, b]", "t.yaml:2:9: s.name: expected a single value (string)"},
      {"s:\n  i32:\n    - 1", "t.yaml:3:5: s.i32: expected a single value (int32)"},
      {"s:\n  endpoint: 5", "t.yaml:2:13: s.endpoint: expected a mapping of keys (Endpoint)"},
      {"s:\n  endpoint: [a]", "t.yaml:2:13: s.endpoint: expected a mapping of keys (Endpoint)"},
      {"s:\n  tags: {a: 1}", "t.yaml:2:9: s.tags: expected a list"},
      {"s:\n  ports: 80", "t.yaml:2:10: s.ports: expected a list"},
      {"s:\n  limits: [1]", "t.yaml:2:11: s.limits: expected a mapping"},
      {"s:\n  ports: [80, x]", "t.yaml:2:15: s.ports[1]: 'x' is not a 32-bit integer"},
      {"s:\n  limits: {cpu: lots}", "t.yaml:2:17: s.limits.cpu: 'lots' is not a 32-bit integer"},
      {"s:\n  routes: {api: {hots: a}}",
       "t.yaml:2:18: s.routes.api.hots: unknown key (did you mean 'host'?); known keys: host, "
       "port, timeout"},
      {"s:\n  endpoints:\n    - port: x",
       "t.yaml:3:13: s.endpoints[0].port: 'x' is not a 32-bit integer"},
      {"s:\n  timeout: 10 seconds",
       "t.yaml:2:12: s.timeout: expected a duration such as 250ms, 10s, 1.5m or 2h"},
      {"s:\n  timeout: {seconds: 1}",
       "t.yaml:2:12: s.timeout: expected a duration such as 250ms, 10s, 1.5m or 2h"},
      {"s:\n  endpoint: {timeout: -1s}",
       "t.yaml:2:23: s.endpoint.timeout: expected a duration such as 250ms, 10s, 1.5m or 2h"},
      {"s: 5", "t.yaml:1:4: s: expected a mapping of keys (ConfigTest)"},
      {"s:\n  ? [a, b]\n  : 1", "t.yaml:2:5: s: a key must be a plain name"},
  };
  for (const auto& c : cases) {
    EXPECT_THAT(problemsOf(c.yaml), ElementsAre(c.problem)) << c.yaml;
  }
}

TEST(ConfigDecodeTest, EveryProblemOfASectionIsReportedAtOnce) {
  std::string what;
  std::vector<std::string> problems;
  try {
    decoded(
        "s:\n"
        "  i32: lots\n"
        "  enabled: maybe\n"
        "  nmae: x\n"
        "  endpoint:\n"
        "    port: -1.5\n");
    FAIL() << "no ConfigError thrown";
  } catch (const ConfigError& e) {
    what = e.what();
    problems = e.problems();
  }
  EXPECT_THAT(problems,
              ElementsAre("t.yaml:2:8: s.i32: 'lots' is not a 32-bit integer",
                          "t.yaml:3:12: s.enabled: 'maybe' is not true or false",
                          ::testing::StartsWith("t.yaml:4:3: s.nmae: unknown key (did you mean "
                                                "'name'?); known keys: i32, "),
                          "t.yaml:6:11: s.endpoint.port: '-1.5' is not a 32-bit integer"));
  ASSERT_EQ(problems.size(), 4U);
  EXPECT_EQ(what, problems[0] + "\n" + problems[1] + "\n" + problems[2] + "\n" + problems[3]);
}

TEST(ConfigDecodeTest, ScalarsAreConvertedByTheFieldType) {
  const ConfigTest out = decoded(
      "s:\n"
      "  i32: \"8080\"\n"
      "  u64: '42'\n"
      "  enabled: 'true'\n"
      "  name: 123\n"
      "  tags: [1.50, true, 007, \"null\"]\n");
  EXPECT_EQ(out.i32(), 8080);
  EXPECT_EQ(out.u64(), 42U);
  EXPECT_TRUE(out.enabled());
  EXPECT_EQ(out.name(), "123");
  // A string keeps the scalar's text as written.
  EXPECT_THAT(out.tags(), ElementsAre("1.50", "true", "007", "null"));
}

TEST(ConfigDecodeTest, NullValuesAndAbsentSectionsLeaveTheDefaults) {
  const ConfigTest out = decoded(
      "s:\n"
      "  i32:\n"
      "  name: ~\n"
      "  endpoint:\n"
      "  tags:\n"
      "  limits:\n"
      "  timeout:\n"
      "  enabled: true\n");
  EXPECT_EQ(out.i32(), 0);
  EXPECT_EQ(out.name(), "");
  EXPECT_FALSE(out.has_endpoint());
  EXPECT_THAT(out.tags(), IsEmpty());
  EXPECT_TRUE(out.limits().empty());
  EXPECT_FALSE(out.has_timeout());
  EXPECT_TRUE(out.enabled());

  EXPECT_EQ(decoded("s:\n").ByteSizeLong(), 0U);
  EXPECT_EQ(decoded("other: {i32: 5}\n").ByteSizeLong(), 0U);
  EXPECT_EQ(decoded("").ByteSizeLong(), 0U);
}

TEST(ConfigDecodeTest, DecodeResetsTheMessageFirst) {
  const Document document = Document::parseString("s: {i32: 5}\nt: {name: x}\n", "t.yaml");
  ConfigTest out;
  out.set_name("old");
  out.add_tags("old");
  out.mutable_endpoint()->set_port(1);
  document.decode("s", out);
  EXPECT_EQ(out.i32(), 5);
  EXPECT_EQ(out.name(), "");
  EXPECT_THAT(out.tags(), IsEmpty());
  EXPECT_FALSE(out.has_endpoint());

  // An absent section resets too.
  out.set_name("old");
  document.decode("absent", out);
  EXPECT_EQ(out.ByteSizeLong(), 0U);
  document.decode("modules.absent", out);
  EXPECT_EQ(out.ByteSizeLong(), 0U);
}

TEST(ConfigDocumentTest, SyntaxErrorsNameTheirPosition) {
  EXPECT_EQ(configErrorOf([] { Document::parseString("s:\n  a: [1, 2\n", "t.yaml"); }),
            "t.yaml:3:1: YAML syntax error: end of sequence flow not found");
  EXPECT_EQ(configErrorOf([] { Document::parseString("s:\n  a: b\n c: d\n", "t.yaml"); }),
            "t.yaml:3:2: YAML syntax error: end of map not found");
}

TEST(ConfigDocumentTest, TheTopLevelMustBeAMapping) {
  EXPECT_EQ(configErrorOf([] { Document::parseString("- a\n- b\n", "t.yaml"); }),
            "t.yaml: the top level must be a mapping of sections");
  EXPECT_EQ(configErrorOf([] { Document::parseString("hello", "t.yaml"); }),
            "t.yaml: the top level must be a mapping of sections");
}

TEST(ConfigDocumentTest, KeysListsAMappingsKeysInOrder) {
  const Document document = Document::parseString(
      "modules:\n"
      "  zeta: {}\n"
      "  alpha:\n"
      "    x: [1]\n"
      "  mid:\n"
      "empty:\n",
      "t.yaml");
  EXPECT_THAT(document.keys("modules"), ElementsAre("zeta", "alpha", "mid"));
  EXPECT_THAT(document.keys("modules.alpha"), ElementsAre("x"));
  EXPECT_THAT(document.keys("modules.zeta"), IsEmpty());
  EXPECT_THAT(document.keys("modules.mid"), IsEmpty());
  EXPECT_THAT(document.keys("empty"), IsEmpty());
  EXPECT_THAT(document.keys("absent"), IsEmpty());
  EXPECT_THAT(document.keys("modules.absent.deeper"), IsEmpty());
  EXPECT_THAT(document.keys(""), ElementsAre("modules", "empty"));
  EXPECT_EQ(configErrorOf([&] { (void)document.keys("modules.alpha.x"); }),
            "t.yaml:4:8: modules.alpha.x: expected a mapping");
  EXPECT_EQ(configErrorOf([] {
              (void)Document::parseString("modules:\n  ? [a]\n  : 1\n", "t.yaml").keys("modules");
            }),
            "t.yaml:2:5: modules: a key must be a plain name");
}

TEST(ConfigDocumentTest, HasTellsWhetherAPathNamesANode) {
  const Document document =
      Document::parseString("modules:\n  alpha:\n    x: 1\n  mid:\n", "t.yaml");
  EXPECT_TRUE(document.has("modules"));
  EXPECT_TRUE(document.has("modules.alpha"));
  EXPECT_TRUE(document.has("modules.alpha.x"));
  EXPECT_TRUE(document.has("modules.mid"));  // Present, even though null.
  EXPECT_FALSE(document.has("modules.beta"));
  EXPECT_FALSE(document.has("modules.alpha.x.y"));  // Below a scalar.
  EXPECT_FALSE(document.has("daemon"));
}

TEST(ConfigDocumentTest, CopiesAndMovesKeepTheTree) {
  Document original = Document::parseString("s: {i32: 3}", "t.yaml");
  const Document copy = original;  // NOLINT(performance-unnecessary-copy-initialization)
  const Document moved = std::move(original);
  ConfigTest out;
  copy.decode("s", out);
  EXPECT_EQ(out.i32(), 3);
  moved.decode("s", out);
  EXPECT_EQ(out.i32(), 3);
  EXPECT_EQ(copy.sourceName(), "t.yaml");
}

class ConfigFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pathTemplate = ::testing::TempDir() + "snow-config-XXXXXX";
    ASSERT_NE(layer_->mkdtemp(pathTemplate.data()).value, nullptr) << pathTemplate;
    directory_ = pathTemplate;
  }
  void TearDown() override {
    for (const auto& path : written_) {
      (void)layer_->unlink(path.c_str());
    }
    if (!directory_.empty()) {
      (void)layer_->rmdir(directory_.c_str());
    }
  }

  std::string write(const std::string& name, const std::string& text) {
    const std::string path = directory_ + "/" + name;
    posix::FileDescriptor fd(
        layer_->open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600).value);
    written_.push_back(path);
    EXPECT_EQ(layer_->write(fd.get(), text.data(), text.size()).value,
              static_cast<ssize_t>(text.size()));
    return path;
  }

  posix::PosixPtr layer_ = posix::makeDefaultPosix();
  posix::ScopedInjector injector_{*layer_};
  std::string directory_;
  std::vector<std::string> written_;
};

TEST_F(ConfigFileTest, AMissingFileCannotBeOpened) {
  const std::string path = directory_ + "/missing.yaml";
  EXPECT_EQ(configErrorOf([&] { Document::parseFile(*layer_, path); }),
            path + ": cannot open: No such file or directory");
}

TEST_F(ConfigFileTest, AFileOnDiskIsParsedAndNamedInErrors) {
  const std::string path = write("snow.yaml", "s:\n  name: from-disk\n  i32: 12\n");
  const Document document = Document::parseFile(*layer_, path);
  EXPECT_EQ(document.sourceName(), path);
  ConfigTest out;
  document.decode("s", out);
  EXPECT_EQ(out.name(), "from-disk");
  EXPECT_EQ(out.i32(), 12);

  const std::string bad = write("bad.yaml", "s:\n  i32: x\n");
  EXPECT_EQ(configErrorOf([&] { Document::parseFile(*layer_, bad).decode("s", out); }),
            bad + ":2:8: s.i32: 'x' is not a 32-bit integer");
}

TEST_F(ConfigFileTest, AFileLargerThanOneReadIsReadWhole) {
  std::string text = "s:\n  tags:\n";
  for (int i = 0; i < 5000; ++i) {
    text += "    - tag" + std::to_string(i) + "\n";
  }
  text += "  name: last\n";
  ASSERT_GT(text.size(), 16384U * 2);
  ConfigTest out;
  Document::parseFile(*layer_, write("big.yaml", text)).decode("s", out);
  EXPECT_EQ(out.tags_size(), 5000);
  EXPECT_EQ(out.name(), "last");
}

TEST(ConfigDurationTest, ParsesEveryUnit) {
  EXPECT_EQ(parseDurationNanos("250ms"), 250'000'000);
  EXPECT_EQ(parseDurationNanos("10s"), 10 * kSecond);
  EXPECT_EQ(parseDurationNanos("1.5m"), 90 * kSecond);
  EXPECT_EQ(parseDurationNanos("2h"), 7200 * kSecond);
  EXPECT_EQ(parseDurationNanos("100us"), 100'000);
  EXPECT_EQ(parseDurationNanos("3ns"), 3);
  EXPECT_EQ(parseDurationNanos("0s"), 0);
  EXPECT_EQ(parseDurationNanos("0.25s"), 250'000'000);
  EXPECT_EQ(parseDurationNanos("1e3ms"), kSecond);
  EXPECT_EQ(parseDurationNanos("9223372036s"), 9'223'372'036 * kSecond);
}

TEST(ConfigDurationTest, RejectsMalformedDurations) {
  for (const char* text : {"", "10", "s", "ms", "-1s", "1.5x", "1e400s", "10 s", " 10s", "10S",
                           "+1s", "infs", "nanms", ".infs", "1s5", "10sec", "1h30m"}) {
    EXPECT_EQ(parseDurationNanos(text), std::nullopt) << '"' << text << '"';
  }
}

TEST(ConfigDurationTest, RejectsDurationsBeyondTheNanosecondRange) {
  EXPECT_EQ(parseDurationNanos("9223372037s"), std::nullopt);
  // Rounds to exactly 2^63 nanoseconds as a double: one past the largest int64_t.
  EXPECT_EQ(parseDurationNanos("9223372036.854775807s"), std::nullopt);
  EXPECT_EQ(parseDurationNanos("1000000000h"), std::nullopt);
}

TEST(ConfigDaemonSectionTest, TheBuiltInDefaultDecodes) {
  const Document document =
      Document::parseString(kDefaultConfiguration, "built-in default configuration");
  core::v1::DaemonConfig daemon;
  daemon.set_plugin_errors(core::v1::DaemonConfig::SKIP);
  document.decode("daemon", daemon);
  EXPECT_EQ(daemon.plugin_errors(), core::v1::DaemonConfig::REFUSE);
  EXPECT_EQ(daemon.stop_timeout().seconds(), 10);
  EXPECT_EQ(daemon.stop_timeout().nanos(), 0);
  EXPECT_THAT(document.keys("modules"), IsEmpty());
  EXPECT_THAT(document.keys(""), ElementsAre("daemon", "modules"));
}

TEST(ConfigDaemonSectionTest, PluginErrorsAcceptsLowerCase) {
  core::v1::DaemonConfig daemon;
  Document::parseString("daemon:\n  plugin_errors: skip\n  stop_timeout: 2.5s\n", "snow.yaml")
      .decode("daemon", daemon);
  EXPECT_EQ(daemon.plugin_errors(), core::v1::DaemonConfig::SKIP);
  EXPECT_EQ(daemon.stop_timeout().seconds(), 2);
  EXPECT_EQ(daemon.stop_timeout().nanos(), 500'000'000);
}

TEST(ConfigDaemonSectionTest, ErrorsReadAsTheOperatorSeesThem) {
  core::v1::DaemonConfig daemon;
  EXPECT_EQ(configErrorOf([&] {
              Document::parseString(
                  "daemon:\n"
                  "  plugin_errors: ignore\n"
                  "  stop_timout: 5s\n",
                  "/etc/snow/snow.yaml")
                  .decode("daemon", daemon);
            }),
            "/etc/snow/snow.yaml:2:18: daemon.plugin_errors: 'ignore' is not one of: REFUSE, SKIP\n"
            "/etc/snow/snow.yaml:3:3: daemon.stop_timout: unknown key (did you mean "
            "'stop_timeout'?); known keys: plugin_errors, stop_timeout, key_directory");
}

}  // namespace
}  // namespace snow
