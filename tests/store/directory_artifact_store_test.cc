// What only the directory store can show: files on disk, durability across
// reopen, staging cleanup after a killed writer, symbolic links.
#include "common/store/directory_artifact_store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "common/base/sha256.h"
#include "tests/testing/child_guard.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace tunefleet::store {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::tunefleet::testing::IsOkAndHolds;
using ::tunefleet::testing::StatusIs;
using ::tunefleet::testing::TempDir;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  out << data;
}

// Everything under `root`, files and folders, as relative paths.
std::set<std::string> Tree(const std::string& root) {
  std::set<std::string> paths;
  for (const auto& entry : fs::recursive_directory_iterator(root)) {
    paths.insert(fs::relative(entry.path(), root).string());
  }
  return paths;
}

std::vector<std::string> StagingFiles(const std::string& root) {
  std::vector<std::string> names;
  for (const auto& entry :
       fs::directory_iterator(root + "/" + DirectoryArtifactStore::kStagingFolder)) {
    names.push_back(entry.path().filename().string());
  }
  return names;
}

class StoreDirectoryArtifacts : public ::testing::Test {
 protected:
  void SetUp() override { TF_ASSERT_OK_AND_ASSIGN(store_, DirectoryArtifactStore::Open(root_)); }

  TempDir dir_;
  std::string root_ = dir_.Join("pv/artifacts");  // parents are made too
  std::unique_ptr<DirectoryArtifactStore> store_;
};

TEST_F(StoreDirectoryArtifacts, NamesAreFilesUnderTheRoot) {
  TF_ASSERT_OK(store_->Put("models/ft-1/adapter_config.json", "{}").status());
  EXPECT_EQ(ReadFile(root_ + "/models/ft-1/adapter_config.json"), "{}");
  EXPECT_THAT(StagingFiles(root_), IsEmpty());
  EXPECT_EQ(Tree(root_), (std::set<std::string>{".staging~", "models", "models/ft-1",
                                                "models/ft-1/adapter_config.json"}));
}

TEST_F(StoreDirectoryArtifacts, CommittedDataSurvivesReopen) {
  const std::string data(300000, 'q');
  TF_ASSERT_OK_AND_ASSIGN(ArtifactInfo info, store_->Put("ckpt/ckpt-7/weights", data));
  store_.reset();
  TF_ASSERT_OK_AND_ASSIGN(store_, DirectoryArtifactStore::Open(root_));
  EXPECT_THAT(store_->Get("ckpt/ckpt-7/weights"), IsOkAndHolds(data));
  TF_ASSERT_OK_AND_ASSIGN(ArtifactInfo stat, store_->Stat("ckpt/ckpt-7/weights"));
  EXPECT_EQ(stat.size, info.size);
  EXPECT_EQ(stat.sha256, Sha256Hex(data));
}

TEST_F(StoreDirectoryArtifacts, StatHashesFilesPutThereByOthers) {
  // A base model copied onto the volume by an operator, not through the store.
  fs::create_directories(root_ + "/base/phi-3-mini");
  WriteFile(root_ + "/base/phi-3-mini/config.json", "{\"vocab_size\": 32064}");
  TF_ASSERT_OK_AND_ASSIGN(ArtifactInfo stat, store_->Stat("base/phi-3-mini/config.json"));
  EXPECT_EQ(stat.size, 21);
  EXPECT_EQ(stat.sha256, Sha256Hex("{\"vocab_size\": 32064}"));
  // A file changed behind the store's back is hashed again, not trusted.
  TF_ASSERT_OK(store_->Put("edited", "before").status());
  WriteFile(root_ + "/edited", "after, longer");
  TF_ASSERT_OK_AND_ASSIGN(stat, store_->Stat("edited"));
  EXPECT_EQ(stat.sha256, Sha256Hex("after, longer"));
  EXPECT_THAT(store_->List("base/"),
              IsOkAndHolds(std::vector<std::string>{"base/phi-3-mini/config.json"}));
}

