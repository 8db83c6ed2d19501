// snow-core: the daemon. This is the runtime's entry point: it sets up the POSIX layer, logging,
// the static context and the first configuration generation, then runs the loop until SIGINT or
// SIGTERM.

#include <csignal>
#include <cstdio>
#include <iostream>

#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>

#include "snow/contexts/dynamic_context.h"
#include "snow/contexts/static_context.h"
#include "snow/core/log.h"
#include "snow/posix/active.h"

namespace {

struct Options {
  std::string logLevel = "info";
  std::string logFormat = "text";
  bool traceSyscalls = false;
};

int run(const Options& options) {
  const auto level = snow::log::parseLevel(options.logLevel);
  const auto format = snow::log::parseFormat(options.logFormat);
  auto logger = snow::log::configure("snow", *level, *format);

  snow::posix::PosixPtr os = snow::posix::makeDefaultPosix(options.traceSyscalls);
  // Declared before the context so that it is uninstalled after the context is gone, even when
  // an exception unwinds: teardown still closes descriptors through the layer.
  snow::posix::ScopedInjector osInstalled(*os);

  snow::StaticContext::Options contextOptions;
  contextOptions.name = "main";
  contextOptions.logger = logger;
  snow::StaticContext context(std::move(contextOptions));
  context.install(std::make_shared<snow::DynamicContext>(1, "built-in default"));

  bool stopping = false;
  auto stop = [&](const char* signal) {
    if (!stopping) {
      stopping = true;
      logger->info("{} received: stopping", signal);
      context.loop().exit();
    }
  };
  snow::SignalEventPtr onTerm = context.loop().listenForSignal(SIGTERM, [&] { stop("SIGTERM"); });
  snow::SignalEventPtr onInt = context.loop().listenForSignal(SIGINT, [&] { stop("SIGINT"); });

  logger->info("snow-core {} starting: pid {}, event id origin {:016x}", SNOW_VERSION,
               os->getpid().value, context.origin());
  logger->info("configuration generation {} applied ({})", context.current()->generation(),
               context.current()->source());
  logger->info("ready");
  context.loop().run(snow::RunMode::UntilExit);
  logger->info("stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  CLI::App app{"snow-core: an event-driven microkernel daemon with plugin modules"};
  app.set_version_flag("--version", std::string("snow-core ") + SNOW_VERSION);
  app.add_option("--log-level", options.logLevel,
                 "trace, debug, info, warning, error, critical or off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warning", "error", "critical", "off"}))
      ->capture_default_str();
  app.add_option("--log-format", options.logFormat, "text or json")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
  app.add_flag("--trace-syscalls", options.traceSyscalls,
               "log every system call at trace level (slow; for debugging)");
  CLI11_PARSE(app, argc, argv);
  try {
    return run(options);
  } catch (const std::exception& e) {
    spdlog::critical("snow-core failed: {}", e.what());
    return 1;
  }
}
