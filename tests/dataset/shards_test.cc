// Preference (DPO) shards with Phi-3's real tokenizer and chat template:
// each line becomes a chosen and a rejected example, loss-masked on the
// completion only; rank parts and streamed chunks never split a pair; the
// agent's local shard file carries the pairs through to the worker.
#include <filesystem>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "common/store/memory_artifact_store.h"
#include "common/text/phi3_tokenizer_files.h"
#include "common/text/tokenizer.h"
#include "services/dataset/model_tokenizers.h"
#include "services/dataset/shards.h"
#include "services/trainer/protocol/shard_file.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace tunefleet::dataset {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class PreferenceShardsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(text::DefaultLlamaVocabSource())) {
      GTEST_SKIP() << "the npm vocabulary is not installed (scripts/install-deps)";
    }
    std::filesystem::create_directories(dir_.Join("models/phi-3-tiny"));
    TF_ASSERT_OK(text::WritePhi3TokenizerFiles(dir_.Join("models/phi-3-tiny")));
    TF_ASSERT_OK_AND_ASSIGN(tokenizer_, text::Tokenizer::FromDirectory(dir_.Join("models/phi-3-tiny")));
  }

  // The text of the loss-masked tokens, and of the others.
  std::pair<std::string, std::string> Split(absl::Span<const int32_t> ids,
                                            absl::Span<const uint8_t> mask) {
    std::vector<int32_t> trained, rest;
    for (size_t i = 0; i < ids.size(); ++i) (mask[i] ? trained : rest).push_back(ids[i]);
    return {tokenizer_->Decode(trained, true), tokenizer_->Decode(rest, true)};
  }

  testing::TempDir dir_;
  std::unique_ptr<text::Tokenizer> tokenizer_;
};

std::string PreferenceLine(int i) {
  return absl::StrCat(
      R"({"input":{"messages":[{"role":"user","content":"Question )", i,
      R"(?"},{"role":"assistant","content":"Earlier answer )", i,
      R"(."},{"role":"user","content":"And now?"}]},"preferred_output":[{"role":"assistant","content":"Good answer )",
      i, R"(."}],"non_preferred_output":[{"role":"assistant","content":"Bad reply )", i,
      R"(!"}]})", "\n");
}

