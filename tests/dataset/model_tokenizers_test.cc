// The dataset service's token statistics and shards with a real tokenizer:
// Phi-3's files (the real 32000-token LLaMA-2 vocabulary plus Phi-3's added
// tokens) written into a model directory at test time.
#include <filesystem>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "common/store/memory_artifact_store.h"
#include "common/text/chat_template.h"
#include "common/text/phi3_tokenizer_files.h"
#include "common/text/tokenizer.h"
#include "services/dataset/file_processor.h"
#include "services/dataset/model_tokenizers.h"
#include "services/dataset/shards.h"
#include "services/dataset/statistics.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace tunefleet::dataset {
namespace {

using ::testing::HasSubstr;
using ::tunefleet::testing::StatusIs;

class ModelTokenizersTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(text::DefaultLlamaVocabSource())) {
      GTEST_SKIP() << "the npm vocabulary is not installed (scripts/install-deps)";
    }
    std::filesystem::create_directories(dir_.Join("models/phi-3-tiny"));
    TF_ASSERT_OK(text::WritePhi3TokenizerFiles(dir_.Join("models/phi-3-tiny")));
  }
  testing::TempDir dir_;
};

const char* kExamples[] = {
    R"({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there!"}, {"role": "assistant", "content": "Hi! How can I help?"}]})",
    R"({"messages": [{"role": "user", "content": "¿Qué hora es?"}, {"role": "assistant", "content": "No tengo reloj 😀", "weight": 0}, {"role": "user", "content": "漢字"}, {"role": "assistant", "content": "Kanji."}]})",
};

TEST_F(ModelTokenizersTest, CountsAndShardsWithThePhi3Tokenizer) {
  ModelDirTokenizerProvider provider(dir_.Join("models"));
  TF_ASSERT_OK_AND_ASSIGN(ModelTokenizer tok, provider.Get("phi-3-tiny"));
  EXPECT_EQ(tok.id.size(), 64u);

  // Independently: render with the template, encode the whole text.
  TF_ASSERT_OK_AND_ASSIGN(auto tokenizer, text::Tokenizer::FromDirectory(dir_.Join("models/phi-3-tiny")));
  TF_ASSERT_OK_AND_ASSIGN(auto tmpl, text::ChatTemplate::FromModelDirectory(dir_.Join("models/phi-3-tiny")));
  int64_t expected_total = 0;
  std::string content;
  std::vector<Example> examples;
  JsonlValidator v({.format = DataFormat::kChat, .min_examples = 1},
                   [&](const Example& ex) { examples.push_back(ex); });
  for (const char* line : kExamples) absl::StrAppend(&content, line, "\n");
  v.Feed(content);
  ASSERT_TRUE(v.Finish().valid());
  for (const Example& ex : examples) {
    std::vector<text::ChatMessage> msgs;
    for (const auto& m : ex.messages) msgs.push_back({m.role, m.content, m.weight});
    TF_ASSERT_OK_AND_ASSIGN(std::string rendered, tmpl.Render(msgs, false));
    expected_total += static_cast<int64_t>(tokenizer->Encode(rendered, false).size());
  }

  StatisticsBuilder stats(CountWith(tok.tokenize), 0);
  for (const Example& ex : examples) TF_ASSERT_OK(stats.Add(ex));
  DatasetStatistics s = stats.Finish();
  EXPECT_EQ(s.total_tokens, expected_total);
  EXPECT_GT(s.trained_tokens, 0);
  EXPECT_LT(s.trained_tokens, s.total_tokens);

  // The loss mask ends each trained assistant turn on <|end|> (id 32007).
  TF_ASSERT_OK_AND_ASSIGN(TokenizedExample first, tok.tokenize(examples[0]));
  ASSERT_FALSE(first.ids.empty());
  int last_trained = -1;
  for (size_t i = 0; i < first.ids.size(); ++i) {
    if (first.loss_mask[i]) last_trained = static_cast<int>(i);
  }
  ASSERT_GE(last_trained, 0);
  EXPECT_EQ(first.ids[last_trained], 32007);

  // Shards built with the same tokenizer hold exactly those tokens.
  store::MemoryArtifactStore store;
  TF_ASSERT_OK(store.Put("file", content).status());
  TF_ASSERT_OK_AND_ASSIGN(auto reader, store.OpenReader("file", 0));
  TF_ASSERT_OK_AND_ASSIGN(ShardManifest m,
                          PrepareShardSet(store, *reader, ShardSetId("sha", tok.id, 4096),
                                          tok.tokenize, 4096));
  EXPECT_EQ(m.tokens, expected_total);
  EXPECT_EQ(m.trained_tokens, s.trained_tokens);
}

