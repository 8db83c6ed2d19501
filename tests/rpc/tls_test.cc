// TLS and mutual TLS on the TCP endpoint, with certificates made by the openssl CLI for the
// suite: a CA, a server certificate for 127.0.0.1 and localhost, a client certificate, and a
// second CA that signed neither.

#include <cstdlib>

#include <fcntl.h>
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "mocks/mock_posix.h"
#include "rpc/rpc_support.h"

namespace snow::testing {
namespace {

using ::testing::_;
using ::testing::AnyOf;
using ::testing::HasSubstr;
using ::testing::NiceMock;
using ::testing::Return;
using ::testing::StrEq;
namespace pb = rpc::v1;

class TlsTest : public RpcFixture {
 protected:
  static void SetUpTestSuite() {
    certs_ = new TempDir();
    const std::string d = certs_->path();
    if (std::system("command -v openssl >/dev/null 2>&1") != 0) {
      setupError_ = new std::string(
          "the openssl command is not installed (Debian: apt-get install openssl; "
          "scripts/install-deps does it)");
      return;
    }
    writeFile(d + "/ca.ext",
              "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n");
    writeFile(d + "/server.ext",
              "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"
              "extendedKeyUsage=serverAuth\n");
    writeFile(d + "/client.ext", "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n");
    // EC keys: quick to make, and what gRPC's TLS handles best.
    const std::string key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    const std::vector<std::string> commands = {
        fmt::format("openssl req -x509 {} -keyout {d}/ca.key -out {d}/ca.pem -days 2 "
                    "-subj /CN=snow-test-ca -addext basicConstraints=critical,CA:TRUE "
                    "-addext keyUsage=critical,keyCertSign,cRLSign",
                    key, fmt::arg("d", d)),
        fmt::format("openssl req -x509 {} -keyout {d}/other-ca.key -out {d}/other-ca.pem -days 2 "
                    "-subj /CN=snow-test-other-ca -addext basicConstraints=critical,CA:TRUE "
                    "-addext keyUsage=critical,keyCertSign,cRLSign",
                    key, fmt::arg("d", d)),
        fmt::format("openssl req -new {} -keyout {d}/server.key -out {d}/server.csr "
                    "-subj /CN=localhost",
                    key, fmt::arg("d", d)),
        fmt::format("openssl x509 -req -in {d}/server.csr -CA {d}/ca.pem -CAkey {d}/ca.key "
                    "-CAcreateserial -out {d}/server.pem -days 2 -extfile {d}/server.ext",
                    fmt::arg("d", d)),
        fmt::format("openssl req -new {} -keyout {d}/client.key -out {d}/client.csr "
                    "-subj /CN=snow-test-client",
                    key, fmt::arg("d", d)),
        fmt::format("openssl x509 -req -in {d}/client.csr -CA {d}/ca.pem -CAkey {d}/ca.key "
                    "-CAcreateserial -out {d}/client.pem -days 2 -extfile {d}/client.ext",
                    fmt::arg("d", d)),
    };
    for (const std::string& command : commands) {
      if (std::system((command + " >>" + d + "/openssl.log 2>&1").c_str()) != 0) {
        setupError_ =
            new std::string(fmt::format("'{}' failed:\n{}", command, readFile(d + "/openssl.log")));
        return;
      }
    }
  }

  static void TearDownTestSuite() {
    delete certs_;
    certs_ = nullptr;
    delete setupError_;
    setupError_ = nullptr;
  }

  void SetUp() override {
    ASSERT_EQ(setupError_, nullptr) << *setupError_;
    addEcho();
  }

  static std::string cert(const std::string& name) { return certs_->file(name); }

  // A TLS server on 127.0.0.1; returns its address.
  std::string startTlsServer(bool requireClientCert = false) {
    rpc::TlsFiles tls;
    tls.certFile = cert("server.pem");
    tls.keyFile = cert("server.key");
    if (requireClientCert) {
      tls.caFile = cert("ca.pem");
      tls.requireClientCert = true;
    }
    rpc::Server& server = startServer("", /*tcp=*/true, tls);
    return fmt::format("127.0.0.1:{}", server.tcpPort());
  }

