// The build context: packing real temporary directories (packContext) and checking tar streams
// as they arrive (ContextChecker), each against the other and against tars crafted here by hand.
// libarchive's reader lists what the packer made, as a third party would read it.

#include "context.h"

#include <cerrno>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include "context_ignore.h"
#include "mocks/mock_posix.h"
#include "posix/real_posix.h"
#include "support/files.h"

namespace snow::testing {
namespace {

using containers::checkDockerfile;
using containers::ContextChecker;
using containers::ContextError;
using containers::PackedContext;
using ::testing::_;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::NiceMock;
using ::testing::Return;
using ::testing::StrEq;

constexpr uint64_t kNoLimit = uint64_t{1} << 40;
constexpr const char* kDockerfile = "FROM alpine:3.20\nCOPY . /app\nRUN ls /app\n";

// ---- Helpers -----------------------------------------------------------------------------------

// One entry as libarchive's reader sees it.
struct Listed {
  std::string path;
  char type = '?';  // 'f' file, 'd' directory, 'l' symlink, 'h' hard link.
  std::string link;
  mode_t perm = 0;
  int64_t size = 0;
  int64_t uid = -1;
  int64_t gid = -1;
  time_t mtime = 0;
  long mtimeNsec = -1;
  std::string content;
};

std::vector<Listed> listTar(const std::string& tar) {
  struct archive* a = archive_read_new();
  archive_read_support_format_tar(a);
  if (archive_read_open_memory(a, tar.data(), tar.size()) != ARCHIVE_OK) {
    archive_read_free(a);
    throw std::runtime_error("libarchive cannot open the tar");
  }
  std::vector<Listed> listed;
  struct archive_entry* entry = nullptr;
  int status = ARCHIVE_OK;
  while ((status = archive_read_next_header(a, &entry)) == ARCHIVE_OK) {
    Listed item;
    item.path = archive_entry_pathname(entry);
    if (archive_entry_hardlink(entry) != nullptr) {
      item.type = 'h';
      item.link = archive_entry_hardlink(entry);
    } else if (archive_entry_filetype(entry) == AE_IFDIR) {
      item.type = 'd';
    } else if (archive_entry_filetype(entry) == AE_IFLNK) {
      item.type = 'l';
      item.link = archive_entry_symlink(entry);
    } else if (archive_entry_filetype(entry) == AE_IFREG) {
      item.type = 'f';
    }
    item.perm = archive_entry_perm(entry);
    item.size = archive_entry_size(entry);
    item.uid = archive_entry_uid(entry);
    item.gid = archive_entry_gid(entry);
    item.mtime = archive_entry_mtime(entry);
    item.mtimeNsec = archive_entry_mtime_nsec(entry);
    char buffer[4096];
    la_ssize_t got = 0;
    while ((got = archive_read_data(a, buffer, sizeof(buffer))) > 0) {
      item.content.append(buffer, static_cast<size_t>(got));
    }
    listed.push_back(std::move(item));
  }
  archive_read_free(a);
  if (status != ARCHIVE_EOF) {
    throw std::runtime_error("libarchive cannot read the tar to its end");
  }
  return listed;
}

std::vector<std::string> pathsOf(const std::vector<Listed>& listed) {
  std::vector<std::string> paths;
  paths.reserve(listed.size());
  for (const Listed& item : listed) {
    paths.push_back(item.path);
  }
  return paths;
}

const Listed& entryOf(const std::vector<Listed>& listed, const std::string& path) {
  for (const Listed& item : listed) {
    if (item.path == path) {
      return item;
    }
  }
  throw std::runtime_error("no entry " + path + " in the tar");
}

// What packContext() gave the sink, with what it returned.
struct Packed {
  PackedContext context;
  std::string tar;
  std::vector<size_t> chunks;
};

Packed pack(posix::Posix& os, const std::string& dir, const std::string& dockerfile = "",
            uint64_t maxBytes = kNoLimit) {
  Packed packed;
  packed.context = containers::packContext(os, dir, dockerfile, maxBytes, [&](std::string_view c) {
    packed.tar.append(c);
    packed.chunks.push_back(c.size());
  });
  return packed;
}

// The ContextError packContext() throws ("" when none), and what reached the sink before.
std::string packError(posix::Posix& os, const std::string& dir, const std::string& dockerfile = "",
                      uint64_t maxBytes = kNoLimit, std::string* sent = nullptr) {
  std::string tar;
  try {
    containers::packContext(os, dir, dockerfile, maxBytes,
                            [&](std::string_view chunk) { tar.append(chunk); });
  } catch (const ContextError& e) {
    if (sent != nullptr) {
      *sent = tar;
    }
    return e.what();
  }
  return "";
}

// Feeds `tar` cut in chunks of `chunk` bytes (0: at once), then finishes; the ContextError's
// message, "" when accepted.
std::string checkOnce(const std::string& tar, const std::string& dockerfile, uint64_t maxBytes,
                      size_t chunk, std::string* text = nullptr) {
  ContextChecker checker(maxBytes, dockerfile);
  try {
    const size_t step = chunk == 0 ? std::max<size_t>(tar.size(), 1) : chunk;
    for (size_t at = 0; at < tar.size(); at += step) {
      checker.feed(std::string_view(tar).substr(at, step));
    }
    checker.finish();
  } catch (const ContextError& e) {
    return e.what();
  }
  if (text != nullptr) {
    *text = checker.dockerfileText();
  }
  return "";
}

// The checker's verdict on `tar` ("" for accepted), which must not depend on how the stream is
// cut: it is checked whole, byte by byte and in odd and block-sized chunks.
std::string refusal(const std::string& tar, const std::string& dockerfile = "",
                    uint64_t maxBytes = kNoLimit) {
  std::string whole = checkOnce(tar, dockerfile, maxBytes, 0);
  for (const size_t chunk : {1, 7, 512, 513, 4096}) {
    EXPECT_EQ(checkOnce(tar, dockerfile, maxBytes, chunk), whole) << "chunks of " << chunk;
  }
  return whole;
}

// ---- Tars by hand
// --------------------------------------------------------------------------------

std::string padded(std::string data) {
  data.resize((data.size() + 511) / 512 * 512, '\0');
  return data;
}

void putOctal(std::string& block, size_t offset, size_t width, uint64_t value) {
  const std::string digits = fmt::format("{:0{}o}", value, width - 1);
  block.replace(offset, width - 1, digits);
  block[offset + width - 1] = '\0';
}

void sealChecksum(std::string& block) {
  block.replace(148, 8, "        ");
  unsigned sum = 0;
  for (const char c : block) {
    sum += static_cast<unsigned char>(c);
  }
  block.replace(148, 8, fmt::format("{:06o}", sum) + std::string("\0 ", 2));
}

std::string header(const std::string& name, char type, uint64_t size,
                   const std::string& link = "") {
  std::string block(512, '\0');
  block.replace(0, std::min<size_t>(name.size(), 100), name.substr(0, 100));
  putOctal(block, 100, 8, 0644);
  putOctal(block, 108, 8, 0);
  putOctal(block, 116, 8, 0);
  putOctal(block, 124, 12, size);
  putOctal(block, 136, 12, 1600000000);
  block[156] = type;
  block.replace(157, std::min<size_t>(link.size(), 100), link.substr(0, 100));
  block.replace(257, 8,
                std::string("ustar\0"
                            "00",
                            8));
  sealChecksum(block);
  return block;
}

std::string fileEntry(const std::string& name, const std::string& content) {
  return header(name, '0', content.size()) + padded(content);
}

std::string paxRecord(const std::string& key, const std::string& value) {
  const std::string body = " " + key + "=" + value + "\n";
  size_t length = body.size() + 1;
  while (std::to_string(length).size() + body.size() != length) {
    ++length;
  }
  return std::to_string(length) + body;
}

std::string extendedEntry(char type, const std::string& content) {
  return header("././@Extended", type, content.size()) + padded(content);
}

// The end-of-archive marker: two zero blocks.
std::string endMarker() {
  return std::string(1024, '\0');
}

std::string dockerfileEntry(const std::string& text = kDockerfile) {
  return fileEntry("Dockerfile", text);
}

// A valid context with `entries` after its Dockerfile.
std::string contextWith(const std::string& entries) {
  return dockerfileEntry() + entries + endMarker();
}

class ContextTest : public ::testing::Test {
 protected:
  void mkdir(const std::string& relative) const {
    ASSERT_EQ(::mkdir(dir_.file(relative).c_str(), 0755), 0) << relative;
  }
  void write(const std::string& relative, const std::string& content) const {
    writeFile(dir_.file(relative), content);
  }
  void symlink(const std::string& target, const std::string& relative) const {
    ASSERT_EQ(::symlink(target.c_str(), dir_.file(relative).c_str()), 0) << relative;
  }
  void setMtime(const std::string& relative, time_t seconds) const {
    const struct timespec times[2] = {{seconds, 0}, {seconds, 123456789}};
    ASSERT_EQ(::utimensat(AT_FDCWD, dir_.file(relative).c_str(), times, AT_SYMLINK_NOFOLLOW), 0);
  }

