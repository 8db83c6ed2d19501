// ContextChecker (context.h): a streaming tar reader that keeps nothing of the payload but the
// Dockerfile. The format references are POSIX pax (IEEE 1003.1, "pax Interchange Format"), GNU
// tar's long-name extensions, and Go's archive/tar (what the Docker engine reads with).

#include <algorithm>
#include <cctype>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include "context.h"
#include "context_path.h"

namespace snow::containers {
namespace {

constexpr size_t kBlock = 512;
// The largest extended header (pax 'x'/'g', GNU 'L'/'K') kept: far above any real path.
constexpr uint64_t kMaxExtendedHeader = uint64_t{64} * 1024;

// Header fields: offset and length (POSIX ustar).
struct Field {
  size_t offset;
  size_t length;
};
constexpr Field kName{0, 100};
constexpr Field kSize{124, 12};
constexpr Field kChecksum{148, 8};
constexpr size_t kTypeOffset = 156;
constexpr Field kLinkName{157, 100};
constexpr Field kMagic{257, 8};  // Magic (6) and version (2).
constexpr Field kPrefix{345, 155};

[[noreturn]] void refuse(const std::string& why) {
  throw ContextError(why);
}

std::string_view field(const char* block, Field f) {
  return {block + f.offset, f.length};
}

// A NUL-terminated text field (or one filling its whole length).
std::string_view textField(const char* block, Field f) {
  const std::string_view raw = field(block, f);
  return raw.substr(0, std::min(raw.find('\0'), raw.size()));
}

// A numeric field: octal digits between optional leading spaces and trailing spaces or NULs, or
// GNU base-256 (the first byte's high bit set; negative values refused). nullopt: malformed.
std::optional<uint64_t> parseNumber(std::string_view text) {
  if (!text.empty() && (static_cast<unsigned char>(text.front()) & 0x80) != 0) {
    if (static_cast<unsigned char>(text.front()) != 0x80) {
      return std::nullopt;  // Negative, or more than 63 bits.
    }
    uint64_t value = 0;
    for (size_t i = 1; i < text.size(); ++i) {
      if ((value >> 55) != 0) {
        return std::nullopt;
      }
      value = (value << 8) | static_cast<unsigned char>(text[i]);
    }
    return value;
  }
  size_t at = 0;
  while (at < text.size() && text[at] == ' ') {
    ++at;
  }
  uint64_t value = 0;
  for (; at < text.size() && text[at] >= '0' && text[at] <= '7'; ++at) {
    if ((value >> 60) != 0) {
      return std::nullopt;
    }
    value = (value << 3) | static_cast<uint64_t>(text[at] - '0');
  }
  for (; at < text.size(); ++at) {
    if (text[at] != ' ' && text[at] != '\0') {
      return std::nullopt;
    }
  }
  return value;
}

std::optional<uint64_t> parseDecimal(std::string_view text) {
  if (text.empty() || text.size() > 19) {
    return std::nullopt;
  }
  uint64_t value = 0;
  for (const char c : text) {
    if (c < '0' || c > '9') {
      return std::nullopt;
    }
    value = value * 10 + static_cast<uint64_t>(c - '0');
  }
  return value;
}

// The header's checksum matches, as an unsigned or (as some old writers computed it) signed sum
// of its bytes with the checksum field taken as spaces.
bool checksumMatches(const char* block) {
  const auto stored = parseNumber(field(block, kChecksum));
  if (!stored) {
    return false;
  }
  uint64_t unsignedSum = 0;
  int64_t signedSum = 0;
  for (size_t i = 0; i < kBlock; ++i) {
    const bool inField = i >= kChecksum.offset && i < kChecksum.offset + kChecksum.length;
    const char c = inField ? ' ' : block[i];
    unsignedSum += static_cast<unsigned char>(c);
    signedSum += static_cast<signed char>(c);
  }
  return *stored == unsignedSum || static_cast<int64_t>(*stored) == signedSum;
}

bool allZero(std::string_view bytes) {
  return std::all_of(bytes.begin(), bytes.end(), [](char c) { return c == '\0'; });
}

uint64_t paddingOf(uint64_t size) {
  return (kBlock - size % kBlock) % kBlock;
}

// Refuses an entry path that is empty, absolute, holds a NUL, or leaves the root once cleaned;
// returns it cleaned.
std::string checkedPath(std::string_view path, std::string_view what) {
  if (path.empty()) {
    refuse(fmt::format("{} has an empty path", what));
  }
  if (path.find('\0') != std::string_view::npos) {
    refuse(fmt::format("{} {} holds a NUL byte", what, quotedPath(path)));
  }
  if (path.front() == '/') {
    refuse(fmt::format("{} {} is an absolute path", what, quotedPath(path)));
  }
  std::string cleaned = cleanPath(path);
  if (leavesRoot(cleaned)) {
    refuse(fmt::format("{} {} leaves the context (\"..\")", what, quotedPath(path)));
  }
  return cleaned;
}

}  // namespace

ContextChecker::ContextChecker(uint64_t maxBytes, std::string dockerfile)
    : maxBytes_(maxBytes), dockerfile_(std::move(dockerfile)) {
  dockerfile_ = cleanPath(dockerfile_.empty() ? std::string_view("Dockerfile") : dockerfile_);
}

void ContextChecker::feed(std::string_view chunk) {
  if (!failure_.empty()) {
    throw ContextError(failure_);
  }
  if (state_ == State::Finished) {
    throw std::logic_error("ContextChecker::feed() after finish()");
  }
  try {
    // The bytes up to the limit are parsed first, so that the verdict does not depend on how the
    // stream was cut: an error before the limit is reported as such wherever the chunk ended.
    const bool over = chunk.size() > maxBytes_ - bytes_;
    const std::string_view allowed = over ? chunk.substr(0, maxBytes_ - bytes_) : chunk;
    bytes_ += allowed.size();
    consume(allowed);
    if (over) {
      refuse(fmt::format("the context is over the limit of {} bytes", maxBytes_));
    }
  } catch (const ContextError& e) {
    failure_ = e.what();
    throw;
  }
}

void ContextChecker::consume(std::string_view chunk) {
  while (!chunk.empty()) {
    switch (state_) {
      case State::Header:
      case State::Zero: {
        const size_t n = std::min(kBlock - blockFill_, chunk.size());
        std::memcpy(block_ + blockFill_, chunk.data(), n);
        blockFill_ += n;
        consumed_ += n;
        chunk.remove_prefix(n);
        if (blockFill_ == kBlock) {
          blockFill_ = 0;
          entryOffset_ = consumed_ - kBlock;
          onHeader();
        }
        break;
      }
      case State::Data: {
        size_t n = 0;
        if (dataLeft_ > 0) {
          n = static_cast<size_t>(std::min<uint64_t>(dataLeft_, chunk.size()));
          if (dataUse_ == DataUse::Dockerfile) {
            dockerfileText_.append(chunk.data(), n);
          } else if (dataUse_ == DataUse::Extended) {
            extended_.append(chunk.data(), n);
          }
          dataLeft_ -= n;
        } else {
          n = static_cast<size_t>(std::min<uint64_t>(paddingLeft_, chunk.size()));
          paddingLeft_ -= n;
        }
        consumed_ += n;
        chunk.remove_prefix(n);
        if (dataLeft_ == 0 && paddingLeft_ == 0) {
          state_ = State::Header;
          if (dataUse_ == DataUse::Extended) {
            onExtendedHeader();
          }
          dataUse_ = DataUse::Skip;
        }
        break;
      }
      case State::Ended:
        if (!allZero(chunk)) {
          const size_t at = chunk.find_first_not_of('\0');
          refuse(fmt::format("data after the end-of-archive marker, at offset {}", consumed_ + at));
        }
        consumed_ += chunk.size();
        chunk = {};
        break;
      case State::Finished:
        throw std::logic_error("ContextChecker: data after finish()");
    }
  }
}

void ContextChecker::onHeader() {
  const bool pendingExtended = pendingPax_ || hasLongName_ || hasLongLink_;
  if (allZero({block_, kBlock})) {
    if (pendingExtended) {
      refuse(
          fmt::format("an extended header is not followed by an entry (offset {})", entryOffset_));
    }
    state_ = state_ == State::Zero ? State::Ended : State::Zero;
    return;
  }
  if (state_ == State::Zero) {
    refuse(fmt::format("a lone zero block before the header at offset {}", entryOffset_));
  }
  if (!checksumMatches(block_)) {
    refuse(fmt::format("bad header checksum at offset {}", entryOffset_));
  }
  const std::string_view magic = field(block_, kMagic);
  const bool posix = magic == std::string_view(
                                  "ustar\0"
                                  "00",
                                  8);
  const bool gnu = magic == std::string_view("ustar  \0", 8);
  if (!posix && !gnu) {
    refuse(fmt::format("the header at offset {} is not a ustar header", entryOffset_));
  }
  const auto headerSize = parseNumber(field(block_, kSize));
  if (!headerSize) {
    refuse(fmt::format("malformed size in the header at offset {}", entryOffset_));
  }
  const char type = block_[kTypeOffset];

  if (type == 'x' || type == 'g' || type == 'L' || type == 'K') {
    const bool again = (type == 'x' && pendingPax_) || (type == 'L' && hasLongName_) ||
                       (type == 'K' && hasLongLink_);
    if (again) {
      refuse(fmt::format("two '{}' extended headers in a row at offset {}", type, entryOffset_));
    }
    if (*headerSize > kMaxExtendedHeader) {
      refuse(fmt::format("the '{}' extended header at offset {} is {} bytes, over {}", type,
                         entryOffset_, *headerSize, kMaxExtendedHeader));
    }
    entryPath_ = fmt::format("(extended header '{}')", type);
    extendedType_ = type;
    extended_.clear();
    dataUse_ = DataUse::Extended;
    dataLeft_ = *headerSize;
    paddingLeft_ = paddingOf(*headerSize);
    if (dataLeft_ == 0) {
      onExtendedHeader();
      dataUse_ = DataUse::Skip;
    } else {
      state_ = State::Data;
    }
    return;
  }

  std::string path;
  if (hasPaxPath_) {
    path = std::move(paxPath_);
  } else if (hasLongName_) {
    path = std::move(longName_);
  } else {
    const std::string_view prefix = posix ? textField(block_, kPrefix) : std::string_view();
    path = prefix.empty() ? std::string(textField(block_, kName))
                          : fmt::format("{}/{}", prefix, textField(block_, kName));
  }
  std::string link;
  if (hasPaxLinkpath_) {
    link = std::move(paxLinkpath_);
  } else if (hasLongLink_) {
    link = std::move(longLink_);
  } else {
    link = std::string(textField(block_, kLinkName));
  }
  const uint64_t size = hasPaxSize_ ? paxSize_ : *headerSize;
  pendingPax_ = hasPaxPath_ = hasPaxLinkpath_ = hasPaxSize_ = hasLongName_ = hasLongLink_ = false;
  paxPath_.clear();
  paxLinkpath_.clear();
  longName_.clear();
  longLink_.clear();
  onEntry(type, path, link, size);
}

void ContextChecker::onEntry(char type, const std::string& path, const std::string& link,
                             uint64_t size) {
  const bool regular = type == '0' || type == '\0' || type == '7';
  const char* kind = regular       ? "file"
                     : type == '1' ? "hard link"
                     : type == '2' ? "symlink"
                     : type == '5' ? "directory"
                                   : "entry";
  const std::string cleaned = checkedPath(path, kind);
  entryPath_ = path;
  switch (type) {
    case '0':
    case '\0':
    case '7':
    case '5':
      break;
    case '1': {
      if (link.empty()) {
        refuse(fmt::format("hard link {} has an empty target", quotedPath(path)));
      }
      const std::string target =
          checkedPath(link, fmt::format("hard link {} to", quotedPath(path)));
      if (target == ".") {
        refuse(fmt::format("hard link {} points to the context's root", quotedPath(path)));
      }
      break;
    }
    case '2': {
      if (link.empty()) {
        refuse(fmt::format("symlink {} has an empty target", quotedPath(path)));
      }
      if (link.find('\0') != std::string::npos) {
        refuse(fmt::format("symlink {} has a target holding a NUL byte", quotedPath(path)));
      }
      if (link.front() == '/') {
        refuse(fmt::format("symlink {} points to the absolute path {}", quotedPath(path),
                           quotedPath(link)));
      }
      const size_t slash = cleaned.rfind('/');
      const std::string base = slash == std::string::npos ? "" : cleaned.substr(0, slash + 1);
      if (leavesRoot(cleanPath(base + link))) {
        refuse(fmt::format("symlink {} points to {}, outside the context", quotedPath(path),
                           quotedPath(link)));
      }
      break;
    }
    case '3':
    case '4':
      refuse(
          fmt::format("{} is a device node, which a build context may not hold", quotedPath(path)));
    case '6':
      refuse(fmt::format("{} is a FIFO, which a build context may not hold", quotedPath(path)));
    default:
      refuse(fmt::format("{} has the unsupported entry type {}", quotedPath(path),
                         std::isprint(static_cast<unsigned char>(type)) != 0
                             ? fmt::format("'{}'", type)
                             : fmt::format("{:#04x}", static_cast<unsigned char>(type))));
  }
  if (cleaned == "." && type != '5') {
    refuse(fmt::format("{} {} names the context's root", kind, quotedPath(path)));
  }
  if (size > maxBytes_) {
    refuse(fmt::format("{} {} declares {} bytes, over the limit of {} bytes", kind,
                       quotedPath(path), size, maxBytes_));
  }
  dataUse_ = DataUse::Skip;
  if (cleaned == dockerfile_) {
    if (dockerfileSeen_) {
      refuse(
          fmt::format("the Dockerfile {} appears twice in the context", quotedPath(dockerfile_)));
    }
    dockerfileSeen_ = true;
    if (!regular) {
      refuse(fmt::format("the Dockerfile {} is not a regular file but a {}",
                         quotedPath(dockerfile_), kind));
    }
    if (size == 0) {
      refuse(fmt::format("the Dockerfile {} is empty", quotedPath(dockerfile_)));
    }
    if (size > kMaxDockerfileBytes) {
      refuse(fmt::format("the Dockerfile {} is {} bytes, over the limit of {} bytes",
                         quotedPath(dockerfile_), size, kMaxDockerfileBytes));
    }
    dataUse_ = DataUse::Dockerfile;
    dockerfileText_.reserve(static_cast<size_t>(size));
  }
  ++entries_;
  dataLeft_ = size;
  paddingLeft_ = paddingOf(size);
  state_ = size > 0 ? State::Data : State::Header;
}

void ContextChecker::onExtendedHeader() {
  switch (extendedType_) {
    case 'x':
      onPaxRecords(false);
      break;
    case 'g':
      onPaxRecords(true);
      break;
    case 'L':
    case 'K': {
      std::string name = extended_.substr(0, std::min(extended_.find('\0'), extended_.size()));
      if (name.empty()) {
        refuse(fmt::format("an empty GNU long name at offset {}", entryOffset_));
      }
      if (extendedType_ == 'L') {
        longName_ = std::move(name);
        hasLongName_ = true;
      } else {
        longLink_ = std::move(name);
        hasLongLink_ = true;
      }
      break;
    }
    default:
      break;
  }
  extended_.clear();
}

void ContextChecker::onPaxRecords(bool global) {
  // Records "LENGTH KEY=VALUE\n", LENGTH counting the whole record.
  std::string_view records = extended_;
  auto malformed = [&]() {
    refuse(fmt::format("malformed pax header at offset {}", entryOffset_));
  };
  while (!records.empty()) {
    const size_t space = records.find(' ');
    if (space == std::string_view::npos) {
      malformed();
    }
    const auto length = parseDecimal(records.substr(0, space));
    if (!length || *length <= space + 2 || *length > records.size() ||
        records[*length - 1] != '\n') {
      malformed();
    }
    const std::string_view record = records.substr(space + 1, *length - space - 2);
    records.remove_prefix(*length);
    const size_t equals = record.find('=');
    if (equals == std::string_view::npos || equals == 0) {
      malformed();
    }
    const std::string_view key = record.substr(0, equals);
    const std::string_view value = record.substr(equals + 1);
    if (key.starts_with("GNU.sparse.")) {
      refuse(fmt::format("sparse files are not accepted (pax header at offset {})", entryOffset_));
    }
    if (global) {
      // Applied to nothing, as the engine's reader does, but refused when unsafe all the same:
      // other readers would apply them.
      if (key == "path" || key == "linkpath") {
        (void)checkedPath(value, fmt::format("the global pax {}", key));
      }
      continue;
    }
    if (key == "path") {
      paxPath_ = std::string(value);
      hasPaxPath_ = true;
    } else if (key == "linkpath") {
      paxLinkpath_ = std::string(value);
      hasPaxLinkpath_ = true;
    } else if (key == "size") {
      const auto size = parseDecimal(value);
      if (!size) {
        malformed();
      }
      paxSize_ = *size;
      hasPaxSize_ = true;
    }
  }
  if (!global) {
    pendingPax_ = true;
  }
}

void ContextChecker::finish() {
  if (!failure_.empty()) {
    throw ContextError(failure_);
  }
  if (state_ == State::Finished) {
    throw std::logic_error("ContextChecker::finish() called twice");
  }
  try {
    switch (state_) {
      case State::Ended:
        break;
      case State::Data:
        refuse(fmt::format("the stream ended inside entry {} ({} bytes missing)",
                           quotedPath(entryPath_), dataLeft_ + paddingLeft_));
      case State::Zero:
        refuse("the stream ended inside the end-of-archive marker (one zero block of two)");
      case State::Header:
        if (blockFill_ > 0) {
          refuse(fmt::format("the stream ended inside the header at offset {}",
                             consumed_ - blockFill_));
        }
        refuse(fmt::format("the stream ended without the end-of-archive marker, after {} bytes",
                           consumed_));
      case State::Finished:
        break;
    }
    if (!dockerfileSeen_) {
      refuse(fmt::format("the Dockerfile {} is not in the context", quotedPath(dockerfile_)));
    }
    try {
      checkDockerfile(dockerfileText_);
    } catch (const ContextError& e) {
      refuse(fmt::format("the Dockerfile {} is broken: {}", quotedPath(dockerfile_), e.what()));
    }
  } catch (const ContextError& e) {
    failure_ = e.what();
    throw;
  }
  state_ = State::Finished;
}

}  // namespace snow::containers
