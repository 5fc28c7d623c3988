#include "common/model/generate.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <memory>

#include "absl/strings/str_cat.h"
#include "tests/model/model_test_util.h"
#include "tests/testing/status_matchers.h"

namespace tunefleet::model {
namespace {

using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::tunefleet::model::testing::ScopedTempDir;
using ::tunefleet::testing::StatusIs;

class GenerateTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    testing::UseFewThreads();
    dir_ = new ScopedTempDir();
    // Larger weights than the default tiny init, so that greedy outputs vary.
    testing::WriteTinyMistral(dir_->path(), 21);
    auto d = Decoder::Load(dir_->path());
    ASSERT_TRUE(d.ok()) << d.status();
    decoder_ = new Decoder(*std::move(d));
  }
  static void TearDownTestSuite() {
    delete decoder_;
    delete dir_;
  }
  static std::vector<Generation> Gen(const std::vector<std::vector<int64_t>>& prompts,
                                     GenerationOptions o) {
    auto r = Generate(*decoder_, prompts, o);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : std::vector<Generation>(prompts.size());
  }
  // Greedy decoding without a cache: argmax of a full forward each step.
  static std::vector<int64_t> NaiveGreedy(std::vector<int64_t> seq, int n) {
    std::vector<int64_t> out;
    for (int i = 0; i < n; ++i) {
      auto logits = decoder_->Forward(at::tensor(seq, at::kLong).view({1, -1}));
      EXPECT_TRUE(logits.ok());
      int64_t tok = (*logits)[0][static_cast<int64_t>(seq.size()) - 1].argmax().item<int64_t>();
      out.push_back(tok);
      seq.push_back(tok);
    }
    return out;
  }

  static ScopedTempDir* dir_;
  static Decoder* decoder_;
};
ScopedTempDir* GenerateTest::dir_ = nullptr;
Decoder* GenerateTest::decoder_ = nullptr;

const std::vector<std::vector<int64_t>> kPrompts = {
    {5, 6, 7, 8, 9, 10, 11}, {20, 21}, {30, 31, 32, 33}};

GenerationOptions Budget(int n) {
  GenerationOptions o;
  o.max_new_tokens = n;
  o.stop_token_ids = {299};  // keep the default eos (2) from ending rows early
  return o;
}

TEST_F(GenerateTest, GreedyEqualsNaiveDecoding) {
  std::vector<Generation> g = Gen({kPrompts[0]}, Budget(8));
  EXPECT_THAT(g[0].tokens, ElementsAreArray(NaiveGreedy(kPrompts[0], 8)));
  EXPECT_EQ(g[0].finish_reason, FinishReason::kLength);
}

TEST_F(GenerateTest, BatchedEqualsOneByOne) {
  for (double temperature : {0.0, 0.8}) {
    GenerationOptions o = Budget(10);
    o.temperature = temperature;
    o.top_p = 0.9;
    o.top_k = 50;
    o.seed = 100;
    std::vector<Generation> batched = Gen(kPrompts, o);
    for (size_t b = 0; b < kPrompts.size(); ++b) {
      GenerationOptions single = o;
      single.seed = o.seed + b;
      std::vector<Generation> one = Gen({kPrompts[b]}, single);
      EXPECT_EQ(batched[b].tokens, one[0].tokens) << "row " << b << " temperature " << temperature;
    }
  }
}

TEST_F(GenerateTest, PromptsWithDifferentAdaptersShareABatch) {
  LoraConfig lc;
  lc.rank = 4;
  TF_ASSERT_OK_AND_ASSIGN(LoraAdapter a, LoraAdapter::Create(decoder_->config(), lc, 3));
  {
    at::NoGradGuard no_grad;
    at::manual_seed(3);
    for (at::Tensor& p : a.Parameters()) p.copy_(at::randn(p.sizes()) * 0.3);
  }
  GenerationOptions o = Budget(8);
  o.adapter = std::vector<const LoraAdapter*>{&a, nullptr, &a};
  std::vector<Generation> batched = Gen(kPrompts, o);
  bool adapter_changed_output = false;
  for (size_t b = 0; b < kPrompts.size(); ++b) {
    GenerationOptions single = Budget(8);
    single.adapter = o.adapter.rows[b];
    EXPECT_EQ(batched[b].tokens, Gen({kPrompts[b]}, single)[0].tokens) << "row " << b;
    if (o.adapter.rows[b] != nullptr) {
      adapter_changed_output |= batched[b].tokens != Gen({kPrompts[b]}, Budget(8))[0].tokens;
    }
  }
  EXPECT_TRUE(adapter_changed_output);
}