TEST_F(StoreDirectoryArtifacts, DeleteRemovesEmptiedFolders) {
  TF_ASSERT_OK(store_->Put("shards/file-1/0", "a").status());
  TF_ASSERT_OK(store_->Put("shards/file-2/0", "b").status());
  TF_ASSERT_OK(store_->Delete("shards/file-1/0"));
  EXPECT_FALSE(fs::exists(root_ + "/shards/file-1"));
  EXPECT_TRUE(fs::exists(root_ + "/shards/file-2/0"));
  TF_ASSERT_OK(store_->Delete("shards/file-2/0"));
  EXPECT_EQ(Tree(root_), std::set<std::string>{".staging~"});
}

TEST_F(StoreDirectoryArtifacts, AbortLeavesNoTemporaryFile) {
  TF_ASSERT_OK_AND_ASSIGN(auto writer, store_->OpenWriter("x"));
  TF_ASSERT_OK(writer->Append("data"));
  EXPECT_EQ(StagingFiles(root_).size(), 1u);
  writer.reset();
  EXPECT_THAT(StagingFiles(root_), IsEmpty());
  EXPECT_EQ(Tree(root_), std::set<std::string>{".staging~"});
}

TEST_F(StoreDirectoryArtifacts, ForeignEntriesAreNotArtifacts) {
  fs::create_directories(root_ + "/lost+found");
  WriteFile(root_ + "/lost+found/x", "fsck");
  WriteFile(root_ + "/bad name", "?");
  WriteFile(root_ + "/" + DirectoryArtifactStore::kStagingFolder + "-not", "?");
  // A tree deeper than any valid name (copied in by hand) holds no artifact.
  std::string deep = root_ + "/deep";
  for (size_t i = 0; i < kMaxArtifactNameDepth; ++i) deep += "/d";
  fs::create_directories(deep);
  WriteFile(deep + "/file", "too deep");
  TF_ASSERT_OK(store_->Put("deep/shallow", "1").status());
  TF_ASSERT_OK(store_->Put("good", "1").status());
  EXPECT_THAT(store_->List(""), IsOkAndHolds(std::vector<std::string>{"deep/shallow", "good"}));
  EXPECT_THAT(store_->List("deep/d/d/"), IsOkAndHolds(std::vector<std::string>{}));
}

TEST_F(StoreDirectoryArtifacts, SymbolicLinksAreNeverFollowed) {
  const std::string outside = dir_.Join("outside");
  fs::create_directories(outside);
  WriteFile(outside + "/secret", "do not read");
  fs::create_directory_symlink(outside, root_ + "/escape");
  fs::create_symlink(outside + "/secret", root_ + "/link");

  EXPECT_THAT(store_->Get("escape/secret"),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("symbolic link")));
  EXPECT_THAT(store_->Stat("escape/secret"), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(store_->Put("escape/planted", "x"),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("symbolic link")));
  EXPECT_THAT(store_->Delete("escape/secret"), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(store_->List("escape/"), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(store_->Get("link"),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("symbolic link")));
  EXPECT_THAT(store_->Exists("link"), IsOkAndHolds(false));
  EXPECT_THAT(store_->List(""), IsOkAndHolds(std::vector<std::string>{}));
  EXPECT_THAT(store_->Delete("link"), StatusIs(absl::StatusCode::kNotFound));

  // Writing the name replaces the link itself, not what it points to.
  TF_ASSERT_OK(store_->Put("link", "mine").status());
  EXPECT_FALSE(fs::is_symlink(root_ + "/link"));
  EXPECT_THAT(store_->Get("link"), IsOkAndHolds(std::string("mine")));
  EXPECT_EQ(ReadFile(outside + "/secret"), "do not read");
  EXPECT_EQ(Tree(outside), std::set<std::string>{"secret"});
}

TEST_F(StoreDirectoryArtifacts, OpenFailsOnAFileAsRoot) {
  WriteFile(dir_.Join("plain"), "x");
  EXPECT_FALSE(DirectoryArtifactStore::Open(dir_.Join("plain")).ok());
}

