// snowctl's portal command (docs/portal.md):
//
//   snowctl peers     this node's id, its listening address and every portal connection

#include <cstdio>

#include <fmt/format.h>

#include "snow/portal/v1/portal.pb.h"

#include "snowctl.h"

namespace snowctl {
namespace {

namespace pv = snow::portal::v1;

int peers(Ctl& ctl) {
  auto reply = ctl.call<pv::PeersRequest, pv::Peers>("/snow.portal.v1.Portal/ListPeers", {},
                                                     "cannot list the portal's peers");
  if (!reply) {
    return 1;
  }
  if (ctl.options().json) {
    fmt::print("{}\n", toJson(*reply));
    return 0;
  }
  fmt::print("node {}, listening on {}, {} connection(s) refused since start\n", reply->node_id(),
             reply->listen().empty() ? "(nothing)" : reply->listen(), reply->refused());
  fmt::print("{:<32}  {:<3}  {:<11}  {:<21}  {:>9}  {:>8}  {:>8}  {:>8}\n", "NODE", "DIR", "STATE",
             "ADDRESS", "SINCE", "MSGS IN", "MSGS OUT", "QUEUED");
  for (const auto& p : reply->peers()) {
    fmt::print("{:<32}  {:<3}  {:<11}  {:<21}  {:>9}  {:>8}  {:>8}  {:>8}\n",
               p.node_id().empty() ? "-" : p.node_id(), p.outbound() ? "out" : "in", p.state(),
               p.address(), age(p.since()), p.messages_in(), p.messages_out(), p.queued_bytes());
  }
  if (reply->peers().empty()) {
    fmt::print("(no connections: configure modules.portal.peers, or connect to {})\n",
               reply->listen().empty() ? "a listening portal" : reply->listen());
  }
  return 0;
}

void addCommands(CLI::App& app, std::vector<Command>& commands) {
  commands.push_back(
      {app.add_subcommand("peers", "the portal's connections: node ids, addresses, traffic"),
       peers});
}

SNOWCTL_COMMANDS(addCommands);  // NOLINT(cert-err58-cpp): at start-up, as CLI11's statics.

}  // namespace
}  // namespace snowctl