  Future<std::shared_ptr<const pb::PingReply>> callWith(const std::string& address,
                                                        std::optional<rpc::TlsFiles> tls) {
    rpc::ClientOptions options;
    options.tls = std::move(tls);
    options.seed = 1;
    clients_.push_back(std::make_unique<rpc::Client>(*loop_, std::move(options)));
    rpc::CallOptions call;
    call.timeout = 3s;
    call.idempotent = false;  // One attempt: its error is the handshake's.
    return clients_.back()->call<pb::PingReply>(address, kEcho, pingRequest("secret"),
                                                std::move(call));
  }

  ~TlsTest() override { clients_.clear(); }

  static rpc::TlsFiles trusting(const std::string& ca) {
    rpc::TlsFiles tls;
    tls.caFile = cert(ca);
    return tls;
  }

  static inline TempDir* certs_ = nullptr;
  static inline std::string* setupError_ = nullptr;
  std::vector<std::unique_ptr<rpc::Client>> clients_;
};

TEST_F(TlsTest, ACallSucceedsWhenTheClientTrustsTheServersCa) {
  const std::string address = startTlsServer();
  auto reply = callWith(address, trusting("ca.pem"));
  ASSERT_TRUE(await(*loop_, reply));
  ASSERT_TRUE(reply.hasValue()) << errorOf(reply);
  EXPECT_EQ(reply.value()->payload(), "secret");
}

TEST_F(TlsTest, TheServerNameMayBeOverridden) {
  const std::string address = startTlsServer();
  rpc::TlsFiles good = trusting("ca.pem");
  good.serverName = "localhost";
  auto named = callWith(address, good);
  rpc::TlsFiles bad = trusting("ca.pem");
  bad.serverName = "elsewhere.example";
  auto misnamed = callWith(address, bad);
  ASSERT_TRUE(await(*loop_, named));
  ASSERT_TRUE(await(*loop_, misnamed));
  EXPECT_TRUE(named.hasValue()) << errorOf(named);
  EXPECT_EQ(codeOf(misnamed), rpc::Code::Unavailable) << errorOf(misnamed);
}

TEST_F(TlsTest, TheWrongCaFailsClearlyWithUnavailable) {
  const std::string address = startTlsServer();
  const auto start = loop_->now();
  auto reply = callWith(address, trusting("other-ca.pem"));
  ASSERT_TRUE(await(*loop_, reply));
  EXPECT_EQ(codeOf(reply), rpc::Code::Unavailable) << errorOf(reply);
  EXPECT_THAT(errorOf(reply),
              AnyOf(HasSubstr("andshake"), HasSubstr("certificate"), HasSubstr("CERTIFICATE")));
  EXPECT_LT(since(start), 2s) << "a handshake failure should not wait for the deadline";
}

TEST_F(TlsTest, APlaintextClientCannotTalkToATlsServer) {
  const std::string address = startTlsServer();
  auto reply = callWith(address, std::nullopt);
  ASSERT_TRUE(await(*loop_, reply));
  EXPECT_THAT(codeOf(reply), AnyOf(rpc::Code::Unavailable, rpc::Code::Internal)) << errorOf(reply);
}

TEST_F(TlsTest, MutualTlsAcceptsAClientCertificateSignedByTheCa) {
  const std::string address = startTlsServer(/*requireClientCert=*/true);
  rpc::TlsFiles tls = trusting("ca.pem");
  tls.certFile = cert("client.pem");
  tls.keyFile = cert("client.key");
  auto reply = callWith(address, tls);
  ASSERT_TRUE(await(*loop_, reply));
  ASSERT_TRUE(reply.hasValue()) << errorOf(reply);
  EXPECT_EQ(reply.value()->payload(), "secret");
}

TEST_F(TlsTest, MutualTlsRefusesAClientWithoutACertificate) {
  const std::string address = startTlsServer(/*requireClientCert=*/true);
  const auto start = loop_->now();
  auto reply = callWith(address, trusting("ca.pem"));
  ASSERT_TRUE(await(*loop_, reply));
  EXPECT_EQ(codeOf(reply), rpc::Code::Unavailable) << errorOf(reply);
  EXPECT_LT(since(start), 2s);
}

TEST_F(TlsTest, MutualTlsRefusesAClientCertificateFromAnotherCa) {
  const std::string address = startTlsServer(/*requireClientCert=*/true);
  rpc::TlsFiles tls = trusting("ca.pem");
  tls.certFile = cert("other-ca.pem");  // Self-signed by the other CA.
  tls.keyFile = cert("other-ca.key");
  auto reply = callWith(address, tls);
  ASSERT_TRUE(await(*loop_, reply));
  EXPECT_EQ(codeOf(reply), rpc::Code::Unavailable) << errorOf(reply);
}

TEST_F(TlsTest, AClientWithAnUnreadableTlsFileRejectsTheCallNamingTheFile) {
  const std::string address = startTlsServer();
  rpc::TlsFiles tls = trusting("ca.pem");
  tls.caFile = dir_.file("missing-ca.pem");
  Future<std::shared_ptr<const pb::PingReply>> reply;
  ASSERT_NO_THROW(reply = callWith(address, tls)) << "a call must reject, not throw";
  ASSERT_TRUE(await(*loop_, reply));
  EXPECT_EQ(codeOf(reply), rpc::Code::FailedPrecondition) << errorOf(reply);
  EXPECT_THAT(errorOf(reply), HasSubstr(dir_.file("missing-ca.pem")));
  // Unix sockets never use TLS: the same client still reaches them.
  auto local = clients_.back()->call<pb::PingReply>("unix:" + dir_.file("none.sock"), kEcho,
                                                    pingRequest(""));
  ASSERT_TRUE(await(*loop_, local));
  EXPECT_EQ(codeOf(local), rpc::Code::Unavailable) << errorOf(local);
}

std::string startErrorOf(rpc::Server& server) {
  try {
    server.start();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

TEST_F(TlsTest, AnUnreadableCertificateFileStopsStartNamingTheFile) {
  rpc::ServerOptions options;
  options.tcpListen = "127.0.0.1:0";
  options.tls = rpc::TlsFiles{cert("server.pem"), cert("server.key"), "", false, ""};

  options.tls->certFile = dir_.file("missing.pem");
  rpc::Server missing(*loop_, services_, *layer_, options);
  EXPECT_THAT(startErrorOf(missing),
              HasSubstr("cannot read the TLS certificate " + dir_.file("missing.pem") +
                        ": No such file or directory"));

  options.tls->certFile = dir_.path();
  rpc::Server directory(*loop_, services_, *layer_, options);
  EXPECT_THAT(startErrorOf(directory),
              HasSubstr("cannot read the TLS certificate " + dir_.path() + ": Is a directory"));

  writeFile(dir_.file("junk.pem"), "not a certificate\n");
  options.tls->certFile = dir_.file("junk.pem");
  rpc::Server junk(*loop_, services_, *layer_, options);
  EXPECT_THAT(startErrorOf(junk),
              HasSubstr("the TLS certificate " + dir_.file("junk.pem") + " is not in PEM format"));

  options.tls->certFile = cert("server.pem");
  options.tls->keyFile = dir_.file("missing.key");
  rpc::Server noKey(*loop_, services_, *layer_, options);
  EXPECT_THAT(startErrorOf(noKey),
              HasSubstr("cannot read the TLS key " + dir_.file("missing.key")));

  options.tls->keyFile = cert("server.key");
  options.tls->requireClientCert = true;  // Without a CA to check clients against.
  rpc::Server noCa(*loop_, services_, *layer_, options);
  EXPECT_THAT(startErrorOf(noCa), HasSubstr("require_client_cert needs ca_file"));
}

TEST_F(TlsTest, APermissionDeniedCertificateStopsStartNamingTheFile) {
  // As root every file is readable: the mock makes open() refuse, as it would for a daemon user.
  NiceMock<posix::MockPosix> os;
  ON_CALL(os, open(StrEq(cert("server.pem")), _, _))
      .WillByDefault(Return(posix::Result<int>{-1, EACCES}));
  rpc::ServerOptions options;
  options.tcpListen = "127.0.0.1:0";
  options.tls = rpc::TlsFiles{cert("server.pem"), cert("server.key"), "", false, ""};
  rpc::Server server(*loop_, services_, os, options);
  EXPECT_THAT(startErrorOf(server), HasSubstr("cannot read the TLS certificate " +
                                              cert("server.pem") + ": Permission denied"));
}

}  // namespace
}  // namespace snow::testing
