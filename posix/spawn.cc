// RealPosix::spawn: a child started with clone(CLONE_VM | CLONE_VFORK), as glibc's posix_spawn
// is, but with the steps posix_spawn cannot do (ids, limits, parent-death signal, LISTEN_PID).
//
// The child shares the parent's memory until it executes, so it must not touch anything the
// parent's threads use: no malloc, no locks, no errno (glibc keeps errno in the parent thread's
// TLS, which the child shares), no glibc set*id (glibc broadcasts those to the parent's threads).
// It therefore makes raw system calls only, and reports a failure through `ChildState`, which
// the parent reads after the child executed or exited (CLONE_VFORK suspends the parent until
// then). All signals are blocked across clone() so that no handler of the parent's runs in the
// child; the child sets every disposition to default before it unblocks them for execve.

#include <cerrno>
#include <csignal>

#include <fcntl.h>
#include <linux/close_range.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "real_posix.h"

#if !defined(__x86_64__)
#error "RealPosix::spawn's raw system calls are written for x86-64"
#endif

namespace snow::posix {
namespace {

constexpr size_t kChildStackBytes = size_t{64} * 1024;
constexpr int kMaxFds = 3 + 64;  // stdio and up to 64 passed descriptors.

// Everything the child runs is built without sanitizer instrumentation: the sanitizers' runtime
// keeps per-thread state that the child would share with the parent thread.
#define SNOW_CHILD_CODE __attribute__((no_sanitize("address", "thread", "undefined")))

// A system call without libc: returns the result, or -errno.
[[gnu::always_inline]] SNOW_CHILD_CODE inline long rawSyscall(long number, long a = 0, long b = 0,
                                                              long c = 0, long d = 0, long e = 0,
                                                              long f = 0) {
  long result = 0;
  register long r10 asm("r10") = d;
  register long r8 asm("r8") = e;
  register long r9 asm("r9") = f;
  asm volatile("syscall"
               : "=a"(result)
               : "a"(number), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
               : "rcx", "r11", "memory");
  return result;
}

template <typename T>
[[gnu::always_inline]] SNOW_CHILD_CODE inline long arg(T value) {
  if constexpr (std::is_pointer_v<T>) {
    return reinterpret_cast<long>(value);
  } else {
    return static_cast<long>(value);
  }
}

// The kernel's struct sigaction for rt_sigaction (not glibc's).
struct KernelSigaction {
  void* handler = nullptr;  // SIG_DFL
  unsigned long flags = 0;
  void* restorer = nullptr;
  unsigned long mask = 0;
};

struct ChildState {
  const SpawnRequest* request = nullptr;
  pid_t parent = 0;
  bool joinCgroup = false;  // clone3 could not start it in request->cgroupFd.
  int error = 0;            // Written by the child when a step fails.
  const char* step = nullptr;
};

// Records the failed step for the parent and ends the child.
SNOW_CHILD_CODE int fail(ChildState* state, const char* step, long result) {
  state->error = static_cast<int>(-result);
  state->step = step;
  rawSyscall(SYS_exit_group, 127);
  return 127;
}

// The child, between clone() and execve(): raw system calls on its own stack only.
SNOW_CHILD_CODE int childMain(void* raw) {
  auto* state = static_cast<ChildState*>(raw);
  const SpawnRequest& request = *state->request;
  long r = 0;

  // Default dispositions first: a handler of the parent's must never run here.
  const KernelSigaction defaults;
  for (int sig = 1; sig < 65; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP) {
      rawSyscall(SYS_rt_sigaction, sig, arg(&defaults), 0, sizeof(unsigned long));
    }
  }
  if (state->joinCgroup) {
    const long procs =
        rawSyscall(SYS_openat, request.cgroupFd, arg("cgroup.procs"), O_WRONLY | O_CLOEXEC);
    if (procs < 0) {
      return fail(state, "open(cgroup.procs)", procs);
    }
    if ((r = rawSyscall(SYS_write, procs, arg("0"), 1)) < 0) {
      return fail(state, "write(cgroup.procs)", r);
    }
    rawSyscall(SYS_close, procs);
  }
  if (request.newSession && (r = rawSyscall(SYS_setsid)) < 0) {
    return fail(state, "setsid", r);
  }
  if (request.cwd != nullptr && (r = rawSyscall(SYS_chdir, arg(request.cwd))) < 0) {
    return fail(state, "chdir", r);
  }
  for (const auto& limit : request.limits) {
    if ((r = rawSyscall(SYS_prlimit64, 0, limit.resource, arg(&limit.value), 0)) < 0) {
      return fail(state, "setrlimit", r);
    }
  }

