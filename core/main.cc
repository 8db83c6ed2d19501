// snow-core: the daemon.
//
// Sets up the POSIX layer, logging and the static context, then lets snow::Daemon load the
// plugins and the configuration and start the modules. SIGHUP reloads the configuration;
// SIGTERM and SIGINT stop the modules in reverse order and exit 0.

#include <csignal>
#include <cstdio>

#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>

#include "snow/contexts/static_context.h"
#include "snow/core/daemon.h"
#include "snow/core/log.h"
#include "snow/posix/active.h"

namespace {

struct Options {
  snow::DaemonOptions daemon;
  bool checkConfig = false;
  std::string logLevel = "info";
  std::string logFormat = "text";
  bool traceSyscalls = false;
};

int run(const Options& options) {
  auto logger = snow::log::configure("snow", *snow::log::parseLevel(options.logLevel),
                                     *snow::log::parseFormat(options.logFormat));
  snow::posix::PosixPtr os = snow::posix::makeDefaultPosix(options.traceSyscalls);
  // Declared before the context so that it is uninstalled after the context is gone, even when
  // an exception unwinds: teardown still closes descriptors through the layer.
  snow::posix::ScopedInjector osInstalled(*os);
  // A peer that closes while we write must cost an EPIPE, not the process: SIGPIPE is blocked
  // before any thread starts (every thread inherits it). Spawned children get an empty mask.
  sigset_t pipe;
  sigemptyset(&pipe);
  sigaddset(&pipe, SIGPIPE);
  (void)os->sigprocmask(SIG_BLOCK, &pipe, nullptr);

  snow::StaticContext::Options contextOptions;
  contextOptions.name = "main";
  contextOptions.logger = logger;
  snow::StaticContext context(std::move(contextOptions));
  snow::Dispatcher& loop = context.loop();
  snow::Daemon daemon(context, options.daemon);
  int exitCode = 0;

  if (options.checkConfig) {
    snow::Future<void> checked = daemon.check();
    loop.runUntil([&] { return checked.isReady(); }, std::chrono::hours(1));
    if (checked.hasError()) {
      logger->error("configuration refused: {}", snow::describe(checked.error()));
      return 1;
    }
    logger->info("configuration OK: {} module(s) verified", daemon.moduleNames().size());
    return 0;
  }

  logger->info("snow-core {} starting: pid {}, event id origin {:016x}", SNOW_VERSION,
               os->getpid().value, context.origin());
  bool stopping = false;
  auto stop = [&](const char* why) {
    if (stopping) {
      return;
    }
    stopping = true;
    logger->info("{}: stopping", why);
    daemon.stop().finally([&] { loop.exit(); }).detach();
  };
  snow::SignalEventPtr onTerm = loop.listenForSignal(SIGTERM, [&] { stop("SIGTERM received"); });
  snow::SignalEventPtr onInt = loop.listenForSignal(SIGINT, [&] { stop("SIGINT received"); });
  snow::SignalEventPtr onHup = loop.listenForSignal(SIGHUP, [&] {
    daemon.reload()
        .recover([&](const std::exception_ptr& error) {
          logger->error("reload refused, the previous configuration keeps serving: {}",
                        snow::describe(error));
        })
        .detach();
  });

  daemon.start()
      .recover([&](const std::exception_ptr& error) {
        logger->critical("cannot start: {}", snow::describe(error));
        exitCode = 1;
        stopping = true;
        daemon.stop().finally([&] { loop.exit(); }).detach();
      })
      .detach();
  loop.run(snow::RunMode::UntilExit);
  logger->info("stopped");
  return exitCode;
}

struct KeygenOptions {
  std::string keyDirectory;
  std::string configFile;
  bool force = false;
};

// `snow-core keygen`: the node id on stdout (for scripts), what was written on stderr.
int keygen(const KeygenOptions& options) {
  snow::posix::PosixPtr os = snow::posix::makeDefaultPosix();
  snow::posix::ScopedInjector osInstalled(*os);
  std::string directory = options.keyDirectory;
  if (directory.empty()) {
    directory = snow::configuredKeyDirectory(*os, options.configFile);
    if (directory.empty()) {
      std::fprintf(stderr,
                   "snow-core keygen: no key directory: give --key-dir DIR, or --config FILE "
                   "whose daemon.key_directory is set\n");
      return 2;
    }
  }
  const snow::NodeIdentity identity = snow::NodeIdentity::generate(*os);
  identity.save(*os, directory, options.force);
  std::fprintf(stderr, "snow-core keygen: wrote %s/node.key (secret) and %s/node.pub\n",
               directory.c_str(), directory.c_str());
  std::printf("%s\n", identity.nodeId().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  CLI::App app{"snow-core: an event-driven microkernel daemon with plugin modules"};
  app.set_version_flag("--version", std::string("snow-core ") + SNOW_VERSION);
  app.add_option("--modules", options.daemon.modulesDirectory,
                 "directory of plugins (*.so) to load")
      ->check(CLI::ExistingDirectory);
  app.add_option("--config", options.daemon.configFile,
                 "configuration file (YAML); without it, the built-in default")
      ->check(CLI::ExistingFile);
  app.add_flag("--check-config", options.checkConfig,
               "load the plugins and the configuration, verify it, and exit 0 (valid) or 1");
  app.add_option("--log-level", options.logLevel,
                 "trace, debug, info, warning, error, critical or off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warning", "error", "critical", "off"}))
      ->capture_default_str();
  app.add_option("--log-format", options.logFormat, "text or json")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
  app.add_flag("--trace-syscalls", options.traceSyscalls,
               "log every system call at trace level (slow; for debugging)");
  KeygenOptions keygenOptions;
  CLI::App* keygenCommand =
      app.add_subcommand("keygen", "make this node's key pair (Ed25519) and print its node id");
  keygenCommand->add_option(
      "--key-dir", keygenOptions.keyDirectory,
      "where to write node.key and node.pub (default: daemon.key_directory of "
      "--config)");
  keygenCommand->add_option("--config", keygenOptions.configFile, "configuration file (YAML)")
      ->check(CLI::ExistingFile);
  keygenCommand->add_flag("--force", keygenOptions.force,
                          "replace an existing key: the node gets a new id, and peers that "
                          "pinned the old one refuse it");
  CLI11_PARSE(app, argc, argv);
  try {
    if (keygenCommand->parsed()) {
      return keygen(keygenOptions);
    }
    return run(options);
  } catch (const std::exception& e) {
    if (keygenCommand->parsed()) {
      std::fprintf(stderr, "snow-core keygen: %s\n", e.what());
      return 1;
    }
    spdlog::critical("snow-core failed: {}", e.what());
    return 1;
  }
}