TEST_F(GenerateTest, SamplingIsReproducibleForASeed) {
  GenerationOptions o = Budget(12);
  o.temperature = 1.5;
  o.seed = 7;
  auto a = Gen({kPrompts[1]}, o), b = Gen({kPrompts[1]}, o);
  EXPECT_EQ(a[0].tokens, b[0].tokens);
  bool any_differs = false;
  for (uint64_t seed = 8; seed < 12 && !any_differs; ++seed) {
    o.seed = seed;
    any_differs = Gen({kPrompts[1]}, o)[0].tokens != a[0].tokens;
  }
  EXPECT_TRUE(any_differs);
  // top_k = 1 is greedy whatever the temperature.
  o.top_k = 1;
  EXPECT_EQ(Gen({kPrompts[1]}, o)[0].tokens, Gen({kPrompts[1]}, Budget(12))[0].tokens);
}

TEST_F(GenerateTest, StopsOnStopTokensAndStrings) {
  std::vector<int64_t> greedy = Gen({kPrompts[2]}, Budget(10))[0].tokens;
  ASSERT_EQ(greedy.size(), 10u);
  // Stop at the first occurrence of greedy[3].
  size_t k = std::find(greedy.begin(), greedy.end(), greedy[3]) - greedy.begin();
  GenerationOptions o = Budget(10);
  o.stop_token_ids = {greedy[3]};
  Generation g = Gen({kPrompts[2]}, o)[0];
  EXPECT_EQ(g.finish_reason, FinishReason::kStopToken);
  EXPECT_EQ(g.stop_token_id, greedy[3]);
  EXPECT_EQ(g.tokens, std::vector<int64_t>(greedy.begin(), greedy.begin() + k));

  // Stop strings over a toy detokenizer that spells each id as "<id>".
  o = Budget(10);
  o.detokenize = [](const std::vector<int64_t>& ids) {
    std::string s;
    for (int64_t id : ids) absl::StrAppend(&s, "<", id, ">");
    return s;
  };
  const std::string stop = absl::StrCat("<", greedy[2], "><", greedy[3], ">");
  o.stop_strings = {"never", stop};
  g = Gen({kPrompts[2]}, o)[0];
  EXPECT_EQ(g.finish_reason, FinishReason::kStopString);
  EXPECT_EQ(g.stop_string, stop);
  const size_t cut = o.detokenize(greedy).find(stop);
  EXPECT_EQ(g.text, o.detokenize(greedy).substr(0, cut));
  EXPECT_LE(g.tokens.size(), 4u);

  // Cancelling from the token callback.
  o = Budget(10);
  int seen = 0;
  o.on_token = [&](size_t, int64_t) { return ++seen < 2; };
  g = Gen({kPrompts[2]}, o)[0];
  EXPECT_EQ(g.finish_reason, FinishReason::kCancelled);
  EXPECT_EQ(g.tokens.size(), 2u);
}

