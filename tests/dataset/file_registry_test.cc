// The file registry over injected storage: the same core on an in-memory
// SQLite database and a memory artifact store (what an object store will
// plug into), without a directory anywhere.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/base/status_macros.h"
#include "common/store/memory_artifact_store.h"
#include "common/store/sqlite.h"
#include "services/dataset/file_processor.h"
#include "services/dataset/file_registry.h"
#include "tests/testing/status_matchers.h"

namespace tunefleet::dataset {
namespace {

using ::testing::HasSubstr;
using ::tunefleet::testing::IsOk;
using ::tunefleet::testing::StatusIs;

std::string Lines(int n) {
  std::string s;
  for (int i = 0; i < n; ++i) {
    s += R"({"messages": [{"role": "user", "content": "q)" + std::to_string(i) +
         R"("}, {"role": "assistant", "content": "a"}]})" "\n";
  }
  return s;
}

absl::StatusOr<FileRecord> Store(FileRegistry& r, const std::string& tenant, const std::string& name,
                                 const std::string& content) {
  UploadRequest req;
  req.filename = name;
  req.purpose = Purpose::kFineTune;
  req.labels = {{"team", "nlp"}};
  TF_ASSIGN_OR_RETURN(auto upload, r.BeginUpload(tenant, req));
  TF_RETURN_IF_ERROR(upload->Append(content));
  return upload->Commit();
}

TEST(FileRegistryTest, RunsOnAMemoryDatabaseAndAMemoryArtifactStore) {
  auto db = store::Database::Open(":memory:");
  ASSERT_THAT(db, IsOk());
  auto blobs = std::make_unique<store::MemoryArtifactStore>();
  store::MemoryArtifactStore* raw_blobs = blobs.get();
  auto registry = FileRegistry::Open(*std::move(db), std::move(blobs), FileRegistryOptions());
  ASSERT_THAT(registry, IsOk());
  FileRegistry& r = **registry;

  TF_ASSERT_OK_AND_ASSIGN(FileRecord f, Store(r, "acme", "a.jsonl", Lines(12)));
  TF_ASSERT_OK_AND_ASSIGN(FileRecord got, r.Get(Scope::Tenant("acme"), f.id));
  EXPECT_EQ(got.sha256, f.sha256);
  EXPECT_EQ(got.labels.at("team"), "nlp");
  EXPECT_THAT(r.Get(Scope::Tenant("other"), f.id), StatusIs(absl::StatusCode::kNotFound));
  TF_ASSERT_OK_AND_ASSIGN(FilePage page, r.List("acme", 0, "", Purpose::kUnspecified,
                                                {{"team", "nlp"}}));
  ASSERT_EQ(page.files.size(), 1u);

  // The automatic validation runs against the same injected storage.
  FileProcessor processor(&r, nullptr);
  processor.Enqueue(f);
  processor.WaitUntilIdle();
  TF_ASSERT_OK_AND_ASSIGN(got, r.Get(Scope::Tenant("acme"), f.id));
  EXPECT_EQ(got.status, FileStatus::kProcessed);

  TF_ASSERT_OK_AND_ASSIGN(std::vector<std::string> names, raw_blobs->List(""));
  EXPECT_EQ(names.size(), 1u);
  ASSERT_THAT(r.Delete("acme", f.id), IsOk());
  TF_ASSERT_OK_AND_ASSIGN(names, raw_blobs->List(""));
  EXPECT_TRUE(names.empty());
}

// A retry under a request_id that already committed stores nothing: its bytes
// are hashed on the way in, never written or counted against the quota (a
// tenant at its quota can still retry), and the first file is the answer.
TEST(FileRegistryTest, ARetriedUploadIsHashedNotStored) {
  const std::string content = Lines(12);
  FileRegistryOptions options;
  options.tenant_quota_bytes = static_cast<int64_t>(content.size()) + 10;
  auto blobs = std::make_unique<store::MemoryArtifactStore>();
  store::MemoryArtifactStore* raw_blobs = blobs.get();
  auto registry = FileRegistry::Open(*store::Database::Open(":memory:"), std::move(blobs), options);
  ASSERT_THAT(registry, IsOk());
  FileRegistry& r = **registry;
  auto upload = [&](const std::string& bytes, const std::string& expected_sha256 = "")
      -> absl::StatusOr<FileRecord> {
    UploadRequest req;
    req.filename = "a.jsonl";
    req.purpose = Purpose::kFineTune;
    req.request_id = "upload-1";
    req.expected_sha256 = expected_sha256;
    TF_ASSIGN_OR_RETURN(auto u, r.BeginUpload("acme", req));
    TF_RETURN_IF_ERROR(u->Append(bytes));
    return u->Commit();
  };
  TF_ASSERT_OK_AND_ASSIGN(FileRecord first, upload(content));
  // The tenant is now at its quota; the retry still answers the first file.
  TF_ASSERT_OK_AND_ASSIGN(FileRecord retry, upload(content, first.sha256));
  EXPECT_EQ(retry.id, first.id);
  TF_ASSERT_OK_AND_ASSIGN(std::vector<std::string> names, raw_blobs->List(""));
  EXPECT_EQ(names.size(), 1u);
  // Other bytes: REQUEST_ID_REUSED at the commit; another expected sha256:
  // refused before a byte is sent.
  EXPECT_THAT(upload(Lines(11)),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr(first.id)));
  UploadRequest req;
  req.filename = "a.jsonl";
  req.purpose = Purpose::kFineTune;
  req.request_id = "upload-1";
  req.expected_sha256 = std::string(64, 'a');
  EXPECT_THAT(r.BeginUpload("acme", req),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("was used for " + first.id)));
  // Bytes that do not match their own expected sha256 are still DATA_LOSS.
  EXPECT_THAT(upload(Lines(11), first.sha256), StatusIs(absl::StatusCode::kDataLoss));
  TF_ASSERT_OK_AND_ASSIGN(names, raw_blobs->List(""));
  EXPECT_EQ(names.size(), 1u);
  // Without a request_id the quota holds as before.
  UploadRequest fresh;
  fresh.filename = "b.jsonl";
  fresh.purpose = Purpose::kFineTune;
  TF_ASSERT_OK_AND_ASSIGN(auto u, r.BeginUpload("acme", fresh));
  EXPECT_THAT(u->Append(content), StatusIs(absl::StatusCode::kResourceExhausted));
}

TEST(FileRegistryTest, RefusesMissingStorage) {
  EXPECT_THAT(FileRegistry::Open(nullptr, std::make_unique<store::MemoryArtifactStore>(),
                                 FileRegistryOptions()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("database")));
}

TEST(FileProcessorTest, WaitUntilIdleReturnsAtOnceWhenNothingWasQueued) {
  auto registry = FileRegistry::Open(*store::Database::Open(":memory:"),
                                     std::make_unique<store::MemoryArtifactStore>(),
                                     FileRegistryOptions());
  ASSERT_THAT(registry, IsOk());
  FileProcessor processor(registry->get(), nullptr);
  processor.WaitUntilIdle();
  // A queued file that no longer exists is skipped, and the processor is
  // idle again afterwards.
  FileRecord ghost;
  ghost.id = "file-aaaaaaaaaaaaaaaaaaaaaaaa";
  processor.Enqueue(ghost);
  processor.WaitUntilIdle();
}

}  // namespace
}  // namespace tunefleet::dataset
