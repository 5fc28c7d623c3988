// The ArtifactStore contract, run against every implementation (as c10d runs
// its Store tests against HashStore and TCPStore).
#include "common/store/artifact_store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/base/sha256.h"
#include "common/store/directory_artifact_store.h"
#include "common/store/memory_artifact_store.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace tunefleet::store {
namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;
using ::tunefleet::testing::IsOkAndHolds;
using ::tunefleet::testing::StatusIs;
using ::tunefleet::testing::TempDir;

// Bytes 0..255 repeated, so that any misplaced offset shows.
std::string Pattern(size_t n, int seed = 0) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 7 + seed) & 0xff);
  return s;
}

struct MemoryImpl {
  static constexpr const char* kName = "Memory";
  absl::StatusOr<std::unique_ptr<ArtifactStore>> Make() {
    return std::make_unique<MemoryArtifactStore>();
  }
};

struct DirectoryImpl {
  static constexpr const char* kName = "Directory";
  TempDir dir;
  absl::StatusOr<std::unique_ptr<ArtifactStore>> Make() {
    auto store = DirectoryArtifactStore::Open(dir.Join("artifacts"));
    if (!store.ok()) return store.status();
    return std::unique_ptr<ArtifactStore>(std::move(*store));
  }
};

template <typename Impl>
class ArtifactStoreContract : public ::testing::Test {
 protected:
  void SetUp() override { TF_ASSERT_OK_AND_ASSIGN(store_, impl_.Make()); }

  Impl impl_;
  std::unique_ptr<ArtifactStore> store_;
};

struct ImplNames {
  template <typename T>
  static std::string GetName(int) {
    return T::kName;
  }
};

using Implementations = ::testing::Types<MemoryImpl, DirectoryImpl>;
TYPED_TEST_SUITE(ArtifactStoreContract, Implementations, ImplNames);

TYPED_TEST(ArtifactStoreContract, PutThenGetRoundTrips) {
  ArtifactStore& store = *this->store_;
  const std::string binary = Pattern(100000);
  TF_ASSERT_OK(store.Put("uploads/file-1", binary).status());
  TF_ASSERT_OK(store.Put("empty", "").status());
  TF_ASSERT_OK(store.Put("a.b_c-d/e/f/g", "deep").status());
  EXPECT_THAT(store.Get("uploads/file-1"), IsOkAndHolds(binary));
  TF_ASSERT_OK_AND_ASSIGN(std::string empty, store.Get("empty"));
  EXPECT_EQ(empty, "");
  TF_ASSERT_OK_AND_ASSIGN(std::string deep, store.Get("a.b_c-d/e/f/g"));
  EXPECT_EQ(deep, "deep");
}

TYPED_TEST(ArtifactStoreContract, CommitAndStatReportSizeAndSha256) {
  ArtifactStore& store = *this->store_;
  TF_ASSERT_OK_AND_ASSIGN(auto writer, store.OpenWriter("ckpt/ckpt-1/adapter_model.safetensors"));
  std::string all;
  for (int i = 0; i < 50; ++i) {
    std::string chunk = Pattern(1000 + i, i);
    all += chunk;
    TF_ASSERT_OK(writer->Append(chunk));
  }
  TF_ASSERT_OK_AND_ASSIGN(ArtifactInfo info, writer->Commit());
  EXPECT_EQ(info.size, static_cast<int64_t>(all.size()));
  EXPECT_EQ(info.sha256, Sha256Hex(all));
  TF_ASSERT_OK_AND_ASSIGN(ArtifactInfo stat, store.Stat("ckpt/ckpt-1/adapter_model.safetensors"));
  EXPECT_EQ(stat.size, info.size);
  EXPECT_EQ(stat.sha256, info.sha256);

  TF_ASSERT_OK_AND_ASSIGN(ArtifactInfo empty, store.Put("empty", ""));
  EXPECT_EQ(empty.size, 0);
  EXPECT_EQ(empty.sha256, Sha256Hex(""));
}

