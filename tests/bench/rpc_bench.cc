// The RPC layer against plain gRPC, in one run (docs/performance.md, "RPC (issue 4)"):
//   ping       unary Node/Ping, one call in flight: latency p50 and p99
//   ping       64 calls in flight: calls/s
//   dispatch   Node::dispatch() to another node whose handler answers at once, against plain gRPC
//              calling Node/Dispatch with a request of the same size: the same two measures
//
// "ours" is a started snow::rpc::Node calling through its client (Node::client().call(),
// Node::dispatch()) another started Node. "plain" is what grpc_cpp_plugin generates from the same
// node.proto: a CQ-driven async client (the calling thread drives its completion queue) against a
// classic CQ-driven async server (one thread, one completion queue). Two more pairs, our client
// against the plain server and the plain client against our server, tell which side a difference
// comes from.
//
// Each client and each server is a process of its own (this program again, with --serve or
// --client), so that every pair has the same shape, and so that the plain pair runs without any
// thread of ours in its processes: gRPC's poller hands its role between every thread waiting on a
// completion queue in a process, so our threads would slow a plain client sharing a process with
// them. (Two nodes cannot share a process anyway: StaticContext is one per process.) This process
// only sends the measurements to run and collects the figures.
//
// Every figure is the median over --repetitions runs; the runs of all pairs interleave, so that
// the machine's drift hits every pair alike. Ratios are ours/plain for latency (aim: at most 1.20)
// and for calls/s (aim: at least 0.80). Two more columns help to read them: voluntary context
// switches per call (thread hand-offs, one call in flight), and CPU time per call (64 in flight),
// both of the client and the server process together.
//
// Run: build/release/tests/bench/snow_rpc_bench [--repetitions=5] [--calls=2000]
//        [--throughput-calls=10000] [--in-flight=64] [--transports=tcp,unix]
//        [--methods=ping,dispatch] [--pairs=ours,plain,mixed] [--caller-serves=yes|no]

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <google/protobuf/util/time_util.h>
#include <google/protobuf/wrappers.pb.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <spawn.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "snow/contexts/static_context.h"
#include "snow/core/event.h"
#include "snow/core/future.h"
#include "snow/posix/active.h"
#include "snow/rpc/node.h"
#include "snow/rpc/v1/config.pb.h"
#include "snow/rpc/v1/node.grpc.pb.h"
#include "snow/rpc/v1/node.pb.h"

extern char** environ;

