// snowctl: the control CLI of snow-core, on the node's RPC services (docs/rpc.md).
//
//   snowctl [--node ADDR] [--json] status | modules | ping | events [--follow] | reload
//   and the modules' commands (snowctl_<module>.cc): ps | start | stop | restart | logs | ...
//
// Output is for people by default and JSON with --json (one object per line for streams). On
// failure it prints one line, "snowctl: <what failed>: <why>", and exits 1; usage errors exit 2.

#include "snowctl.h"

#include <csignal>
#include <cstdio>
#include <iostream>

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/time_util.h>

#include <CLI/CLI.hpp>

#include "snow/core/dispatcher.h"
#include "snow/posix/active.h"
#include "snow/rpc/client.h"
#include "snow/rpc/node.h"
#include "snow/rpc/v1/node.pb.h"

namespace snowctl {

namespace pb = snow::rpc::v1;

std::vector<CommandSet>& commandSets() {
  static std::vector<CommandSet> sets;
  return sets;
}

std::vector<SharedVerb>& sharedVerbs() {
  static std::vector<SharedVerb> verbs;
  return verbs;
}

const SharedVerb* claimOf(std::string_view verb, const std::string& argument) {
  for (const auto& shared : sharedVerbs()) {
    if (shared.verb == verb && shared.claims(argument)) {
      return &shared;
    }
  }
  return nullptr;
}

int Ctl::runStream(snow::Future<void>& done, const char* what) {
  bool interrupted = false;
  snow::SignalEventPtr onInt = loop_->listenForSignal(SIGINT, [&] {
    interrupted = true;
    done.cancel();
  });
  snow::SignalEventPtr onTerm = loop_->listenForSignal(SIGTERM, [&] {
    interrupted = true;
    done.cancel();
  });
  loop_->runUntil([&] { return done.isReady(); }, std::chrono::hours(24 * 365));
  if (done.hasError() && !interrupted) {
    fail(what, snow::describe(done.error()));
    return 1;
  }
  return 0;
}

int Ctl::status() {
  auto status = call<pb::GetStatusRequest, pb::NodeStatus>(snow::rpc::kGetStatus, {},
                                                           "cannot get the node's status");
  if (!status) {
    return 1;
  }
  if (options_.json) {
    fmt::print("{}\n", toJson(*status));
    return 0;
  }
  fmt::print("node       {}\n", status->node_id());
  fmt::print("version    {} (pid {})\n", status->version(), status->pid());
  fmt::print("uptime     {} (since {})\n", human(status->uptime()), clock(status->started()));
  fmt::print("config     generation {} from {}\n", status->generation(), status->config_source());
  fmt::print("modules    {}\n", status->modules());
  fmt::print("events     {} live, {} dispatches deduplicated\n", status->live_events(),
             status->dispatch_deduplicated());
  fmt::print("listening  {}\n", fmt::join(status->listening(), ", "));
  const auto& tracing = status->tracing();
  fmt::print("tracing    {}\n", tracing.tracer().empty() ? "off" : tracing.tracer());
  if (tracing.own()) {
    fmt::print(
        "           {} spans exported, {} queued, {} dropped (queue full), {} refused by the "
        "collector, {} failed export attempts{}\n",
        tracing.exported(), tracing.queued(), tracing.dropped(), tracing.rejected(),
        tracing.failed_exports(),
        tracing.last_error().empty() ? "" : " (last: " + tracing.last_error() + ")");
  }
  if (status->peers().empty()) {
    fmt::print("peers      none monitored\n");
  }
  for (int i = 0; i < status->peers_size(); ++i) {
    const auto& peer = status->peers(i);
    std::string detail;
    if (peer.health() == pb::PeerStatus::UP) {
      detail = fmt::format("round trip {}", millis(peer.round_trip()));
    } else if (!peer.last_error().empty()) {
      detail = peer.last_error();
    }
    fmt::print("{}{} {}{}{}\n", i == 0 ? "peers      " : "           ", peer.address(),
               healthName(peer.health()),
               peer.has_since() ? " since " + clock(peer.since()) : std::string(),
               detail.empty() ? "" : " (" + detail + ")");
  }
  return 0;
}

int Ctl::modules() {
  auto reply = call<pb::ListModulesRequest, pb::ListModulesReply>(snow::rpc::kListModules, {},
                                                                  "cannot list the modules");
  if (!reply) {
    return 1;
  }
  if (options_.json) {
    fmt::print("{}\n", toJson(*reply));
    return 0;
  }
  size_t nameWidth = 4;
  size_t versionWidth = 7;
  for (const auto& m : reply->modules()) {
    nameWidth = std::max(nameWidth, m.name().size());
    versionWidth = std::max(versionWidth, m.version().size());
  }
  fmt::print("{:<{}}  {:<{}}  {}\n", "NAME", nameWidth, "VERSION", versionWidth, "ORIGIN");
  for (const auto& m : reply->modules()) {
    fmt::print("{:<{}}  {:<{}}  {}\n", m.name(), nameWidth, m.version(), versionWidth, m.origin());
  }
  return 0;
}

int Ctl::ping() {
  int failures = 0;
  for (int i = 0; i < options_.pingCount; ++i) {
    const snow::MonotonicTime sent = loop_->now();
    auto reply = call<pb::PingRequest, pb::PingReply>(snow::rpc::kPing, {}, "ping failed");
    if (!reply) {
      ++failures;
      continue;
    }
    const double ms = std::chrono::duration<double, std::milli>(loop_->now() - sent).count();
    if (options_.json) {
      fmt::print("{{\"node_id\":\"{}\",\"address\":\"{}\",\"round_trip_ms\":{:.3f}}}\n",
                 reply->node_id(), options_.node, ms);
    } else {
      fmt::print("reply from {} ({}): time={:.2f} ms\n", reply->node_id(), options_.node, ms);
    }
  }
  return failures == 0 ? 0 : 1;
}

int Ctl::events() {
  pb::WatchRequest request;
  request.set_recent(options_.recent);
  request.set_follow(options_.follow);
  for (const auto& type : options_.types) {
    request.add_type_prefixes(type);
  }
  snow::rpc::CallOptions callOptions;
  callOptions.timeout = options_.follow ? snow::Duration(0) : timeout();
  const bool json = options_.json;
  snow::Future<void> done = client_.stream(
      options_.node, snow::rpc::kWatch, request, pb::EventRecord::default_instance(),
      [json, node = options_.node](const snow::MessagePtr& message) {
        const auto& record = static_cast<const pb::EventRecord&>(*message);
        if (record.phase() == pb::EventRecord::LIVE) {
          // On stderr so that the records on stdout stay one format; scripts wait for this line
          // to know that nothing raised from now on can be missed.
          fmt::print(stderr, "following events on {}; Ctrl-C to stop\n", node);
          std::fflush(stderr);
          return;
        }
        if (json) {
          fmt::print("{}\n", toJson(record));
        } else {
          std::string detail;
          if (record.phase() == pb::EventRecord::RAISED && !record.payload_json().empty()) {
            detail = " " + record.payload_json();
          } else if (record.phase() == pb::EventRecord::FAILED) {
            detail = " error: " + record.error();
          }
          if (record.has_duration()) {
            detail += " in " + millis(record.duration());
          }
          if (record.dropped_before() != 0) {
            fmt::print("({} events dropped: this watcher read too slowly)\n",
                       record.dropped_before());
          }
          fmt::print("{} {:<9} {}({}){}{}\n", clock(record.time()),
                     pb::EventRecord::Phase_Name(record.phase()), record.type(), record.event_id(),
                     record.parent_event_id().empty() ? "" : " parent " + record.parent_event_id(),
                     detail);
        }
        std::fflush(stdout);
      },
      callOptions);
  return runStream(done, "cannot watch events");
}

int Ctl::reload() {
  auto reply = call<pb::ReloadRequest, pb::ReloadReply>(snow::rpc::kReload, {}, "reload failed");
  if (!reply) {
    return 1;
  }
  if (options_.json) {
    fmt::print("{}\n", toJson(*reply));
  } else {
    fmt::print("reloaded: configuration generation {} is current\n", reply->generation());
  }
  return 0;
}

}  // namespace snowctl

