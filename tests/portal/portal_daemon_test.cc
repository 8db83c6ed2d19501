// The portal in real daemons, reached as users reach it: other daemons (directly and through
// real SOCKS5 proxies), the Python client written from docs/protocol/portal.md alone, snowctl,
// and raw sockets sending what a broken or hostile peer sends.

#include <csignal>
#include <regex>
#include <thread>

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "snow/posix/active.h"

#include "daemon/daemon_process.h"
#include "socks_proxy.h"
#include "support/await.h"
#include "support/files.h"

namespace snow::testing {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
using ::testing::Not;
using json = nlohmann::json;

struct Node {
  std::unique_ptr<DaemonProcess> process;
  std::string name;
  std::string address;  // Where its portal listens.
  std::string id;       // Its node id, as it logged it.
  std::string socket;   // Its RPC socket.
  std::string config;   // Its configuration file.
};

class PortalDaemonTest : public ::testing::Test {
 protected:
  PortalDaemonTest() : os_(posix::makeDefaultPosix()), injected_(*os_) {}

  // Writes NAME's configuration: `portal` is the YAML of modules.portal, indented by 4.
  std::string writeConfig(const std::string& name, const std::string& portal) {
    std::string path = dir_.file(name + ".yaml");
    writeFile(path, fmt::format("daemon:\n  key_directory: {}\nrpc:\n  unix_socket: {}\n"
                                "modules:\n  portal_probe: {{}}\n  portal:\n{}",
                                dir_.file(name + "-keys"), dir_.file(name + ".sock"), portal));
    return path;
  }

  Node start(const std::string& name, const std::string& portal) {
    Node node;
    node.name = name;
    node.config = writeConfig(name, portal);
    node.socket = dir_.file(name + ".sock");
    node.process = std::make_unique<DaemonProcess>(
        *loop_,
        std::vector<std::string>{"--modules", SNOW_PORTAL_TEST_PLUGINS, "--config", node.config},
        std::vector<std::string>{"SNOW_RPC_SOCKET=" + node.socket});
    EXPECT_NE(node.process->waitForLog("ready:"), std::string::npos) << node.process->log();
    static const std::regex listening(R"(portal: listening on (\S+) as node ([0-9a-f]{32}))");
    static const std::regex identity(R"(node id ([0-9a-f]{32}))");
    std::smatch m;
    const std::string& log = node.process->log();
    if (std::regex_search(log, m, listening)) {
      node.address = m[1];
    }
    if (std::regex_search(log, m, identity)) {
      node.id = m[1];
    }
    return node;
  }

  static std::string listen(const std::string& extra = "") {
    return "    listen: 127.0.0.1:0\n" + extra;
  }

  static std::string peer(const Node& to, bool pinned = true) {
    return fmt::format("    peers:\n      - address: {}\n{}", to.address,
                       pinned ? fmt::format("        node_id: {}\n", to.id) : "");
  }

  std::pair<int, std::string> snowctl(const Node& node, std::vector<std::string> args) {
    args.insert(args.begin(), {"--node", "unix:" + node.socket});
    return runProgram(*loop_, SNOW_SNOWCTL, args);
  }

  json peers(const Node& node) {
    auto [code, out] = snowctl(node, {"--json", "peers"});
    EXPECT_EQ(code, 0) << out;
    try {
      return json::parse(out);
    } catch (const std::exception& e) {
      ADD_FAILURE() << e.what() << ": " << out;
      return json::object();
    }
  }

  // The Python client (docs/protocol/portal.md), to completion: {exit code, its JSON lines}.
  std::pair<int, std::string> client(const Node& node, std::vector<std::string> args) {
    args.insert(args.begin(), {SNOW_PORTAL_CLIENT, node.address});
    return runProgram(*loop_, "/usr/bin/env", prepend("python3", args));
  }

  // The Python client, running on beside the test.
  std::unique_ptr<DaemonProcess> clientInBackground(const Node& node,
                                                    std::vector<std::string> args) {
    args.insert(args.begin(), {SNOW_PORTAL_CLIENT, node.address});
    auto process = std::make_unique<DaemonProcess>(*loop_, "/usr/bin/env", prepend("python3", args),
                                                   std::vector<std::string>{});
    EXPECT_NE(process->waitForLog("\"established\""), std::string::npos) << process->log();
    return process;
  }