TEST_F(GenerateTest, InvalidRequests) {
  GenerationOptions o = Budget(4);
  EXPECT_THAT(Generate(*decoder_, {{}}, o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty")));
  EXPECT_THAT(Generate(*decoder_, {{1, 300}}, o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("300")));
  o.stop_strings = {"x"};
  EXPECT_THAT(Generate(*decoder_, {{1}}, o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("detokenize")));
  EXPECT_THAT(Generate(*decoder_, {std::vector<int64_t>(128, 1)}, Budget(4)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("max_position_embeddings")));
  // The budget is clipped at the context length.
  auto g = Generate(*decoder_, {std::vector<int64_t>(126, 1)}, Budget(10));
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ((*g)[0].tokens.size(), 2u);
}

TEST(SampleTokenTest, FiltersAndTemperature) {
  const std::vector<float> logits = {1.0f, 3.0f, 2.0f, -1.0f};
  GenerationOptions o;
  EXPECT_EQ(SampleToken(logits.data(), 4, o, 0.99), 1);  // greedy
  o.temperature = 1.0;
  o.top_k = 2;  // only tokens 1 and 2
  for (double u : {0.0, 0.3, 0.6, 0.999}) {
    int64_t t = SampleToken(logits.data(), 4, o, u);
    EXPECT_TRUE(t == 1 || t == 2) << u;
  }
  o.top_k = 0;
  o.top_p = 0.5;  // token 1 alone holds 0.66 of the mass
  EXPECT_EQ(SampleToken(logits.data(), 4, o, 0.999), 1);
  o.top_p = 1.0;
  // u near 1 reaches the least likely token.
  EXPECT_EQ(SampleToken(logits.data(), 4, o, 0.9999), 3);
  EXPECT_EQ(SampleToken(logits.data(), 4, o, 0.0), 1);
}

// Logprobs through Generate: each generated token's entry equals the
// log_softmax of the model's logits at its step (a full forward, no cache),
// whatever the sampling transforms; the top list is sorted and starts at
// the argmax.
TEST_F(GenerateTest, LogprobsEqualTheModelsLogSoftmax) {
  GenerationOptions o;
  o.max_new_tokens = 5;
  o.temperature = 0.8;
  o.top_p = 0.9;
  o.seed = 7;
  o.stop_token_ids = {-1};
  o.logprobs = true;
  o.top_logprobs = 4;
  const std::vector<int64_t> prompt = {5, 6, 7, 8};
  std::vector<Generation> g = Gen({prompt}, o);
  ASSERT_EQ(g[0].tokens.size(), 5u);
  ASSERT_EQ(g[0].logprobs.size(), 5u);
  std::vector<int64_t> seq = prompt;
  for (size_t i = 0; i < g[0].tokens.size(); ++i) {
    auto logits = decoder_->Forward(at::tensor(seq, at::kLong).view({1, -1}));
    ASSERT_TRUE(logits.ok());
    at::Tensor ref = (*logits)[0][static_cast<int64_t>(seq.size()) - 1].to(at::kDouble).log_softmax(0);
    const TokenLogprob& lp = g[0].logprobs[i];
    EXPECT_EQ(lp.token, g[0].tokens[i]);
    EXPECT_NEAR(lp.logprob, ref[lp.token].item<double>(), 1e-5) << "step " << i;
    ASSERT_EQ(lp.top.size(), 4u);
    EXPECT_EQ(lp.top[0].first, ref.argmax().item<int64_t>());
    for (size_t k = 0; k < lp.top.size(); ++k) {
      EXPECT_NEAR(lp.top[k].second, ref[lp.top[k].first].item<double>(), 1e-5);
      if (k > 0) {
        EXPECT_GE(lp.top[k - 1].second, lp.top[k].second);
      }
    }
    seq.push_back(g[0].tokens[i]);
  }
  // Asking for logprobs does not change the tokens.
  o.logprobs = false;
  EXPECT_EQ(Gen({prompt}, o)[0].tokens, g[0].tokens);
}

// Penalties through Generate: every greedy step is the argmax of the
// model's logits less count x frequency_penalty + presence_penalty over the
// row's own generated tokens (the prompt does not count).
TEST_F(GenerateTest, PenaltiesApplyToEachRowsOwnTokens) {
  GenerationOptions o;
  o.max_new_tokens = 8;
  o.stop_token_ids = {-1};
  o.frequency_penalty = 0.7;
  o.presence_penalty = 0.4;
  const std::vector<std::vector<int64_t>> prompts = {{5, 6, 7, 8}, {20, 21}};
  std::vector<Generation> g = Gen(prompts, o);
  for (size_t b = 0; b < prompts.size(); ++b) {
    std::vector<int64_t> seq = prompts[b];
    std::map<int64_t, int> counts;
    for (int64_t tok : g[b].tokens) {
      auto logits = decoder_->Forward(at::tensor(seq, at::kLong).view({1, -1}));
      ASSERT_TRUE(logits.ok());
      at::Tensor row = (*logits)[0][static_cast<int64_t>(seq.size()) - 1].clone();
      for (const auto& [t, n] : counts) row[t] -= n * 0.7 + 0.4;
      EXPECT_EQ(tok, row.argmax().item<int64_t>()) << "row " << b;
      ++counts[tok];
      seq.push_back(tok);
    }
  }
  // A strong penalty changes the greedy answer of a model that repeats.
  o.frequency_penalty = 0;
  o.presence_penalty = 0;
  o.max_new_tokens = 24;
  std::vector<Generation> plain = Gen({prompts[0]}, o);
  std::map<int64_t, int> seen;
  int repeats = 0;
  for (int64_t t : plain[0].tokens) repeats += seen[t]++ > 0;
  if (repeats > 0) {
    o.presence_penalty = 2;
    o.frequency_penalty = 2;
    EXPECT_NE(Gen({prompts[0]}, o)[0].tokens, plain[0].tokens);
  }
}

}  // namespace
}  // namespace tunefleet::model