TYPED_TEST(ArtifactStoreContract, NothingIsVisibleBeforeCommit) {
  ArtifactStore& store = *this->store_;
  TF_ASSERT_OK_AND_ASSIGN(auto writer, store.OpenWriter("shards/file-1/0"));
  TF_ASSERT_OK(writer->Append("partial"));
  EXPECT_THAT(store.Exists("shards/file-1/0"), IsOkAndHolds(false));
  EXPECT_THAT(store.Get("shards/file-1/0"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store.Stat("shards/file-1/0"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store.List(""), IsOkAndHolds(std::vector<std::string>{}));
  TF_ASSERT_OK(writer->Append(" and the rest"));
  TF_ASSERT_OK(writer->Commit().status());
  EXPECT_THAT(store.Exists("shards/file-1/0"), IsOkAndHolds(true));
  EXPECT_THAT(store.Get("shards/file-1/0"), IsOkAndHolds(std::string("partial and the rest")));
}

TYPED_TEST(ArtifactStoreContract, AbortAndDestructionDropTheWrite) {
  ArtifactStore& store = *this->store_;
  {
    TF_ASSERT_OK_AND_ASSIGN(auto writer, store.OpenWriter("aborted"));
    TF_ASSERT_OK(writer->Append("data"));
    writer->Abort();
    EXPECT_THAT(writer->Append("more"), StatusIs(absl::StatusCode::kFailedPrecondition));
    EXPECT_THAT(writer->Commit(), StatusIs(absl::StatusCode::kFailedPrecondition));
    writer->Abort();  // again: a no-op
  }
  {
    TF_ASSERT_OK_AND_ASSIGN(auto writer, store.OpenWriter("dropped"));
    TF_ASSERT_OK(writer->Append("data"));
  }
  EXPECT_THAT(store.Exists("aborted"), IsOkAndHolds(false));
  EXPECT_THAT(store.Exists("dropped"), IsOkAndHolds(false));
  EXPECT_THAT(store.List(""), IsOkAndHolds(std::vector<std::string>{}));
}

TYPED_TEST(ArtifactStoreContract, CommittedWriterIsDone) {
  ArtifactStore& store = *this->store_;
  TF_ASSERT_OK_AND_ASSIGN(auto writer, store.OpenWriter("once"));
  TF_ASSERT_OK(writer->Append("x"));
  TF_ASSERT_OK(writer->Commit().status());
  EXPECT_THAT(writer->Append("y"), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(writer->Commit(), StatusIs(absl::StatusCode::kFailedPrecondition));
  writer->Abort();  // after Commit: a no-op, the artifact stays
  writer.reset();
  EXPECT_THAT(store.Get("once"), IsOkAndHolds(std::string("x")));
}

TYPED_TEST(ArtifactStoreContract, CommitReplacesAnExistingName) {
  ArtifactStore& store = *this->store_;
  TF_ASSERT_OK(store.Put("model", "old contents").status());
  TF_ASSERT_OK_AND_ASSIGN(auto reader, store.OpenReader("model", 0));
  TF_ASSERT_OK_AND_ASSIGN(ArtifactInfo info, store.Put("model", "new"));
  EXPECT_EQ(info.sha256, Sha256Hex("new"));
  EXPECT_THAT(store.Get("model"), IsOkAndHolds(std::string("new")));
  TF_ASSERT_OK_AND_ASSIGN(ArtifactInfo stat, store.Stat("model"));
  EXPECT_EQ(stat.size, 3);
  EXPECT_EQ(stat.sha256, Sha256Hex("new"));
  // A reader opened before keeps reading what it opened.
  EXPECT_EQ(reader->size(), 12);
  EXPECT_THAT(reader->Read(100), IsOkAndHolds(std::string("old contents")));
  EXPECT_THAT(store.List(""), IsOkAndHolds(std::vector<std::string>{"model"}));
}

TYPED_TEST(ArtifactStoreContract, ReaderReadsFromAnOffset) {
  ArtifactStore& store = *this->store_;
  const std::string data = Pattern(10007);
  TF_ASSERT_OK(store.Put("blob", data).status());
  for (int64_t offset : {int64_t{0}, int64_t{1}, int64_t{4096}, int64_t{10006}}) {
    TF_ASSERT_OK_AND_ASSIGN(auto reader, store.OpenReader("blob", offset));
    EXPECT_EQ(reader->size(), 10007);
    std::string got;
    while (true) {
      TF_ASSERT_OK_AND_ASSIGN(std::string chunk, reader->Read(333));
      if (chunk.empty()) break;
      EXPECT_LE(chunk.size(), 333u);
      got += chunk;
    }
    EXPECT_EQ(got, data.substr(static_cast<size_t>(offset))) << "offset " << offset;
  }
  TF_ASSERT_OK_AND_ASSIGN(auto at_end, store.OpenReader("blob", 10007));
  EXPECT_THAT(at_end->Read(10), IsOkAndHolds(std::string()));
  EXPECT_THAT(store.OpenReader("blob", 10008), StatusIs(absl::StatusCode::kOutOfRange));
  EXPECT_THAT(store.OpenReader("blob", -1), StatusIs(absl::StatusCode::kOutOfRange));
  EXPECT_THAT(store.OpenReader("missing", 0),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("missing")));
}

TYPED_TEST(ArtifactStoreContract, ReaderOutlivesDelete) {
  ArtifactStore& store = *this->store_;
  TF_ASSERT_OK(store.Put("gone/soon", "still readable").status());
  TF_ASSERT_OK_AND_ASSIGN(auto reader, store.OpenReader("gone/soon", 6));
  TF_ASSERT_OK(store.Delete("gone/soon"));
  EXPECT_THAT(reader->Read(100), IsOkAndHolds(std::string("readable")));
}

TYPED_TEST(ArtifactStoreContract, DeleteAndMissingNames) {
  ArtifactStore& store = *this->store_;
  TF_ASSERT_OK(store.Put("a/b", "1").status());
  TF_ASSERT_OK(store.Delete("a/b"));
  EXPECT_THAT(store.Exists("a/b"), IsOkAndHolds(false));
  EXPECT_THAT(store.Delete("a/b"), StatusIs(absl::StatusCode::kNotFound, HasSubstr("a/b")));
  EXPECT_THAT(store.Get("a/b"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store.Stat("nope"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store.Delete("x/y/z"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store.List(""), IsOkAndHolds(std::vector<std::string>{}));
}

TYPED_TEST(ArtifactStoreContract, ListsByPlainPrefixInOrder) {
  ArtifactStore& store = *this->store_;
  for (const char* name : {"z", "a/b/d", "ab", "a/b/c", "a/bx", "a/a", "ckpt-1/x", "ckpt-12"}) {
    TF_ASSERT_OK(store.Put(name, name).status());
  }
  EXPECT_THAT(store.List(""),
              IsOkAndHolds(std::vector<std::string>{"a/a", "a/b/c", "a/b/d", "a/bx", "ab",
                                                    "ckpt-1/x", "ckpt-12", "z"}));
  EXPECT_THAT(store.List("a/"),
              IsOkAndHolds(std::vector<std::string>{"a/a", "a/b/c", "a/b/d", "a/bx"}));
  EXPECT_THAT(store.List("a/b"), IsOkAndHolds(std::vector<std::string>{"a/b/c", "a/b/d", "a/bx"}));
  EXPECT_THAT(store.List("a/b/"), IsOkAndHolds(std::vector<std::string>{"a/b/c", "a/b/d"}));
  EXPECT_THAT(store.List("a"),
              IsOkAndHolds(std::vector<std::string>{"a/a", "a/b/c", "a/b/d", "a/bx", "ab"}));
  EXPECT_THAT(store.List("ckpt-1"), IsOkAndHolds(std::vector<std::string>{"ckpt-1/x", "ckpt-12"}));
  EXPECT_THAT(store.List("z"), IsOkAndHolds(std::vector<std::string>{"z"}));
  EXPECT_THAT(store.List("q/"), IsOkAndHolds(std::vector<std::string>{}));
  EXPECT_THAT(store.List("z/"), IsOkAndHolds(std::vector<std::string>{}));  // z is a file
  EXPECT_THAT(store.List("../"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(store.List("/etc"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(store.List("a//"), StatusIs(absl::StatusCode::kInvalidArgument));
}

TYPED_TEST(ArtifactStoreContract, ANameIsAnArtifactOrAFolderNotBoth) {
  ArtifactStore& store = *this->store_;
  TF_ASSERT_OK(store.Put("x/y", "1").status());
  EXPECT_THAT(store.Put("x", "2"), StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("x")));
  EXPECT_THAT(store.Put("x/y/z", "3"), StatusIs(absl::StatusCode::kFailedPrecondition));
  // A folder is not an artifact.
  EXPECT_THAT(store.Exists("x"), IsOkAndHolds(false));
  EXPECT_THAT(store.Get("x"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store.Stat("x"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store.Delete("x"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store.List(""), IsOkAndHolds(std::vector<std::string>{"x/y"}));
  // Once the folder is emptied the name is free again.
  TF_ASSERT_OK(store.Delete("x/y"));
  TF_ASSERT_OK(store.Put("x", "2").status());
  EXPECT_THAT(store.Get("x"), IsOkAndHolds(std::string("2")));
}

TYPED_TEST(ArtifactStoreContract, RejectsNamesThatCouldEscapeOrAreMalformed) {
  ArtifactStore& store = *this->store_;
  const std::vector<std::string> bad = {
      "",
      "/etc/passwd",
      "../x",
      "a/../../b",
      "a/..",
      "..",
      ".",
      "./a",
      "a/./b",
      "a//b",
      "a/",
      "/",
      "a\\b",
      "..\\..\\windows",
      std::string("a\0b", 3),
      "a b",
      "a:b",
      "caf\xc3\xa9",
      "a\nb",
      std::string(kMaxArtifactNameLength + 1, 'a'),
      std::string(kMaxArtifactSegmentLength + 1, 'a'),
      std::string(kMaxArtifactNameLength - 1, 'a') + "/b",
  };
  for (const std::string& name : bad) {
    SCOPED_TRACE("name \"" + name.substr(0, 40) + "\"");
    EXPECT_THAT(ValidateArtifactName(name), StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_THAT(store.OpenWriter(name), StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_THAT(store.Put(name, "x"), StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_THAT(store.Get(name), StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_THAT(store.OpenReader(name, 0), StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_THAT(store.Stat(name), StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_THAT(store.Exists(name), StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_THAT(store.Delete(name), StatusIs(absl::StatusCode::kInvalidArgument));
  }
  EXPECT_THAT(store.List(""), IsOkAndHolds(std::vector<std::string>{}));
  // The message names the bad name, escaped.
  EXPECT_THAT(store.Put("a/../../b", "x"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("\"a/../../b\"")));
  EXPECT_THAT(store.Put(std::string("a\0b", 3), "x"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("a\\x00")));
  EXPECT_THAT(store.Put("/etc/passwd", "x"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("absolute")));
}

TYPED_TEST(ArtifactStoreContract, AcceptsTheWholeNameAlphabet) {
  ArtifactStore& store = *this->store_;
  for (const std::string& name :
       {std::string("ABCxyz019._-"), std::string("..a/b..c/.d"), std::string("...")}) {
    TF_EXPECT_OK(ValidateArtifactName(name));
    TF_EXPECT_OK(store.Put(name, name).status());
  }
  TF_EXPECT_OK(store.Put(std::string(kMaxArtifactSegmentLength, 'l'), "long").status());
  std::string deep = "d";
  for (size_t i = 1; i < kMaxArtifactNameDepth; ++i) deep += "/d";
  TF_EXPECT_OK(store.Put(deep, "deep").status());
  EXPECT_THAT(store.Get(deep), IsOkAndHolds(std::string("deep")));
  EXPECT_THAT(store.Put(deep + "/d", "deeper"), StatusIs(absl::StatusCode::kInvalidArgument));
}

TYPED_TEST(ArtifactStoreContract, ConcurrentWritersOfDistinctNames) {
  ArtifactStore& store = *this->store_;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&store, t] {
      for (int i = 0; i < 20; ++i) {
        // Folders shared between threads, emptied (and removed by the
        // directory store) and filled again while others write into them.
        std::string name =
            "f" + std::to_string(i % 3) + "/t" + std::to_string(t) + "-" + std::to_string(i);
        auto put = store.Put(name, Pattern(1000, t * 100 + i));
        ASSERT_TRUE(put.ok()) << name << ": " << put.status();
        if (i % 2 == 1) {
          auto deleted = store.Delete(name);
          ASSERT_TRUE(deleted.ok()) << name << ": " << deleted;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  TF_ASSERT_OK_AND_ASSIGN(auto names, store.List(""));
  EXPECT_EQ(names.size(), 40u);
  TF_ASSERT_OK_AND_ASSIGN(std::string got, store.Get("f0/t3-18"));
  EXPECT_EQ(got, Pattern(1000, 318));
}

TYPED_TEST(ArtifactStoreContract, ConcurrentWritersOfOneNameNeverMix) {
  ArtifactStore& store = *this->store_;
  const std::string a = Pattern(300000, 1), b = Pattern(300000, 2);
  std::vector<std::thread> threads;
  for (const std::string* data : {&a, &b, &a, &b}) {
    threads.emplace_back([&store, data] {
      for (int i = 0; i < 5; ++i) {
        auto writer = store.OpenWriter("contested");
        ASSERT_TRUE(writer.ok()) << writer.status();
        for (size_t off = 0; off < data->size(); off += 65536) {
          ASSERT_TRUE((*writer)->Append(absl::string_view(*data).substr(off, 65536)).ok());
        }
        ASSERT_TRUE((*writer)->Commit().ok());
      }
    });
  }
  for (auto& thread : threads) thread.join();
  TF_ASSERT_OK_AND_ASSIGN(std::string got, store.Get("contested"));
  EXPECT_THAT(got, AnyOf(a, b));
  TF_ASSERT_OK_AND_ASSIGN(ArtifactInfo stat, store.Stat("contested"));
  EXPECT_EQ(stat.sha256, Sha256Hex(got));
  EXPECT_THAT(store.List(""), IsOkAndHolds(std::vector<std::string>{"contested"}));
}

TEST(StoreArtifactNames, PrefixRules) {
  for (const char* ok : {"", "a", "a/", "a/b", ".", "..", "a/.", "a/..", "a/b/c-"}) {
    TF_EXPECT_OK(ValidateArtifactPrefix(ok)) << ok;
  }
  for (const char* bad : {"/", "/a", "../", "a/../", "./", "a//", "a b", "a\\"}) {
    EXPECT_THAT(ValidateArtifactPrefix(bad), StatusIs(absl::StatusCode::kInvalidArgument)) << bad;
  }
}

}  // namespace
}  // namespace tunefleet::store
