// The agent's shard fetch against a real dataset service on loopback, with
// the Phi-3 tokenizer: every rank's file holds exactly what StreamShard
// sends, the cache is reused and a damaged cache file is fetched again,
// errors name the file, model or tenant.
#include "services/trainer/agent/shard_fetcher.h"

#include <filesystem>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "common/rpc/auth.h"
#include "services/trainer/protocol/shard_file.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tests/trainer_agent/dataset_server.h"

namespace tunefleet::trainer {
namespace {

using ::testing::HasSubstr;
using ::tunefleet::testing::IsOk;
using ::tunefleet::testing::StatusIs;

class ShardFetcherTest : public ::testing::Test {
 protected:
  // One dataset server (and one tokenizer load) for the suite.
  static void SetUpTestSuite() {
    suite_dir_ = new tunefleet::testing::TempDir();
    skip_ = testing::WriteTokenizerModel(suite_dir_->Join("models"));
    if (!skip_.ok()) return;
    auto keys = rpc::KeyRing::Parse(absl::StrCat(tenant_.line, "\n", other_.line, "\n",
                                                 internal_.line, "\n"),
                                    "test");
    ASSERT_THAT(keys, IsOk());
    server_ = new testing::DatasetServer(suite_dir_->Join("dataset"), suite_dir_->Join("models"),
                                         *keys);
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
    delete suite_dir_;
    suite_dir_ = nullptr;
  }
  void SetUp() override {
    if (absl::IsFailedPrecondition(skip_)) GTEST_SKIP() << skip_;
    ASSERT_THAT(skip_, IsOk());
    ShardFetcherOptions o;
    o.cache_dir = dir_.Join("cache");
    o.api_key = internal_.key;
    fetcher_ = std::make_unique<ShardFetcher>(o, server_->channel());
  }
  ShardFetchRequest Request(const std::string& file_id, int rank = 0, int world = 1) {
    ShardFetchRequest r;
    r.file_id = file_id;
    r.tenant = "tenant-a";
    r.base_model = testing::kTinyModel;
    r.max_sequence_length = 256;
    r.rank = rank;
    r.world_size = world;
    r.vocab_size = 32064;
    return r;
  }
  // What StreamShard sends for a rank, as (ids, mask) per example.
  std::vector<std::pair<std::vector<int32_t>, std::string>> Streamed(const std::string& id,
                                                                     int rank, int world) {
    auto stub = internal::v1::ShardService::NewStub(server_->channel());
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, internal_.key, absl::Seconds(30));
    internal::v1::StreamShardRequest req;
    req.set_shard_set_id(id);
    req.set_rank(rank);
    req.set_world_size(world);
    auto reader = stub->StreamShard(&ctx, req);
    std::vector<std::pair<std::vector<int32_t>, std::string>> out;
    internal::v1::ShardChunk c;
    while (reader->Read(&c)) {
      int pos = 0;
      for (int len : c.example_lengths()) {
        out.emplace_back(std::vector<int32_t>(c.token_ids().begin() + pos,
                                              c.token_ids().begin() + pos + len),
                         c.loss_mask().substr(pos, len));
        pos += len;
      }
    }
    EXPECT_TRUE(reader->Finish().ok());
    return out;
  }

