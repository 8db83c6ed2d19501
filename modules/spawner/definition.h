#pragma once

// A service's definition, checked and resolved: what verify() can know before anything runs.
//
// Thread: any (pure functions over the POSIX layer's lookups). Errors: define() throws
// std::invalid_argument naming every problem it found, one per line, each prefixed with the
// configuration path of the field ("services.web.user: no user 'nobodyy'").

#include <cstdint>
#include <string>
#include <vector>

#include <sys/types.h>

#include "snow/core/backoff.h"
#include "snow/core/dispatcher.h"
#include "snow/core/net.h"
#include "snow/posix/posix.h"
#include "snow/spawner/v1/spawner.pb.h"

namespace snow::spawner {

namespace pb = snow::spawner::v1;

struct SocketDefinition {
  net::Address address;
  std::string name;  // LISTEN_FDNAMES entry.
  int backlog = 1024;
  [[nodiscard]] std::string key() const { return "spawner/socket/" + address.toString(); }
};

struct Definition {
  std::string name;
  pb::ServiceSpec spec;  // As given: two definitions are the same when their specs are.

  std::string program;            // The resolved path that is executed.
  std::vector<std::string> argv;  // argv[0] is the command as written.
  std::vector<std::string> env;   // "NAME=value", without the LISTEN_* variables.
  std::string workingDirectory;
  bool setIds = false;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;
  std::vector<posix::SpawnRequest::Limit> limits;
  std::vector<SocketDefinition> sockets;

  pb::ServiceSpec::Restart restart = pb::ServiceSpec::ALWAYS;
  BackoffPolicy backoff;
  Duration resetAfter = std::chrono::seconds(10);
  Duration readyAfter = std::chrono::seconds(1);
  int stopSignal = 15;
  Duration stopTimeout = std::chrono::seconds(10);
  uint32_t maxRestarts = 0;
  uint32_t logLines = 1000;
  bool autostart = true;

  // The command line for people: argv joined, with arguments that need it quoted.
  [[nodiscard]] std::string commandLine() const;
  [[nodiscard]] bool sameSpecAs(const Definition& other) const;
};

// Service names key the configuration, the RPC and the cgroups: [A-Za-z0-9_.@-]{1,64}, not
// starting with a dot.
bool validServiceName(std::string_view name);

// Checks and resolves `spec` for the service `name`. `where` prefixes every problem
// ("modules.spawner.services.web").
Definition define(posix::Posix& os, const std::string& name, const pb::ServiceSpec& spec,
                  uint32_t defaultLogLines, const std::string& where);

}  // namespace snow::spawner
