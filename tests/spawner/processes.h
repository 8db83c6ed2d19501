#pragma once

// What the spawner tests check from outside: processes in /proc, and a client that connects to a
// port over and over (to see that a socket-activated service never refuses). Test code: it calls
// the OS directly on purpose.

#include <atomic>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <thread>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

namespace snow::testing {

// The state of `pid` in /proc: 'R', 'S', 'Z', ... or '\0' when there is no such process.
inline char processState(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t paren = all.rfind(')');
  return paren == std::string::npos || paren + 2 >= all.size() ? '\0' : all[paren + 2];
}

// Dead: no such process, or a zombie nobody reaped yet.
inline bool gone(pid_t pid) {
  const char state = processState(pid);
  return state == '\0' || state == 'Z' || state == 'X';
}

// Connects to 127.0.0.1:`port` in a loop on its own thread until stopped, reading each answer.
class ConnectLoop {
 public:
  explicit ConnectLoop(uint16_t port) : port_(port), thread_([this] { run(); }) {}
  ~ConnectLoop() { stop(); }
  ConnectLoop(const ConnectLoop&) = delete;
  ConnectLoop& operator=(const ConnectLoop&) = delete;

  void stop() {
    done_ = true;
    if (thread_.joinable()) {
      thread_.join();
    }
  }
  [[nodiscard]] int answered() const { return answered_; }
  [[nodiscard]] int refused() const { return refused_; }
  // The distinct answers (the serving pids); read after stop().
  [[nodiscard]] const std::set<std::string>& answers() const { return answers_; }

 private:
  void run() {
    while (!done_) {
      const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in to{};
      to.sin_family = AF_INET;
      to.sin_port = htons(port_);
      to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      if (::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof(to)) != 0) {
        ++refused_;
      } else {
        char buffer[32] = {};
        const ssize_t n = ::read(fd, buffer, sizeof(buffer) - 1);
        if (n > 0) {
          answers_.insert(std::string(buffer, static_cast<size_t>(n)));
          ++answered_;
        }
      }
      ::close(fd);
    }
  }

  uint16_t port_;
  std::atomic<bool> done_{false};
  std::atomic<int> answered_{0};
  std::atomic<int> refused_{0};
  std::set<std::string> answers_;
  std::thread thread_;
};

}  // namespace snow::testing
