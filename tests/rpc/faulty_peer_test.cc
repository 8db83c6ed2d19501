// Peers that are not gRPC servers, or not well ones: every call still ends by its deadline with
// an error a person can read.

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "rpc/rpc_support.h"

namespace snow::testing {
namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;
namespace pb = rpc::v1;

// A TCP listening socket on 127.0.0.1 with a free port, optionally with an accepting side on the
// loop that answers every connection with `answer` and closes it.
class FakePeer {
 public:
  explicit FakePeer(Dispatcher& loop) : loop_(loop) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    EXPECT_GE(fd_, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    address.sin_port = 0;
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
    EXPECT_EQ(::listen(fd_, 16), 0);
    socklen_t length = sizeof address;
    EXPECT_EQ(::getsockname(fd_, reinterpret_cast<sockaddr*>(&address), &length), 0);
    port_ = ntohs(address.sin_port);
  }
  ~FakePeer() {
    watch_.reset();
    for (int fd : silent_) {
      ::close(fd);
    }
    ::close(fd_);
  }
  FakePeer(const FakePeer&) = delete;
  FakePeer& operator=(const FakePeer&) = delete;

  [[nodiscard]] std::string address() const { return fmt::format("127.0.0.1:{}", port_); }
  [[nodiscard]] int accepted() const { return accepted_; }

  // Accepts connections; answers each with `answer` and closes it, or keeps it open and silent
  // when `answer` is empty.
  void serve(std::string answer) {
    answer_ = std::move(answer);
    watch_ = loop_.createFileEvent(
        fd_,
        [this](uint32_t) {
          for (;;) {
            const int client = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
            if (client < 0) {
              return;
            }
            ++accepted_;
            if (answer_.empty()) {
              silent_.push_back(client);
              continue;
            }
            (void)!::write(client, answer_.data(), answer_.size());
            ::close(client);
          }
        },
        FileReady::kRead);
  }

 private:
  Dispatcher& loop_;
  int fd_ = -1;
  uint16_t port_ = 0;
  std::string answer_;
  FileEventPtr watch_;
  std::vector<int> silent_;
  int accepted_ = 0;
};

class FaultyPeerTest : public RpcFixture {
 protected:
  ~FaultyPeerTest() override { client_.reset(); }

  Future<std::shared_ptr<const pb::PingReply>> call(const std::string& address, Duration timeout,
                                                    bool idempotent) {
    rpc::CallOptions options;
    options.timeout = timeout;
    options.idempotent = idempotent;
    return client().call<pb::PingReply>(address, kEcho, pingRequest(""), std::move(options));
  }

  FakePeer peer_{*loop_};
};

TEST_F(FaultyPeerTest, AListenerThatNeverAcceptsEndsInDeadlineExceeded) {
  const auto start = loop_->now();
  auto reply = call(peer_.address(), 300ms, /*idempotent=*/true);
  ASSERT_TRUE(await(*loop_, reply, 3s));
  const Duration took = since(start);
  EXPECT_THAT(codeOf(reply), AnyOf(rpc::Code::DeadlineExceeded, rpc::Code::Unavailable))
      << errorOf(reply);
  EXPECT_THAT(errorOf(reply), HasSubstr(peer_.address()));
  EXPECT_THAT(errorOf(reply), HasSubstr("no answer within 300 ms"));
  EXPECT_GE(took, 280ms);
  EXPECT_LT(took, 1500ms) << "the call outlived its deadline";
}

TEST_F(FaultyPeerTest, APeerThatAcceptsAndStaysSilentEndsInDeadlineExceeded) {
  peer_.serve("");
  const auto start = loop_->now();
  auto reply = call(peer_.address(), 300ms, /*idempotent=*/false);
  ASSERT_TRUE(await(*loop_, reply, 3s));
  EXPECT_EQ(codeOf(reply), rpc::Code::DeadlineExceeded) << errorOf(reply);
  EXPECT_THAT(errorOf(reply), HasSubstr("no answer within 300 ms (1 attempt)"));
  EXPECT_LT(since(start), 1500ms);
  EXPECT_GE(peer_.accepted(), 1);
}

TEST_F(FaultyPeerTest, AnHttp1PeerFailsTheCallBeforeItsDeadline) {
  peer_.serve("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  const auto start = loop_->now();
  auto reply = call(peer_.address(), 2s, /*idempotent=*/false);
  ASSERT_TRUE(await(*loop_, reply, 5s));
  EXPECT_THAT(codeOf(reply), AnyOf(rpc::Code::Unavailable, rpc::Code::Internal)) << errorOf(reply);
  EXPECT_THAT(errorOf(reply), HasSubstr(peer_.address()));
  EXPECT_LT(since(start), 1500ms) << "waited for the deadline instead of failing";
  EXPECT_GE(peer_.accepted(), 1);
}

TEST_F(FaultyPeerTest, APeerWritingGarbageFailsTheCallBeforeItsDeadline) {
  std::string garbage;
  uint32_t x = 2463534242U;
  for (int i = 0; i < 256; ++i) {  // xorshift: arbitrary bytes, the same every run.
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    garbage.push_back(static_cast<char>(x & 0xff));
  }
  peer_.serve(garbage);
  const auto start = loop_->now();
  auto reply = call(peer_.address(), 2s, /*idempotent=*/false);
  ASSERT_TRUE(await(*loop_, reply, 5s));
  EXPECT_THAT(codeOf(reply), AnyOf(rpc::Code::Unavailable, rpc::Code::Internal)) << errorOf(reply);
  EXPECT_LT(since(start), 1500ms);
}

TEST_F(FaultyPeerTest, AnIdempotentCallToAGarbagePeerStillEndsByItsDeadline) {
  peer_.serve("HTTP/1.1 400 Bad Request\r\n\r\n");
  rpc::ClientOptions options;
  options.backoff.initial = 20ms;
  options.backoff.max = 50ms;
  client(options);
  const auto start = loop_->now();
  auto reply = call(peer_.address(), 400ms, /*idempotent=*/true);
  ASSERT_TRUE(await(*loop_, reply, 5s));
  EXPECT_THAT(codeOf(reply), AnyOf(rpc::Code::Unavailable, rpc::Code::DeadlineExceeded))
      << errorOf(reply);
  EXPECT_THAT(errorOf(reply), HasSubstr("attempts"));
  EXPECT_LT(since(start), 1500ms);
  EXPECT_GE(peer_.accepted(), 2) << "retried";
}

TEST_F(FaultyPeerTest, AClosedPortIsUnavailableAtOnce) {
  std::string address;
  {
    FakePeer gone(*loop_);
    address = gone.address();
  }  // Closed: connections to the port are refused.
  const auto start = loop_->now();
  auto reply = call(address, 2s, /*idempotent=*/false);
  ASSERT_TRUE(await(*loop_, reply, 5s));
  EXPECT_EQ(codeOf(reply), rpc::Code::Unavailable) << errorOf(reply);
  EXPECT_LT(since(start), 1s);
}

}  // namespace
}  // namespace snow::testing
