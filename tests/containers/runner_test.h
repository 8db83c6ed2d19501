#pragma once

// The fixture of suites that run real daemons with the containers module against the suite's
// dockerd (DockerdTest): a loop, a temporary directory, the docker CLI pointed at that engine,
// build contexts, and, after each test, every container the runner made removed, whatever the
// test did.

#include <set>
#include <string>
#include <utility>
#include <vector>

#include "snow/core/dispatcher.h"
#include "snow/posix/active.h"

#include "dockerd.h"
#include "support/files.h"

namespace snow::containers::testing {

class RunnerTest : public DockerdTest {
 protected:
  // `name` prefixes the temporary directory: /tmp/<name>-XXXXXX.
  explicit RunnerTest(const std::string& name);

  // Removes the containers labelled snow.job. A suite that runs daemons stops them first, so that
  // none makes a container after this looked.
  void TearDown() override;

  // The docker CLI against the suite's engine: its exit code and output.
  std::pair<int, std::string> docker(std::vector<std::string> args);
  // The full ids of the containers with `label` ("key" or "key=value").
  std::set<std::string> dockerIds(const std::string& label = "snow.job");
  // A new context directory `name` whose container runs `cmd` (writeBusyboxContext).
  std::string context(const std::string& name, const std::vector<std::string>& cmd,
                      const std::string& extra = "");

  posix::PosixPtr os_;
  posix::ScopedInjector injected_;
  DispatcherPtr loop_;
  snow::testing::TempDir dir_;
};

}  // namespace snow::containers::testing
