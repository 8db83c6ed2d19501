// snowctl's spawner commands (docs/spawner.md):
//
//   snowctl ps
//   snowctl start|stop|restart|remove NAME
//   snowctl logs NAME [-n LINES] [-f]
//   snowctl submit NAME [--restart POLICY] [--env K=V]... [--cwd DIR] [--user U] [--socket ADDR]...
//                  -- COMMAND [ARGS...]

#include <cstdio>

#include <fmt/format.h>

#include "snow/spawner/v1/spawner.pb.h"

#include "snowctl.h"

namespace snowctl {
namespace {

namespace sp = snow::spawner::v1;
using google::protobuf::util::TimeUtil;

constexpr std::string_view kMethod = "/snow.spawner.v1.Spawner/";

std::string method(std::string_view name) {
  return std::string(kMethod) + std::string(name);
}

// Stopping waits for the service's stop_timeout (10 s by default) and then its SIGKILL.
constexpr std::chrono::minutes kStopDeadline{5};

std::string stateName(sp::ServiceStatus::State state) {
  std::string name = sp::ServiceStatus::State_Name(state);
  for (auto& c : name) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return name;
}

std::string since(const google::protobuf::Timestamp& t) {
  const int64_t ns = TimeUtil::TimestampToNanoseconds(TimeUtil::GetCurrentTime()) -
                     TimeUtil::TimestampToNanoseconds(t);
  return human(TimeUtil::NanosecondsToDuration(std::max<int64_t>(ns, 0)));
}

// "web: running, pid 4242" and the details that matter in this state.
std::string summary(const sp::ServiceStatus& s) {
  std::string out = fmt::format("{}: {}", s.name(), stateName(s.state()));
  if (s.pid() != 0) {
    out += fmt::format(", pid {}", s.pid());
  }
  if (!s.last_exit().empty()) {
    out += fmt::format(", last {}", s.last_exit());
  }
  if (!s.last_error().empty()) {
    out += fmt::format(", last error: {}", s.last_error());
  }
  if (s.has_next_restart_in()) {
    out += fmt::format(", restarts in {}", human(s.next_restart_in()));
  }
  return out;
}

struct SpawnerOptions {
  std::string name;
  unsigned lines = 20;
  bool follow = false;
  std::string restart = "always";
  std::vector<std::string> env;
  std::string cwd;
  std::string user;
  std::vector<std::string> sockets;
  std::vector<std::string> command;
};

SpawnerOptions& options() {
  static SpawnerOptions o;
  return o;
}

int printStatus(Ctl& ctl, const std::shared_ptr<const sp::ServiceStatus>& status) {
  if (!status) {
    return 1;
  }
  fmt::print("{}\n", ctl.options().json ? toJson(*status) : summary(*status));
  return 0;
}

int ps(Ctl& ctl) {
  auto reply =
      ctl.call<sp::ListRequest, sp::ListReply>(method("List"), {}, "cannot list the services");
  if (!reply) {
    return 1;
  }
  if (ctl.options().json) {
    fmt::print("{}\n", toJson(*reply));
    return 0;
  }
  size_t width = 4;
  for (const auto& s : reply->services()) {
    width = std::max(width, s.name().size());
  }
  fmt::print("{:<{}}  {:<8}  {:>7}  {:>10}  {:>8}  {:<22}  {}\n", "NAME", width, "STATE", "PID",
             "SINCE", "RESTARTS", "LAST EXIT", "COMMAND");
  for (const auto& s : reply->services()) {
    fmt::print("{:<{}}  {:<8}  {:>7}  {:>10}  {:>8}  {:<22}  {}\n", s.name(), width,
               stateName(s.state()), s.pid() == 0 ? "-" : std::to_string(s.pid()), since(s.since()),
               s.restarts(), s.last_exit().empty() ? "-" : s.last_exit(), s.command());
  }
  if (reply->services().empty()) {
    fmt::print("(no services: declare them under modules.spawner.services, or snowctl submit)\n");
  }
  return 0;
}

int byName(Ctl& ctl, std::string_view verb, const char* what, bool waits) {
  if (verb == "Stop") {
    if (const SharedVerb* other = claimOf("stop", options().name)) {
      return other->run(ctl, options().name, false);  // A container job, not a service.
    }
  }
  sp::ServiceRequest request;
  request.set_name(options().name);
  return printStatus(ctl, ctl.call<sp::ServiceRequest, sp::ServiceStatus>(
                              method(verb), request, what,
                              waits ? snow::Duration(kStopDeadline) : snow::Duration{}));
}

int logs(Ctl& ctl) {
  if (const SharedVerb* other = claimOf("logs", options().name)) {
    return other->run(ctl, options().name, options().follow);  // A container job's output.
  }
  sp::LogsRequest request;
  request.set_name(options().name);
  request.set_lines(options().lines);
  request.set_follow(options().follow);
  snow::rpc::CallOptions callOptions;
  callOptions.timeout = options().follow ? snow::Duration(0) : ctl.timeout();
  const bool json = ctl.options().json;
  snow::Future<void> done = ctl.client().stream(
      ctl.options().node, method("Logs"), request, sp::LogLine::default_instance(),
      [json](const snow::MessagePtr& message) {
        const auto& line = static_cast<const sp::LogLine&>(*message);
        if (json) {
          fmt::print("{}\n", toJson(line));
          std::fflush(stdout);
          return;
        }
        if (line.dropped_before() != 0) {
          fmt::print(stderr, "({} lines dropped: this reader was too slow)\n",
                     line.dropped_before());
        }
        // As `docker logs` does: the child's stderr lines to our stderr.
        std::FILE* out = line.stream() == sp::LogLine::STDERR ? stderr : stdout;
        fmt::print(out, "{}\n", line.text());
        std::fflush(out);
      },
      callOptions);
  return ctl.runStream(done, "cannot read the logs");
}

int submit(Ctl& ctl) {
  const SpawnerOptions& o = options();
  sp::SubmitRequest request;
  request.set_name(o.name);
  auto& spec = *request.mutable_spec();
  spec.set_command(o.command.front());
  for (size_t i = 1; i < o.command.size(); ++i) {
    spec.add_args(o.command[i]);
  }
  sp::ServiceSpec::Restart restart{};
  std::string policy = o.restart;
  for (auto& c : policy) {
    c = c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  }
  if (!sp::ServiceSpec::Restart_Parse(policy, &restart)) {
    fmt::print(stderr, "snowctl: --restart: '{}' is not always, on-failure or never\n", o.restart);
    return 2;
  }
  spec.set_restart(restart);
  for (const auto& pair : o.env) {
    const size_t equals = pair.find('=');
    if (equals == std::string::npos || equals == 0) {
      fmt::print(stderr, "snowctl: --env: '{}' is not NAME=value\n", pair);
      return 2;
    }
    (*spec.mutable_env())[pair.substr(0, equals)] = pair.substr(equals + 1);
  }
  spec.set_working_directory(o.cwd);
  spec.set_user(o.user);
  for (const auto& address : o.sockets) {
    spec.add_sockets()->set_address(address);
  }
  return printStatus(ctl, ctl.call<sp::SubmitRequest, sp::ServiceStatus>(
                              method("Submit"), request, "cannot submit the service"));
}

void addCommands(CLI::App& app, std::vector<Command>& commands) {
  SpawnerOptions& o = options();
  auto named = [&](const char* verb, const char* help) {
    CLI::App* sub = app.add_subcommand(verb, help);
    // `stop` and `logs` also take a container job id (snowctl.h, SharedVerb).
    sub->add_option("name", o.name, "the service")->required();
    return sub;
  };
  commands.push_back({app.add_subcommand("ps", "the spawner's services and their state"), ps});
  commands.push_back({named("start", "start a stopped service"),
                      [](Ctl& ctl) { return byName(ctl, "Start", "cannot start", false); }});
  commands.push_back({named("stop", "stop a service (its stop signal, then SIGKILL), or a job"),
                      [](Ctl& ctl) { return byName(ctl, "Stop", "cannot stop", true); }});
  commands.push_back({named("restart", "stop a service, then start it"),
                      [](Ctl& ctl) { return byName(ctl, "Restart", "cannot restart", true); }});
  commands.push_back({named("remove", "stop and forget a submitted service"),
                      [](Ctl& ctl) { return byName(ctl, "Remove", "cannot remove", true); }});
  CLI::App* logsCommand =
      named("logs", "a service's last output lines, or a job's output; new ones with -f");
  logsCommand->add_option("-n,--lines", o.lines, "how many of the last lines first")
      ->capture_default_str();
  logsCommand->add_flag("-f,--follow", o.follow, "keep printing new lines until interrupted");
  commands.push_back({logsCommand, logs});
  CLI::App* submitCommand =
      named("submit", "run a new service until removed: submit NAME [options] -- COMMAND ARGS...");
  submitCommand->add_option("--restart", o.restart, "always, on-failure or never")
      ->capture_default_str();
  submitCommand->add_option("--env", o.env, "NAME=value (repeatable)");
  submitCommand->add_option("--cwd", o.cwd, "working directory (default /)");
  submitCommand->add_option("--user", o.user, "run as this user");
  submitCommand->add_option("--socket", o.sockets,
                            "a listening socket to pass (LISTEN_FDS), e.g. 127.0.0.1:8080");
  submitCommand->add_option("command", o.command, "the program and its arguments")
      ->required()
      ->expected(1, -1);
  commands.push_back({submitCommand, submit});
}

SNOWCTL_COMMANDS(addCommands);  // NOLINT(cert-err58-cpp): at start-up, as CLI11's statics.

}  // namespace
}  // namespace snowctl