  posix::RealPosix os_;
  TempDir dir_{"snow-context"};
};

// ---- Packing and checking round trips -----------------------------------------------------------

TEST_F(ContextTest, PacksADirectoryAsDockerSeesItAndTheCheckerAcceptsIt) {
  write("Dockerfile", kDockerfile);
  write("app.py", "print('hi')\n");
  mkdir("bin");
  write("bin/run.sh", "#!/bin/sh\nexec python3 /app/app.py\n");
  ASSERT_EQ(::chmod(dir_.file("bin/run.sh").c_str(), 0750), 0);
  mkdir("empty");
  symlink("bin/run.sh", "run");
  symlink("../app.py", "bin/app.py");
  mkdir("a");
  write("a.txt", "sorted after a/ and its entries, as Docker's walk does\n");
  write("a/x", "x");
  setMtime("app.py", 1600000000);

  const Packed packed = pack(os_, dir_.path());
  const auto listed = listTar(packed.tar);
  EXPECT_THAT(pathsOf(listed), ElementsAre("Dockerfile", "a/", "a/x", "a.txt", "app.py", "bin/",
                                           "bin/app.py", "bin/run.sh", "empty/", "run"));
  EXPECT_EQ(packed.context.files, listed.size());
  EXPECT_EQ(packed.context.bytes, packed.tar.size());
  EXPECT_EQ(packed.context.dockerfile, "Dockerfile");
  EXPECT_TRUE(packed.context.skipped.empty());

  const Listed& app = entryOf(listed, "app.py");
  EXPECT_EQ(app.type, 'f');
  EXPECT_EQ(app.content, "print('hi')\n");
  EXPECT_EQ(app.mtime, 1600000000);
  EXPECT_EQ(app.mtimeNsec, 0);  // Whole seconds only: nothing a rebuild cache could trip on.
  EXPECT_EQ(entryOf(listed, "bin/run.sh").perm, 0750U);
  EXPECT_EQ(entryOf(listed, "run").type, 'l');
  EXPECT_EQ(entryOf(listed, "run").link, "bin/run.sh");
  EXPECT_EQ(entryOf(listed, "bin/app.py").link, "../app.py");
  EXPECT_EQ(entryOf(listed, "empty/").type, 'd');
  for (const Listed& item : listed) {
    EXPECT_EQ(item.uid, 0) << item.path;
    EXPECT_EQ(item.gid, 0) << item.path;
  }

  std::string text;
  EXPECT_EQ(checkOnce(packed.tar, packed.context.dockerfile, kNoLimit, 0, &text), "");
  EXPECT_EQ(text, kDockerfile);
  EXPECT_EQ(refusal(packed.tar, packed.context.dockerfile, packed.tar.size()), "");
  // One byte less than the stream is over the limit.
  EXPECT_THAT(refusal(packed.tar, "", packed.tar.size() - 1),
              HasSubstr(fmt::format("over the limit of {} bytes", packed.tar.size() - 1)));
}

TEST_F(ContextTest, PackingTheSameDirectoryTwiceGivesTheSameBytesUntilAFileChanges) {
  write("Dockerfile", kDockerfile);
  write("data", "one");
  setMtime("data", 1600000000);
  const std::string first = pack(os_, dir_.path()).tar;
  EXPECT_EQ(pack(os_, dir_.path()).tar, first);
  setMtime("data", 1600000001);
  EXPECT_NE(pack(os_, dir_.path()).tar, first);
}

TEST_F(ContextTest, StreamsInChunksOfAtMost64KiBWithoutPaddingTheLastOne) {
  write("Dockerfile", kDockerfile);
  write("big", std::string(300 * 1024 + 5, 'b'));
  const Packed packed = pack(os_, dir_.path());
  ASSERT_GT(packed.chunks.size(), 4U);
  for (const size_t chunk : packed.chunks) {
    EXPECT_LE(chunk, 64U * 1024);
  }
  // Headers, data padded to blocks and the two-block end marker; no 10 KiB record padding.
  EXPECT_EQ(packed.tar.size(), 512 + 512 + 512 + (300 * 1024 + 512) + 1024);
  EXPECT_EQ(entryOf(listTar(packed.tar), "big").content, std::string(300 * 1024 + 5, 'b'));
}

TEST_F(ContextTest, HardLinkedFilesAreSentOnceThenAsHardLinks) {
  write("Dockerfile", kDockerfile);
  write("first", "shared content");
  ASSERT_EQ(::link(dir_.file("first").c_str(), dir_.file("second").c_str()), 0);
  const Packed packed = pack(os_, dir_.path());
  const auto listed = listTar(packed.tar);
  EXPECT_EQ(entryOf(listed, "first").type, 'f');
  EXPECT_EQ(entryOf(listed, "first").content, "shared content");
  EXPECT_EQ(entryOf(listed, "second").type, 'h');
  EXPECT_EQ(entryOf(listed, "second").link, "first");
  EXPECT_EQ(refusal(packed.tar), "");
}

TEST_F(ContextTest, ADockerfileHardLinkedToAnEarlierFileIsStillSentWhole) {
  write("0-copy", kDockerfile);
  ASSERT_EQ(::link(dir_.file("0-copy").c_str(), dir_.file("Dockerfile").c_str()), 0);
  const Packed packed = pack(os_, dir_.path());
  EXPECT_EQ(entryOf(listTar(packed.tar), "Dockerfile").type, 'f');
  EXPECT_EQ(refusal(packed.tar), "");
}

TEST_F(ContextTest, LongAndNonAsciiNamesGoThroughPaxHeadersBothWays) {
  write("Dockerfile", kDockerfile);
  const std::string longName(150, 'n');  // One element: no ustar prefix/name split fits.
  write(longName, "long");
  write("caf\xc3\xa9.txt", "accent");
  write("raw\xff.bin", "not UTF-8");
  std::string deep;
  for (int i = 0; i < 30; ++i) {
    deep += (deep.empty() ? "" : "/") + std::string("level") + std::to_string(i);
    mkdir(deep);
  }
  write(deep + "/leaf", "deep");
  symlink("../" + longName, deep + "/up");

  const Packed packed = pack(os_, dir_.path());
  const auto listed = listTar(packed.tar);
  EXPECT_EQ(entryOf(listed, longName).content, "long");
  EXPECT_EQ(entryOf(listed, "caf\xc3\xa9.txt").content, "accent");
  EXPECT_EQ(entryOf(listed, "raw\xff.bin").content, "not UTF-8");
  EXPECT_EQ(entryOf(listed, deep + "/leaf").content, "deep");
  EXPECT_EQ(entryOf(listed, deep + "/up").link, "../" + longName);
  EXPECT_EQ(refusal(packed.tar), "");
}

// ---- .dockerignore
// -------------------------------------------------------------------------------

TEST_F(ContextTest, DockerignoreExcludesWithDockersCleaningCommentsAndExceptions) {
  write("Dockerfile", kDockerfile);
  write(".dockerignore",
        "# a comment\n"
        "   # not a comment: a pattern that matches nothing\n"
        "*.log\n"
        "!keep.log\n"
        "/build/\n"
        "./secret.txt\n"
        "  tmp  \n"
        "\n"
        "sub/../local.env\r\n");
  write("app.log", "x");
  write("keep.log", "x");
  mkdir("build");
  write("build/out.o", "x");
  write("secret.txt", "x");
  write("tmp", "x");
  write("local.env", "x");
  mkdir("src");
  write("src/main.c", "x");
  write("src/debug.log", "x");  // `*.log` is rooted: one level only.

  const auto listed = listTar(pack(os_, dir_.path()).tar);
  EXPECT_THAT(pathsOf(listed), ElementsAre(".dockerignore", "Dockerfile", "keep.log", "src/",
                                           "src/debug.log", "src/main.c"));
}

TEST_F(ContextTest, DockerignoreLaterLinesWin) {
  write("Dockerfile", kDockerfile);
  write(".dockerignore", "*.md\n!README*.md\nREADME-secret.md\n");
  write("README.md", "x");
  write("README-secret.md", "x");
  write("CHANGES.md", "x");
  EXPECT_THAT(pathsOf(listTar(pack(os_, dir_.path()).tar)),
              ElementsAre(".dockerignore", "Dockerfile", "README.md"));

  write(".dockerignore", "*.md\nREADME-secret.md\n!README*.md\n");
  EXPECT_THAT(pathsOf(listTar(pack(os_, dir_.path()).tar)),
              ElementsAre(".dockerignore", "Dockerfile", "README-secret.md", "README.md"));
}

TEST_F(ContextTest, DockerignoreDoubleStarMatchesAnyNumberOfDirectories) {
  write("Dockerfile", kDockerfile);
  write(".dockerignore", "**/node_modules\n**/*.tmp\ndocs/**/draft?.md\n");
  mkdir("node_modules");
  write("node_modules/x.js", "x");
  mkdir("web");
  mkdir("web/node_modules");
  write("web/node_modules/y.js", "x");
  write("web/app.js", "x");
  write("web/cache.tmp", "x");
  write("top.tmp", "x");
  mkdir("docs");
  mkdir("docs/a");
  mkdir("docs/a/b");
  write("docs/draft1.md", "x");  // `**` matches zero directories too.
  write("docs/a/b/draft2.md", "x");
  write("docs/a/b/final.md", "x");
  EXPECT_THAT(pathsOf(listTar(pack(os_, dir_.path()).tar)),
              ElementsAre(".dockerignore", "Dockerfile", "docs/", "docs/a/", "docs/a/b/",
                          "docs/a/b/final.md", "web/", "web/app.js"));
}

TEST_F(ContextTest, AnExceptionBelowAnExcludedDirectoryBringsBackOnlyWhatItNames) {
  write("Dockerfile", kDockerfile);
  write(".dockerignore", "docs\n!docs/keep.md\nassets\n!assets/**/*.png\n");
  mkdir("docs");
  write("docs/keep.md", "x");
  write("docs/other.md", "x");
  mkdir("assets");
  mkdir("assets/img");
  write("assets/img/logo.png", "x");
  write("assets/img/logo.svg", "x");
  const Packed packed = pack(os_, dir_.path());
  EXPECT_THAT(pathsOf(listTar(packed.tar)),
              ElementsAre(".dockerignore", "Dockerfile", "assets/", "assets/img/",
                          "assets/img/logo.png", "docs/", "docs/keep.md"));
  EXPECT_EQ(refusal(packed.tar), "");
}

TEST_F(ContextTest, TheDockerfileAndDockerignoreAreSentEvenWhenIgnored) {
  write("Dockerfile", kDockerfile);
  write(".dockerignore", "*\n");
  write("other", "x");
  EXPECT_THAT(pathsOf(listTar(pack(os_, dir_.path()).tar)),
              ElementsAre(".dockerignore", "Dockerfile"));

  write(".dockerignore", "Dockerfile\n.dockerignore\n");
  EXPECT_THAT(pathsOf(listTar(pack(os_, dir_.path()).tar)),
              ElementsAre(".dockerignore", "Dockerfile", "other"));
}

TEST_F(ContextTest, ADockerfileInAnIgnoredSubdirectoryIsSentAndNamedInThePackedContext) {
  write(".dockerignore", "build\n");
  mkdir("build");
  write("build/app.Dockerfile", kDockerfile);
  write("build/junk", "x");
  write("main.go", "x");
  const Packed packed = pack(os_, dir_.path(), "./build//app.Dockerfile");
  EXPECT_EQ(packed.context.dockerfile, "build/app.Dockerfile");
  EXPECT_THAT(pathsOf(listTar(packed.tar)),
              ElementsAre(".dockerignore", "build/", "build/app.Dockerfile", "main.go"));
  std::string text;
  EXPECT_EQ(checkOnce(packed.tar, packed.context.dockerfile, kNoLimit, 0, &text), "");
  EXPECT_EQ(text, kDockerfile);
  // The receiver looks for the Dockerfile it was told about, not another one.
  EXPECT_THAT(refusal(packed.tar, "Dockerfile"), HasSubstr("\"Dockerfile\" is not in the context"));
}

TEST_F(ContextTest, ADockerfileGivenThroughASymlinkInsideIsNamedByWhatItResolvesTo) {
  mkdir("real");
  write("real/Dockerfile", kDockerfile);
  symlink("real", "alias");
  const Packed packed = pack(os_, dir_.path(), "alias/Dockerfile");
  EXPECT_EQ(packed.context.dockerfile, "real/Dockerfile");
  EXPECT_EQ(refusal(packed.tar, packed.context.dockerfile), "");
}

TEST_F(ContextTest, AMalformedDockerignorePatternIsRefusedNamingTheLine) {
  write("Dockerfile", kDockerfile);
  write(".dockerignore", "ok\n[unterminated\n");
  EXPECT_THAT(packError(os_, dir_.path()),
              HasSubstr(dir_.file(".dockerignore") + "\": line 2: malformed pattern"));
  write(".dockerignore", "!\n");
  EXPECT_THAT(packError(os_, dir_.path()), HasSubstr("line 1: illegal exclusion pattern"));
}

TEST(IgnorePatternTest, MatchesAsGoFilepathMatchPlusDoubleStar) {
  using containers::matchesIgnorePattern;
  EXPECT_TRUE(matchesIgnorePattern("*.go", "main.go"));
  EXPECT_FALSE(matchesIgnorePattern("*.go", "cmd/main.go"));  // `*` stops at '/'.
  EXPECT_TRUE(matchesIgnorePattern("temp?", "tempa"));
  EXPECT_FALSE(matchesIgnorePattern("temp?", "temp/"));
  EXPECT_TRUE(matchesIgnorePattern("*/temp*", "somedir/temporary.txt"));
  EXPECT_FALSE(matchesIgnorePattern("*/temp*", "a/b/temporary.txt"));
  EXPECT_TRUE(matchesIgnorePattern("**/*.go", "main.go"));
  EXPECT_TRUE(matchesIgnorePattern("**/*.go", "a/b/c/main.go"));
  EXPECT_TRUE(matchesIgnorePattern("a/**/z", "a/z"));
  EXPECT_TRUE(matchesIgnorePattern("a/**/z", "a/b/c/z"));
  EXPECT_FALSE(matchesIgnorePattern("a/**/z", "ab/z"));
  EXPECT_TRUE(matchesIgnorePattern("a/**", "a/b/c"));
  EXPECT_FALSE(matchesIgnorePattern("a/**", "a"));
  EXPECT_TRUE(matchesIgnorePattern("**", "anything/at/all"));
  EXPECT_TRUE(matchesIgnorePattern("[a-c]x", "bx"));
  EXPECT_FALSE(matchesIgnorePattern("[a-c]x", "dx"));
  EXPECT_TRUE(matchesIgnorePattern("[^a-c]x", "dx"));
  EXPECT_TRUE(matchesIgnorePattern("\\*x", "*x"));
  EXPECT_FALSE(matchesIgnorePattern("\\*x", "ax"));
  EXPECT_TRUE(matchesIgnorePattern("caf?", "caf\xc3\xa9"));  // `?` is one character, not byte.
  EXPECT_TRUE(matchesIgnorePattern("*a*a*a*a*a*a*a*a*b", std::string(200, 'a') + "b"));
  EXPECT_FALSE(matchesIgnorePattern("*a*a*a*a*a*a*a*a*b", std::string(200, 'a')));
  EXPECT_THROW(matchesIgnorePattern("[a", "a"), ContextError);
  EXPECT_THROW(matchesIgnorePattern("[]", "a"), ContextError);
  EXPECT_THROW(matchesIgnorePattern("[z-a]", "a"), ContextError);
  EXPECT_THROW(matchesIgnorePattern("x\\", "x"), ContextError);
}

// ---- What the packer refuses
// ---------------------------------------------------------------------

TEST_F(ContextTest, RefusesAMissingContextOrOneThatIsNotADirectory) {
  EXPECT_THAT(packError(os_, dir_.file("nope")),
              HasSubstr("the build context \"" + dir_.file("nope") + "\" does not exist"));
  write("file", "x");
  EXPECT_THAT(packError(os_, dir_.file("file")),
              HasSubstr("the build context \"" + dir_.file("file") + "\" is not a directory"));
}

TEST_F(ContextTest, RefusesAMissingEscapingOrIrregularDockerfile) {
  EXPECT_THAT(packError(os_, dir_.path()),
              HasSubstr("the Dockerfile \"Dockerfile\" is not in the build context"));
  EXPECT_THAT(packError(os_, dir_.path(), "../Dockerfile"),
              HasSubstr("the Dockerfile \"../Dockerfile\" is outside the build context"));
  EXPECT_THAT(packError(os_, dir_.path(), "/etc/hostname"),
              HasSubstr("must be given relative to the build context"));
  mkdir("Dockerfile");
  EXPECT_THAT(packError(os_, dir_.path()), HasSubstr("is not a regular file"));

  const TempDir outside("snow-context-outside");
  writeFile(outside.file("Dockerfile"), kDockerfile);
  symlink(outside.file("Dockerfile"), "abs.Dockerfile");
  EXPECT_THAT(packError(os_, dir_.path(), "abs.Dockerfile"),
              HasSubstr("is outside the build context"));
  EXPECT_THAT(packError(os_, dir_.path(), "abs.Dockerfile"), HasSubstr("absolute path"));
}

TEST_F(ContextTest, RefusesAnEmptyOversizedOrBrokenDockerfileBeforeSendingAnything) {
  bool sent = false;
  auto packWith = [&](const std::string& text) {
    write("Dockerfile", text);
    try {
      containers::packContext(os_, dir_.path(), "", kNoLimit,
                              [&](std::string_view) { sent = true; });
    } catch (const ContextError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_THAT(packWith(""), HasSubstr("is empty"));
  EXPECT_THAT(packWith("FROM x\n" + std::string(containers::kMaxDockerfileBytes, '#')),
              HasSubstr("over the limit of 1048576 bytes"));
  EXPECT_THAT(packWith("FROM x\nRUNN make\n"),
              HasSubstr("is broken: line 2: unknown instruction \"RUNN\""));
  EXPECT_THAT(packWith("RUN make\n"), HasSubstr("the first instruction must be FROM or ARG"));
  EXPECT_FALSE(sent);
}

TEST_F(ContextTest, RefusesSymlinksThatLeaveTheContext) {
  write("Dockerfile", kDockerfile);
  symlink("/etc/passwd", "passwd");
  EXPECT_THAT(packError(os_, dir_.path()),
              HasSubstr("symlink \"passwd\" points to the absolute path \"/etc/passwd\""));
  ASSERT_EQ(::unlink(dir_.file("passwd").c_str()), 0);

  mkdir("sub");
  symlink("../../x", "sub/up");
  EXPECT_THAT(packError(os_, dir_.path()),
              HasSubstr("symlink \"sub/up\" points to \"../../x\", outside the context"));
  ASSERT_EQ(::unlink(dir_.file("sub/up").c_str()), 0);

  // Lexically "s/.." is the root; the kernel follows s first, which ends at the root, then goes
  // above it.
  mkdir("sub/deep");
  symlink("../..", "sub/deep/parent");
  symlink("sub/deep/parent", "s");
  symlink("s/..", "t");
  EXPECT_THAT(packError(os_, dir_.path()),
              HasSubstr("symlink \"t\" points to \"s/..\", outside the context"));
}

TEST_F(ContextTest, KeepsSymlinksThatStayInsideEvenDanglingOrLooping) {
  write("Dockerfile", kDockerfile);
  mkdir("sub");
  symlink("../Dockerfile", "sub/df");
  symlink("missing/../../Dockerfile", "sub/dangling-but-inside");
  symlink("loop", "loop");
  const Packed packed = pack(os_, dir_.path());
  EXPECT_THAT(pathsOf(listTar(packed.tar)),
              ElementsAre("Dockerfile", "loop", "sub/", "sub/dangling-but-inside", "sub/df"));
  EXPECT_EQ(refusal(packed.tar), "");
}

TEST_F(ContextTest, SkipsSpecialFilesNamingThem) {
  write("Dockerfile", kDockerfile);
  ASSERT_EQ(::mkfifo(dir_.file("pipe").c_str(), 0600), 0);
  write(".dockerignore", "ignored-pipe\n");
  ASSERT_EQ(::mkfifo(dir_.file("ignored-pipe").c_str(), 0600), 0);
  const Packed packed = pack(os_, dir_.path());
  EXPECT_THAT(pathsOf(listTar(packed.tar)), ElementsAre(".dockerignore", "Dockerfile"));
  ASSERT_EQ(packed.context.skipped.size(), 1U);
  EXPECT_EQ(packed.context.skipped[0].path, "pipe");
  EXPECT_THAT(packed.context.skipped[0].reason, HasSubstr("a FIFO"));
}

TEST_F(ContextTest, RefusesAContextOverTheLimitUpFrontWhenItsFilesAloneAreTooBig) {
  write("Dockerfile", kDockerfile);
  write("big", std::string(10000, 'x'));
  std::string sent = "untouched";
  EXPECT_THAT(packError(os_, dir_.path(), "", 8192, &sent),
              HasSubstr("is over the limit of 8192 bytes: its 2 entries need at least 12800"));
  EXPECT_EQ(sent, "");
}

TEST_F(ContextTest, RefusesAContextOverTheLimitWhileStreamingSayingHowFarItGot) {
  write("Dockerfile", kDockerfile);
  write(std::string(150, 'n'), std::string(70000, 'x'));  // A pax header the estimate leaves out.
  const uint64_t full = pack(os_, dir_.path()).tar.size();
  std::string sent;
  const std::string error = packError(os_, dir_.path(), "", full - 1, &sent);
  EXPECT_THAT(error, HasSubstr(fmt::format("is over the limit of {} bytes: it reached", full - 1)));
  EXPECT_LE(sent.size(), full - 1);
  EXPECT_GT(sent.size(), 0U);  // The first 64 KiB went before the limit was known to be crossed.
  // What went out is an unfinished tar, which the receiver refuses.
  EXPECT_THAT(refusal(sent), HasSubstr("the stream ended"));
}

TEST_F(ContextTest, AnUnreadableFileIsRefusedWithTheErrnoTextBeforeAnythingIsSent) {
  write("Dockerfile", kDockerfile);
  write("secret.key", "x");
  NiceMock<posix::MockPosix> os;
  ON_CALL(os, open(StrEq(dir_.file("secret.key")), _, _))
      .WillByDefault(Return(posix::Result<int>{-1, EACCES}));
  std::string sent = "untouched";
  EXPECT_THAT(packError(os, dir_.path(), "", kNoLimit, &sent),
              HasSubstr("cannot read \"" + dir_.file("secret.key") + "\": Permission denied"));
  EXPECT_EQ(sent, "");
}

TEST_F(ContextTest, UnreadableDirectoriesAndSymlinksAreRefusedWithTheErrnoText) {
  write("Dockerfile", kDockerfile);
  mkdir("private");
  symlink("Dockerfile", "link");
  NiceMock<posix::MockPosix> os;
  ON_CALL(os, readDirectory(StrEq(dir_.file("private"))))
      .WillByDefault(Return(posix::Result<std::vector<posix::DirectoryEntry>>{{}, EACCES}));
  EXPECT_THAT(
      packError(os, dir_.path()),
      HasSubstr("cannot read the directory \"" + dir_.file("private") + "\": Permission denied"));

  NiceMock<posix::MockPosix> failingLinks;
  ON_CALL(failingLinks, readlink(StrEq(dir_.file("link")), _, _))
      .WillByDefault(Return(posix::Result<ssize_t>{-1, EIO}));
  EXPECT_THAT(packError(failingLinks, dir_.path()),
              HasSubstr("cannot read the symlink \"" + dir_.file("link") + "\": Input/output"));
}

TEST_F(ContextTest, AFileThatShrinksWhilePackedStopsTheStreamWithoutAnEndMarker) {
  write("Dockerfile", kDockerfile);
  write("data", std::string(200000, 'd'));
  NiceMock<posix::MockPosix> os;
  // The file seems one byte longer when opened for packing than its content is.
  ON_CALL(os, fstat(_, _)).WillByDefault([&os](int fd, struct stat* out) {
    auto result = os.RealPosix::fstat(fd, out);
    if (result.ok() && S_ISREG(out->st_mode) && out->st_size == 200000) {
      out->st_size = 200001;
    }
    return result;
  });
  std::string sent;
  EXPECT_THAT(packError(os, dir_.path(), "", kNoLimit, &sent),
              HasSubstr("\"" + dir_.file("data") + "\" shrank while the context was being packed"));
  EXPECT_THAT(refusal(sent), HasSubstr("the stream ended"));
}

TEST_F(ContextTest, AnExceptionFromTheSinkIsPassedOnAsItIs) {
  write("Dockerfile", kDockerfile);
  EXPECT_THROW(
      {
        try {
          containers::packContext(os_, dir_.path(), "", kNoLimit, [](std::string_view) {
            throw std::runtime_error("the connection broke");
          });
        } catch (const ContextError&) {
          ADD_FAILURE() << "the sink's error became a ContextError";
        } catch (const std::runtime_error& e) {
          EXPECT_STREQ(e.what(), "the connection broke");
          throw;
        }
      },
      std::runtime_error);
}

// ---- What the checker refuses
// --------------------------------------------------------------------

TEST(ContextCheckerTest, AcceptsAHandMadeContextWithPaxAndGnuLongNames) {
  const std::string longName = std::string(120, 'n') + "/file";
  const std::string tar =
      dockerfileEntry() + header("dir/", '5', 0) + fileEntry("dir/../plain", "cleaned to plain") +
      extendedEntry('x', paxRecord("path", longName) + paxRecord("mtime", "1600000000.5")) +
      header("ignored", '0', 4) + padded("data") + extendedEntry('L', longName + "2" + '\0') +
      fileEntry("ignored", "gnu") + extendedEntry('g', paxRecord("comment", "global")) +
      header("dir/link", '2', 0, "../plain") + header("hard", '1', 0, "dir/../plain") +
      endMarker() + std::string(2048, '\0');  // Record padding after the end marker.
  EXPECT_EQ(refusal(tar), "");

  ContextChecker checker(kNoLimit, "");
  checker.feed(tar);
  checker.finish();
  EXPECT_EQ(checker.dockerfileText(), kDockerfile);
  EXPECT_EQ(checker.entries(), 7U);
  EXPECT_EQ(checker.bytes(), tar.size());
}

TEST(ContextCheckerTest, APaxSizeOverridesTheHeaderSize) {
  const std::string tar = dockerfileEntry() + extendedEntry('x', paxRecord("size", "600")) +
                          header("big", '0', 0) + padded(std::string(600, 'b')) + endMarker();
  EXPECT_EQ(refusal(tar), "");
  // Without the pax size, the data would be read as headers.
  const std::string without =
      dockerfileEntry() + header("big", '0', 0) + padded(std::string(600, 'b')) + endMarker();
  EXPECT_THAT(refusal(without), HasSubstr("bad header checksum at offset 1536"));
}

TEST(ContextCheckerTest, RefusesPathsThatAreAbsoluteOrLeaveTheContext) {
  EXPECT_THAT(refusal(contextWith(fileEntry("/etc/passwd", "x"))),
              HasSubstr("file \"/etc/passwd\" is an absolute path"));
  EXPECT_THAT(refusal(contextWith(fileEntry("../x", "x"))),
              HasSubstr("file \"../x\" leaves the context"));
  EXPECT_THAT(refusal(contextWith(fileEntry("a/../../x", "x"))),
              HasSubstr("file \"a/../../x\" leaves the context"));
  EXPECT_THAT(refusal(contextWith(header("..", '5', 0))),
              HasSubstr("directory \"..\" leaves the context"));
  EXPECT_THAT(refusal(contextWith(extendedEntry('x', paxRecord("path", "/abs")) +
                                  fileEntry("harmless", "x"))),
              HasSubstr("file \"/abs\" is an absolute path"));
  EXPECT_THAT(refusal(contextWith(extendedEntry('L', std::string("../gnu") + '\0') +
                                  fileEntry("harmless", "x"))),
              HasSubstr("file \"../gnu\" leaves the context"));
  EXPECT_THAT(refusal(contextWith(extendedEntry('g', paxRecord("path", "../global")))),
              HasSubstr("the global pax path \"../global\" leaves the context"));
  EXPECT_THAT(refusal(contextWith(fileEntry(".", "x"))), HasSubstr("names the context's root"));
}

TEST(ContextCheckerTest, RefusesLinksWhoseTargetLeavesTheContext) {
  EXPECT_THAT(refusal(contextWith(header("etc", '2', 0, "/etc"))),
              HasSubstr("symlink \"etc\" points to the absolute path \"/etc\""));
  EXPECT_THAT(refusal(contextWith(header("up", '2', 0, "../x"))),
              HasSubstr("symlink \"up\" points to \"../x\", outside the context"));
  EXPECT_THAT(refusal(contextWith(header("a/b/up", '2', 0, "../../../x"))),
              HasSubstr("outside the context"));
  EXPECT_EQ(refusal(contextWith(header("a/b/ok", '2', 0, "../../x"))), "");
  EXPECT_THAT(refusal(contextWith(header("a/..//up", '2', 0, "../x"))),
              HasSubstr("outside the context"));
  EXPECT_THAT(refusal(contextWith(header("empty", '2', 0, ""))), HasSubstr("an empty target"));
  EXPECT_THAT(refusal(contextWith(header("hard", '1', 0, "../x"))),
              HasSubstr("hard link \"hard\" to \"../x\" leaves the context"));
  EXPECT_THAT(refusal(contextWith(header("hard", '1', 0, "/etc/shadow"))),
              HasSubstr("hard link \"hard\" to \"/etc/shadow\" is an absolute path"));
  EXPECT_THAT(refusal(contextWith(extendedEntry('x', paxRecord("linkpath", "/etc")) +
                                  header("sneaky", '2', 0, "fine"))),
              HasSubstr("points to the absolute path \"/etc\""));
  EXPECT_THAT(refusal(contextWith(extendedEntry('K', std::string("../../k") + '\0') +
                                  header("hard", '1', 0, "fine"))),
              HasSubstr("leaves the context"));
}

TEST(ContextCheckerTest, RefusesSpecialAndUnsupportedEntries) {
  EXPECT_THAT(refusal(contextWith(header("null", '3', 0))), HasSubstr("is a device node"));
  EXPECT_THAT(refusal(contextWith(header("disk", '4', 0))), HasSubstr("is a device node"));
  EXPECT_THAT(refusal(contextWith(header("pipe", '6', 0))), HasSubstr("is a FIFO"));
  EXPECT_THAT(refusal(contextWith(header("sparse", 'S', 0))),
              HasSubstr("unsupported entry type 'S'"));
  EXPECT_THAT(refusal(contextWith(extendedEntry('x', paxRecord("GNU.sparse.major", "1")) +
                                  fileEntry("sparse", "x"))),
              HasSubstr("sparse files are not accepted"));
}

TEST(ContextCheckerTest, RefusesMalformedHeaders) {
  std::string bad = dockerfileEntry() + endMarker();
  bad[10] = 'X';  // In the name: the checksum no longer matches.
  EXPECT_THAT(refusal(bad), HasSubstr("bad header checksum at offset 0"));

  std::string v7 = header("Dockerfile", '0', 0);
  v7.replace(257, 8, std::string(8, '\0'));
  sealChecksum(v7);
  EXPECT_THAT(refusal(v7 + endMarker()), HasSubstr("is not a ustar header"));

  std::string size = header("Dockerfile", '0', 0);
  size.replace(124, 12, "12x456789012");
  sealChecksum(size);
  EXPECT_THAT(refusal(size + endMarker()), HasSubstr("malformed size"));

  EXPECT_THAT(refusal(contextWith(extendedEntry('x', "5 a=b\n") + fileEntry("f", "x"))),
              HasSubstr("malformed pax header"));
  EXPECT_THAT(refusal(contextWith(extendedEntry('x', "99 path=x\n") + fileEntry("f", "x"))),
              HasSubstr("malformed pax header"));
  EXPECT_THAT(refusal(contextWith(extendedEntry('x', paxRecord("a", "b")))),
              HasSubstr("extended header is not followed by an entry"));
  EXPECT_THAT(refusal(contextWith(extendedEntry('x', paxRecord("a", "b")) +
                                  extendedEntry('x', paxRecord("c", "d")) + fileEntry("f", "x"))),
              HasSubstr("two 'x' extended headers in a row"));
  EXPECT_THAT(refusal(contextWith(header("huge", 'x', 1 << 20))),
              HasSubstr("is 1048576 bytes, over 65536"));
  EXPECT_THAT(
      refusal(dockerfileEntry() + std::string(512, '\0') + fileEntry("late", "x") + endMarker()),
      HasSubstr("a lone zero block"));
  EXPECT_THAT(refusal(contextWith("") + "trailing garbage"),
              HasSubstr("data after the end-of-archive marker, at offset 2048"));
}

TEST(ContextCheckerTest, RefusesAStreamThatEndsEarly) {
  const std::string whole = contextWith(fileEntry("data", std::string(1000, 'd')));
  EXPECT_THAT(refusal(whole.substr(0, 1024 + 512 + 100)),
              HasSubstr("the stream ended inside entry \"data\" (924 bytes missing)"));
  EXPECT_THAT(refusal(whole.substr(0, 1024 + 100)),
              HasSubstr("the stream ended inside the header at offset 1024"));
  EXPECT_THAT(refusal(whole.substr(0, whole.size() - 1024)),
              HasSubstr("without the end-of-archive marker"));
  EXPECT_THAT(refusal(whole.substr(0, whole.size() - 512)),
              HasSubstr("ended inside the end-of-archive marker"));
  EXPECT_THAT(refusal(""), HasSubstr("without the end-of-archive marker, after 0 bytes"));
}

TEST(ContextCheckerTest, RefusesAStreamOverTheLimit) {
  const std::string tar = contextWith(fileEntry("data", std::string(5000, 'd')));
  EXPECT_EQ(refusal(tar, "", tar.size()), "");
  EXPECT_THAT(refusal(tar, "", tar.size() - 1),
              HasSubstr(fmt::format("the context is over the limit of {} bytes", tar.size() - 1)));
  // An entry that announces more than the limit is refused at its header.
  ContextChecker checker(100000, "");
  checker.feed(dockerfileEntry());
  EXPECT_THROW(checker.feed(header("huge", '0', 200000)), ContextError);
  // Once refused, always refused.
  try {
    checker.feed(endMarker());
    ADD_FAILURE() << "a failed checker accepted more";
  } catch (const ContextError& e) {
    EXPECT_THAT(e.what(), HasSubstr("\"huge\" declares 200000 bytes, over the limit of 100000"));
  }
  EXPECT_THROW(checker.finish(), ContextError);
}

TEST(ContextCheckerTest, RefusesAMissingEmptyOversizedOrBrokenDockerfile) {
  EXPECT_THAT(refusal(fileEntry("other", "x") + endMarker()),
              HasSubstr("the Dockerfile \"Dockerfile\" is not in the context"));
  EXPECT_THAT(refusal(fileEntry("Dockerfile", "") + endMarker()), HasSubstr("is empty"));
  EXPECT_THAT(refusal(header("Dockerfile", '0', containers::kMaxDockerfileBytes + 1)),
              HasSubstr("is 1048577 bytes, over the limit of 1048576 bytes"));
  EXPECT_THAT(refusal(header("Dockerfile/", '5', 0) + endMarker()),
              HasSubstr("is not a regular file but a directory"));
  EXPECT_THAT(
      refusal(fileEntry("real", kDockerfile) + header("Dockerfile", '2', 0, "real") + endMarker()),
      HasSubstr("is not a regular file but a symlink"));
  EXPECT_THAT(refusal(dockerfileEntry() + dockerfileEntry() + endMarker()),
              HasSubstr("appears twice"));
  EXPECT_THAT(refusal(dockerfileEntry("FROM x\nBUILD it\n") + endMarker()),
              HasSubstr("the Dockerfile \"Dockerfile\" is broken: line 2: unknown instruction "
                        "\"BUILD\""));
  EXPECT_THAT(refusal(dockerfileEntry("# just a comment\n\n") + endMarker()),
              HasSubstr("holds no instruction"));
  // Found under its cleaned name.
  EXPECT_EQ(refusal(fileEntry("./build/app.df", kDockerfile) + endMarker(), "build//app.df"), "");
}

TEST(ContextCheckerTest, FeedAfterFinishIsAProgrammingError) {
  ContextChecker checker(kNoLimit, "");
  checker.feed(contextWith(""));
  checker.finish();
  EXPECT_THROW(checker.feed("x"), std::logic_error);
  EXPECT_THROW(checker.finish(), std::logic_error);
}

// ---- Dockerfiles
// ---------------------------------------------------------------------------------

TEST(DockerfileTest, AcceptsDirectivesCommentsContinuationsAndHereDocuments) {
  EXPECT_NO_THROW(
      checkDockerfile("# syntax=docker/dockerfile:1\n"
                      "# escape=\\\n"
                      "\n"
                      "# A comment.\n"
                      "ARG BASE=alpine\n"
                      "from ${BASE}\n"
                      "RUN apk add \\\n"
                      "    # a comment inside the continuation\n"
                      "\n"
                      "    curl\n"
                      "RUN <<EOF\n"
                      "set -e\n"
                      "echo not an instruction\n"
                      "EOF\n"
                      "COPY <<-\"END\" /etc/motd\n"
                      "\thello\n"
                      "\tEND\n"
                      "ONBUILD RUN make\n"
                      "HEALTHCHECK CMD true\r\n"
                      "CMD [\"sh\"]"));
  EXPECT_NO_THROW(
      checkDockerfile("# escape=`\n"
                      "FROM windows\n"
                      "RUN dir `\n"
                      "    c:\\\n"));
}

TEST(DockerfileTest, RefusesWhatDockerWouldNotParse) {
  auto errorOf = [](std::string_view text) -> std::string {
    try {
      checkDockerfile(text);
    } catch (const ContextError& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_EQ(errorOf("FROM x\n"), "");
  EXPECT_THAT(errorOf("FORM ubuntu\n"), HasSubstr("line 1: unknown instruction \"FORM\""));
  EXPECT_THAT(errorOf("\n# c\nRUN x\nFROM y\n"),
              HasSubstr("line 3: the first instruction must be FROM or ARG, not RUN"));
  EXPECT_THAT(errorOf(""), HasSubstr("holds no instruction"));
  EXPECT_THAT(errorOf("FROM x\nRUN <<EOF\necho\n"), HasSubstr("here-document \"EOF\" is never"));
  EXPECT_THAT(errorOf("FROM x\nONBUILD FROM y\n"), HasSubstr("ONBUILD cannot trigger \"FROM\""));
  EXPECT_THAT(errorOf("# escape=x\nFROM x\n"), HasSubstr("invalid escape directive"));
  EXPECT_THAT(errorOf("# escape=`\n# escape=\\\nFROM x\n"), HasSubstr("given twice"));
  // A continuation does not hide an unknown instruction on the next logical line.
  EXPECT_THAT(errorOf("FROM x\nRUN a \\\n  b\nNOPE\n"), HasSubstr("line 4: unknown instruction"));
  // After the first instruction a directive is a comment.
  EXPECT_EQ(errorOf("FROM x\n# escape=`\nRUN a \\\n  b\n"), "");
}

}  // namespace
}  // namespace snow::testing
