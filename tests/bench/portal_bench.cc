// The portal's transport (issue 7) against a plain libevent TCP echo, in the same run: messages
// per second and round-trip latency of 1 KiB messages over 127.0.0.1.
//
//   plain   a raw libevent echo, as a C programmer would write it: non-blocking sockets,
//           TCP_NODELAY, a read buffer parsed in place, the replies of one read pass written
//           together. Frames are a 4-byte big-endian length and a --size body.
//   portal  two snow::portal::Connection, as modules use them: the authenticated handshake (Ed25519
//           identities, a cluster key, the client pinning the server's node id), then sealed
//           frames (ChaCha20-Poly1305) of JSON envelopes of about --size bytes (the payload a
//           string). The echo side's message callback sends each envelope back. The sockets are
//           plain ones; Connection sets TCP_NODELAY on them, as it does in the module.
//
// Each side runs its own event loop in its own thread (plain: an event_base; portal: a snow
// Dispatcher). Per transport and run, four phases of --seconds each:
//   peak       the driver keeps --window messages in flight: messages/s;
//   ping-pong  one message in flight: round-trip times;
//   50%, 25%   open loop at that fraction of the transport's own peak, paced by a timer (at most
//              one wake-up per 20 µs): round-trip times counted from each message's scheduled
//              send time, so a late send counts. 50% is the aim's load.
// The CPU time and the read()/write() calls per round trip cover both sides (the whole process).
// Then the medians over --runs, the ratios and the verdicts against the aims of issue 7, and the
// CPU cost of each step of the portal's message path, measured on one thread.
//
// Usage: snow_portal_bench [--seconds S] [--size BYTES] [--window N] [--runs N] [--quick]
//                          [--only plain|portal]
//
// Benchmark code: the plain peer and the harness call the OS and libevent directly on purpose.

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <event2/event.h>
#include <fmt/format.h>
#include <google/protobuf/util/time_util.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sodium.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "snow/core/dispatcher.h"
#include "snow/core/identity.h"
#include "snow/posix/active.h"

#include "connection.h"
#include "frame.h"
#include "handshake.h"

namespace {

using Clock = std::chrono::steady_clock;
using Nanos = std::chrono::nanoseconds;
using snow::portal::Connection;
namespace v1 = snow::portal::v1;

constexpr size_t kReadChunk = size_t{64} * 1024;  // As the portal reads.
constexpr int kReadsPerWake = 16;                 // As the portal reads.
constexpr auto kDrainTimeout = std::chrono::seconds(10);
// The open loop's timer fires at most this often, sending every message due: at the plain echo's
// rates (a message every few µs) a wake-up per message would measure the timer, not the echo.
constexpr auto kPacingTick = std::chrono::microseconds(20);

struct Options {
  double seconds = 3;
  size_t size = 1024;
  int window = 128;
  int runs = 3;
  bool quick = false;
  bool plain = true;
  bool portal = true;
};

[[noreturn]] void die(const char* what) {
  std::perror(what);
  std::exit(1);
}

void setNoDelay(int fd) {
  const int on = 1;
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on)) != 0) {
    die("setsockopt(TCP_NODELAY)");
  }
}

// A listening socket on 127.0.0.1, any port.
int listenLoopback(uint16_t* port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    die("socket");
  }
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), length) != 0 || listen(fd, 4) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    die("bind/listen");
  }
  *port = ntohs(address.sin_port);
  return fd;
}

// A non-blocking socket with a connect to 127.0.0.1:port in progress.
int connectLoopback(uint16_t port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    die("socket");
  }
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(port);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 &&
      errno != EINPROGRESS) {
    die("connect");
  }
  return fd;
}