  static std::vector<std::string> prepend(const std::string& first, std::vector<std::string> rest) {
    rest.insert(rest.begin(), first);
    return rest;
  }

  // A connected blocking TCP socket to `node`'s portal.
  static int rawConnect(const Node& node) {
    const size_t colon = node.address.rfind(':');
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(static_cast<uint16_t>(std::stoi(node.address.substr(colon + 1))));
    inet_pton(AF_INET, node.address.substr(0, colon).c_str(), &to.sin_addr);
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof(to)), 0);
    return fd;
  }

  // Everything the node sends on `fd` until it closes it (5 s at most).
  static std::string readUntilClosed(int fd) {
    timeval timeout{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    std::string all;
    char buffer[4096];
    for (;;) {
      const ssize_t n = ::read(fd, buffer, sizeof(buffer));
      if (n <= 0) {
        break;
      }
      all.append(buffer, static_cast<size_t>(n));
    }
    return all;
  }

  // AddressSanitizer keeps freed memory in quarantine (256 MB by default), so a memory bound
  // means something only without it; the release build checks it.
#if defined(__SANITIZE_ADDRESS__)
  static constexpr long kRssSlackKiB = 512L * 1024;
#else
  static constexpr long kRssSlackKiB = 0;
#endif

  static long rssKiB(pid_t pid) {
    std::string status = readFile(fmt::format("/proc/{}/status", pid));
    std::smatch m;
    static const std::regex rss(R"(VmRSS:\s+(\d+) kB)");
    return std::regex_search(status, m, rss) ? std::stol(m[1]) : -1;
  }

  posix::PosixPtr os_;
  posix::ScopedInjector injected_;
  DispatcherPtr loop_ = makeDispatcher("portal-daemon-test");
  TempDir dir_{"snow-portal-daemon-test"};
};

