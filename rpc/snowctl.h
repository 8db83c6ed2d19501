#pragma once

// What snowctl's commands share: the options, the output helpers and the client (Ctl). Each
// module that brings commands adds them from its own snowctl_<module>.cc through
// SNOWCTL_COMMANDS, so that snowctl.cc knows nothing of the modules.
//
// Thread: snowctl's one thread. Errors: commands print one line ("snowctl: <what>: <why>") and
// return 1; usage errors are CLI11's and exit 2.

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <google/protobuf/duration.pb.h>
#include <google/protobuf/timestamp.pb.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/time_util.h>

#include <CLI/CLI.hpp>

#include "snow/core/dispatcher.h"
#include "snow/rpc/client.h"
#include "snow/rpc/v1/node.pb.h"

namespace snowctl {

struct Options {
  std::string node;
  bool json = false;
  double timeoutSeconds = 5;
  std::string tlsCa, tlsCert, tlsKey, tlsServerName;
  int pingCount = 1;
  bool follow = false;
  unsigned recent = 20;
  std::vector<std::string> types;
};

inline std::string toJson(const google::protobuf::Message& message) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

inline std::string human(const google::protobuf::Duration& d) {
  const int64_t total = d.seconds();
  if (total >= 86400) {
    return fmt::format("{}d {}h {}m", total / 86400, total % 86400 / 3600, total % 3600 / 60);
  }
  if (total >= 3600) {
    return fmt::format("{}h {}m {}s", total / 3600, total % 3600 / 60, total % 60);
  }
  if (total >= 60) {
    return fmt::format("{}m {}s", total / 60, total % 60);
  }
  return fmt::format(
      "{:.3g}s",
      static_cast<double>(google::protobuf::util::TimeUtil::DurationToNanoseconds(d)) / 1e9);
}

// How long ago `t` was, as human() says it.
inline std::string age(const google::protobuf::Timestamp& t) {
  using google::protobuf::util::TimeUtil;
  const int64_t ns = TimeUtil::TimestampToNanoseconds(TimeUtil::GetCurrentTime()) -
                     TimeUtil::TimestampToNanoseconds(t);
  return human(TimeUtil::NanosecondsToDuration(std::max<int64_t>(ns, 0)));
}

inline std::string millis(const google::protobuf::Duration& d) {
  return fmt::format(
      "{:.2f} ms",
      static_cast<double>(google::protobuf::util::TimeUtil::DurationToNanoseconds(d)) / 1e6);
}

inline std::string clock(const google::protobuf::Timestamp& t) {
  return google::protobuf::util::TimeUtil::ToString(t);
}

inline std::string_view healthName(snow::rpc::v1::PeerStatus::Health health) {
  switch (health) {
    case snow::rpc::v1::PeerStatus::UP:
      return "up";
    case snow::rpc::v1::PeerStatus::DOWN:
      return "down";
    default:
      return "unknown";
  }
}

class Ctl {
 public:
  explicit Ctl(const Options& options)
      : options_(options),
        loop_(snow::makeDispatcher("snowctl")),
        client_(*loop_, clientOptions()) {}

  int status();
  int modules();
  int ping();
  int events();
  int reload();

  // For the command sets of modules (snowctl_*.cc).
  [[nodiscard]] const Options& options() const noexcept { return options_; }
  [[nodiscard]] snow::Dispatcher& loop() noexcept { return *loop_; }
  [[nodiscard]] snow::rpc::Client& client() noexcept { return client_; }

  // Runs the loop until the server stream `done` ends, or until SIGINT/SIGTERM cancel it (then
  // 0, as a person pressing Ctrl-C on a follow expects); 1 with one line on error.
  int runStream(snow::Future<void>& done, const char* what);

  snow::rpc::ClientOptions clientOptions() const {
    snow::rpc::ClientOptions out;
    out.defaultTimeout = timeout();
    out.poolSize = 1;
    if (!options_.tlsCa.empty() || !options_.tlsCert.empty()) {
      out.tls = snow::rpc::TlsFiles{options_.tlsCert, options_.tlsKey, options_.tlsCa, false,
                                    options_.tlsServerName};
    }
    return out;
  }
  snow::Duration timeout() const {
    return std::chrono::duration_cast<snow::Duration>(
        std::chrono::duration<double>(options_.timeoutSeconds));
  }

  // Runs the loop until `future` settles; returns its value or prints the error and returns null.
  template <typename T>
  std::shared_ptr<const T> awaitReply(snow::Future<std::shared_ptr<const T>> future,
                                      const char* what, snow::Duration deadline = {}) {
    const snow::Duration wait = deadline.count() != 0 ? deadline : timeout();
    loop_->runUntil([&] { return future.isReady(); }, wait + std::chrono::seconds(5));
    if (!future.isReady()) {
      fail(what, "no answer (the client's own deadline did not fire)");
      return nullptr;
    }
    if (future.hasError()) {
      fail(what, snow::describe(future.error()));
      return nullptr;
    }
    return future.value();
  }

  void fail(const char* what, const std::string& why) const {
    const bool unreachable = why.find("UNAVAILABLE") != std::string::npos;
    fmt::print(stderr, "snowctl: {}: {}{}\n", what, why,
               unreachable ? " (is snow-core running, and is --node right?)" : "");
  }

  // One attempt: a person at a terminal wants to hear at once that the node is not there.
  // `deadline` replaces --timeout for calls that take as long as they must (stopping a service).
  template <typename Req, typename Resp>
  std::shared_ptr<const Resp> call(std::string_view method, const Req& request, const char* what,
                                   snow::Duration deadline = {}) {
    snow::rpc::CallOptions options;
    options.idempotent = false;
    if (deadline.count() != 0) {
      options.timeout = deadline;
    }
    return awaitReply(client_.call<Resp>(options_.node, method, request, options), what, deadline);
  }

 private:
  const Options& options_;
  snow::DispatcherPtr loop_;
  snow::rpc::Client client_;
};

// A module's commands: `add` declares its subcommands on the app (with their own options) and
// appends, for each, the function that runs it once parsed.
struct Command {
  CLI::App* subcommand;
  std::function<int(Ctl&)> run;
};
using CommandSet = void (*)(CLI::App& app, std::vector<Command>& commands);
std::vector<CommandSet>& commandSets();

// A verb that two modules' commands share (`logs`, `stop`: a spawner's service or a container
// job). The module that declares the verb asks claimOf() first; another module whose `claims`
// recognises the argument (a job id) answers instead. Added from a CommandSet, before parsing.
struct SharedVerb {
  std::string verb;
  std::function<bool(const std::string& argument)> claims;
  std::function<int(Ctl& ctl, const std::string& argument, bool follow)> run;
};
std::vector<SharedVerb>& sharedVerbs();
// The other module's handler of `verb` for `argument`, or nullptr.
const SharedVerb* claimOf(std::string_view verb, const std::string& argument);

struct CommandSetRegistrar {
  explicit CommandSetRegistrar(CommandSet set) { commandSets().push_back(set); }
};

}  // namespace snowctl

#define SNOWCTL_COMMANDS(function)                                         \
  static const ::snowctl::CommandSetRegistrar snowctlCommands_##function { \
    &function                                                              \
  }