  static inline tunefleet::testing::TempDir* suite_dir_ = nullptr;
  static inline absl::Status skip_;
  static inline rpc::NewKey tenant_ = rpc::GenerateKey("tenant-a", rpc::Role::kTenant, "a");
  static inline rpc::NewKey other_ = rpc::GenerateKey("tenant-b", rpc::Role::kTenant, "b");
  static inline rpc::NewKey internal_ = rpc::GenerateKey("", rpc::Role::kInternal, "svc");
  static inline testing::DatasetServer* server_ = nullptr;
  tunefleet::testing::TempDir dir_;
  std::unique_ptr<ShardFetcher> fetcher_;
};

TEST_F(ShardFetcherTest, EachRankFileHoldsWhatTheServiceStreams) {
  TF_ASSERT_OK_AND_ASSIGN(std::string file, server_->Upload(tenant_.key, testing::ChatJsonl(23)));
  int64_t total = 0;
  for (int rank = 0; rank < 2; ++rank) {
    TF_ASSERT_OK_AND_ASSIGN(FetchedShard shard, fetcher_->Fetch(Request(file, rank, 2)));
    EXPECT_FALSE(shard.cached);
    EXPECT_THAT(shard.path, HasSubstr(absl::StrCat("rank-", rank, "-of-2")));
    TF_ASSERT_OK_AND_ASSIGN(ShardFile read, ShardFile::Read(shard.path));
    auto expected = Streamed(shard.shard_set_id, rank, 2);
    ASSERT_EQ(read.size(), static_cast<int64_t>(expected.size()));
    EXPECT_EQ(shard.examples, read.size());
    EXPECT_EQ(read.info().vocab_size, 32064u);
    uint64_t trained = 0;
    for (int64_t i = 0; i < read.size(); ++i) {
      ShardFile::Example ex = read.example(i);
      EXPECT_EQ(std::vector<int32_t>(ex.token_ids.begin(), ex.token_ids.end()), expected[i].first);
      EXPECT_EQ(std::string(ex.loss_mask.begin(), ex.loss_mask.end()), expected[i].second);
      for (uint8_t m : ex.loss_mask) trained += m;
    }
    EXPECT_GT(trained, 0u);
    EXPECT_EQ(read.info().trained_tokens, trained);
    total += read.size();
  }
  EXPECT_EQ(total, 23);
}

// A preference file (DPO): the local files are marked as pairs, each rank
// holds whole pairs (chosen, then rejected), and together every pair once.
TEST_F(ShardFetcherTest, PreferenceFilesArriveAsWholePairs) {
  std::string jsonl;
  for (int i = 0; i < 11; ++i) {  // a training file needs 10 examples
    absl::StrAppend(&jsonl, R"({"input":{"messages":[{"role":"user","content":"Question )", i,
                    R"(?"}]},"preferred_output":[{"role":"assistant","content":"Good )", i,
                    R"(."}],"non_preferred_output":[{"role":"assistant","content":"Bad )", i,
                    R"(!"}]})", "\n");
  }
  TF_ASSERT_OK_AND_ASSIGN(std::string file, server_->Upload(tenant_.key, jsonl));
  int64_t total = 0;
  for (int rank = 0; rank < 3; ++rank) {
    TF_ASSERT_OK_AND_ASSIGN(FetchedShard shard, fetcher_->Fetch(Request(file, rank, 3)));
    TF_ASSERT_OK_AND_ASSIGN(ShardFile read, ShardFile::Read(shard.path));
    EXPECT_TRUE(read.info().pairs);
    EXPECT_EQ(read.size() % 2, 0);
    for (int64_t i = 0; i < read.size(); ++i)
      EXPECT_EQ(read.example(i).label, i % 2 == 0 ? kChosenLabel : kRejectedLabel);
    total += read.size();
  }
  EXPECT_EQ(total, 22);
}

// Classification: labels arrive as indices into the set's sorted names; a
// validation file's labels are mapped to the training file's by name, and a
// label the training file lacks is INVALID_ARGUMENT naming it.
TEST_F(ShardFetcherTest, ClassificationLabelsArriveMappedToTheTrainingNames) {
  auto jsonl = [](const std::vector<std::string>& labels) {
    std::string out;
    for (size_t i = 0; i < labels.size(); ++i) {
      absl::StrAppend(&out, R"({"text":"Item )", i, R"(","label":")", labels[i], "\"}\n");
    }
    return out;
  };
  const std::vector<std::string> train_labels = {"cat", "dog", "eel", "dog", "cat",
                                                 "eel", "cat", "dog", "eel", "cat"};
  TF_ASSERT_OK_AND_ASSIGN(std::string train, server_->Upload(tenant_.key, jsonl(train_labels)));
  TF_ASSERT_OK_AND_ASSIGN(FetchedShard t, fetcher_->Fetch(Request(train)));
  EXPECT_EQ(t.label_names, (std::vector<std::string>{"cat", "dog", "eel"}));
  TF_ASSERT_OK_AND_ASSIGN(ShardFile tf, ShardFile::Read(t.path));
  ASSERT_EQ(tf.size(), 10);
  for (int64_t i = 0; i < tf.size(); ++i) {
    EXPECT_EQ(t.label_names[tf.example(i).label], train_labels[i]);
  }
  // A part cached before labels were sharded (labels -1) is fetched again.
  {
    std::filesystem::remove(t.path);
    TF_ASSERT_OK_AND_ASSIGN(auto w, ShardFileWriter::Create(t.path, 32064));
    std::vector<int32_t> ids = {1, 2, 3};
    std::vector<uint8_t> mask = {0, 0, 1};
    TF_ASSERT_OK(w->AddExample(ids, mask));
    TF_ASSERT_OK(w->Finish());
  }
  TF_ASSERT_OK_AND_ASSIGN(FetchedShard again, fetcher_->Fetch(Request(train)));
  EXPECT_FALSE(again.cached);
  TF_ASSERT_OK_AND_ASSIGN(ShardFile refetched, ShardFile::Read(again.path));
  ASSERT_EQ(refetched.size(), 10);
  EXPECT_EQ(t.label_names[refetched.example(0).label], train_labels[0]);
  // Validation: only "dog" and "eel" (its own indices 0 and 1).
  const std::vector<std::string> valid_labels = {"eel", "dog", "eel", "dog", "dog",
                                                 "eel", "eel", "dog", "dog", "eel"};
  TF_ASSERT_OK_AND_ASSIGN(std::string valid, server_->Upload(tenant_.key, jsonl(valid_labels)));
  ShardFetchRequest r = Request(valid);
  r.label_names = t.label_names;
  TF_ASSERT_OK_AND_ASSIGN(FetchedShard v, fetcher_->Fetch(r));
  EXPECT_EQ(v.label_names, (std::vector<std::string>{"dog", "eel"}));
  TF_ASSERT_OK_AND_ASSIGN(ShardFile vf, ShardFile::Read(v.path));
  ASSERT_EQ(vf.size(), 10);
  for (int64_t i = 0; i < vf.size(); ++i) {
    EXPECT_EQ(t.label_names[vf.example(i).label], valid_labels[i]);
  }
  // A training file with "cat" and "eel" only cannot validate "dog".
  r.label_names = {"cat", "eel"};
  EXPECT_THAT(fetcher_->Fetch(r),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'dog'")));
}