namespace {

namespace pb = snow::rpc::v1;
using Clock = std::chrono::steady_clock;
using google::protobuf::util::TimeUtil;

constexpr std::string_view kEchoType = "bench.echo";
constexpr size_t kPayloadBytes = 32;  // Ping's payload, and the dispatched event's StringValue.
constexpr auto kDeadline =
    std::chrono::seconds(10);  // Our client's default, set on plain calls too.
// The node id the plain peers use: as long as a snow node's (16 hex digits).
constexpr std::string_view kPlainNodeId = "00000000000000a1";

[[noreturn]] void die(const std::string& why) {
  std::fprintf(stderr, "snow_rpc_bench: %s\n", why.c_str());
  std::exit(1);
}

// Logs go to stderr, warnings and worse only: stdout carries the children's answers and the
// report.
void quietLogs() {
  auto logger = spdlog::stderr_color_mt("rpc-bench");
  logger->set_level(spdlog::level::warn);
  spdlog::set_default_logger(logger);
}

void writeLine(int fd, const std::string& line) {
  const std::string text = line + "\n";
  if (write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
    die("cannot write to a pipe: " + std::string(std::strerror(errno)));
  }
}

// One line without its newline; false at end of file.
bool readLine(int fd, std::string& line) {
  line.clear();
  char c = 0;
  for (;;) {
    const ssize_t got = read(fd, &c, 1);
    if (got == 1 && c == '\n') {
      return true;
    }
    if (got == 1) {
      line += c;
    } else if (got == 0 || errno != EINTR) {
      return false;
    }
  }
}

pb::PingRequest pingRequest() {
  pb::PingRequest request;
  request.set_payload(std::string(kPayloadBytes, 'p'));
  return request;
}

std::shared_ptr<google::protobuf::StringValue> eventPayload() {
  auto payload = std::make_shared<google::protobuf::StringValue>();
  payload->set_value(std::string(kPayloadBytes, 'e'));
  return payload;
}

// What Node::dispatch() sends (rpc/src/node.cc): a fresh event id, the type, the packed payload,
// the sender's id.
pb::DispatchRequest dispatchRequest(snow::EventId id, std::string_view sender) {
  pb::DispatchRequest request;
  request.set_event_id(id.toString());
  request.set_type(std::string(kEchoType));
  request.mutable_payload()->PackFrom(*eventPayload());
  request.set_sender_node_id(std::string(sender));
  return request;
}

// ---- Child: a snow-core node serving ------------------------------------------------------------

int serveSnow(const std::string& unixSocket) {
  snow::posix::PosixPtr os = snow::posix::makeDefaultPosix();
  snow::posix::ScopedInjector installed(*os);
  snow::StaticContext context;
  pb::RpcConfig config;
  config.set_unix_socket(unixSocket);
  config.set_listen("127.0.0.1:0");
  snow::rpc::Node node(context, config, {});
  // The dispatched events' handler: answers at once, with no result message.
  auto handler = context.events().on(snow::EventType::of(kEchoType), [](const snow::EventPtr&) {
    return snow::makeReadyFuture<snow::MessagePtr>(nullptr);
  });
  node.start();
  context.setNode(&node);
  int port = 0;
  for (const std::string& endpoint : node.endpoints()) {
    if (endpoint.starts_with("127.0.0.1:")) {
      port = std::stoi(endpoint.substr(endpoint.rfind(':') + 1));
    }
  }
  writeLine(1, "port " + std::to_string(port));
  snow::Dispatcher& loop = context.loop();
  snow::FileEventPtr input;
  input = loop.createFileEvent(
      0,
      [&](uint32_t) {
        char buffer[64];
        if (read(0, buffer, sizeof buffer) > 0) {
          return;
        }
        input->setEnabled(0);  // End of file: the measuring process is done.
        node.stop().whenSettled([&loop](const snow::Future<void>&) { loop.exit(); }).detach();
      },
      snow::FileReady::kRead);
  loop.run(snow::RunMode::UntilExit);
  input.reset();
  context.setNode(nullptr);
  return 0;
}

// ---- Child: a plain gRPC async server -----------------------------------------------------------

class PlainCall {
 public:
  virtual ~PlainCall() = default;
  virtual void proceed(bool ok) = 0;
};

// The classic state machine of gRPC's async examples: requested, answered, finished.
template <typename Req, typename Reply, auto Request>
class PlainUnary final : public PlainCall {
 public:
  using Answer = void (*)(const Req&, Reply&);
  PlainUnary(pb::Node::AsyncService& service, grpc::ServerCompletionQueue& queue, Answer answer)
      : service_(service), queue_(queue), answer_(answer), responder_(&context_) {
    (service_.*Request)(&context_, &request_, &responder_, &queue_, &queue_, this);
  }

  void proceed(bool ok) override {
    if (!ok || answered_) {
      delete this;
      return;
    }
    new PlainUnary(service_, queue_, answer_);
    answer_(request_, reply_);
    answered_ = true;
    responder_.Finish(reply_, grpc::Status::OK, this);
  }

 private:
  pb::Node::AsyncService& service_;
  grpc::ServerCompletionQueue& queue_;
  Answer answer_;
  grpc::ServerContext context_;
  Req request_;
  Reply reply_;
  grpc::ServerAsyncResponseWriter<Reply> responder_;
  bool answered_ = false;
};

// What a snow node's Ping handler answers (rpc/src/node.cc).
void answerPing(const pb::PingRequest& request, pb::PingReply& reply) {
  reply.set_node_id(std::string(kPlainNodeId));
  reply.set_payload(request.payload());
  *reply.mutable_time() =
      TimeUtil::NanosecondsToTimestamp(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                           std::chrono::system_clock::now().time_since_epoch())
                                           .count());
}

// Answers at once with no result, as the snow node does for a "bench.echo" event.
void answerDispatch(const pb::DispatchRequest& /*request*/, pb::DispatchReply& /*reply*/) {}