// The echo side's connection, non-blocking; -1 when nobody connected within 10 s.
int acceptOne(int listenFd) {
  pollfd waiting{listenFd, POLLIN, 0};
  if (poll(&waiting, 1, 10000) != 1) {
    return -1;
  }
  return accept4(listenFd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

// ---- What the driver measures ---------------------------------------------------------------

// The whole process's CPU time and read/write system calls (both sides of a transport).
struct Usage {
  double cpuSeconds = 0;
  uint64_t reads = 0;
  uint64_t writes = 0;

  static Usage now() {
    Usage usage;
    rusage self{};
    getrusage(RUSAGE_SELF, &self);
    usage.cpuSeconds = static_cast<double>(self.ru_utime.tv_sec + self.ru_stime.tv_sec) +
                       static_cast<double>(self.ru_utime.tv_usec + self.ru_stime.tv_usec) * 1e-6;
    std::ifstream io("/proc/self/io");
    std::string key;
    uint64_t value = 0;
    while (io >> key >> value) {
      if (key == "syscr:") {
        usage.reads = value;
      } else if (key == "syscw:") {
        usage.writes = value;
      }
    }
    return usage;
  }
};

struct Phase {
  double rate = 0;           // Round trips completed per second.
  uint64_t messages = 0;     // Round trips completed.
  std::vector<int64_t> rtt;  // Round-trip times, ns, sorted.
  std::vector<int64_t> lag;  // Open loop: how late each message was sent, ns, sorted.
  double cpuMicros = 0;      // Process CPU per round trip (both sides).
  double reads = 0;          // read() calls per round trip (both sides).
  double writes = 0;         // write() calls per round trip (both sides).
  bool ok = true;

  // The q-quantile in µs (0 when nothing was recorded).
  [[nodiscard]] double micros(const std::vector<int64_t>& sorted, double q) const {
    if (sorted.empty()) {
      return 0;
    }
    const auto index =
        std::min(sorted.size() - 1, static_cast<size_t>(q * static_cast<double>(sorted.size())));
    return static_cast<double>(sorted[index]) / 1000.0;
  }
  [[nodiscard]] double p(double q) const { return micros(rtt, q); }
};

// A transport's driving side, on the calling thread's loop.
class Client {
 public:
  Client() = default;
  virtual ~Client() = default;
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Queues message `seq`; it is on the wire after flush() at the latest.
  virtual void send(uint64_t seq) = 0;
  virtual void flush() = 0;
  // Calls onTimer once, after `delay`.
  virtual void armTimer(Nanos delay) = 0;
  // Runs the loop until done(); false after the timeout or when the connection broke.
  virtual bool runUntil(const std::function<bool()>& done, Nanos timeout) = 0;
  [[nodiscard]] virtual bool broken() const = 0;

  std::function<void(uint64_t)> onReply;  // Each echoed message, by sequence number.
  std::function<void()> onTimer;
};

class Driver {
 public:
  explicit Driver(Client& client) : client_(client) {}

  // `window` messages in flight for `duration`: the rate, and the round trips when `record`.
  Phase closedLoop(int window, Nanos duration, bool record) {
    Phase phase;
    const Usage before = Usage::now();
    const uint64_t base = next_;
    std::vector<Clock::time_point> sentAt;
    uint64_t outstanding = 0;
    const auto start = Clock::now();
    const auto end = start + duration;
    auto sendOne = [&](Clock::time_point at) {
      sentAt.push_back(at);
      client_.send(next_++);
      ++outstanding;
    };
    client_.onReply = [&](uint64_t seq) {
      if (seq < base || seq - base >= sentAt.size()) {
        return;  // Left over from a phase that timed out.
      }
      const auto now = Clock::now();
      --outstanding;
      if (now >= end) {
        return;  // Draining.
      }
      ++phase.messages;
      if (record) {
        phase.rtt.push_back((now - sentAt[seq - base]).count());
      }
      sendOne(now);
    };
    client_.onTimer = [] {};
    for (int i = 0; i < window; ++i) {
      sendOne(start);
    }
    client_.flush();
    phase.ok = client_.runUntil([&] { return outstanding == 0; }, duration + kDrainTimeout);
    phase.rate =
        static_cast<double>(phase.messages) / std::chrono::duration<double>(duration).count();
    finish(phase, before, next_ - base);
    return phase;
  }

  // Open loop: message i is due at start + i/rate, sent by a timer; round trips are counted from
  // the due time.
  Phase openLoop(double rate, Nanos duration) {
    Phase phase;
    if (!(rate > 0)) {
      phase.ok = false;
      return phase;
    }
    const Usage before = Usage::now();
    const uint64_t base = next_;
    const auto total = std::max<uint64_t>(
        1, static_cast<uint64_t>(rate * std::chrono::duration<double>(duration).count()));
    const double interval = 1e9 / rate;
    const auto start = Clock::now();
    auto dueAt = [&](uint64_t i) {
      return start + Nanos(static_cast<int64_t>(static_cast<double>(i) * interval));
    };
    uint64_t sent = 0;
    uint64_t received = 0;
    auto last = start;
    phase.rtt.reserve(total);
    phase.lag.reserve(total);
    client_.onTimer = [&] {
      const auto now = Clock::now();
      while (sent < total && dueAt(sent) <= now) {
        phase.lag.push_back((now - dueAt(sent)).count());
        client_.send(base + sent++);
      }
      client_.flush();
      if (sent < total) {
        client_.armTimer(std::max<Nanos>(dueAt(sent) - now, kPacingTick));
      }
    };
    client_.onReply = [&](uint64_t seq) {
      if (seq < base || seq - base >= sent) {
        return;  // Left over from a phase that timed out.
      }
      last = Clock::now();
      phase.rtt.push_back((last - dueAt(seq - base)).count());
      ++received;
    };
    client_.armTimer(Nanos(0));
    phase.ok = client_.runUntil([&] { return received == total; }, duration + kDrainTimeout);
    next_ = base + sent;
    phase.messages = received;
    const double elapsed = std::chrono::duration<double>(last - start).count();
    phase.rate = elapsed > 0 ? static_cast<double>(received) / elapsed : 0;
    finish(phase, before, received);
    return phase;
  }

 private:
  // The handlers refer to the phase's locals: none may run after it.
  void finish(Phase& phase, const Usage& before, uint64_t roundTrips) {
    client_.onReply = [](uint64_t /*seq*/) {};
    client_.onTimer = [] {};
    const Usage after = Usage::now();
    const auto n = static_cast<double>(std::max<uint64_t>(1, roundTrips));
    phase.cpuMicros = (after.cpuSeconds - before.cpuSeconds) * 1e6 / n;
    phase.reads = static_cast<double>(after.reads - before.reads) / n;
    phase.writes = static_cast<double>(after.writes - before.writes) / n;
    std::sort(phase.rtt.begin(), phase.rtt.end());
    std::sort(phase.lag.begin(), phase.lag.end());
  }

  Client& client_;
  uint64_t next_ = 0;
};

// ---- The plain peer: raw libevent, the same framing ---------------------------------------------

struct EventDeleter {
  void operator()(event* e) const noexcept { event_free(e); }
};
struct BaseDeleter {
  void operator()(event_base* b) const noexcept { event_base_free(b); }
};
using EventPtr = std::unique_ptr<event, EventDeleter>;
using BasePtr = std::unique_ptr<event_base, BaseDeleter>;

BasePtr makePreciseBase() {
  event_config* config = event_config_new();
  event_config_set_flag(config, EVENT_BASE_FLAG_PRECISE_TIMER);
  BasePtr base(event_base_new_with_config(config));
  event_config_free(config);
  if (!base) {
    die("event_base_new_with_config");
  }
  return base;
}

// One framed connection on an event_base: a read buffer parsed in place, an output buffer written
// once per read pass (and by flush()).
class PlainStream {
 public:
  PlainStream(event_base* base, int fd) : fd_(fd), in_(new char[kInCapacity]) {
    readEvent_.reset(event_new(base, fd, EV_READ | EV_PERSIST, &PlainStream::readable, this));
    writeEvent_.reset(event_new(base, fd, EV_WRITE | EV_PERSIST, &PlainStream::writable, this));
    event_add(readEvent_.get(), nullptr);
  }
  virtual ~PlainStream() {
    readEvent_.reset();
    writeEvent_.reset();
    close(fd_);
  }
  PlainStream(const PlainStream&) = delete;
  PlainStream& operator=(const PlainStream&) = delete;

  [[nodiscard]] bool closed() const noexcept { return closed_; }

  void flushOutput() {
    while (outOffset_ < out_.size()) {
      const ssize_t n = write(fd_, out_.data() + outOffset_, out_.size() - outOffset_);
      if (n < 0 && errno == EINTR) {
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (!writeArmed_) {
          event_add(writeEvent_.get(), nullptr);
          writeArmed_ = true;
        }
        return;
      }
      if (n < 0) {
        shut();
        return;
      }
      outOffset_ += static_cast<size_t>(n);
    }
    out_.clear();
    outOffset_ = 0;
    if (writeArmed_) {
      event_del(writeEvent_.get());
      writeArmed_ = false;
    }
  }

 protected:
  // One frame's body (the header is before it, in the same buffer).
  virtual void frame(const char* body, size_t length) = 0;
  virtual void shut() {
    closed_ = true;
    event_del(readEvent_.get());
    event_del(writeEvent_.get());
  }

  std::string out_;

 private:
  static constexpr size_t kInCapacity = 2 * kReadChunk;

  static void readable(evutil_socket_t /*fd*/, short /*what*/, void* self) {
    static_cast<PlainStream*>(self)->readSome();
  }
  static void writable(evutil_socket_t /*fd*/, short /*what*/, void* self) {
    static_cast<PlainStream*>(self)->flushOutput();
  }

  void readSome() {
    for (int i = 0; i < kReadsPerWake && !closed_; ++i) {
      const ssize_t n = read(fd_, in_.get() + inEnd_, std::min(kReadChunk, kInCapacity - inEnd_));
      if (n < 0 && errno == EINTR) {
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        break;
      }
      if (n <= 0) {
        shut();
        return;
      }
      inEnd_ += static_cast<size_t>(n);
      size_t at = 0;
      while (inEnd_ - at >= 4) {
        uint32_t length = 0;
        std::memcpy(&length, in_.get() + at, 4);
        length = ntohl(length);
        if (inEnd_ - at < 4 + size_t{length}) {
          break;
        }
        frame(in_.get() + at + 4, length);
        at += 4 + length;
      }
      std::memmove(in_.get(), in_.get() + at, inEnd_ - at);
      inEnd_ -= at;
    }
    flushOutput();
  }

  int fd_;
  EventPtr readEvent_;
  EventPtr writeEvent_;
  std::unique_ptr<char[]> in_;
  size_t inEnd_ = 0;
  size_t outOffset_ = 0;
  bool writeArmed_ = false;
  bool closed_ = false;
};

class PlainEcho final : public PlainStream {
 public:
  using PlainStream::PlainStream;

 private:
  void frame(const char* body, size_t length) override { out_.append(body - 4, length + 4); }
};

void plainEchoServe(int listenFd) {
  const int fd = acceptOne(listenFd);
  if (fd < 0) {
    return;
  }
  setNoDelay(fd);
  BasePtr base = makePreciseBase();
  {
    PlainEcho echo(base.get(), fd);
    while (!echo.closed()) {
      event_base_loop(base.get(), EVLOOP_ONCE);
    }
  }
}

class PlainClient final : public PlainStream, public Client {
 public:
  PlainClient(event_base* base, int fd, size_t size)
      : PlainStream(base, fd), base_(base), template_(4 + std::max<size_t>(size, 8), 'x') {
    const uint32_t length = htonl(static_cast<uint32_t>(template_.size() - 4));
    std::memcpy(template_.data(), &length, 4);
    timer_.reset(evtimer_new(base, &PlainClient::fire, this));
    tick_.reset(event_new(
        base, -1, EV_PERSIST, [](evutil_socket_t, short, void*) {}, nullptr));
    const timeval every{0, 50000};  // Wakes runUntil() to check its deadline.
    event_add(tick_.get(), &every);
  }
  ~PlainClient() override {
    timer_.reset();
    tick_.reset();
  }
  PlainClient(const PlainClient&) = delete;
  PlainClient& operator=(const PlainClient&) = delete;

  void send(uint64_t seq) override {
    const size_t at = out_.size();
    out_.append(template_);
    std::memcpy(out_.data() + at + 4, &seq, sizeof(seq));
  }
  void flush() override { flushOutput(); }
  void armTimer(Nanos delay) override {
    const auto micros = std::chrono::duration_cast<std::chrono::microseconds>(delay).count();
    const timeval after{static_cast<time_t>(micros / 1000000),
                        static_cast<suseconds_t>(micros % 1000000)};
    evtimer_add(timer_.get(), &after);
  }
  bool runUntil(const std::function<bool()>& done, Nanos timeout) override {
    const auto deadline = Clock::now() + timeout;
    while (!done()) {
      if (closed() || Clock::now() >= deadline) {
        return false;
      }
      event_base_loop(base_, EVLOOP_ONCE);
    }
    return true;
  }
  [[nodiscard]] bool broken() const override { return closed(); }

 private:
  static void fire(evutil_socket_t /*fd*/, short /*what*/, void* self) {
    static_cast<PlainClient*>(self)->onTimer();
  }
  void frame(const char* body, size_t length) override {
    uint64_t seq = 0;
    std::memcpy(&seq, body, std::min(length, sizeof(seq)));
    onReply(seq);
  }

  event_base* base_;
  std::string template_;
  EventPtr timer_;
  EventPtr tick_;
};

// ---- The portal: two Connections ----------------------------------------------------------------

struct Peers {
  snow::NodeIdentity echo;
  snow::NodeIdentity driver;
  snow::portal::SessionKey clusterKey;
};

snow::NodeIdentity identityFrom(uint8_t fill) {
  std::array<uint8_t, 32> seed{};
  seed.fill(fill);
  return snow::NodeIdentity::fromSeed(seed);
}

Peers makePeers() {
  return Peers{identityFrom(1), identityFrom(2), snow::portal::clusterKeyOf("portal bench")};
}

snow::portal::HandshakeSettings settingsFor(const snow::NodeIdentity& self, const Peers& peers,
                                            std::string expected) {
  return snow::portal::HandshakeSettings{&self, peers.clusterKey,
                                         snow::portal::kDefaultMaxFrameBytes, std::move(expected)};
}

void portalEchoServe(snow::posix::Posix& os, int listenFd, const Peers& peers) {
  const int fd = acceptOne(listenFd);
  if (fd < 0) {
    return;
  }
  auto loop = snow::makeDispatcher("bench-echo");
  bool done = false;
  Connection::Callbacks callbacks;
  callbacks.message = [](Connection& connection, v1::Envelope&& envelope) {
    connection.transmit(envelope);
  };
  callbacks.closed = [&done](Connection& /*connection*/) { done = true; };
  auto connection = std::make_unique<Connection>(
      *loop, os, snow::posix::FileDescriptor(fd), snow::portal::Role::Server, false, "127.0.0.1",
      settingsFor(peers.echo, peers, ""), snow::portal::ConnectionLimits{}, std::nullopt,
      std::move(callbacks));
  loop->runUntil([&] { return done; }, std::chrono::hours(1));
  connection.reset();
}

// An envelope as a module sends one: a type, an id, a timestamp, a string payload. The payload's
// length is chosen so that the envelope's JSON, sender included, is about `size` bytes.
v1::Envelope prototypeEnvelope(const std::string& sender, size_t size) {
  v1::Envelope envelope;
  envelope.set_type("bench.echo");
  envelope.set_id("1000000");
  envelope.set_sender(sender);
  *envelope.mutable_timestamp() = google::protobuf::util::TimeUtil::GetCurrentTime();
  envelope.mutable_payload()->set_string_value("");
  const size_t overhead = snow::portal::encodeEnvelope(envelope).size();
  envelope.mutable_payload()->set_string_value(
      std::string(size > overhead ? size - overhead : 1, 'x'));
  return envelope;
}

class PortalClient final : public Client {
 public:
  PortalClient(snow::posix::Posix& os, uint16_t port, const Peers& peers, size_t size)
      : loop_(snow::makeDispatcher("bench-driver")),
        prototype_(prototypeEnvelope(peers.driver.nodeId(), size)) {
    timer_ = loop_->createTimer([this] { onTimer(); });
    const int fd = connectLoopback(port);
    Connection::Callbacks callbacks;
    callbacks.message = [this](Connection& /*connection*/, v1::Envelope&& envelope) {
      uint64_t seq = 0;
      const std::string& id = envelope.id();
      (void)std::from_chars(id.data(), id.data() + id.size(), seq);
      onReply(seq);
    };
    callbacks.closed = [this](Connection& /*connection*/) { closed_ = true; };
    connection_ = std::make_unique<Connection>(
        *loop_, os, snow::posix::FileDescriptor(fd), snow::portal::Role::Client, true,
        "127.0.0.1:" + std::to_string(port), settingsFor(peers.driver, peers, peers.echo.nodeId()),
        snow::portal::ConnectionLimits{}, std::nullopt, std::move(callbacks));
    loop_->runUntil(
        [this] { return closed_ || connection_->state() == Connection::State::Established; },
        std::chrono::seconds(10));
    if (connection_->state() != Connection::State::Established) {
      std::fprintf(stderr, "portal handshake failed: %s\n", connection_->closeReason().c_str());
      std::exit(1);
    }
  }
  ~PortalClient() override {
    connection_->close("done");
    connection_.reset();
    timer_.reset();
  }
  PortalClient(const PortalClient&) = delete;
  PortalClient& operator=(const PortalClient&) = delete;

  void send(uint64_t seq) override {
    v1::Envelope envelope = prototype_;
    envelope.set_id(std::to_string(seq));
    *envelope.mutable_timestamp() = google::protobuf::util::TimeUtil::GetCurrentTime();
    connection_->transmit(envelope);
  }
  void flush() override {}  // Connection::transmit() writes at once.
  void armTimer(Nanos delay) override { timer_->enable(delay); }
  bool runUntil(const std::function<bool()>& done, Nanos timeout) override {
    return loop_->runUntil([&] { return closed_ || done(); }, timeout) && !closed_;
  }
  [[nodiscard]] bool broken() const override { return closed_; }

 private:
  snow::DispatcherPtr loop_;
  snow::TimerPtr timer_;
  v1::Envelope prototype_;
  std::unique_ptr<Connection> connection_;
  bool closed_ = false;
};

// ---- One transport's four phases ----------------------------------------------------------------

struct Figures {
  Phase peak;
  Phase pingPong;
  Phase half;     // Open loop at 50% of the peak: the aim's load.
  Phase quarter;  // Open loop at 25%: the same with more headroom.
};

Figures measure(Client& client, const Options& options) {
  const auto duration =
      std::chrono::duration_cast<Nanos>(std::chrono::duration<double>(options.seconds));
  Driver driver(client);
  Figures figures;
  (void)driver.closedLoop(options.window, duration / 5, false);  // Warm-up.
  figures.peak = driver.closedLoop(options.window, duration, false);
  figures.pingPong = driver.closedLoop(1, duration, true);
  figures.half = driver.openLoop(figures.peak.rate / 2, duration);
  figures.quarter = driver.openLoop(figures.peak.rate / 4, duration);
  return figures;
}

Figures runPlain(const Options& options) {
  uint16_t port = 0;
  const int listenFd = listenLoopback(&port);
  std::thread echo(plainEchoServe, listenFd);
  Figures figures;
  {
    const int fd = connectLoopback(port);
    pollfd connecting{fd, POLLOUT, 0};
    if (poll(&connecting, 1, 10000) != 1) {
      die("connect (plain)");
    }
    setNoDelay(fd);
    BasePtr base = makePreciseBase();
    PlainClient client(base.get(), fd, options.size);
    figures = measure(client, options);
  }
  echo.join();
  close(listenFd);
  return figures;
}

Figures runPortal(snow::posix::Posix& os, const Peers& peers, const Options& options) {
  uint16_t port = 0;
  const int listenFd = listenLoopback(&port);
  std::thread echo(portalEchoServe, std::ref(os), listenFd, std::cref(peers));
  Figures figures;
  {
    PortalClient client(os, port, peers, options.size);
    figures = measure(client, options);
  }
  echo.join();
  close(listenFd);
  return figures;
}

// ---- Output ------------------------------------------------------------------------------------

void printHeader() {
  std::printf("%-4s %-7s %-18s %10s %8s %8s %9s %8s %8s %8s %8s\n", "run", "peer", "phase",
              "msgs/s", "p50 us", "p99 us", "p99.9 us", "max us", "cpu us", "reads", "writes");
}

void printPhase(int run, const char* peer, const std::string& name, const Phase& phase) {
  std::printf("%-4d %-7s %-18s %10.0f", run, peer, name.c_str(), phase.rate);
  if (phase.rtt.empty()) {
    std::printf(" %8s %8s %9s %8s", "-", "-", "-", "-");
  } else {
    std::printf(" %8.1f %8.1f %9.1f %8.1f", phase.p(0.5), phase.p(0.99), phase.p(0.999),
                phase.p(1.0));
  }
  std::printf(" %8.2f %8.2f %8.2f%s", phase.cpuMicros, phase.reads, phase.writes,
              phase.ok ? "" : "  (INCOMPLETE)");
  if (!phase.lag.empty()) {
    std::printf("  sends late p99 %.1f us", phase.micros(phase.lag, 0.99));
  }
  std::printf("\n");
}

void printFigures(int run, const char* peer, const Figures& figures, const Options& options) {
  printPhase(run, peer, "peak (window " + std::to_string(options.window) + ")", figures.peak);
  printPhase(run, peer, "ping-pong", figures.pingPong);
  printPhase(run, peer, "50% of peak, open", figures.half);
  printPhase(run, peer, "25% of peak, open", figures.quarter);
}

double median(std::vector<double> values) {
  if (values.empty()) {
    return 0;
  }
  std::sort(values.begin(), values.end());
  const size_t middle = values.size() / 2;
  return values.size() % 2 == 1 ? values[middle] : (values[middle - 1] + values[middle]) / 2;
}

// ---- The portal's message path, step by step, on one thread ------------------------------------

struct Step {
  const char* name;
  double nanos;      // Per message.
  int perRoundTrip;  // How often a round trip (driver -> echo -> driver) takes the step.
};

template <typename F>
double nanosEach(size_t count, F&& body) {
  const auto start = Clock::now();
  for (size_t i = 0; i < count; ++i) {
    body(i);
  }
  return static_cast<double>((Clock::now() - start).count()) / static_cast<double>(count);
}

std::vector<Step> messagePath(const Peers& peers, size_t size, size_t count) {
  const v1::Envelope prototype = prototypeEnvelope(peers.driver.nodeId(), size);
  snow::portal::SessionKey one{};
  snow::portal::SessionKey two{};
  one.fill(1);
  two.fill(2);
  snow::portal::Channel sender(one, two);
  snow::portal::Channel receiver(two, one);
  std::vector<v1::Envelope> envelopes(count);
  std::vector<std::string> json(count);
  std::vector<std::string> bodies;
  std::vector<std::string> plaintext(count);
  std::vector<v1::Envelope> decoded(count);
  std::string wire;
  wire.reserve(count * (size + 64));
  bodies.reserve(count);
  std::vector<Step> steps;
  steps.push_back({"envelope: copy, id, timestamp, sender",
                   nanosEach(count,
                             [&](size_t i) {
                               envelopes[i] = prototype;
                               envelopes[i].set_id(std::to_string(i));
                               *envelopes[i].mutable_timestamp() =
                                   google::protobuf::util::TimeUtil::GetCurrentTime();
                               envelopes[i].set_sender(peers.driver.nodeId());
                             }),
                   1});
  steps.push_back(
      {"JSON encode (encodeEnvelope)",
       nanosEach(count, [&](size_t i) { json[i] = snow::portal::encodeEnvelope(envelopes[i]); }),
       2});
  steps.push_back({"seal (ChaCha20-Poly1305 + header)",
                   nanosEach(count, [&](size_t i) { sender.sealInto(json[i], wire); }), 2});
  snow::portal::FrameDecoder decoder(snow::portal::kDefaultMaxFrameBytes);
  size_t fed = 0;
  steps.push_back({"FrameDecoder feed + next (copies)",
                   nanosEach(count,
                             [&](size_t /*i*/) {
                               std::optional<std::string> body;
                               while (!(body = decoder.next())) {
                                 const size_t chunk = std::min(kReadChunk, wire.size() - fed);
                                 decoder.feed(std::string_view(wire).substr(fed, chunk));
                                 fed += chunk;
                               }
                               bodies.push_back(std::move(*body));
                             }),
                   2});
  steps.push_back({"open (ChaCha20-Poly1305 verify)",
                   nanosEach(count, [&](size_t i) { plaintext[i] = receiver.open(bodies[i]); }),
                   2});
  steps.push_back(
      {"JSON parse + checks (decodeEnvelope)",
       nanosEach(count, [&](size_t i) { decoded[i] = snow::portal::decodeEnvelope(plaintext[i]); }),
       2});
  // For scale, not on the path: the cipher alone, and the envelope as binary protobuf.
  std::vector<uint8_t> cipher(size + 256 + snow::portal::Channel::kTagBytes);
  const std::array<uint8_t, 12> nonce{};
  steps.push_back(
      {"(for scale) bare AEAD encrypt, same size",
       nanosEach(count,
                 [&](size_t i) {
                   unsigned long long written = 0;  // NOLINT(google-runtime-int): libsodium's.
                   crypto_aead_chacha20poly1305_ietf_encrypt(
                       cipher.data(), &written, reinterpret_cast<const uint8_t*>(json[i].data()),
                       json[i].size(), nullptr, 0, nullptr, nonce.data(), one.data());
                 }),
       0});
  std::vector<std::string> binary(count);
  steps.push_back(
      {"(for scale) binary protobuf serialize",
       nanosEach(count, [&](size_t i) { (void)envelopes[i].SerializeToString(&binary[i]); }), 0});
  steps.push_back({"(for scale) binary protobuf parse",
                   nanosEach(count, [&](size_t i) { (void)decoded[i].ParseFromString(binary[i]); }),
                   0});
  return steps;
}

Options parse(int argc, char** argv) {
  Options options;
  bool runsGiven = false;
  bool secondsGiven = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", arg.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--seconds") {
      options.seconds = std::atof(value());
      secondsGiven = true;
    } else if (arg == "--size") {
      options.size = static_cast<size_t>(std::atol(value()));
    } else if (arg == "--window") {
      options.window = std::atoi(value());
    } else if (arg == "--runs") {
      options.runs = std::atoi(value());
      runsGiven = true;
    } else if (arg == "--quick") {
      options.quick = true;
    } else if (arg == "--only") {
      const std::string which = value();
      options.plain = which == "plain";
      options.portal = which == "portal";
    } else {
      std::fprintf(stderr,
                   "usage: %s [--seconds S] [--size BYTES] [--window N] [--runs N] [--quick]\n"
                   "          [--only plain|portal]\n",
                   argv[0]);
      std::exit(arg == "--help" || arg == "-h" ? 0 : 2);
    }
  }
  if (options.quick) {
    options.seconds = secondsGiven ? options.seconds : 0.25;
    options.runs = runsGiven ? options.runs : 1;
  }
  if (options.seconds <= 0 || options.size < 8 || options.size > 60000 || options.window < 1 ||
      options.runs < 1 || (!options.plain && !options.portal)) {
    std::fprintf(stderr, "bad options (size 8..60000, seconds > 0, window >= 1, runs >= 1)\n");
    std::exit(2);
  }
  return options;
}