TEST_F(PortalDaemonTest, KeygenWritesAKeyRefusesToReplaceItAndPrintsTheNodeId) {
  const std::string keys = dir_.file("keys");
  auto [code, out] = runProgram(*loop_, SNOW_DAEMON, {"keygen", "--key-dir", keys});
  ASSERT_EQ(code, 0) << out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(out, m, std::regex("(^|\n)([0-9a-f]{32})\n"))) << out;
  const std::string id = m[2];
  struct stat st {};
  ASSERT_EQ(::stat((keys + "/node.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600U);
  EXPECT_THAT(readFile(keys + "/node.pub"), HasSubstr(id));

  auto [again, refusal] = runProgram(*loop_, SNOW_DAEMON, {"keygen", "--key-dir", keys});
  EXPECT_EQ(again, 1);
  EXPECT_THAT(refusal, HasSubstr("node.key exists already"));
  EXPECT_THAT(refusal, HasSubstr("--force"));
  EXPECT_THAT(readFile(keys + "/node.pub"), HasSubstr(id)) << "the key was replaced";

  auto [forced, replaced] =
      runProgram(*loop_, SNOW_DAEMON, {"keygen", "--key-dir", keys, "--force"});
  EXPECT_EQ(forced, 0) << replaced;
  EXPECT_THAT(replaced, Not(HasSubstr(id)));

  // The daemon names itself by that key everywhere: its log and snowctl.
  writeFile(dir_.file("k.yaml"), fmt::format("daemon:\n  key_directory: {}\nrpc:\n  unix_socket: "
                                             "{}\nmodules:\n  portal:\n    listen: 127.0.0.1:0\n",
                                             keys, dir_.file("k.sock")));
  ASSERT_TRUE(std::regex_search(replaced, m, std::regex("([0-9a-f]{32})")));
  const std::string newId = m[1];
  DaemonProcess daemon(
      *loop_, {"--modules", SNOW_PORTAL_TEST_PLUGINS, "--config", dir_.file("k.yaml")}, {});
  ASSERT_NE(daemon.waitForLog("node id " + newId), std::string::npos) << daemon.log();
  ASSERT_NE(daemon.waitForLog("ready:"), std::string::npos) << daemon.log();
  auto [status, statusOut] =
      runProgram(*loop_, SNOW_SNOWCTL, {"--node", "unix:" + dir_.file("k.sock"), "status"});
  EXPECT_THAT(statusOut, HasSubstr(newId));
}

TEST_F(PortalDaemonTest, TwoNodesConnectAndNameEachOtherByTheirKeys) {
  Node b = start("b", listen());
  ASSERT_FALSE(b.address.empty()) << b.process->log();
  Node a = start("a", listen(peer(b)));
  ASSERT_NE(a.process->waitForLog("portal: connected to node " + b.id), std::string::npos)
      << a.process->log();
  ASSERT_NE(b.process->waitForLog("portal: connected to node " + a.id), std::string::npos)
      << b.process->log();
  json fromA = peers(a);
  EXPECT_EQ(fromA["node_id"], a.id);
  ASSERT_EQ(fromA["peers"].size(), 1U) << fromA.dump();
  EXPECT_EQ(fromA["peers"][0]["node_id"], b.id);
  EXPECT_EQ(fromA["peers"][0]["state"], "established");
  EXPECT_EQ(fromA["peers"][0]["outbound"], true);
  json fromB = peers(b);
  ASSERT_EQ(fromB["peers"].size(), 1U) << fromB.dump();
  EXPECT_EQ(fromB["peers"][0]["node_id"], a.id);
}

TEST_F(PortalDaemonTest, TwoNodesThatListEachOtherAgreeOnOneConnection) {
  const std::string quick = "    reconnect_initial: 20ms\n    reconnect_max: 100ms\n";
  Node b = start("b", listen(quick));
  Node a = start("a", listen(peer(b, false) + quick));
  ASSERT_NE(b.process->waitForLog("portal: connected to node " + a.id), std::string::npos);
  // Now B lists A too (not pinned, so it dials): both keep the connection the smaller node id
  // opened.
  writeConfig("b", listen(peer(a, false) + quick));
  b.process->signal(SIGHUP);
  ASSERT_NE(b.process->waitForLog("generation 2"), std::string::npos) << b.process->log();
  const std::string smaller = std::min(a.id, b.id);
  ASSERT_TRUE(awaitPolled(
      *loop_,
      [&] {
        const json fromA = peers(a);
        const json fromB = peers(b);
        return fromA["peers"].size() == 1 && fromB["peers"].size() == 1 &&
               fromA["peers"][0]["state"] == "established" &&
               fromA["peers"][0]["outbound"] == (smaller == a.id) &&
               fromB["peers"][0]["outbound"] == (smaller == b.id);
      },
      10s, 100ms))
      << peers(a).dump() << "\n"
      << peers(b).dump() << a.process->log() << b.process->log();
  // And they stay agreed: the side whose connection lost does not redial it again and again.
  auto count = [](const std::string& log) {
    size_t n = 0;
    for (size_t at = log.find("portal: connected to node"); at != std::string::npos;
         at = log.find("portal: connected to node", at + 1)) {
      ++n;
    }
    return n;
  };
  const size_t before = count(a.process->log()) + count(b.process->log());
  loop_->runUntil([] { return false; }, 1s);  // Ten times reconnect_max.
  EXPECT_EQ(count(a.process->log()) + count(b.process->log()), before)
      << a.process->log() << b.process->log();
}

TEST_F(PortalDaemonTest, AReloadThatRemovesAPeerClosesItsConnectionAndOneThatAddsItConnects) {
  Node b = start("b", listen());
  Node a = start("a", listen(peer(b)));
  ASSERT_NE(a.process->waitForLog("portal: connected to node " + b.id), std::string::npos);
  writeConfig("a", listen());
  a.process->signal(SIGHUP);
  EXPECT_NE(a.process->waitForLog("disconnected from node " + b.id + " at " + b.address +
                                  ": the peer was removed from the configuration"),
            std::string::npos)
      << a.process->log();
  const size_t mark = a.process->log().size();
  writeConfig("a", listen(peer(b)));
  a.process->signal(SIGHUP);
  EXPECT_NE(a.process->waitForLog("portal: connected to node " + b.id, mark), std::string::npos)
      << a.process->log();
}

TEST_F(PortalDaemonTest, AKilledPeerIsReconnectedWhenItComesBack) {
  Node b = start("b", listen());
  Node a = start("a", listen(peer(b) + "    reconnect_initial: 50ms\n    reconnect_max: 200ms\n"));
  ASSERT_NE(a.process->waitForLog("portal: connected to node " + b.id), std::string::npos);
  const std::string address = b.address;
  b.process->signal(SIGKILL);
  ASSERT_EQ(b.process->waitForExit(), 128 + SIGKILL);
  ASSERT_NE(a.process->waitForLog("portal: disconnected from node " + b.id), std::string::npos)
      << a.process->log();
  const size_t mark = a.process->log().size();
  Node again = start("b", fmt::format("    listen: {}\n", address));  // Same key, same port.
  EXPECT_EQ(again.id, b.id);
  EXPECT_NE(a.process->waitForLog("portal: connected to node " + b.id, mark), std::string::npos)
      << a.process->log();
}

TEST_F(PortalDaemonTest, AStrangerIsRefusedWithAClearErrorOnBothSides) {
  Node b = start("b", listen("    cluster_secret: right\n"));
  {
    Node a = start("a", listen(peer(b)));  // No secret at all.
    EXPECT_NE(a.process->waitForLog("handshake_failed: the peer requires a cluster secret and "
                                    "this node has none"),
              std::string::npos)
        << a.process->log();
    EXPECT_NE(b.process->waitForLog("closed before it was established: handshake_failed: this "
                                    "node requires a cluster secret"),
              std::string::npos)
        << b.process->log();
  }
  Node c = start("c", listen(peer(b) + "    cluster_secret: wrong\n"));
  EXPECT_NE(c.process->waitForLog("another cluster secret"), std::string::npos) << c.process->log();
  EXPECT_NE(b.process->waitForLog("another cluster secret"), std::string::npos) << b.process->log();
  Node d = start("d", listen(peer(b) + "    cluster_secret: right\n"));
  EXPECT_NE(d.process->waitForLog("portal: connected to node " + b.id), std::string::npos)
      << d.process->log();
  // A node expecting another id at that address refuses it by name.
  Node e = start("e", listen(fmt::format("    cluster_secret: right\n    peers:\n      - address: "
                                         "{}\n        node_id: {}\n",
                                         b.address, std::string(32, 'f'))));
  EXPECT_NE(
      e.process->waitForLog("expected node ffffffffffffffffffffffffffffffff, found node " + b.id),
      std::string::npos)
      << e.process->log();
}

TEST_F(PortalDaemonTest, ThePythonClientFromTheProtocolPageTalksToModulesThroughTheApi) {
  Node b = start("b", listen("    cluster_secret: s3cret\n"));
  auto [code, out] =
      client(b, {"--cluster-secret", "s3cret", "--expect-node", b.id, "ping", "hello", "send",
                 "test.echo", R"({"n":42,"text":"über"})", "expect", "test.echoed", "send",
                 "no.such.type", "1", "expect", "portal.error"});
  ASSERT_EQ(code, 0) << out << b.process->log();
  EXPECT_THAT(out, HasSubstr(R"("event":"pong")"));
  // The probe module got test.echo as an event and answered through portal.send.
  EXPECT_THAT(out, HasSubstr(R"("type":"test.echoed")"));
  EXPECT_THAT(out, HasSubstr(R"("n":42)"));
  EXPECT_THAT(out, HasSubstr("no module of node " + b.id + " handles 'no.such.type'"));
  // Inbound messages are events of their own type, with the portal.send they caused beneath.
  auto [eventsCode, events] = snowctl(b, {"events"});
  EXPECT_EQ(eventsCode, 0) << events;
  EXPECT_THAT(events, HasSubstr("test.echo"));
  EXPECT_THAT(events, HasSubstr("portal.send"));
}

TEST_F(PortalDaemonTest, ABroadcastReachesEveryConnectedPeer) {
  Node b = start("b", listen());
  auto first = clientInBackground(b, {"--timeout", "15", "expect", "test.heard"});
  auto second = clientInBackground(b, {"--timeout", "15", "expect", "test.heard"});
  auto [code, out] = client(b, {"send", "test.shout", R"("to all")", "expect", "test.heard"});
  EXPECT_EQ(code, 0) << out;
  EXPECT_EQ(first->waitForExit(), 0) << first->log();
  EXPECT_EQ(second->waitForExit(), 0) << second->log();
  EXPECT_THAT(first->log(), HasSubstr("to all"));
  EXPECT_THAT(second->log(), HasSubstr("to all"));
}

TEST_F(PortalDaemonTest, NodesReachEachOtherThroughARealSocks5Proxy) {
  auto dante = SocksProxy::start(*loop_);
  auto micro = SocksProxy::start(*loop_, SocksProxy::Credentials{"snow", "flake"});
  Node b = start("b", listen());
  Node a = start(
      "a", listen(peer(b) + fmt::format("    socks5:\n      address: {}\n", dante->address())));
  EXPECT_NE(a.process->waitForLog("portal: connected to node " + b.id), std::string::npos)
      << a.process->log() << dante->log();
  Node c =
      start("c", listen(peer(b) + fmt::format("    socks5:\n      address: {}\n      username: "
                                              "snow\n      password: flake\n",
                                              micro->address())));
  EXPECT_NE(c.process->waitForLog("portal: connected to node " + b.id), std::string::npos)
      << c.process->log();
  // Dante saw the connection it relayed: the nodes did not bypass it.
  loop_->runUntil([] { return false; }, 50ms);
  EXPECT_THAT(dante->log(), HasSubstr(b.address.substr(b.address.rfind(':') + 1)));
  Node d =
      start("d", listen(peer(b) + fmt::format("    socks5:\n      address: {}\n      username: "
                                              "snow\n      password: thaw\n",
                                              micro->address())));
  EXPECT_NE(d.process->waitForLog("username/password"), std::string::npos) << d.process->log();
}

TEST_F(PortalDaemonTest, AReloadKeepsTheListenerAndEveryEstablishedConnection) {
  Node b = start("b", listen());
  Node a = start("a", listen(peer(b)));
  ASSERT_NE(a.process->waitForLog("portal: connected to node " + b.id), std::string::npos);
  auto waiting = clientInBackground(b, {"--timeout", "20", "expect", "test.heard"});
  const json before = peers(b);

  // Same address, other limits: a new generation; nothing of the portal may close.
  writeConfig("b", listen("    max_connections: 500\n"));
  const size_t mark = b.process->log().size();
  b.process->signal(SIGHUP);
  ASSERT_NE(b.process->waitForLog("generation 2", mark), std::string::npos) << b.process->log();

  // The connection made before the reload still carries messages both ways...
  auto [code, out] =
      client(b, {"send", "test.shout", R"("after the reload")", "expect", "test.heard"});
  EXPECT_EQ(code, 0) << out;  // ...the listener still accepts...
  EXPECT_EQ(waiting->waitForExit(), 0) << waiting->log();
  EXPECT_THAT(waiting->log(), HasSubstr("after the reload"));
  // ...and the peer connection is the same one (same remote port, same start).
  const json after = peers(b);
  auto find = [&](const json& list) {
    for (const auto& p : list["peers"]) {
      if (p["node_id"] == a.id) {
        return p;
      }
    }
    return json::object();
  };
  EXPECT_EQ(find(before)["address"], find(after)["address"]) << after.dump();
  EXPECT_EQ(find(before)["since"], find(after)["since"]) << after.dump();
  EXPECT_EQ(before["listen"], after["listen"]);
  EXPECT_THAT(b.process->log().substr(mark), Not(HasSubstr("disconnected from node " + a.id)));
}

TEST_F(PortalDaemonTest, BadInputGetsAClearErrorAndTheNodeKeepsServing) {
  Node b = start("b", listen("    handshake_timeout: 500ms\n"));
  Node a = start("a", listen(peer(b)));
  ASSERT_NE(a.process->waitForLog("portal: connected to node " + b.id), std::string::npos);
  auto bystander = clientInBackground(b, {"--timeout", "30", "expect", "test.heard"});

  {  // Garbage before the handshake: an HTTP request. Its first 4 bytes announce 1.2 GB.
    const int fd = rawConnect(b);
    const std::string request = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    ASSERT_EQ(::write(fd, request.data(), request.size()), static_cast<ssize_t>(request.size()));
    const std::string answer = readUntilClosed(fd);
    ::close(fd);
    EXPECT_THAT(answer, HasSubstr(R"("code":"bad_frame")"));
    EXPECT_THAT(answer, HasSubstr("over the limit of 4096 bytes"));
  }
  {  // A frame cut in the middle.
    const int fd = rawConnect(b);
    const std::string cut("\x00\x00\x00\x64{\"type\":", 12);
    ASSERT_EQ(::write(fd, cut.data(), cut.size()), 12);
    ::shutdown(fd, SHUT_WR);
    (void)readUntilClosed(fd);
    ::close(fd);
    EXPECT_NE(b.process->waitForLog("in the middle of a frame (12 bytes of it received)"),
              std::string::npos)
        << b.process->log();
  }
  {  // A slow loris: one byte, then nothing.
    const int fd = rawConnect(b);
    ASSERT_EQ(::write(fd, "\x00", 1), 1);
    const std::string answer = readUntilClosed(fd);
    ::close(fd);
    EXPECT_THAT(answer, HasSubstr("no handshake within 500 ms"));
  }
  // After the handshake: malformed JSON (answered, the connection goes on), then an oversized
  // length prefix (answered, then closed).
  auto [code, out] = client(b, {"send-sealed", "{not json", "expect", "portal.error", "ping",
                                "still here", "raw-hex", "7fffffff", "expect-close"});
  EXPECT_EQ(code, 0) << out;
  EXPECT_THAT(out, HasSubstr("bad_message"));
  EXPECT_THAT(out, HasSubstr("still here"));
  EXPECT_THAT(out, HasSubstr("bad_frame"));

  // A client that floods pings and leaves at once: the pongs meet a closed socket. (The daemon
  // blocks SIGPIPE; this run cannot tell that apart from gRPC's own SIG_IGN, but the node must
  // survive it either way, which the checks below see.)
  std::vector<std::string> flood;
  for (int i = 0; i < 2000; ++i) {
    flood.insert(flood.end(), {"send", "portal.ping", "\"" + std::string(500, 'p') + "\""});
  }
  (void)client(b, flood);

  // Every one of them was logged, and the node still serves the others: the bystander
  // connected before all of it hears a broadcast, and the peer connection never dropped.
  EXPECT_NE(b.process->waitForLog("bad_frame: frame of"), std::string::npos) << b.process->log();
  EXPECT_NE(b.process->waitForLog("timeout: no handshake within 500 ms"), std::string::npos);
  auto [shout, shoutOut] =
      client(b, {"send", "test.shout", R"("still serving")", "expect", "test.heard"});
  EXPECT_EQ(shout, 0) << shoutOut;
  EXPECT_EQ(bystander->waitForExit(), 0) << bystander->log();
  EXPECT_THAT(bystander->log(), HasSubstr("still serving"));
  EXPECT_THAT(a.process->log(), Not(HasSubstr("disconnected")));
}

TEST_F(PortalDaemonTest, AnIdlePeerIsPingedThenClosedAtTheIdleTimeout) {
  Node b = start("b", listen("    idle_timeout: 300ms\n"));
  Node a = start("a", listen(peer(b) + "    idle_timeout: 300ms\n"));
  ASSERT_NE(a.process->waitForLog("portal: connected to node " + b.id), std::string::npos);
  // A client that goes quiet (it reads nothing, so it answers no ping) is closed...
  auto [code, out] = client(b, {"stall", "0.7", "expect-close"});
  EXPECT_EQ(code, 0) << out;
  EXPECT_THAT(out, HasSubstr("portal.ping"));
  EXPECT_THAT(out, HasSubstr("nothing received for 300 ms (the idle timeout)"));
  // ...while two nodes ping each other and stay connected through many idle timeouts.
  loop_->runUntil([] { return false; }, 1500ms);
  EXPECT_THAT(a.process->log(), Not(HasSubstr("disconnected")));
  EXPECT_EQ(peers(a)["peers"].size(), 1U);
}

TEST_F(PortalDaemonTest, ASlowReaderIsDroppedInsteadOfBufferedWithoutBound) {
  Node b = start("b", listen("    output_high_water_bytes: 262144\n"));
  // 4,000 messages of 8 KiB at once (32 MB) to a client that reads nothing for a while.
  auto [code, out] = client(b, {"--timeout", "10", "send", "test.flood",
                                R"({"count":4000,"size":8192})", "stall", "2", "expect-close"});
  EXPECT_NE(b.process->waitForLog("the peer reads too slowly"), std::string::npos)
      << b.process->log();
  EXPECT_THAT(b.process->log(), HasSubstr("over the high-water mark of 262144"));
  EXPECT_LT(rssKiB(b.process->pid()), 200L * 1024 + kRssSlackKiB)
      << "it buffered what it should have dropped";
  (void)code;
  (void)out;
}

TEST_F(PortalDaemonTest, TenThousandConnectionAttemptsLeaveTheNodeServingWithBoundedMemory) {
  rlimit files{};
  ::getrlimit(RLIMIT_NOFILE, &files);
  files.rlim_cur = std::min<rlim_t>(files.rlim_max, 4096);
  ::setrlimit(RLIMIT_NOFILE, &files);
  Node b = start("b", listen("    max_connections: 200\n    handshake_timeout: 20s\n"));
  Node a = start("a", listen(peer(b)));
  ASSERT_NE(a.process->waitForLog("portal: connected to node " + b.id), std::string::npos);
  const long rssBefore = rssKiB(b.process->pid());

  // Fill the node up with connections that never finish their handshake...
  std::vector<int> held;
  held.reserve(250);
  for (int i = 0; i < 250; ++i) {
    held.push_back(rawConnect(b));
  }
  ASSERT_TRUE(awaitPolled(
      *loop_, [&] { return peers(b)["peers"].size() >= 200; }, 10s, 50ms))
      << peers(b)["peers"].size();
  // ...then knock 10,000 times more, in waves of 500 open at once.
  size_t refused = 0;
  for (int wave = 0; wave < 20; ++wave) {
    std::vector<int> fds;
    fds.reserve(500);
    for (int i = 0; i < 500; ++i) {
      fds.push_back(rawConnect(b));
    }
    for (int fd : fds) {
      const std::string answer = readUntilClosed(fd);
      refused += answer.find("too_many_connections") != std::string::npos ? 1 : 0;
      ::close(fd);
    }
  }
  for (int fd : held) {
    ::close(fd);
  }
  EXPECT_EQ(refused, 10000U) << "every attempt beyond max_connections gets the error frame";
  loop_->runUntil([] { return false; }, 1s);  // The node's log lines, a second's summary.
  auto [code, out] = client(b, {"ping", "after the storm"});
  EXPECT_EQ(code, 0) << out;
  const long rssAfter = rssKiB(b.process->pid());
  EXPECT_LT(rssAfter - rssBefore, 64L * 1024 + kRssSlackKiB)
      << "before " << rssBefore << " KiB, after " << rssAfter;
  EXPECT_THAT(b.process->log(), HasSubstr("not logged one by one"));
  EXPECT_THAT(b.process->log(), HasSubstr("already 200 connections (max_connections)"));
  EXPECT_THAT(a.process->log(), Not(HasSubstr("disconnected")));
  const json stats = peers(b);
  EXPECT_GE(std::stoull(stats.value("refused", std::string("0"))), 10000U) << stats.dump();
}

}  // namespace
}  // namespace snow::testing