using PlainPing = PlainUnary<pb::PingRequest, pb::PingReply, &pb::Node::AsyncService::RequestPing>;
using PlainDispatch =
    PlainUnary<pb::DispatchRequest, pb::DispatchReply, &pb::Node::AsyncService::RequestDispatch>;

int servePlain(const std::string& unixSocket) {
  pb::Node::AsyncService service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.AddListeningPort("unix:" + unixSocket, grpc::InsecureServerCredentials());
  builder.RegisterService(&service);
  std::unique_ptr<grpc::ServerCompletionQueue> queue = builder.AddCompletionQueue();
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    die("the plain gRPC server cannot listen");
  }
  // As many calls requested ahead as our server has (rpc/src/server.cc), per method.
  for (int i = 0; i < 16; ++i) {
    new PlainPing(service, *queue, answerPing);
    new PlainDispatch(service, *queue, answerDispatch);
  }
  std::thread worker([&queue] {
    void* tag = nullptr;
    bool ok = false;
    while (queue->Next(&tag, &ok)) {
      static_cast<PlainCall*>(tag)->proceed(ok);
    }
  });
  writeLine(1, "port " + std::to_string(port));
  std::string line;
  while (readLine(0, line)) {
  }
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  queue->Shutdown();
  worker.join();
  return 0;
}

// ---- Children: the clients ----------------------------------------------------------------------

// What one measurement yields: in the client process, then sent to the measuring one.
struct Sample {
  std::vector<double> latencies;  // µs, one per call (timed runs only).
  double seconds = 0;
  int failures = 0;
  std::string firstError;
};

// Keeps `inFlight` calls going through our client until `calls` were made; on the loop.
template <typename Issue>
class LoopDriver {
 public:
  LoopDriver(snow::Dispatcher& loop, Issue issue) : loop_(loop), issue_(std::move(issue)) {}

  Sample run(int calls, int inFlight, bool timeEach) {
    timeEach_ = timeEach;
    toIssue_ = calls;
    if (timeEach) {
      sample_.latencies.reserve(static_cast<size_t>(calls));
    }
    const auto start = Clock::now();
    for (int i = 0; i < inFlight && toIssue_ > 0; ++i) {
      issueOne();
    }
    if (!loop_.runUntil([this] { return toIssue_ == 0 && outstanding_ == 0; },
                        std::chrono::minutes(5))) {
      die("calls through our client did not finish within 5 minutes");
    }
    sample_.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    return std::move(sample_);
  }

 private:
  void issueOne() {
    --toIssue_;
    ++outstanding_;
    const auto sent = Clock::now();
    issue_()
        .whenSettled([this, sent](const auto& settled) {
          const auto received = Clock::now();
          --outstanding_;
          if (settled.hasError()) {
            if (sample_.failures++ == 0) {
              sample_.firstError = snow::describe(settled.error());
            }
          } else if (timeEach_) {
            sample_.latencies.push_back(
                std::chrono::duration<double, std::micro>(received - sent).count());
          }
          if (toIssue_ > 0) {
            issueOne();
          }
        })
        .detach();
  }

  snow::Dispatcher& loop_;
  Issue issue_;
  Sample sample_;
  bool timeEach_ = false;
  int toIssue_ = 0;
  int outstanding_ = 0;
};

// The same with gRPC's generated stub: the calling thread issues the calls and drives the
// completion queue, as gRPC's async client examples do.
template <typename Req, typename Reply>
class PlainDriver {
 public:
  using Prepare = std::unique_ptr<grpc::ClientAsyncResponseReader<Reply>> (pb::Node::Stub::*)(
      grpc::ClientContext*, const Req&, grpc::CompletionQueue*);
  using MakeRequest = std::function<const Req&()>;

  PlainDriver(pb::Node::Stub& stub, Prepare prepare, MakeRequest makeRequest)
      : stub_(stub), prepare_(prepare), makeRequest_(std::move(makeRequest)) {}
  ~PlainDriver() {
    queue_.Shutdown();
    void* tag = nullptr;
    bool ok = false;
    while (queue_.Next(&tag, &ok)) {
    }
  }
  PlainDriver(const PlainDriver&) = delete;
  PlainDriver& operator=(const PlainDriver&) = delete;

