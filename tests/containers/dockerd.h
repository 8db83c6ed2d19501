#pragma once

// A Docker engine for the container runner's tests, and build contexts for it.
//
// TestDockerd starts a dockerd of the suite's own, the way it is known to run on our machines: its
// own data root, exec root, pidfile and socket under a fresh /tmp/snow-dockerd-XXXXXX, and no
// change to the host's networking (no iptables, no ip forwarding or masquerading, no bridge), so
// containers run with NetworkMode "none". There is no registry: images are built FROM scratch
// with the static busybox copied in (busyboxContextTar).
//
// It needs root, dockerd (Debian: docker.io) and /bin/busybox (busybox-static). When one is
// missing, the suite fails, naming it: CI is meant to provide them, so nothing is skipped.
//
// Tests call the OS directly here (tests/tools/direct_call_check.h allows it): they set up the
// world the code under test meets.

#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <sys/types.h>

namespace snow::containers::testing {

class TestDockerd {
 public:
  // Starts dockerd and polls GET /_ping on its socket until it answers (or `timeout` passes).
  // Tries the storage drivers in order: overlay2, then vfs when dockerd cannot run on overlay2
  // (a data root on a file system that overlayfs cannot sit on, a kernel without it).
  // Throws std::runtime_error naming what is missing or went wrong, with the tail of dockerd's
  // log for each driver tried.
  static std::unique_ptr<TestDockerd> start(
      const std::vector<std::string>& storageDrivers = {"overlay2", "vfs"},
      std::chrono::milliseconds timeout = std::chrono::seconds(30));

  // SIGTERM, and SIGKILL to its process group when it has not exited after 20 s; then unmounts
  // what it left mounted under its directory and removes the directory.
  ~TestDockerd();
  TestDockerd(const TestDockerd&) = delete;
  TestDockerd& operator=(const TestDockerd&) = delete;

  [[nodiscard]] const std::string& socketPath() const { return socket_; }
  [[nodiscard]] const std::string& storageDriver() const { return driver_; }
  [[nodiscard]] const std::string& root() const { return root_; }
  [[nodiscard]] pid_t pid() const { return pid_; }
  // The last `lines` lines dockerd logged.
  [[nodiscard]] std::string logTail(size_t lines = 30) const;

 private:
  TestDockerd() = default;
  void stop();

  std::string root_;
  std::string socket_;
  std::string driver_;
  std::string log_;
  pid_t pid_ = -1;
};

// What keeps this machine from running the suite's dockerd, or "" when nothing does.
std::string missingPrerequisites();

// The Dockerfile of a busybox image:
//   FROM scratch
//   COPY busybox /bin/busybox
//   <extra, when given: further lines>
//   CMD <cmd, as a JSON array>
std::string busyboxDockerfile(const std::vector<std::string>& cmd, const std::string& extra = "");

// Writes that Dockerfile and a copy of /bin/busybox into the directory `dir` (which must exist).
void writeBusyboxContext(const std::string& dir, const std::vector<std::string>& cmd,
                         const std::string& extra = "");

// The same context as an uncompressed tar, in memory: what DockerEngine::build() takes.
std::string busyboxContextTar(const std::vector<std::string>& cmd, const std::string& extra = "");

// `text` as a JSON string, quotes included: `"` and `\` escaped, a newline as \n, other control
// characters as spaces (what a Dockerfile's JSON array and the bench's report need).
std::string jsonString(const std::string& text);

// A ustar archive of regular files (name, content), mode 0755.
std::string makeTar(const std::vector<std::pair<std::string, std::string>>& files);

// The fixture of suites that need a dockerd: the first test of the suite starts it
// (SetUpTestSuite), the suite's tests share it, and it is stopped after the last one
// (TearDownTestSuite). When it could not start, every test of the suite fails in SetUp() with
// the reason.
class DockerdTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite();
  static void TearDownTestSuite();
  void SetUp() override;

  // The suite's dockerd; only after SetUp() succeeded.
  static TestDockerd& dockerd() { return *dockerd_; }

 private:
  static inline std::unique_ptr<TestDockerd> dockerd_;
  static inline std::string startError_;
};

}  // namespace snow::containers::testing
