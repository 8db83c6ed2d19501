// snow_spawner_child: the programs the spawner tests supervise, one per mode.
//
//   serve        accepts on fd 3 (checking LISTEN_FDS and LISTEN_PID first) and answers each
//                connection with its pid and a newline
//   env          prints its environment, cwd, uid/gid and the fds it has open, then exits
//   ignore-term  ignores SIGTERM, prints "ignoring SIGTERM", then waits forever
//   escape FILE  starts a grandchild that leaves the process group (setsid), writes the
//                grandchild's pid to FILE, then waits forever
//   chatter N    prints N numbered lines, one long line without a newline, then exits 0
//
// Test code: it calls the OS directly on purpose.

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

extern char** environ;

namespace {

int serve() {
  const char* fds = std::getenv("LISTEN_FDS");
  const char* pid = std::getenv("LISTEN_PID");
  if (fds == nullptr || std::strcmp(fds, "1") != 0 || pid == nullptr ||
      std::atoi(pid) != static_cast<int>(getpid())) {
    std::fprintf(stderr, "bad LISTEN_FDS/LISTEN_PID: %s %s\n", fds != nullptr ? fds : "-",
                 pid != nullptr ? pid : "-");
    return 2;
  }
  std::printf("serving as %d\n", static_cast<int>(getpid()));
  std::fflush(stdout);
  for (;;) {
    const int client = accept4(3, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) {
      return 3;
    }
    const std::string answer = std::to_string(getpid()) + "\n";
    (void)write(client, answer.data(), answer.size());
    close(client);
  }
}

int env() {
  for (char** e = environ; *e != nullptr; ++e) {
    std::printf("env %s\n", *e);
  }
  char cwd[4096];
  std::printf("cwd %s\n", getcwd(cwd, sizeof(cwd)) != nullptr ? cwd : "?");
  std::printf("ids %d %d\n", static_cast<int>(getuid()), static_cast<int>(getgid()));
  std::string open;
  for (int fd = 0; fd < 64; ++fd) {
    if (fcntl(fd, F_GETFD) >= 0) {
      open += (open.empty() ? "" : " ") + std::to_string(fd);
    }
  }
  std::printf("fds %s\n", open.c_str());
  std::printf("pgid %d sid %d pid %d\n", static_cast<int>(getpgrp()), static_cast<int>(getsid(0)),
              static_cast<int>(getpid()));
  return 0;
}

int ignoreTerm() {
  signal(SIGTERM, SIG_IGN);
  std::printf("ignoring SIGTERM\n");
  std::fflush(stdout);
  for (;;) {
    pause();
  }
}

int escape(const char* file) {
  // The grandchild reports itself only after setsid(), so whoever reads the report sees it
  // outside the service's process group already.
  const pid_t grandchild = fork();
  if (grandchild == 0) {
    setsid();
    FILE* out = std::fopen(file, "w");
    if (out == nullptr) {
      return 4;
    }
    std::fprintf(out, "%d\n", static_cast<int>(getpid()));
    std::fclose(out);
    std::printf("escaped: %d\n", static_cast<int>(getpid()));
    std::fflush(stdout);
    for (;;) {
      pause();
    }
  }
  for (;;) {
    pause();
  }
}

int chatter(int lines) {
  for (int i = 0; i < lines; ++i) {
    std::printf("line %d\n", i);
  }
  std::string tail(20000, 'x');
  std::printf("%s", tail.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "serve") {
    return serve();
  }
  if (mode == "env") {
    return env();
  }
  if (mode == "ignore-term") {
    return ignoreTerm();
  }
  if (mode == "escape" && argc > 2) {
    return escape(argv[2]);
  }
  if (mode == "chatter" && argc > 2) {
    return chatter(std::atoi(argv[2]));
  }
  std::fprintf(stderr, "usage: %s serve|env|ignore-term|escape FILE|chatter N\n", argv[0]);
  return 64;
}