TEST_F(PreferenceShardsTest, EachLineIsAChosenAndARejectedExampleNeverSplit) {
  ModelDirTokenizerProvider provider(dir_.Join("models"));
  TF_ASSERT_OK_AND_ASSIGN(ModelTokenizer tok, provider.Get("phi-3-tiny"));
  constexpr int kLines = 7;
  std::string content;
  for (int i = 0; i < kLines; ++i) content += PreferenceLine(i);
  store::MemoryArtifactStore store;
  TF_ASSERT_OK(store.Put("file", content).status());
  TF_ASSERT_OK_AND_ASSIGN(auto reader, store.OpenReader("file", 0));
  // The format is sniffed from the first line when not given.
  const std::string id = ShardSetId("sha", tok.id, 4096);
  TF_ASSERT_OK_AND_ASSIGN(ShardManifest m,
                          PrepareShardSet(store, *reader, id, tok.tokenize, 4096));
  EXPECT_TRUE(m.pairs);
  EXPECT_EQ(m.examples, 2 * kLines);
  TF_ASSERT_OK_AND_ASSIGN(ShardManifest again, ReadManifest(store, id));
  EXPECT_TRUE(again.pairs);

  // Three ranks: whole pairs each, together every pair once, in order.
  int pair_index = 0;
  for (int rank = 0; rank < 3; ++rank) {
    TF_ASSERT_OK_AND_ASSIGN(RankRange range, RankExamples(m.examples, rank, 3, true));
    EXPECT_EQ(range.begin % 2, 0);
    EXPECT_EQ(range.end % 2, 0);
    // Tiny batches: a chunk still ends on a pair boundary.
    TF_ASSERT_OK_AND_ASSIGN(auto streamer, ShardStreamer::Open(store, id, rank, 3, 0, 1));
    const std::string path = dir_.Join(absl::StrCat("rank", rank, ".shard"));
    TF_ASSERT_OK_AND_ASSIGN(auto writer,
                            trainer::ShardFileWriter::Create(path, tokenizer_->vocab_size()));
    for (;;) {
      TF_ASSERT_OK_AND_ASSIGN(ShardBatch batch, streamer->Next());
      EXPECT_TRUE(batch.pairs);
      EXPECT_EQ(batch.first_example % 2, 0);
      EXPECT_EQ(batch.example_lengths.size() % 2, 0u);
      TF_ASSERT_OK(writer->SetPairs(batch.pairs));
      TF_ASSERT_OK(writer->AddChunk(batch.token_ids, batch.loss_mask, batch.example_lengths));
      if (batch.last) break;
    }
    TF_ASSERT_OK(writer->Finish());
    TF_ASSERT_OK_AND_ASSIGN(trainer::ShardFile file, trainer::ShardFile::Read(path));
    EXPECT_TRUE(file.info().pairs);
    ASSERT_EQ(file.size(), range.end - range.begin);
    for (int64_t e = 0; e < file.size(); e += 2, ++pair_index) {
      trainer::ShardFile::Example chosen = file.example(e), rejected = file.example(e + 1);
      EXPECT_EQ(chosen.label, trainer::kChosenLabel);
      EXPECT_EQ(rejected.label, trainer::kRejectedLabel);
      auto [chosen_trained, chosen_prompt] = Split(chosen.token_ids, chosen.loss_mask);
      auto [rejected_trained, rejected_prompt] = Split(rejected.token_ids, rejected.loss_mask);
      // The completion only carries loss, not the prompt's assistant turn.
      EXPECT_THAT(chosen_trained, HasSubstr(absl::StrCat("Good answer ", pair_index, ".")));
      EXPECT_THAT(chosen_trained, Not(HasSubstr("Earlier answer")));
      EXPECT_THAT(chosen_trained, Not(HasSubstr("Question")));
      EXPECT_THAT(rejected_trained, HasSubstr(absl::StrCat("Bad reply ", pair_index, "!")));
      EXPECT_THAT(rejected_trained, Not(HasSubstr("Earlier answer")));
      EXPECT_THAT(chosen_prompt, HasSubstr(absl::StrCat("Earlier answer ", pair_index, ".")));
      EXPECT_EQ(chosen_prompt, rejected_prompt);
      // Both share the prompt's tokens up to the first trained one.
      size_t first = 0;
      while (first < chosen.loss_mask.size() && !chosen.loss_mask[first]) ++first;
      ASSERT_LE(first, rejected.token_ids.size());
      EXPECT_TRUE(std::equal(chosen.token_ids.begin(), chosen.token_ids.begin() + first,
                             rejected.token_ids.begin()));
      EXPECT_FALSE(rejected.loss_mask[first - 1]);
      EXPECT_TRUE(rejected.loss_mask[first]);
    }
  }
  EXPECT_EQ(pair_index, kLines);

  // A chat file's shards are not pairs.
  TF_ASSERT_OK(store.Put("chat", R"({"messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello."}]})"
                                 "\n").status());
  TF_ASSERT_OK_AND_ASSIGN(auto chat_reader, store.OpenReader("chat", 0));
  TF_ASSERT_OK_AND_ASSIGN(ShardManifest chat,
                          PrepareShardSet(store, *chat_reader, ShardSetId("chat", tok.id, 4096),
                                          tok.tokenize, 4096));
  EXPECT_FALSE(chat.pairs);
  EXPECT_EQ(chat.examples, 1);
}

TEST_F(PreferenceShardsTest, AFileOfTheWrongFormatIsRefusedWithItsLine) {
  ModelDirTokenizerProvider provider(dir_.Join("models"));
  TF_ASSERT_OK_AND_ASSIGN(ModelTokenizer tok, provider.Get("phi-3-tiny"));
  store::MemoryArtifactStore store;
  TF_ASSERT_OK(store.Put("file", PreferenceLine(0)).status());
  TF_ASSERT_OK_AND_ASSIGN(auto reader, store.OpenReader("file", 0));
  absl::StatusOr<ShardManifest> m = PrepareShardSet(store, *reader, ShardSetId("x", tok.id, 64),
                                                    tok.tokenize, 64, DataFormat::kChat);
  EXPECT_THAT(m.status(), testing::StatusIs(absl::StatusCode::kFailedPrecondition,
                                            HasSubstr("line 1")));
}

}  // namespace
}  // namespace tunefleet::dataset

