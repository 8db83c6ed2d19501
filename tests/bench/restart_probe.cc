// snow_restart_probe: the service that snow_restart_bench has each supervisor keep running.
//
// Its first instruction reads CLOCK_MONOTONIC (the moment "the replacement is running"); it then
// writes one fixed-size record "<pid> <monotonic ns>\n" (RECORD_SIZE bytes) to the FIFO or file
// named by $SNOW_PROBE_FIFO, else by argv[1], and blocks in pause() until it is killed. (The
// variable comes first because s6-supervise runs ./run with the service directory as argv[1].) A
// write of at most PIPE_BUF bytes to a FIFO is atomic, so records of several probes never
// interleave; a regular file is opened with O_APPEND for the same reason.
//
// It is plain C-style code (no C++ runtime) linked statically (see CMakeLists.txt), so that its own
// exec costs as little as possible: no dynamic loader, no libstdc++ start-up.
//
// With $SNOW_PROBE_NOTIFY_FD set, it then writes "\n" to that descriptor and closes it: s6's
// readiness notification (the service directory's notification-fd), which s6-supervise 2.11
// needs in order to restart a service sooner than 1 s after its death.
//
// The FIFO is opened with O_NONBLOCK: without a reader (the bench has gone), open() fails with
// ENXIO instead of blocking; the probe says so on stderr and waits to be killed all the same.

#include <fcntl.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

enum { RECORD_SIZE = 32 };  // "%10d %20lld\n": must match kRecordSize in restart_bench.cc

// Writes `value` right-aligned in `width` characters, space-padded (no stdio in the probe).
static void formatField(char* out, int width, unsigned long long value) {
  for (int i = width - 1; i >= 0; --i) {
    out[i] = value != 0 || i == width - 1 ? static_cast<char>('0' + value % 10) : ' ';
    value /= 10;
  }
}

static void say(const char* text) {
  size_t n = 0;
  while (text[n] != '\0') {
    ++n;
  }
  if (write(STDERR_FILENO, text, n) < 0) {
    return;  // nowhere else to tell
  }
}

int main(int argc, char** argv) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  const char* out = getenv("SNOW_PROBE_FIFO");
  if (out == NULL || *out == '\0') {
    out = argc > 1 ? argv[1] : NULL;
  }
  if (out == NULL) {
    say("usage: snow_restart_probe FIFO (or SNOW_PROBE_FIFO=FIFO)\n");
    return 2;
  }
  char record[RECORD_SIZE];
  formatField(record, 10, static_cast<unsigned long long>(getpid()));
  record[10] = ' ';
  formatField(record + 11, 20,
              static_cast<unsigned long long>(now.tv_sec) * 1000000000ULL +
                  static_cast<unsigned long long>(now.tv_nsec));
  record[RECORD_SIZE - 1] = '\n';
  const int fd = open(out, O_WRONLY | O_APPEND | O_NONBLOCK | O_CLOEXEC);
  if (fd >= 0) {
    // One write; a FIFO write of RECORD_SIZE <= PIPE_BUF bytes is all or nothing.
    if (write(fd, record, RECORD_SIZE) != RECORD_SIZE) {
      close(fd);
      return 1;
    }
    close(fd);
  } else {
    say("snow_restart_probe: cannot open the record FIFO or file\n");
  }
  const char* notify = getenv("SNOW_PROBE_NOTIFY_FD");
  if (notify != NULL && *notify != '\0') {
    const int notifyFd = atoi(notify);
    if (write(notifyFd, "\n", 1) != 1) {
      say("snow_restart_probe: cannot write to SNOW_PROBE_NOTIFY_FD\n");
    }
    close(notifyFd);
  }
  for (;;) {
    pause();
  }
}