// Every string over {'a', '.', '/'} up to 6 characters: the validator accepts
// exactly the relative paths without empty, "." or ".." segments, and every
// accepted name lands strictly inside the root.
TEST_F(StoreDirectoryArtifacts, EveryAcceptedNameStaysUnderTheRoot) {
  DirectoryArtifactStore::Options options;
  options.sync = false;  // thousands of small writes; durability is tested elsewhere
  TF_ASSERT_OK_AND_ASSIGN(auto store, DirectoryArtifactStore::Open(root_, options));
  const std::string real_root = fs::canonical(root_).string() + "/";
  std::vector<std::string> names = {""};
  for (size_t begin = 0, length = 0; length < 6; ++length) {
    size_t end = names.size();
    for (size_t i = begin; i < end; ++i) {
      for (char c : {'a', '.', '/'}) names.push_back(names[i] + c);
    }
    begin = end;
  }
  int accepted = 0;
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string& name = names[i];
    bool expected = !name.empty() && name.front() != '/';
    for (absl::string_view segment : absl::StrSplit(name, '/')) {
      if (segment.empty() || segment == "." || segment == "..") expected = false;
    }
    ASSERT_EQ(ValidateArtifactName(name).ok(), expected) << '"' << name << '"';
    if (!expected) {
      ASSERT_THAT(store->Put(name, "x"), StatusIs(absl::StatusCode::kInvalidArgument)) << name;
      continue;
    }
    ++accepted;
    // Its own folder, so that "a" and "a/a" do not collide.
    const std::string stored = "n" + std::to_string(i) + "/" + name;
    ASSERT_THAT(store->Put(stored, name), ::tunefleet::testing::IsOk()) << stored;
    const std::string real = fs::canonical(root_ + "/" + stored).string();
    ASSERT_EQ(real.rfind(real_root, 0), 0u) << stored << " is at " << real;
    ASSERT_THAT(store->Get(stored), IsOkAndHolds(name));
  }
  EXPECT_GT(accepted, 100);
  // Nothing was made beside the root.
  EXPECT_EQ(Tree(dir_.path()).count("pv/artifacts"), 1u);
  for (const std::string& path : Tree(dir_.path())) {
    EXPECT_TRUE(path == "pv" || absl::StartsWith(path, "pv/artifacts")) << path;
  }
}

using ::tunefleet::testing::ChildGuard;

