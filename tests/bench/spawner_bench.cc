// Spawn-and-reap throughput: the spawner's supervisor (a service restarted at once each time its
// child exits: spawn through Posix::spawn, reap on SIGCHLD from the loop, restart) against a bare
// posix_spawn + waitpid loop, in the same run, with the same program. Prints children per second
// and the ratio. Usage: snow_spawner_bench [children] [program]   (2000, /bin/true)
//
// Benchmark code: the bare loop calls the OS directly on purpose.

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <fcntl.h>
#include <spawn.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include "snow/core/process.h"
#include "snow/posix/active.h"

#include "cgroups.h"
#include "definition.h"
#include "service.h"

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;

double bare(int children, const char* program) {
  char* argv[] = {const_cast<char*>(program), nullptr};
  const auto start = Clock::now();
  for (int i = 0; i < children; ++i) {
    pid_t pid = 0;
    if (posix_spawn(&pid, program, nullptr, nullptr, argv, environ) != 0) {
      std::perror("posix_spawn");
      std::exit(1);
    }
    int status = 0;
    waitpid(pid, &status, 0);
  }
  return children / std::chrono::duration<double>(Clock::now() - start).count();
}

double spawner(int children, const char* program, bool cgroups) {
  auto os = snow::posix::makeDefaultPosix();
  snow::posix::ScopedInjector injected(*os);
  auto loop = snow::makeDispatcher("bench");
  snow::ChildReaper reaper(*loop, *os);
  const int devNull = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  std::unique_ptr<snow::spawner::Cgroups> tree;
  if (cgroups) {
    std::string why;
    tree = snow::spawner::Cgroups::open(*os, "auto", "spawner-bench", &why);
    if (!tree) {
      std::printf("  (no cgroups: %s)\n", why.c_str());
      return 0;
    }
  }
  int exited = 0;
  snow::spawner::ServiceEnvironment environment{
      *loop,
      *os,
      reaper,
      *spdlog::default_logger(),
      tree.get(),
      devNull,
      [&](snow::spawner::Lifecycle what, const std::shared_ptr<snow::spawner::pb::ServiceEvent>&) {
        exited += what == snow::spawner::Lifecycle::Exited ? 1 : 0;
      }};
  snow::spawner::pb::ServiceSpec spec;
  spec.set_command(program);
  spec.mutable_backoff()->mutable_reset_after()->set_nanos(1);  // Every restart immediate.
  spec.mutable_ready_after()->set_nanos(1);
  auto service = std::make_shared<snow::spawner::Service>(
      environment, snow::spawner::define(*os, "bench", spec, 10, "bench"),
      std::vector<std::shared_ptr<snow::spawner::ServiceSocket>>{}, "config");
  const auto start = Clock::now();
  service->start();
  loop->runUntil([&] { return exited >= children; }, std::chrono::minutes(5));
  const double rate = exited / std::chrono::duration<double>(Clock::now() - start).count();
  auto stopped = service->stop();
  loop->runUntil([&] { return stopped.isReady(); }, std::chrono::seconds(10));
  service.reset();
  ::close(devNull);
  return rate;
}

}  // namespace

int main(int argc, char** argv) {
  const int children = argc > 1 ? std::atoi(argv[1]) : 2000;
  const char* program = argc > 2 ? argv[2] : "/bin/true";
  spdlog::set_level(spdlog::level::warn);  // A log line per child would measure the terminal.
  std::printf("spawn-and-reap, %d children of %s, one after another\n", children, program);
  const double base = bare(children, program);
  std::printf("%-34s %9.0f children/s   1.00x\n", "bare posix_spawn + waitpid", base);
  const double plain = spawner(children, program, false);
  std::printf("%-34s %9.0f children/s   %.2fx\n", "spawner (no cgroup)", plain, plain / base);
  const double grouped = spawner(children, program, true);
  if (grouped > 0) {
    std::printf("%-34s %9.0f children/s   %.2fx\n", "spawner (cgroup per service)", grouped,
                grouped / base);
  }
  std::printf("aim: at least 0.50x of bare: %s\n", plain / base >= 0.5 ? "met" : "NOT met");
  return 0;
}
