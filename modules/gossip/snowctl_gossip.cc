// snowctl's gossip commands (docs/gossip.md):
//
//   snowctl gossip members              every member this node knows, its views
//   snowctl gossip publish TOPIC [DATA] one message to every live member (--size, --count, --rate)
//   snowctl gossip stats                counters: messages, duplicates, bytes, views
//   snowctl gossip received             the last deliveries with their times (the test network)

#include <cstdio>
#include <thread>

#include <fmt/format.h>

#include "snow/gossip/v1/gossip.pb.h"

#include "snowctl.h"

namespace snowctl {
namespace {

namespace gv = snow::gossip::v1;

struct GossipOptions {
  std::string topic;
  std::string data;
  size_t size = 0;
  unsigned count = 1;
  double rate = 10;
  std::string receivedTopic;
};

GossipOptions& options() {
  static GossipOptions o;
  return o;
}

std::string method(const char* name) {
  return fmt::format("/snow.gossip.v1.Gossip/{}", name);
}

int members(Ctl& ctl) {
  auto reply = ctl.call<gv::MembersRequest, gv::Members>(method("ListMembers"), {},
                                                         "cannot list the gossip members");
  if (!reply) {
    return 1;
  }
  if (ctl.options().json) {
    fmt::print("{}\n", toJson(*reply));
    return 0;
  }
  auto in = [](const auto& list, const std::string& id) {
    return std::find(list.begin(), list.end(), id) != list.end();
  };
  fmt::print("{:<32}  {:<7}  {:<21}  {:>9}  {:<7}  {}\n", "NODE", "STATUS", "ADDRESS", "SINCE",
             "VIEW", "METADATA");
  for (const auto& m : reply->members()) {
    std::string view = m.node_id() == reply->node_id() ? "self"
                       : in(reply->active(), m.node_id())
                           ? (in(reply->eager(), m.node_id()) ? "active" : "lazy")
                       : in(reply->passive(), m.node_id()) ? "passive"
                                                           : "-";
    std::vector<std::string> meta;
    for (const auto& [key, value] : m.metadata()) {
      meta.push_back(fmt::format("{}={}", key, value));
    }
    std::sort(meta.begin(), meta.end());
    std::string status = gv::Member::Status_Name(m.status());
    std::transform(status.begin(), status.end(), status.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    fmt::print("{:<32}  {:<7}  {:<21}  {:>9}  {:<7}  {}\n", m.node_id(), status, m.address(),
               age(m.since()), view, fmt::join(meta, ","));
  }
  return 0;
}

int publish(Ctl& ctl) {
  const GossipOptions& o = options();
  gv::PublishRequest request;
  request.set_topic(o.topic);
  if (o.size > 0) {
    std::string payload = o.data;
    payload.resize(o.size, '.');
    request.set_payload(std::move(payload));
  } else {
    request.set_payload(o.data);
  }
  // Open loop: message i goes at start + i / rate, whenever the one before was answered; a slow
  // answer does not slow the schedule down (it only makes the next message go at once).
  const auto start = std::chrono::steady_clock::now();
  const auto period = std::chrono::duration<double>(1.0 / o.rate);
  for (unsigned i = 0; i < o.count; ++i) {
    const auto due =
        start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(period * i);
    // A timer wakes the loop at the due time: runUntil only looks at its condition when the
    // loop wakes.
    const auto wait =
        std::chrono::duration_cast<snow::Duration>(due - std::chrono::steady_clock::now());
    if (wait > snow::Duration::zero()) {
      bool fired = false;
      auto timer = ctl.loop().createTimer([&fired] { fired = true; });
      timer->enable(wait);
      ctl.loop().runUntil([&fired] { return fired; }, wait + std::chrono::seconds(1));
    }
    auto reply =
        ctl.call<gv::PublishRequest, gv::Published>(method("Publish"), request, "cannot publish");
    if (!reply) {
      return 1;
    }
    if (ctl.options().json) {
      fmt::print("{}\n", toJson(*reply));
    } else {
      fmt::print("{}\n", reply->id());
    }
    std::fflush(stdout);
  }
  return 0;
}

int stats(Ctl& ctl) {
  auto reply = ctl.call<gv::StatsRequest, gv::Stats>(method("GetStats"), {},
                                                     "cannot read the gossip counters");
  if (!reply) {
    return 1;
  }
  if (ctl.options().json) {
    fmt::print("{}\n", toJson(*reply));
    return 0;
  }
  const auto& s = *reply;
  fmt::print("node {} ({} mode), counting for {}\n", s.node_id(), s.mode(), age(s.since()));
  fmt::print("members      {} alive, {} suspect, {} dead; active view {}, passive view {}\n",
             s.alive(), s.suspect(), s.dead(), s.active(), s.passive());
  fmt::print("messages     {} published, {} delivered\n", s.published(), s.delivered());
  fmt::print("payloads     {} received ({} duplicates), {} sent; {} bytes in, {} bytes out\n",
             s.received(), s.duplicates(), s.sent(), s.bytes_in(), s.bytes_out());
  fmt::print(
      "tree         {} ihave sent, {} received; {} grafts sent, {} received; "
      "{} prunes sent, {} received\n",
      s.ihave_sent(), s.ihave_received(), s.grafts_sent(), s.grafts_received(), s.prunes_sent(),
      s.prunes_received());
  fmt::print("membership   {} digests sent, {} received; {} whole tables sent\n", s.syncs_sent(),
             s.syncs_received(), s.states_sent());
  fmt::print("memory       {} ids seen, {} payloads cached; {} messages refused\n", s.seen(),
             s.cached(), s.refused());
  return 0;
}

int received(Ctl& ctl) {
  gv::ReceivedRequest request;
  request.set_topic(options().receivedTopic);
  auto reply = ctl.call<gv::ReceivedRequest, gv::Received>(method("ListReceived"), request,
                                                           "cannot list the deliveries");
  if (!reply) {
    return 1;
  }
  if (ctl.options().json) {
    fmt::print("{}\n", toJson(*reply));
    return 0;
  }
  fmt::print("{:<52}  {:<16}  {:>7}  {:>4}  {:>10}\n", "MESSAGE", "TOPIC", "BYTES", "HOPS",
             "LATENCY");
  for (const auto& d : reply->deliveries()) {
    fmt::print("{:<52}  {:<16}  {:>7}  {:>4}  {:>7.2f} ms\n", d.id(), d.topic(), d.bytes(),
               d.hops(),
               static_cast<double>(d.received_unix_nanos() - d.published_unix_nanos()) / 1e6);
  }
  if (reply->forgotten() > 0) {
    fmt::print("({} older deliveries forgotten)\n", reply->forgotten());
  }
  return 0;
}

void addCommands(CLI::App& app, std::vector<Command>& commands) {
  GossipOptions& o = options();
  CLI::App* gossip = app.add_subcommand("gossip", "the gossip module: members, publish, stats");
  gossip->require_subcommand(1);
  commands.push_back({gossip->add_subcommand("members", "every member this node knows"), members});
  CLI::App* pub = gossip->add_subcommand("publish", "one message (or --count) to every member");
  pub->add_option("topic", o.topic, "the topic ([A-Za-z0-9._/-])")->required();
  pub->add_option("data", o.data, "the payload (text)");
  pub->add_option("--size", o.size, "pad (or cut) the payload to this many bytes");
  pub->add_option("--count", o.count, "how many messages")->check(CLI::Range(1U, 10000000U));
  pub->add_option("--rate", o.rate, "messages a second, open loop (with --count)")
      ->check(CLI::Range(0.001, 1e6));
  commands.push_back({pub, publish});
  commands.push_back({gossip->add_subcommand("stats", "counters: messages, bytes, views"), stats});
  CLI::App* recv = gossip->add_subcommand("received", "the last deliveries and their latency");
  recv->add_option("--topic", o.receivedTopic, "only this topic");
  commands.push_back({recv, received});
}

SNOWCTL_COMMANDS(addCommands);  // NOLINT(cert-err58-cpp): at start-up, as CLI11's statics.

}  // namespace
}  // namespace snowctl