  Sample run(int calls, int inFlight, bool timeEach) {
    Sample sample;
    if (timeEach) {
      sample.latencies.reserve(static_cast<size_t>(calls));
    }
    std::vector<Slot> slots(static_cast<size_t>(inFlight));
    int toIssue = calls;
    int outstanding = 0;
    const auto start = Clock::now();
    for (Slot& slot : slots) {
      if (toIssue == 0) {
        break;
      }
      issue(slot);
      --toIssue;
      ++outstanding;
    }
    void* tag = nullptr;
    bool ok = false;
    while (outstanding > 0 && queue_.Next(&tag, &ok)) {
      const auto received = Clock::now();
      auto& slot = *static_cast<Slot*>(tag);
      --outstanding;
      if (!ok || !slot.status.ok()) {
        if (sample.failures++ == 0) {
          sample.firstError = slot.status.error_message();
        }
      } else if (timeEach) {
        sample.latencies.push_back(
            std::chrono::duration<double, std::micro>(received - slot.sent).count());
      }
      if (toIssue > 0) {
        issue(slot);
        --toIssue;
        ++outstanding;
      }
    }
    sample.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    return sample;
  }

 private:
  struct Slot {
    std::unique_ptr<grpc::ClientContext> context;
    std::unique_ptr<grpc::ClientAsyncResponseReader<Reply>> reader;
    Reply reply;
    grpc::Status status;
    Clock::time_point sent;
  };

  void issue(Slot& slot) {
    slot.sent = Clock::now();
    slot.context = std::make_unique<grpc::ClientContext>();
    slot.context->set_deadline(std::chrono::system_clock::now() + kDeadline);
    slot.reader = (stub_.*prepare_)(slot.context.get(), makeRequest_(), &queue_);
    slot.reader->StartCall();
    slot.reader->Finish(&slot.reply, &slot.status, &slot);
  }

  pb::Node::Stub& stub_;
  Prepare prepare_;
  MakeRequest makeRequest_;
  grpc::CompletionQueue queue_;
};

double percentile(std::vector<double> values, double p) {
  if (values.empty()) {
    return NAN;
  }
  std::sort(values.begin(), values.end());
  const auto rank = static_cast<size_t>(std::ceil(p * static_cast<double>(values.size())));
  return values[std::clamp<size_t>(rank, 1, values.size()) - 1];
}

// A measurement request, one line on the client's stdin:
//   <ping|dispatch> <address> <calls> <in flight> <0|1: time each call>
// answered by one line on its stdout:
//   ok <seconds> <p50 µs> <p99 µs>   or   error <why>
struct Command {
  std::string method;
  std::string address;
  int calls = 0;
  int inFlight = 0;
  bool timeEach = false;
};

bool readCommand(Command& command) {
  std::string line;
  if (!readLine(0, line)) {
    return false;
  }
  char method[16] = {};
  char address[512] = {};
  int timeEach = 0;
  if (std::sscanf(line.c_str(), "%15s %511s %d %d %d", method, address, &command.calls,
                  &command.inFlight, &timeEach) != 5) {
    die("bad command '" + line + "'");
  }
  command.method = method;
  command.address = address;
  command.timeEach = timeEach != 0;
  return true;
}

void answer(const Sample& sample) {
  if (sample.failures != 0) {
    writeLine(1, "error " + std::to_string(sample.failures) +
                     " call(s) failed, the first with: " + sample.firstError);
    return;
  }
  char line[128];
  std::snprintf(line, sizeof line, "ok %.6f %.3f %.3f", sample.seconds,
                percentile(sample.latencies, 0.50), percentile(sample.latencies, 0.99));
  writeLine(1, line);
}