const char* verdict(bool met) {
  return met ? "PASS" : "MISS";
}

}  // namespace

int main(int argc, char** argv) {
  const Options options = parse(argc, argv);
  std::signal(SIGPIPE, SIG_IGN);
  spdlog::set_level(spdlog::level::warn);
  auto os = snow::posix::makeDefaultPosix();
  snow::posix::ScopedInjector injected(*os);
  const Peers peers = makePeers();

  std::printf(
      "portal transport vs plain libevent echo: %zu-byte messages over 127.0.0.1, window "
      "%d, %.2f s per phase, %d run(s)\n",
      options.size, options.window, options.seconds, options.runs);
  std::printf("plain: raw libevent, 4-byte big-endian length + %zu-byte body, TCP_NODELAY\n",
              options.size);
  std::printf(
      "portal: two snow::portal::Connection, authenticated, sealed JSON envelopes of ~%zu "
      "bytes (+16 tag)%s\n",
      options.size, ", TCP_NODELAY (set by Connection)");
  std::printf("cpu us, reads, writes: per round trip, both sides (the whole process)\n\n");
  printHeader();

  std::vector<Figures> plain;
  std::vector<Figures> portal;
  for (int run = 1; run <= options.runs; ++run) {
    if (options.plain) {
      plain.push_back(runPlain(options));
      printFigures(run, "plain", plain.back(), options);
    }
    if (options.portal) {
      portal.push_back(runPortal(*os, peers, options));
      printFigures(run, "portal", portal.back(), options);
    }
  }

  auto med = [](const std::vector<Figures>& all, const std::function<double(const Figures&)>& f) {
    std::vector<double> values;
    values.reserve(all.size());
    for (const auto& figures : all) {
      values.push_back(f(figures));
    }
    return median(values);
  };
  struct Row {
    const char* name;
    std::function<double(const Figures&)> of;
  };
  constexpr size_t kPeak = 0;  // Rows the verdicts read.
  constexpr size_t kPeakCpu = 1;
  constexpr size_t kHalfP99 = 6;
  const std::vector<Row> rows = {
      {"peak msgs/s", [](const Figures& f) { return f.peak.rate; }},
      {"peak cpu us per round trip", [](const Figures& f) { return f.peak.cpuMicros; }},
      {"ping-pong p50 us", [](const Figures& f) { return f.pingPong.p(0.5); }},
      {"ping-pong p99 us", [](const Figures& f) { return f.pingPong.p(0.99); }},
      {"50% load: msgs/s achieved", [](const Figures& f) { return f.half.rate; }},
      {"50% load: p50 us", [](const Figures& f) { return f.half.p(0.5); }},
      {"50% load: p99 us", [](const Figures& f) { return f.half.p(0.99); }},
      {"50% load: p99.9 us", [](const Figures& f) { return f.half.p(0.999); }},
      {"50% load: cpu us per round trip", [](const Figures& f) { return f.half.cpuMicros; }},
      {"25% load: p50 us", [](const Figures& f) { return f.quarter.p(0.5); }},
      {"25% load: p99 us", [](const Figures& f) { return f.quarter.p(0.99); }},
  };
  std::printf("\nmedians of %d run(s)%*s %12s %12s %14s\n", options.runs, 12, "", "plain", "portal",
              "portal/plain");
  auto cell = [](const std::vector<Figures>& all, double value) {
    return all.empty() ? std::string("-") : fmt::format("{:.1f}", value);
  };
  for (const auto& row : rows) {
    const double a = med(plain, row.of);
    const double b = med(portal, row.of);
    const std::string ratio = a > 0 && b > 0 ? fmt::format("{:.2f}", b / a) : "-";
    std::printf("%-32s %12s %12s %14s\n", row.name, cell(plain, a).c_str(), cell(portal, b).c_str(),
                ratio.c_str());
  }

  if (options.plain && options.portal) {
    const double ratio = med(portal, rows[kPeak].of) / med(plain, rows[kPeak].of);
    std::printf("\naim: portal throughput >= 0.50x plain:       %.2fx  %s\n", ratio,
                verdict(ratio >= 0.5));
  }
  if (options.portal) {
    const double p99 = med(portal, rows[kHalfP99].of);
    std::printf("aim: portal p99 < 1000 us at 50%% of its peak: %.0f us  %s\n", p99,
                verdict(p99 < 1000 && !portal.empty() && portal.back().half.ok));
  }
  std::printf("(per-run portal/plain peak ratios:");
  for (size_t i = 0; i < std::min(plain.size(), portal.size()); ++i) {
    std::printf(" %.2f", portal[i].peak.rate / plain[i].peak.rate);
  }
  std::printf(")\n");

  const size_t count = options.quick ? 2000 : 20000;
  const auto steps = messagePath(peers, options.size, count);
  double sum = 0;
  for (const auto& step : steps) {
    sum += step.nanos * step.perRoundTrip;
  }
  std::printf("\nthe portal's message path on one thread, %zu messages of ~%zu bytes:\n", count,
              options.size);
  std::printf("%-40s %10s %8s %12s\n", "step", "ns/msg", "per rt", "share of rt");
  for (const auto& step : steps) {
    std::printf("%-40s %10.0f %8d %11.0f%%\n", step.name, step.nanos, step.perRoundTrip,
                100.0 * step.nanos * step.perRoundTrip / sum);
  }
  std::printf("%-40s %10.0f ns per round trip\n", "sum (2 x each step + one envelope)", sum);
  if (options.plain && options.portal) {
    std::printf(
        "measured at peak: portal %.2f us - plain %.2f us = %.2f us more CPU per round "
        "trip\n",
        med(portal, rows[kPeakCpu].of), med(plain, rows[kPeakCpu].of),
        med(portal, rows[kPeakCpu].of) - med(plain, rows[kPeakCpu].of));
  }
  return 0;
}
