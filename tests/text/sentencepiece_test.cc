#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <string>
#include <vector>

#include "common/text/sentencepiece_import.h"
#include "common/text/unicode.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tests/text/corpus.h"
#include "tests/text/sentencepiece_test_bridge.h"

namespace tunefleet::text {
namespace {

using ::tunefleet::testing::StatusIs;
using ::tunefleet::testing::TempDir;

// A directory with only a tokenizer.model: a small BPE model trained here
// with Llama's normalizer settings encodes as sentencepiece itself does.
TEST(SentencePieceImportTest, TokenizerModelEncodesAsSentencePiece) {
  TempDir dir;
  {
    std::ofstream train(dir.Join("train.txt"));
    for (int i = 0; i < 3; ++i) {
      for (const std::string& t : PlainCorpus()) train << t << "\n";
    }
  }
  std::string error;
  ASSERT_TRUE(::tunefleet::text::testing::TrainSentencePiece(
      "--input=" + dir.Join("train.txt") + " --model_prefix=" + dir.Join("tokenizer") +
          " --model_type=bpe --vocab_size=1200 --byte_fallback=true --character_coverage=1.0"
          " --normalization_rule_name=identity --remove_extra_whitespaces=false "
          "--add_dummy_prefix=true"
          " --allow_whitespace_only_pieces=true --split_digits=true --minloglevel=2",
      &error))
      << error;
  TF_ASSERT_OK_AND_ASSIGN(auto tok, LoadTokenizerFromDirectory(dir.path()));
  std::vector<std::string> texts;
  for (const std::string& t : PlainCorpus()) {
    if (IsValidUtf8(t)) texts.push_back(t);
  }
  std::vector<std::vector<int>> expected;
  ASSERT_TRUE(::tunefleet::text::testing::SentencePieceEncode(dir.Join("tokenizer.model"), texts,
                                                              &expected, &error))
      << error;
  ASSERT_EQ(expected.size(), texts.size());
  size_t bytes = 0, tokens = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::vector<int32_t> ids = tok->Encode(texts[i], /*add_special_tokens=*/false);
    EXPECT_EQ(std::vector<int>(ids.begin(), ids.end()), expected[i])
        << "text #" << i << " \"" << texts[i] << "\"";
    bytes += texts[i].size();
    tokens += ids.size();
  }
  EXPECT_EQ(tok->vocab_size(), 1200);
  EXPECT_GT(texts.size(), 20u);
  EXPECT_LT(tokens * 2, bytes);            // merges happened
  EXPECT_EQ(tok->Encode("a").front(), 1);  // BOS
}

TEST(SentencePieceImportTest, NotAModelNamesTheFile) {
  TempDir dir;
  std::ofstream(dir.Join("tokenizer.model")) << "garbage";
  EXPECT_THAT(
      LoadTokenizerFromDirectory(dir.path()),
      StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("tokenizer.model")));
}

}  // namespace
}  // namespace tunefleet::text