// A writer process killed in the middle of a write: its partial file is never
// visible under the name, another store opened meanwhile leaves the live
// writer's file alone, and the next Open() after its death removes it.
TEST_F(StoreDirectoryArtifacts, KilledWriterLeavesNothingAfterReopen) {
  TF_ASSERT_OK(store_->Put("keep", "kept").status());
  store_.reset();

  int mid_write[2], never[2];
  ASSERT_EQ(pipe(mid_write), 0);
  ASSERT_EQ(pipe(never), 0);
  ChildGuard child;
  child.pid = fork();
  ASSERT_GE(child.pid, 0);
  if (child.pid == 0) {
    // The child: only store calls and raw syscalls, then _exit.
    close(mid_write[0]);
    close(never[1]);
    auto store = DirectoryArtifactStore::Open(root_);
    if (!store.ok()) _exit(2);
    auto writer = (*store)->OpenWriter("shards/file-1/shard-00000");
    if (!writer.ok()) _exit(3);
    if (!(*writer)->Append(std::string(1 << 20, 'x')).ok()) _exit(4);
    char c = 'w';
    if (write(mid_write[1], &c, 1) != 1) _exit(5);
    // Blocks until SIGKILL: nobody ever writes to `never`.
    while (read(never[0], &c, 1) != 0) {
    }
    _exit(6);
  }
  close(mid_write[1]);
  close(never[0]);
  char c = 0;
  ASSERT_EQ(read(mid_write[0], &c, 1), 1) << "the child died before writing";
  close(mid_write[0]);

  // Mid-write: one temporary file in staging, nothing under the name.
  ASSERT_EQ(StagingFiles(root_).size(), 1u);
  {
    // A second store opened now (a peer restarting) must not remove the live
    // writer's file: it is locked.
    TF_ASSERT_OK_AND_ASSIGN(auto peer, DirectoryArtifactStore::Open(root_));
    EXPECT_EQ(StagingFiles(root_).size(), 1u);
    EXPECT_THAT(peer->Exists("shards/file-1/shard-00000"), IsOkAndHolds(false));
    EXPECT_THAT(peer->Get("shards/file-1/shard-00000"), StatusIs(absl::StatusCode::kNotFound));
    EXPECT_THAT(peer->List(""), IsOkAndHolds(std::vector<std::string>{"keep"}));
  }

  ASSERT_EQ(kill(child.pid, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(waitpid(child.pid, &status, 0), child.pid);
  child.pid = -1;
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
  close(never[1]);

  // Dead: the leftover is still there until a store opens...
  EXPECT_EQ(StagingFiles(root_).size(), 1u);
  TF_ASSERT_OK_AND_ASSIGN(store_, DirectoryArtifactStore::Open(root_));
  // ...which removes it. Nothing else is on disk but the kept artifact.
  EXPECT_THAT(StagingFiles(root_), IsEmpty());
  EXPECT_EQ(Tree(root_), (std::set<std::string>{".staging~", "keep"}));
  EXPECT_THAT(store_->List(""), IsOkAndHolds(std::vector<std::string>{"keep"}));
  EXPECT_THAT(store_->Exists("shards/file-1/shard-00000"), IsOkAndHolds(false));
  EXPECT_THAT(store_->Get("keep"), IsOkAndHolds(std::string("kept")));
  // The name is free to be written for real.
  TF_ASSERT_OK(store_->Put("shards/file-1/shard-00000", "whole").status());
  EXPECT_THAT(store_->List("shards/"),
              IsOkAndHolds(std::vector<std::string>{"shards/file-1/shard-00000"}));
}

// A write that fails half-way (here the file size limit, as a full disk
// would) leaves the writer unable to commit what it half wrote.
TEST_F(StoreDirectoryArtifacts, FailedAppendAbortsTheWriter) {
  // In a child, since the limit is per process.
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    signal(SIGXFSZ, SIG_IGN);  // EFBIG instead of death
    struct rlimit limit = {1000, 1000};
    if (setrlimit(RLIMIT_FSIZE, &limit) != 0) _exit(2);
    auto store = DirectoryArtifactStore::Open(root_);
    if (!store.ok()) _exit(3);
    auto writer = (*store)->OpenWriter("too-big");
    if (!writer.ok()) _exit(4);
    absl::Status append = (*writer)->Append(std::string(2000, 'x'));
    if (append.code() != absl::StatusCode::kResourceExhausted) _exit(5);
    if ((*writer)->Commit().status().code() != absl::StatusCode::kFailedPrecondition) _exit(6);
    if ((*writer)->Append("x").code() != absl::StatusCode::kFailedPrecondition) _exit(7);
    if (!StagingFiles(root_).empty()) _exit(8);
    auto exists = (*store)->Exists("too-big");
    if (!exists.ok() || *exists) _exit(9);
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0) << "the child's check that failed";
  EXPECT_EQ(Tree(root_), std::set<std::string>{".staging~"});
}

TEST_F(StoreDirectoryArtifacts, WriterInThisProcessSurvivesAnotherOpen) {
  TF_ASSERT_OK_AND_ASSIGN(auto writer, store_->OpenWriter("in-flight"));
  TF_ASSERT_OK(writer->Append("first half, "));
  TF_ASSERT_OK_AND_ASSIGN(auto second, DirectoryArtifactStore::Open(root_));
  TF_ASSERT_OK(writer->Append("second half"));
  TF_ASSERT_OK(writer->Commit().status());
  EXPECT_THAT(second->Get("in-flight"), IsOkAndHolds(std::string("first half, second half")));
}

TEST_F(StoreDirectoryArtifacts, UnsyncedStoreForCaches) {
  DirectoryArtifactStore::Options options;
  options.sync = false;
  TF_ASSERT_OK_AND_ASSIGN(auto cache, DirectoryArtifactStore::Open(dir_.Join("cache"), options));
  TF_ASSERT_OK(cache->Put("a/b", "c").status());
  EXPECT_THAT(cache->Get("a/b"), IsOkAndHolds(std::string("c")));
  TF_ASSERT_OK(cache->Delete("a/b"));
  EXPECT_THAT(cache->List(""), IsOkAndHolds(std::vector<std::string>{}));
}

}  // namespace
}  // namespace tunefleet::store