// A started node (it serves too, on its own unix socket, as every node does) calling out. With
// no socket, the node is not started: it calls without serving (--caller-serves=no).
int clientSnow(const std::string& unixSocket) {
  snow::posix::PosixPtr os = snow::posix::makeDefaultPosix();
  snow::posix::ScopedInjector installed(*os);
  snow::StaticContext context;
  pb::RpcConfig config;
  config.set_unix_socket(unixSocket);
  snow::rpc::Node node(context, config, {});
  if (!unixSocket.empty()) {
    node.start();
  }
  context.setNode(&node);
  snow::Dispatcher& loop = context.loop();
  const snow::EventType echo = snow::EventType::of(kEchoType);
  const pb::PingRequest ping = pingRequest();
  const auto payload = eventPayload();
  writeLine(1, "ready");
  Command command;
  while (readCommand(command)) {
    const std::string& peer = command.address;
    if (command.method == "ping") {
      LoopDriver driver(
          loop, [&] { return node.client().call<pb::PingReply>(peer, snow::rpc::kPing, ping); });
      answer(driver.run(command.calls, command.inFlight, command.timeEach));
    } else {
      LoopDriver driver(loop, [&] { return node.dispatch(peer, echo, payload); });
      answer(driver.run(command.calls, command.inFlight, command.timeEach));
    }
  }
  bool stopped = false;
  node.stop().whenSettled([&stopped](const snow::Future<void>&) { stopped = true; }).detach();
  loop.runUntil([&stopped] { return stopped; }, std::chrono::seconds(5));
  context.setNode(nullptr);
  return 0;
}

// grpc_cpp_plugin's stub, and nothing of ours.
int clientPlain() {
  std::map<std::string, std::unique_ptr<pb::Node::Stub>> stubs;  // By address.
  const pb::PingRequest ping = pingRequest();
  snow::EventId id{0x1234567890abcdefULL, 0};
  pb::DispatchRequest dispatch;
  auto freshDispatch = [&]() -> const pb::DispatchRequest& {
    ++id.sequence;
    dispatch = dispatchRequest(id, kPlainNodeId);
    return dispatch;
  };
  writeLine(1, "ready");
  Command command;
  while (readCommand(command)) {
    auto& stub = stubs[command.address];
    if (!stub) {
      stub = pb::Node::NewStub(
          grpc::CreateChannel(command.address, grpc::InsecureChannelCredentials()));
    }
    if (command.method == "ping") {
      PlainDriver<pb::PingRequest, pb::PingReply> driver(
          *stub, &pb::Node::Stub::PrepareAsyncPing,
          [&]() -> const pb::PingRequest& { return ping; });
      answer(driver.run(command.calls, command.inFlight, command.timeEach));
    } else {
      PlainDriver<pb::DispatchRequest, pb::DispatchReply> driver(
          *stub, &pb::Node::Stub::PrepareAsyncDispatch, freshDispatch);
      answer(driver.run(command.calls, command.inFlight, command.timeEach));
    }
  }
  return 0;
}

// ---- Parent: the processes ----------------------------------------------------------------------

struct Child {
  std::string name;
  pid_t pid = -1;
  int input = -1;   // Its stdin: commands; closing it ends the child.
  int output = -1;  // Its stdout: answers.
};

Child spawnChild(std::string name, std::vector<std::string> args) {
  int in[2];
  int out[2];
  if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) {
    die("pipe2 failed");
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in[0], 0);
  posix_spawn_file_actions_adddup2(&actions, out[1], 1);
  args.insert(args.begin(), "/proc/self/exe");
  std::vector<char*> argv;
  for (std::string& arg : args) {
    argv.push_back(arg.data());
  }
  argv.push_back(nullptr);
  Child child;
  child.name = std::move(name);
  if (int failed = posix_spawn(&child.pid, argv[0], &actions, nullptr, argv.data(), environ)) {
    die("posix_spawn: " + std::string(std::strerror(failed)));
  }
  posix_spawn_file_actions_destroy(&actions);
  close(in[0]);
  close(out[1]);
  child.input = in[1];
  child.output = out[0];
  return child;
}

std::string expectLine(const Child& child) {
  std::string line;
  if (!readLine(child.output, line)) {
    die("the " + child.name + " process ended unexpectedly");
  }
  return line;
}

void endChild(Child& child) {
  close(child.input);
  int status = 0;
  waitpid(child.pid, &status, 0);
  close(child.output);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::fprintf(stderr, "snow_rpc_bench: the %s process ended with status %d\n",
                 child.name.c_str(), status);
  }
}