// Classification lines are counted as the trainer sees them: the text as one
// user message, one trained token (the last) per example, the label not
// rendered; the statistics (what a job's trained-token estimate comes from)
// and the shards agree.
TEST_F(ModelTokenizersTest, ClassificationLinesCountAsTheShardsRenderThem) {
  ModelDirTokenizerProvider provider(dir_.Join("models"));
  TF_ASSERT_OK_AND_ASSIGN(ModelTokenizer tok, provider.Get("phi-3-tiny"));
  const std::string content =
      R"({"text": "The parcel arrived broken.", "label": "complaint"})" "\n"
      R"({"text": "Thanks, all good!", "label": "praise"})" "\n"
      R"({"text": "Where is my refund? It has been weeks.", "label": "complaint"})" "\n";
  std::vector<Example> examples;
  JsonlValidator v({.format = DataFormat::kClassification, .min_examples = 1},
                   [&](const Example& ex) { examples.push_back(ex); });
  v.Feed(content);
  ASSERT_TRUE(v.Finish().valid());
  ASSERT_EQ(examples.size(), 3u);
  TF_ASSERT_OK_AND_ASSIGN(auto tokenizer, text::Tokenizer::FromDirectory(dir_.Join("models/phi-3-tiny")));
  TF_ASSERT_OK_AND_ASSIGN(auto tmpl, text::ChatTemplate::FromModelDirectory(dir_.Join("models/phi-3-tiny")));
  int64_t expected_total = 0;
  for (const Example& ex : examples) {
    TF_ASSERT_OK_AND_ASSIGN(std::string rendered, tmpl.Render({{"user", ex.text, 1}}, false));
    expected_total += static_cast<int64_t>(tokenizer->Encode(rendered, false).size());
  }

  StatisticsBuilder stats(CountWith(tok.tokenize), 0);
  for (const Example& ex : examples) TF_ASSERT_OK(stats.Add(ex));
  DatasetStatistics s = stats.Finish();
  EXPECT_EQ(s.total_tokens, expected_total);
  EXPECT_EQ(s.trained_tokens, 3);

  store::MemoryArtifactStore store;
  TF_ASSERT_OK(store.Put("file", content).status());
  TF_ASSERT_OK_AND_ASSIGN(auto reader, store.OpenReader("file", 0));
  TF_ASSERT_OK_AND_ASSIGN(ShardManifest m,
                          PrepareShardSet(store, *reader, ShardSetId("sha", tok.id, 4096),
                                          tok.tokenize, 4096, DataFormat::kClassification));
  EXPECT_EQ(m.tokens, s.total_tokens);
  EXPECT_EQ(m.trained_tokens, s.trained_tokens);
}

TEST_F(ModelTokenizersTest, UnknownOrUnsafeModelNamesAreRefused) {
  ModelDirTokenizerProvider provider(dir_.Join("models"));
  EXPECT_THAT(provider.Get("llama-9000"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'llama-9000'")));
  EXPECT_THAT(provider.Get("../models"), StatusIs(absl::StatusCode::kInvalidArgument,
                                                  HasSubstr("not a model name")));
  EXPECT_THAT(provider.Get(""), StatusIs(absl::StatusCode::kInvalidArgument));
  ModelDirTokenizerProvider none("");
  EXPECT_THAT(none.Get("phi-3-tiny"), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace tunefleet::dataset