  // Descriptors: first copy every source above the targets, so that placing one never
  // overwrites another's source; then place them; then close everything else.
  const int sources[3] = {request.stdinFd, request.stdoutFd, request.stderrFd};
  const int count = 3 + static_cast<int>(request.passFds.size());
  int copies[kMaxFds];
  for (int i = 0; i < count; ++i) {
    const int source = i < 3 ? sources[i] : request.passFds[static_cast<size_t>(i - 3)];
    copies[i] = -1;
    if (source >= 0 &&
        (copies[i] = static_cast<int>(rawSyscall(SYS_fcntl, source, F_DUPFD_CLOEXEC, count))) < 0) {
      return fail(state, "fcntl(F_DUPFD)", copies[i]);
    }
  }
  for (int i = 0; i < count; ++i) {
    if (copies[i] >= 0 && (r = rawSyscall(SYS_dup3, copies[i], i, 0)) < 0) {
      return fail(state, "dup3", r);
    }
  }
  r = rawSyscall(SYS_close_range, count, ~0U, 0);
  if (r < 0 && r != -ENOSYS) {
    return fail(state, "close_range", r);
  }

  if (request.setIds) {
    if ((r = rawSyscall(SYS_setgroups, static_cast<long>(request.groups.size()),
                        arg(request.groups.data()))) < 0) {
      return fail(state, "setgroups", r);
    }
    if ((r = rawSyscall(SYS_setresgid, request.gid, request.gid, request.gid)) < 0) {
      return fail(state, "setresgid", r);
    }
    if ((r = rawSyscall(SYS_setresuid, request.uid, request.uid, request.uid)) < 0) {
      return fail(state, "setresuid", r);
    }
  }
  if (request.parentDeathSignal != 0) {
    if ((r = rawSyscall(SYS_prctl, PR_SET_PDEATHSIG, request.parentDeathSignal)) < 0) {
      return fail(state, "prctl(PR_SET_PDEATHSIG)", r);
    }
    // The parent may have died before the signal was armed: then nobody would send it.
    if (rawSyscall(SYS_getppid) != state->parent) {
      return fail(state, "getppid", -ESRCH);
    }
  }
  if (request.listenPidEntry != nullptr) {
    // "LISTEN_PID=" then 20 characters of room: the pid in decimal, NUL-terminated.
    char* digits = request.listenPidEntry + 11;
    long pid = rawSyscall(SYS_getpid);
    char reversed[20];
    int n = 0;
    do {
      reversed[n++] = static_cast<char>('0' + pid % 10);
      pid /= 10;
    } while (pid > 0 && n < 19);
    for (int i = 0; i < n; ++i) {
      digits[i] = reversed[n - 1 - i];
    }
    digits[n] = '\0';
  }
  const unsigned long empty = 0;
  rawSyscall(SYS_rt_sigprocmask, SIG_SETMASK, arg(&empty), 0, sizeof(empty));
  r = rawSyscall(SYS_execve, arg(request.path), arg(request.argv), arg(request.envp));
  return fail(state, "execve", r);
}

// struct clone_args of clone3(2), up to `cgroup` (Linux 5.7).
struct CloneArgs {
  uint64_t flags = 0;
  uint64_t pidfd = 0;
  uint64_t childTid = 0;
  uint64_t parentTid = 0;
  uint64_t exitSignal = 0;
  uint64_t stack = 0;
  uint64_t stackSize = 0;
  uint64_t tls = 0;
  uint64_t setTid = 0;
  uint64_t setTidSize = 0;
  uint64_t cgroup = 0;
};
constexpr uint64_t kCloneIntoCgroup = 0x200000000ULL;  // CLONE_INTO_CGROUP

// clone3 has no libc wrapper that runs a function on the new stack: the child resumes after the
// syscall instruction on `args->stack`, so the jump to childMain is written here. The child keeps
// the parent's registers (but rax, rcx, r11), so r12 and r13 carry the function and its argument.
// Returns the child's pid or -errno, in the parent only; the child never returns from here.
[[gnu::noinline]] SNOW_CHILD_CODE long clone3Into(CloneArgs* args, int (*fn)(void*), void* fnArg) {
  long result = 0;
  register long function asm("r12") = reinterpret_cast<long>(fn);
  register long argument asm("r13") = reinterpret_cast<long>(fnArg);
  asm volatile(
      "syscall\n\t"
      "test %%rax, %%rax\n\t"
      "jnz 1f\n\t"
      "xor %%ebp, %%ebp\n\t"  // The child: a fresh stack, aligned for the call.
      "mov %%r13, %%rdi\n\t"
      "call *%%r12\n\t"
      "mov %%eax, %%edi\n\t"
      "mov $231, %%eax\n\t"  // exit_group(childMain's result); childMain never returns, though.
      "syscall\n\t"
      "hlt\n\t"
      "1:\n\t"
      : "=a"(result)
      : "a"(SYS_clone3), "D"(args), "S"(sizeof(CloneArgs)), "r"(function), "r"(argument)
      : "rcx", "r11", "memory");
  return result;
}

}  // namespace

