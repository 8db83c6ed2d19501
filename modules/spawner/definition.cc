#include "definition.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>
#include <google/protobuf/util/message_differencer.h>
#include <google/protobuf/util/time_util.h>
#include <sys/resource.h>
#include <unistd.h>

#include "snow/core/process.h"
#include "snow/posix/checked_posix.h"

namespace snow::spawner {
namespace {

using google::protobuf::util::TimeUtil;

constexpr std::string_view kDefaultPath =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

struct LimitName {
  std::string_view name;
  int resource;
};
constexpr std::array<LimitName, 15> kLimits{{
    {"as", RLIMIT_AS},
    {"core", RLIMIT_CORE},
    {"cpu", RLIMIT_CPU},
    {"data", RLIMIT_DATA},
    {"fsize", RLIMIT_FSIZE},
    {"locks", RLIMIT_LOCKS},
    {"memlock", RLIMIT_MEMLOCK},
    {"msgqueue", RLIMIT_MSGQUEUE},
    {"nice", RLIMIT_NICE},
    {"nofile", RLIMIT_NOFILE},
    {"nproc", RLIMIT_NPROC},
    {"rss", RLIMIT_RSS},
    {"rtprio", RLIMIT_RTPRIO},
    {"sigpending", RLIMIT_SIGPENDING},
    {"stack", RLIMIT_STACK},
}};

Duration fromProto(const google::protobuf::Duration& d, Duration fallback) {
  const int64_t ns = TimeUtil::DurationToNanoseconds(d);
  return ns == 0 ? fallback : Duration(ns);
}

// "4096", "unlimited"; false on anything else.
bool parseLimitValue(std::string_view text, rlim_t* out) {
  if (text == "unlimited" || text == "infinity") {
    *out = RLIM_INFINITY;
    return true;
  }
  if (text.empty() || text.size() > 19) {
    return false;
  }
  rlim_t value = 0;
  for (const char c : text) {
    if (c < '0' || c > '9') {
      return false;
    }
    value = value * 10 + static_cast<rlim_t>(c - '0');
  }
  *out = value;
  return true;
}

std::string quoted(const std::string& word) {
  const bool plain = !word.empty() && std::all_of(word.begin(), word.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0 ||
           std::strchr("-_./=:,@%+", c) != nullptr;
  });
  if (plain) {
    return word;
  }
  std::string out = "'";
  for (const char c : word) {
    out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  }
  return out + "'";
}

std::string errnoText(int errnum) {
  return std::strerror(errnum);  // NOLINT(concurrency-mt-unsafe): glibc's is thread-safe.
}

// Why looking up the account `name` failed: "no user 'x'", or the lookup's own error.
std::string lookupFailure(std::string_view kind, const std::string& name, int errnum) {
  return errnum == ENOENT
             ? fmt::format("no {} '{}'", kind, name)
             : fmt::format("cannot look up {} '{}': {}", kind, name, errnoText(errnum));
}

// The executable `command` names, searched in `path` when it has no slash; "" and a reason when
// there is none.
std::string resolveProgram(posix::Posix& os, const std::string& command, std::string_view path,
                           std::string* why) {
  auto usable = [&](const std::string& candidate, std::string* reason) {
    struct stat st {};
    if (auto r = posix::tolerant([&] { return os.stat(candidate.c_str(), &st); }); !r.ok()) {
      *reason = fmt::format("{}: {}", candidate, errnoText(r.errnum));
      return false;
    }
    if (!S_ISREG(st.st_mode)) {
      *reason = fmt::format("{} is not a regular file", candidate);
      return false;
    }
    if (auto r = os.access(candidate.c_str(), X_OK); !r.ok() || (st.st_mode & 0111) == 0) {
      *reason = fmt::format("{} is not executable (mode {:o})", candidate, st.st_mode & 07777);
      return false;
    }
    return true;
  };
  if (command.find('/') != std::string::npos) {
    if (command.front() != '/') {
      *why = fmt::format(
          "'{}' is relative: give an absolute path, or a bare name to look up in "
          "PATH",
          command);
      return "";
    }
    return usable(command, why) ? command : "";
  }
  std::string lastReason;
  size_t begin = 0;
  while (begin <= path.size()) {
    const size_t end = std::min(path.find(':', begin), path.size());
    const std::string_view dir = path.substr(begin, end - begin);
    begin = end + 1;
    if (dir.empty() || dir.front() != '/') {
      continue;
    }
    std::string candidate = fmt::format("{}/{}", dir, command);
    std::string reason;
    if (usable(candidate, &reason)) {
      return candidate;
    }
    if (reason.find("No such file") == std::string::npos) {
      lastReason = reason;
    }
  }
  *why = lastReason.empty() ? fmt::format("'{}' is not found in PATH ({})", command, path)
                            : lastReason;
  return "";
}

}  // namespace