// CPU time (user + system, all threads) of a process, in µs.
double cpuMicros(pid_t pid) {
  const std::string path = "/proc/" + std::to_string(pid) + "/stat";
  FILE* file = std::fopen(path.c_str(), "r");
  if (file == nullptr) {
    return 0;
  }
  char text[1024] = {};
  const size_t got = std::fread(text, 1, sizeof text - 1, file);
  std::fclose(file);
  // After the ")" that closes the command name: state is field 3, utime 14, stime 15.
  const char* rest = std::strrchr(text, ')');
  if (got == 0 || rest == nullptr) {
    return 0;
  }
  unsigned long utime = 0;
  unsigned long stime = 0;
  if (std::sscanf(rest + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime,
                  &stime) != 2) {
    return 0;
  }
  return static_cast<double>(utime + stime) * 1e6 / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// Voluntary context switches (a thread blocked and had to be woken) of every thread of a process.
// Per sequential call they count the thread hand-offs of a round trip, which the machine's load
// moves much less than it moves times.
double voluntarySwitches(pid_t pid) {
  const std::string tasks = "/proc/" + std::to_string(pid) + "/task";
  DIR* directory = opendir(tasks.c_str());
  if (directory == nullptr) {
    return 0;
  }
  double total = 0;
  while (const dirent* entry = readdir(directory)) {
    if (entry->d_name[0] == '.') {
      continue;
    }
    FILE* file = std::fopen((tasks + "/" + entry->d_name + "/status").c_str(), "r");
    if (file == nullptr) {
      continue;
    }
    char line[256];
    unsigned long count = 0;
    while (std::fgets(line, sizeof line, file) != nullptr) {
      if (std::sscanf(line, "voluntary_ctxt_switches: %lu", &count) == 1) {
        total += static_cast<double>(count);
      }
    }
    std::fclose(file);
  }
  closedir(directory);
  return total;
}

// ---- Parent: measuring --------------------------------------------------------------------------

struct Options {
  int repetitions = 5;
  int calls = 2000;
  int throughputCalls = 10000;
  int inFlight = 64;
  std::vector<std::string> transports{"tcp", "unix"};
  std::vector<std::string> methods{"ping", "dispatch"};
  std::vector<std::string> pairs{"ours", "plain", "mixed"};  // "mixed": the two cross pairs.
  // Whether the calling node serves too, as a daemon does. "no" is for diagnosis: it shows what
  // the server's idle completion-queue thread costs the node's calls (docs/performance.md).
  bool callerServes = true;
};

// One measured pair: a client against a server, for one method over one transport.
struct Pair {
  std::string method;     // "ping", "dispatch"
  std::string transport;  // "tcp", "unix"
  std::string name;       // "ours", "plain", "our client, plain server", ...
  Child* client = nullptr;
  Child* server = nullptr;
  std::string address;
  // One entry per repetition.
  std::vector<double> p50, p99, switchesPerCall, perSecond, cpuPerCall;
};

struct Figures {
  double seconds, p50, p99;
};

Figures run(const Pair& pair, int calls, int inFlight, bool timeEach) {
  writeLine(pair.client->input, pair.method + " " + pair.address + " " + std::to_string(calls) +
                                    " " + std::to_string(inFlight) + " " + (timeEach ? "1" : "0"));
  const std::string line = expectLine(*pair.client);
  Figures figures{};
  if (std::sscanf(line.c_str(), "ok %lf %lf %lf", &figures.seconds, &figures.p50, &figures.p99) !=
      3) {
    die(pair.method + " " + pair.transport + ", " + pair.name + ": " + line);
  }
  return figures;
}

void measure(Pair& pair, const Options& options) {
  auto switches = [&] {
    return voluntarySwitches(pair.client->pid) + voluntarySwitches(pair.server->pid);
  };
  auto cpu = [&] { return cpuMicros(pair.client->pid) + cpuMicros(pair.server->pid); };
  const double switchesBefore = switches();
  const Figures latency = run(pair, options.calls, 1, true);
  pair.switchesPerCall.push_back((switches() - switchesBefore) / options.calls);
  pair.p50.push_back(latency.p50);
  pair.p99.push_back(latency.p99);
  const double cpuBefore = cpu();
  const Figures throughput = run(pair, options.throughputCalls, options.inFlight, false);
  pair.cpuPerCall.push_back((cpu() - cpuBefore) / options.throughputCalls);
  pair.perSecond.push_back(options.throughputCalls / throughput.seconds);
}

double median(std::vector<double> values) {
  return percentile(std::move(values), 0.5);
}

std::vector<std::string> split(const std::string& text) {
  std::vector<std::string> parts;
  size_t begin = 0;
  while (begin <= text.size()) {
    const size_t comma = std::min(text.find(',', begin), text.size());
    parts.push_back(text.substr(begin, comma - begin));
    begin = comma + 1;
  }
  return parts;
}

bool contains(const std::vector<std::string>& list, const std::string& item) {
  return std::find(list.begin(), list.end(), item) != list.end();
}

int runBench(const Options& options) {
  for (const std::string& transport : options.transports) {
    if (transport != "tcp" && transport != "unix") {
      die("unknown transport '" + transport + "' (tcp, unix)");
    }
  }
  char tmpl[] = "/tmp/snow-rpc-bench-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) {
    die("mkdtemp failed");
  }
  const std::string directory = tmpl;
  Child snowServer = spawnChild("snow server", {"--serve=snow", "--unix=" + directory + "/s.sock"});
  Child plainServer =
      spawnChild("plain server", {"--serve=plain", "--unix=" + directory + "/p.sock"});
  Child snowClient = spawnChild(
      "snow client",
      {"--client=snow", "--unix=" + (options.callerServes ? directory + "/c.sock" : "")});
  Child plainClient = spawnChild("plain client", {"--client=plain"});
  std::map<const Child*, int> ports;
  for (Child* server : {&snowServer, &plainServer}) {
    const std::string line = expectLine(*server);
    if (!line.starts_with("port ") || std::atoi(line.c_str() + 5) <= 0) {
      die("the " + server->name + " did not start (said '" + line + "')");
    }
    ports[server] = std::atoi(line.c_str() + 5);
  }
  for (Child* client : {&snowClient, &plainClient}) {
    if (expectLine(*client) != "ready") {
      die("the " + client->name + " did not start");
    }
  }

  std::vector<Pair> pairs;
  for (const std::string& transport : options.transports) {
    for (const std::string& method : options.methods) {
      const std::tuple<std::string, std::string, Child*, Child*> kinds[] = {
          {"ours", "ours", &snowClient, &snowServer},
          {"plain", "plain", &plainClient, &plainServer},
          {"mixed", "our client, plain server", &snowClient, &plainServer},
          {"mixed", "plain client, our server", &plainClient, &snowServer},
      };
      for (const auto& [kind, name, client, server] : kinds) {
        if (!contains(options.pairs, kind)) {
          continue;
        }
        Pair pair;
        pair.method = method;
        pair.transport = transport;
        pair.name = name;
        pair.client = client;
        pair.server = server;
        pair.address = transport == "tcp"      ? "127.0.0.1:" + std::to_string(ports[server])
                       : server == &snowServer ? "unix:" + directory + "/s.sock"
                                               : "unix:" + directory + "/p.sock";
        pairs.push_back(std::move(pair));
      }
    }
  }

  std::printf(
      "snow_rpc_bench: median of %d repetitions; latency: %d sequential calls; throughput: %d "
      "calls, %d in flight\n",
      options.repetitions, options.calls, options.throughputCalls, options.inFlight);
  if (!options.callerServes) {
    std::printf("the calling node does not serve (--caller-serves=no): not a daemon's setup\n");
  }
  std::printf("request bytes: ping %zu, dispatch %zu (32-byte payloads; grpc %s)\n",
              pingRequest().ByteSizeLong(),
              dispatchRequest(snow::EventId{~0ULL, 1000}, kPlainNodeId).ByteSizeLong(),
              grpc::Version().c_str());
  std::fflush(stdout);

  for (Pair& pair : pairs) {  // Connections up, code paths warm.
    run(pair, 500, options.inFlight, false);
  }
  for (int repetition = 0; repetition < options.repetitions; ++repetition) {
    for (Pair& pair : pairs) {
      measure(pair, options);
    }
    std::fprintf(stderr, "repetition %d/%d done\n", repetition + 1, options.repetitions);
  }

  std::printf("\n%-8s %-4s  %-26s %8s %8s %8s %9s %8s\n", "method", "via", "pair", "p50 µs",
              "p99 µs", "switches", "calls/s", "cpu µs");
  for (const Pair& pair : pairs) {
    std::printf("%-8s %-4s  %-26s %8.0f %8.0f %8.1f %9.0f %8.0f\n", pair.method.c_str(),
                pair.transport.c_str(), pair.name.c_str(), median(pair.p50), median(pair.p99),
                median(pair.switchesPerCall), median(pair.perSecond), median(pair.cpuPerCall));
  }
  std::printf(
      "(switches: voluntary context switches per call, one call in flight; cpu µs: CPU time per "
      "call, %d in flight; both of the client and the server process together)\n",
      options.inFlight);

  std::printf("\n%-8s %-4s  %8s %8s %9s   %s\n", "method", "via", "p50", "p99", "calls/s",
              "ours/plain; aims: latency <= 1.20, calls/s >= 0.80");
  for (const Pair& ours : pairs) {
    const auto plain = std::find_if(pairs.begin(), pairs.end(), [&](const Pair& other) {
      return other.name == "plain" && other.method == ours.method &&
             other.transport == ours.transport;
    });
    if (ours.name != "ours" || plain == pairs.end()) {
      continue;
    }
    const double p50 = median(ours.p50) / median(plain->p50);
    const double p99 = median(ours.p99) / median(plain->p99);
    const double rate = median(ours.perSecond) / median(plain->perSecond);
    std::printf("%-8s %-4s  %8.2f %8.2f %9.2f   latency %s, calls/s %s\n", ours.method.c_str(),
                ours.transport.c_str(), p50, p99, rate,
                p50 <= 1.20 && p99 <= 1.20 ? "met" : "NOT met", rate >= 0.80 ? "met" : "NOT met");
  }

  for (Child* child : {&snowClient, &plainClient, &snowServer, &plainServer}) {
    endChild(*child);
  }
  for (const char* name : {"/s.sock", "/p.sock", "/c.sock"}) {
    unlink((directory + name).c_str());
  }
  rmdir(directory.c_str());
  return 0;
}