TEST_F(ShardFetcherTest, ReusesTheCacheAndRefetchesADamagedFile) {
  TF_ASSERT_OK_AND_ASSIGN(std::string file, server_->Upload(tenant_.key, testing::ChatJsonl(12)));
  TF_ASSERT_OK_AND_ASSIGN(FetchedShard first, fetcher_->Fetch(Request(file)));
  EXPECT_FALSE(first.cached);
  TF_ASSERT_OK_AND_ASSIGN(FetchedShard again, fetcher_->Fetch(Request(file)));
  EXPECT_TRUE(again.cached);
  EXPECT_EQ(again.path, first.path);
  EXPECT_EQ(again.examples, 12);

  // Damage one byte of the body: the file no longer passes its checksum.
  {
    std::fstream f(first.path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-1, std::ios::end);
    f.put('\x7f');
  }
  ASSERT_FALSE(ShardFile::Read(first.path).ok());
  TF_ASSERT_OK_AND_ASSIGN(FetchedShard refetched, fetcher_->Fetch(Request(file)));
  EXPECT_FALSE(refetched.cached);
  TF_ASSERT_OK_AND_ASSIGN(ShardFile read, ShardFile::Read(refetched.path));
  EXPECT_EQ(read.size(), 12);
}

TEST_F(ShardFetcherTest, ConcurrentFetchesOfOnePartShareIt) {
  TF_ASSERT_OK_AND_ASSIGN(std::string file, server_->Upload(tenant_.key, testing::ChatJsonl(40)));
  absl::StatusOr<FetchedShard> a, b;
  std::thread ta([&] { a = fetcher_->Fetch(Request(file)); });
  std::thread tb([&] { b = fetcher_->Fetch(Request(file)); });
  ta.join();
  tb.join();
  ASSERT_THAT(a, IsOk());
  ASSERT_THAT(b, IsOk());
  EXPECT_NE(a->cached, b->cached);  // one streamed, the other reused it
  EXPECT_THAT(ShardFile::Read(a->path), IsOk());
}

TEST_F(ShardFetcherTest, ErrorsNameWhatIsWrong) {
  TF_ASSERT_OK_AND_ASSIGN(std::string file, server_->Upload(tenant_.key, testing::ChatJsonl(10)));
  EXPECT_THAT(fetcher_->Fetch(Request("file-doesnotexist")),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("file-doesnotexist")));
  ShardFetchRequest other = Request(file);
  other.tenant = "tenant-b";
  EXPECT_THAT(fetcher_->Fetch(other), StatusIs(absl::StatusCode::kNotFound, HasSubstr(file)));
  ShardFetchRequest model = Request(file);
  model.base_model = "no-such-model";
  auto unknown_model = fetcher_->Fetch(model);
  ASSERT_FALSE(unknown_model.ok());
  EXPECT_THAT(std::string(unknown_model.status().message()), HasSubstr("no-such-model"));
  // Ids beyond the model's vocabulary: the shards were made for another one.
  ShardFetchRequest vocab = Request(file);
  vocab.vocab_size = 100;
  EXPECT_THAT(fetcher_->Fetch(vocab), StatusIs(absl::StatusCode::kInvalidArgument));
  ShardFetchRequest rank = Request(file, 2, 2);
  EXPECT_THAT(fetcher_->Fetch(rank), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("rank 2")));
}

}  // namespace
}  // namespace tunefleet::trainer