Result<pid_t> RealPosix::spawn(const SpawnRequest& request) {
  if (request.path == nullptr || request.argv == nullptr || request.envp == nullptr ||
      request.passFds.size() > static_cast<size_t>(kMaxFds - 3)) {
    return {-1, EINVAL};
  }
  void* stack = ::mmap(nullptr, kChildStackBytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (stack == MAP_FAILED) {
    return {-1, errno};
  }
  ChildState state;
  state.request = &request;
  state.parent = ::getpid();
  sigset_t all;
  sigset_t old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pid_t pid = -1;
  int cloneError = 0;
  if (request.cgroupFd >= 0) {
    CloneArgs args;
    args.flags = CLONE_VM | CLONE_VFORK | kCloneIntoCgroup;
    args.exitSignal = SIGCHLD;
    args.stack = reinterpret_cast<uint64_t>(stack);
    args.stackSize = kChildStackBytes;
    args.cgroup = static_cast<uint64_t>(request.cgroupFd);
    const long r = clone3Into(&args, &childMain, &state);
    pid = static_cast<pid_t>(r);
    cloneError = r < 0 ? static_cast<int>(-r) : 0;
    // No clone3, or none with CLONE_INTO_CGROUP: the child joins the cgroup itself.
    state.joinCgroup = r == -ENOSYS || r == -E2BIG || r == -EINVAL;
  }
  if (request.cgroupFd < 0 || state.joinCgroup) {
    pid = ::clone(&childMain, static_cast<char*>(stack) + kChildStackBytes,
                  CLONE_VM | CLONE_VFORK | SIGCHLD, &state);
    cloneError = errno;
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  ::munmap(stack, kChildStackBytes);
  if (pid < 0) {
    return {-1, cloneError};
  }
  if (state.error != 0) {
    // The child exited before executing: reap it here, its exit is not news to anyone.
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (request.failedStep != nullptr) {
      *request.failedStep = state.step;
    }
    return {-1, state.error};
  }
  return {pid, 0};
}

}  // namespace snow::posix