int main(int argc, char** argv) {
  using snowctl::Ctl;
  using snowctl::Options;
  snow::posix::PosixPtr os = snow::posix::makeDefaultPosix(false);
  snow::posix::ScopedInjector installed(*os);
  Options options;
  options.node = "unix:" + snow::rpc::defaultSocketPath(*os);
  if (const char* env = os->getenv("SNOWCTL_NODE").value; env != nullptr && *env != '\0') {
    options.node = env;
  }

  CLI::App app{"snowctl: control a snow-core node through its RPC services"};
  app.set_version_flag("--version", std::string("snowctl ") + SNOW_VERSION);
  app.require_subcommand(1);
  app.add_option("--node", options.node,
                 "the node: unix:/path/to/rpc.sock or host:port (default: $SNOWCTL_NODE, else "
                 "the local daemon's socket)")
      ->capture_default_str();
  app.add_flag("--json", options.json, "print JSON instead of text");
  // Ranges with readable bounds: CLI::PositiveNumber prints the largest double in its error.
  app.add_option("--timeout", options.timeoutSeconds, "seconds to wait for an answer")
      ->capture_default_str()
      ->check(CLI::Range(0.001, 86400.0));
  app.add_option("--tls-ca", options.tlsCa, "CA bundle (PEM) to verify a TCP node with TLS");
  app.add_option("--tls-cert", options.tlsCert, "client certificate (PEM) for mutual TLS");
  app.add_option("--tls-key", options.tlsKey, "client key (PEM) for mutual TLS");
  app.add_option("--tls-server-name", options.tlsServerName,
                 "name to check the node's certificate against");

  auto* status = app.add_subcommand("status", "the node's id, uptime, configuration and peers");
  auto* modules = app.add_subcommand("modules", "the modules the node runs");
  auto* ping = app.add_subcommand("ping", "round trips to the node");
  ping->add_option("-c,--count", options.pingCount, "how many pings")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000000));
  auto* events = app.add_subcommand("events", "recent events, and new ones with --follow");
  events->add_flag("-f,--follow", options.follow, "keep printing new events until interrupted");
  events->add_option("--recent", options.recent, "how many recent events to show first (max 256)")
      ->capture_default_str();
  events->add_option("--type", options.types, "only event types starting with this (repeatable)");
  auto* reload = app.add_subcommand("reload", "read the configuration again (as SIGHUP does)");
  std::vector<snowctl::Command> moduleCommands;
  for (const auto& set : snowctl::commandSets()) {
    set(app, moduleCommands);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; every usage error exits 2 (CLI11's own codes vary by kind).
    return app.exit(e) == 0 ? 0 : 2;
  }

  try {
    Ctl ctl(options);
    if (status->parsed()) {
      return ctl.status();
    }
    if (modules->parsed()) {
      return ctl.modules();
    }
    if (ping->parsed()) {
      return ctl.ping();
    }
    if (events->parsed()) {
      return ctl.events();
    }
    if (reload->parsed()) {
      return ctl.reload();
    }
    for (auto& command : moduleCommands) {
      if (command.subcommand->parsed()) {
        return command.run(ctl);
      }
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "snowctl: {}\n", e.what());
    return 1;
  }
  return 2;
}