int positive(std::string_view value, std::string_view flag) {
  const int n = std::atoi(std::string(value).c_str());
  if (n <= 0) {
    die(std::string(flag) + " wants a positive number");
  }
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  std::string serve;
  std::string client;
  std::string unixSocket;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    const auto eq = arg.find('=');
    const std::string_view flag = arg.substr(0, eq);
    const std::string value(eq == std::string_view::npos ? "" : arg.substr(eq + 1));
    if (flag == "--serve") {
      serve = value;
    } else if (flag == "--client") {
      client = value;
    } else if (flag == "--unix") {
      unixSocket = value;
    } else if (flag == "--repetitions") {
      options.repetitions = positive(value, flag);
    } else if (flag == "--calls") {
      options.calls = positive(value, flag);
    } else if (flag == "--throughput-calls") {
      options.throughputCalls = positive(value, flag);
    } else if (flag == "--in-flight") {
      options.inFlight = positive(value, flag);
    } else if (flag == "--transports") {
      options.transports = split(value);
    } else if (flag == "--methods") {
      options.methods = split(value);
    } else if (flag == "--pairs") {
      options.pairs = split(value);
    } else if (flag == "--caller-serves" && (value == "yes" || value == "no")) {
      options.callerServes = value == "yes";
    } else {
      std::fprintf(stderr,
                   "usage: %s [--repetitions=N] [--calls=N] [--throughput-calls=N] "
                   "[--in-flight=N] [--transports=tcp,unix] [--methods=ping,dispatch] "
                   "[--pairs=ours,plain,mixed] [--caller-serves=yes|no]\n",
                   argv[0]);
      return 2;
    }
  }
  quietLogs();
  if (!serve.empty() || !client.empty()) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);  // Never outlive the measuring process.
  }
  if (serve == "snow") {
    return serveSnow(unixSocket);
  }
  if (serve == "plain") {
    return servePlain(unixSocket);
  }
  if (client == "snow") {
    return clientSnow(unixSocket);
  }
  if (client == "plain") {
    return clientPlain();
  }
  return runBench(options);
}