bool validServiceName(std::string_view name) {
  return !name.empty() && name.size() <= 64 && name.front() != '.' &&
         std::all_of(name.begin(), name.end(), [](char c) {
           return std::isalnum(static_cast<unsigned char>(c)) != 0 ||
                  std::strchr("_.@-", c) != nullptr;
         });
}

std::string Definition::commandLine() const {
  std::string out;
  for (const auto& word : argv) {
    out += (out.empty() ? "" : " ") + quoted(word);
  }
  return out;
}

bool Definition::sameSpecAs(const Definition& other) const {
  return google::protobuf::util::MessageDifferencer::Equals(spec, other.spec);
}

Definition define(posix::Posix& os, const std::string& name, const pb::ServiceSpec& spec,
                  uint32_t defaultLogLines, const std::string& where) {
  std::vector<std::string> problems;
  auto problem = [&](std::string_view field, const std::string& text) {
    problems.push_back(fmt::format("{}.{}: {}", where, field, text));
  };
  Definition d;
  d.name = name;
  d.spec = spec;
  if (!validServiceName(name)) {
    problems.push_back(
        fmt::format("{}: '{}' is not a service name (letters, digits, '_', '.', "
                    "'@', '-'; at most 64; not starting with '.')",
                    where, name));
  }

  // Identity first: HOME and the environment depend on it.
  if (!spec.user().empty()) {
    auto user = os.lookupUser(spec.user().c_str());
    if (!user.ok()) {
      problem("user", lookupFailure("user", spec.user(), user.errnum));
    } else {
      d.setIds = true;
      d.uid = user.value.uid;
      d.gid = user.value.gid;
      d.groups = user.value.groups;
      d.env.push_back("HOME=" + user.value.home);
      d.env.push_back("USER=" + spec.user());
      d.env.push_back("LOGNAME=" + spec.user());
    }
  }
  if (!spec.group().empty()) {
    auto group = os.lookupGroup(spec.group().c_str());
    if (!group.ok()) {
      problem("group", lookupFailure("group", spec.group(), group.errnum));
    } else {
      if (!d.setIds) {  // Only a group: keep the daemon's user.
        d.setIds = true;
        d.uid = os.geteuid().value;
      }
      d.gid = group.value;
      if (std::find(d.groups.begin(), d.groups.end(), d.gid) == d.groups.end()) {
        d.groups.push_back(d.gid);
      }
    }
  }

  std::string path(kDefaultPath);
  for (const auto& [key, value] : spec.env()) {
    if (key.empty() || key.find('=') != std::string::npos || key.find('\0') != std::string::npos) {
      problem("env", fmt::format("'{}' is not a variable name", key));
      continue;
    }
    if (key.starts_with("LISTEN_")) {
      problem("env." + key, "LISTEN_* variables are set by the spawner for declared sockets");
      continue;
    }
    if (key == "PATH") {
      path = value;
    }
  }
  // Declared variables replace the defaults of the same name.
  std::erase_if(d.env, [&](const std::string& entry) {
    return spec.env().contains(entry.substr(0, entry.find('=')));
  });
  if (!spec.env().contains("PATH")) {
    d.env.push_back(fmt::format("PATH={}", path));
  }
  std::vector<std::string> declared;
  for (const auto& [key, value] : spec.env()) {
    declared.push_back(fmt::format("{}={}", key, value));
  }
  std::sort(declared.begin(), declared.end());  // Maps iterate in any order; children see one.
  d.env.insert(d.env.end(), declared.begin(), declared.end());

  if (spec.command().empty()) {
    problem("command", "missing: the program to run");
  } else {
    std::string why;
    d.program = resolveProgram(os, spec.command(), path, &why);
    if (d.program.empty()) {
      problem("command", why);
    }
  }
  d.argv.push_back(spec.command());
  d.argv.insert(d.argv.end(), spec.args().begin(), spec.args().end());

  d.workingDirectory = spec.working_directory().empty() ? "/" : spec.working_directory();
  if (d.workingDirectory.front() != '/') {
    problem("working_directory", fmt::format("'{}' is not an absolute path", d.workingDirectory));
  } else if (struct stat st{};
             !posix::tolerant([&] { return os.stat(d.workingDirectory.c_str(), &st); }).ok() ||
             !S_ISDIR(st.st_mode)) {
    problem("working_directory", fmt::format("{} is not a directory", d.workingDirectory));
  }

  for (const auto& [key, value] : spec.limits()) {
    const std::string& limitName = key;  // A structured binding cannot be captured in C++20.
    const auto* known = std::find_if(kLimits.begin(), kLimits.end(),
                                     [&](const LimitName& l) { return l.name == limitName; });
    if (known == kLimits.end()) {
      std::string names;
      for (const auto& l : kLimits) {
        names.append(names.empty() ? "" : ", ").append(l.name);
      }
      problem("limits", fmt::format("no limit '{}'; known: {}", key, names));
      continue;
    }
    posix::SpawnRequest::Limit limit;
    limit.resource = known->resource;
    const size_t colon = value.find(':');
    const std::string soft = value.substr(0, colon);
    const std::string hard = colon == std::string::npos ? soft : value.substr(colon + 1);
    if (!parseLimitValue(soft, &limit.value.rlim_cur) ||
        !parseLimitValue(hard, &limit.value.rlim_max) ||
        (limit.value.rlim_max != RLIM_INFINITY && limit.value.rlim_cur > limit.value.rlim_max)) {
      problem("limits." + key,
              fmt::format("'{}' is not a limit: a number, \"unlimited\", or \"soft:hard\" with "
                          "soft <= hard",
                          value));
      continue;
    }
    d.limits.push_back(limit);
  }

  d.restart = spec.restart();
  d.backoff.initial = fromProto(spec.backoff().initial(), std::chrono::milliseconds(100));
  d.backoff.multiplier = spec.backoff().multiplier() == 0 ? 2.0 : spec.backoff().multiplier();
  d.backoff.max = fromProto(spec.backoff().max(), std::chrono::seconds(30));
  d.backoff.jitter = 0.1;
  d.resetAfter = fromProto(spec.backoff().reset_after(), std::chrono::seconds(10));
  if (d.backoff.multiplier < 1.0) {
    problem("backoff.multiplier",
            fmt::format("{} is below 1: delays would shrink", d.backoff.multiplier));
  }
  if (d.backoff.initial < Duration(0) || d.backoff.max < d.backoff.initial) {
    problem("backoff", "initial must be positive and at most max");
  }
  d.readyAfter = fromProto(spec.ready_after(), std::chrono::seconds(1));
  d.stopTimeout = fromProto(spec.stop_timeout(), std::chrono::seconds(10));
  if (d.readyAfter < Duration(0) || d.stopTimeout < Duration(0) || d.resetAfter < Duration(0)) {
    problem("ready_after", "durations must not be negative");
  }
  d.stopSignal = spec.stop_signal().empty() ? SIGTERM : signalNumber(spec.stop_signal());
  if (d.stopSignal == 0) {
    problem("stop_signal", fmt::format("'{}' is not a signal (TERM, INT, QUIT, HUP, USR1, ...)",
                                       spec.stop_signal()));
  }
  d.maxRestarts = spec.max_restarts();
  d.logLines = spec.log_lines() != 0  ? spec.log_lines()
               : defaultLogLines != 0 ? defaultLogLines
                                      : 1000;
  d.autostart = !spec.has_autostart() || spec.autostart();

  for (int i = 0; i < spec.sockets_size(); ++i) {
    const auto& s = spec.sockets(i);
    SocketDefinition socket;
    try {
      socket.address = net::Address::parse(s.address());
    } catch (const std::exception& e) {
      problem(fmt::format("sockets[{}].address", i), e.what());
      continue;
    }
    socket.backlog = s.backlog() != 0 ? static_cast<int>(s.backlog()) : 1024;
    socket.name = s.name();
    if (socket.name.empty()) {
      const std::string text = socket.address.toString();
      socket.name = text.starts_with("unix:") ? "unix" : text.substr(text.rfind(':') + 1);
    }
    if (socket.name.find(':') != std::string::npos) {
      problem(fmt::format("sockets[{}].name", i),
              "must not contain ':' (LISTEN_FDNAMES separator)");
    }
    d.sockets.push_back(std::move(socket));
  }

  if (!problems.empty()) {
    throw std::invalid_argument(fmt::format("{}", fmt::join(problems, "\n")));
  }
  return d;
}

}  // namespace snow::spawner
