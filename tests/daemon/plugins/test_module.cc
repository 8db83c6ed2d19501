// A module for the daemon tests, built as several plugins under different names
// (TEST_MODULE_NAME): it logs each lifecycle step and fails verify/apply when told to.
// With TEST_MODULE_WITHOUT_CONFIG it takes no configuration: libprotobuf's generated pool is
// process-wide, so two plugins may not embed the same .proto file.

#include <google/protobuf/empty.pb.h>

#include "snow/contexts/static_context.h"
#include "snow/core/module.h"

#ifdef TEST_MODULE_WITHOUT_CONFIG
namespace {
using Config = google::protobuf::Empty;
bool failVerify(const Config&) {
  return false;
}
bool failApply(const Config&) {
  return false;
}
std::string note(const Config&) {
  return "";
}
bool hangStop(const Config&) {
  return false;
}
}  // namespace
#else
#include "snow/test/v1/test_module.pb.h"
namespace {
using Config = snow::test::v1::TestModuleConfig;
bool failVerify(const Config& config) {
  return config.fail_verify();
}
bool failApply(const Config& config) {
  return config.fail_apply();
}
std::string note(const Config& config) {
  return config.note();
}
bool hangStop(const Config& config) {
  return config.hang_stop();
}
}  // namespace
#endif

namespace {

class TestModule final : public snow::ConfiguredModule<Config> {
 public:
  snow::Future<void> verify(const Config& config) override {
    log("verify");
    if (failVerify(config)) {
      return snow::makeErrorFuture<void>(std::runtime_error("told to fail verify"));
    }
    return snow::makeReadyFuture();
  }

  snow::Future<void> apply(const Config& config, snow::DynamicContext& next) override {
    if (failApply(config)) {
      return snow::makeErrorFuture<void>(std::runtime_error("told to fail apply"));
    }
    log("apply generation " + std::to_string(next.generation()) + " note=" + note(config));
    hangStop_ = hangStop(config);
    return snow::makeReadyFuture();
  }

  snow::Future<void> start() override {
    log("started");
    return snow::makeReadyFuture();
  }

  snow::Future<void> drain() override {
    log("drained");
    return snow::makeReadyFuture();
  }

  snow::Future<void> stop() override {
    if (hangStop_) {
      log("stop hangs");
      return never_.future();  // Kept, so it never breaks either: only the deadline ends it.
    }
    log("stopped");
    return snow::makeReadyFuture();
  }

 private:
  bool hangStop_ = false;
  snow::Promise<void> never_{snow::StaticContext::instance().loop()};

  static void log(const std::string& what) {
    snow::StaticContext::instance().logger().info("test module {}: {}", TEST_MODULE_NAME, what);
  }
};

}  // namespace

SNOW_MODULE(TestModule, TEST_MODULE_NAME, "0.1.0");