namespace tunefleet::dataset {
namespace {

// Classification: the text as one user message, the label an index into the
// file's sorted label names, loss on the last token only; a long text keeps
// its end; the labels travel through StreamShard chunks into the shard file.
TEST_F(PreferenceShardsTest, ClassificationShardsCarryLabelsInSortedNameOrder) {
  ModelDirTokenizerProvider provider(dir_.Join("models"));
  TF_ASSERT_OK_AND_ASSIGN(ModelTokenizer tok, provider.Get("phi-3-tiny"));
  const std::vector<std::string> labels = {"pos", "neg", "mid", "pos", "neg", "pos", "mid"};
  std::string content;
  for (size_t i = 0; i < labels.size(); ++i) {
    content += absl::StrCat(R"({"text":"Review number )", i, R"( says )", labels[i],
                            R"(","label":")", labels[i], "\"}\n");
  }
  store::MemoryArtifactStore store;
  TF_ASSERT_OK(store.Put("file", content).status());
  TF_ASSERT_OK_AND_ASSIGN(auto reader, store.OpenReader("file", 0));
  const std::string id = ShardSetId("cls", tok.id, 4096);
  TF_ASSERT_OK_AND_ASSIGN(ShardManifest m, PrepareShardSet(store, *reader, id, tok.tokenize, 4096));
  EXPECT_FALSE(m.pairs);
  EXPECT_EQ(m.examples, 7);
  EXPECT_EQ(m.trained_tokens, 7);  // the last token of each
  EXPECT_EQ(m.label_names, (std::vector<std::string>{"mid", "neg", "pos"}));
  TF_ASSERT_OK_AND_ASSIGN(ShardManifest again, ReadManifest(store, id));
  EXPECT_EQ(again.label_names, m.label_names);
  // A set cached before labels were sharded (a manifest without label names)
  // is rebuilt.
  const std::string old_id = ShardSetId("cls-old", tok.id, 4096);
  TF_ASSERT_OK(store.Put(absl::StrCat("shards/", old_id, "/manifest.json"),
                         R"({"examples":7,"tokens":1,"trained_tokens":1,"sha256":"x"})")
                   .status());
  TF_ASSERT_OK_AND_ASSIGN(auto old_reader, store.OpenReader("file", 0));
  TF_ASSERT_OK_AND_ASSIGN(ShardManifest rebuilt,
                          PrepareShardSet(store, *old_reader, old_id, tok.tokenize, 4096));
  EXPECT_EQ(rebuilt.label_names, m.label_names);
  EXPECT_EQ(rebuilt.tokens, m.tokens);

  std::vector<int32_t> last_tokens;
  int64_t example = 0;
  for (int rank = 0; rank < 2; ++rank) {
    TF_ASSERT_OK_AND_ASSIGN(auto streamer, ShardStreamer::Open(store, id, rank, 2, 0, 1));
    const std::string path = dir_.Join(absl::StrCat("cls", rank, ".shard"));
    TF_ASSERT_OK_AND_ASSIGN(auto writer,
                            trainer::ShardFileWriter::Create(path, tokenizer_->vocab_size()));
    for (;;) {
      TF_ASSERT_OK_AND_ASSIGN(ShardBatch batch, streamer->Next());
      ASSERT_EQ(batch.labels.size(), batch.example_lengths.size());
      TF_ASSERT_OK(writer->AddChunk(batch.token_ids, batch.loss_mask, batch.example_lengths,
                                    batch.labels));
      if (batch.last) break;
    }
    TF_ASSERT_OK(writer->Finish());
    TF_ASSERT_OK_AND_ASSIGN(trainer::ShardFile file, trainer::ShardFile::Read(path));
    for (int64_t e = 0; e < file.size(); ++e, ++example) {
      trainer::ShardFile::Example x = file.example(e);
      ASSERT_GE(x.label, 0);
      EXPECT_EQ(m.label_names[x.label], labels[example]) << "example " << example;
      auto [trained, rest] = Split(x.token_ids, x.loss_mask);
      EXPECT_THAT(rest + trained, HasSubstr(absl::StrCat("Review number ", example)));
      for (size_t k = 0; k + 1 < x.loss_mask.size(); ++k) EXPECT_FALSE(x.loss_mask[k]);
      EXPECT_TRUE(x.loss_mask.back());
      last_tokens.push_back(x.token_ids.back());
    }
  }
  EXPECT_EQ(example, 7);

  // Truncated to 4 tokens: the end is kept (the last token is the same).
  TF_ASSERT_OK_AND_ASSIGN(auto short_reader, store.OpenReader("file", 0));
  const std::string short_id = ShardSetId("cls", tok.id, 4);
  TF_ASSERT_OK_AND_ASSIGN(ShardManifest s,
                          PrepareShardSet(store, *short_reader, short_id, tok.tokenize, 4,
                                          DataFormat::kClassification));
  EXPECT_EQ(s.truncated_examples, 7);
  EXPECT_EQ(s.tokens, 28);
  TF_ASSERT_OK_AND_ASSIGN(auto streamer, ShardStreamer::Open(store, short_id, 0, 1, 2));
  TF_ASSERT_OK_AND_ASSIGN(ShardBatch batch, streamer->Next());
  ASSERT_EQ(batch.example_lengths.size(), 5u);
  EXPECT_EQ(batch.first_example, 2);
  for (size_t e = 0; e < 5; ++e) {
    EXPECT_EQ(batch.token_ids[4 * e + 3], last_tokens[e + 2]);
    EXPECT_EQ(m.label_names[batch.labels[e]], labels[e + 2]);
  }
}

}  // namespace
}  // namespace tunefleet::dataset
