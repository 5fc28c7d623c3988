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
