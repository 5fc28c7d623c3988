// Gradient checkpointing in the decoder: the same loss and the same
// gradients (LoRA with dropout, per-row adapters, full fine-tuning, padded
// and packed batches) as a plain forward, on a tiny Phi-3. Mixed precision
// (DecoderOptions::autocast_dtype, on the CPU's bf16 autocast here; CUDA's
// on a GPU node): close to fp32, each optimizer step seen, and the same
// gradients with checkpointing.
#include <ATen/ATen.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/model/decoder.h"
#include "common/model/lora.h"
#include "common/model/tiny_model.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace tunefleet::model {
namespace {

class CheckpointingTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    TinyModelOptions o;
    o.seed = 11;
    o.num_layers = 3;
    o.hidden_size = 32;
    o.num_heads = 4;
    o.num_kv_heads = 2;
    o.intermediate_size = 48;
    o.vocab_size = 128;
    ASSERT_TRUE(WriteTinyPhi3(dir_->Join("m"), o).ok());
  }
  static void TearDownTestSuite() { delete dir_; }

  static Decoder Load(const DecoderOptions& o = {}) {
    auto d = Decoder::Load(dir_->Join("m"), o);
    EXPECT_TRUE(d.ok()) << d.status();
    return *std::move(d);
  }
  static LoraAdapter Adapter(const Decoder& d, uint64_t seed, double dropout) {
    LoraConfig c;
    c.rank = 4;
    c.alpha = 8;
    c.dropout = dropout;
    auto a = LoraAdapter::Create(d.config(), c, seed);
    EXPECT_TRUE(a.ok()) << a.status();
    at::NoGradGuard no_grad;
    at::manual_seed(seed);
    // B starts at zero; non-zero B gives A a gradient too.
    for (at::Tensor& p : a->Parameters()) p.normal_(0, 0.05);
    return *std::move(a);
  }

  struct Grads {
    double loss = 0;
    std::vector<at::Tensor> grads;
  };
  // loss.backward() with `checkpointing`, from the same RNG state.
  static Grads Run(const Decoder& d, const std::vector<at::Tensor>& params, const at::Tensor& ids,
                   ForwardOptions fo, bool checkpointing) {
    for (at::Tensor p : params) p.mutable_grad() = at::Tensor();
    at::manual_seed(1234);
    fo.training = true;
    fo.gradient_checkpointing = checkpointing;
    at::Tensor labels = ids.clone();
    labels.narrow(1, 0, 2).fill_(-100);
    auto out = d.Loss(ids, labels, fo);
    EXPECT_TRUE(out.ok()) << out.status();
    out->loss.backward();
    Grads g;
    g.loss = out->loss.item<double>();
    for (const at::Tensor& p : params) {
      EXPECT_TRUE(p.grad().defined());
      g.grads.push_back(p.grad().clone());
    }
    return g;
  }
  // `loss`'s value and the gradients it gives `params`.
  static Grads Backward(const std::vector<at::Tensor>& params, const at::Tensor& loss) {
    for (at::Tensor p : params) p.mutable_grad() = at::Tensor();
    loss.backward();
    Grads g;
    g.loss = loss.item<double>();
    for (const at::Tensor& p : params) g.grads.push_back(p.grad().clone());
    return g;
  }
  // The token-weighted mean loss of each sequence run alone: `parts` are
  // [1, n] slices of the ids, each its own labels.
  static at::Tensor AloneLoss(const Decoder& d, const LoraAdapter& a,
                              const std::vector<at::Tensor>& parts, int64_t* tokens) {
    ForwardOptions alone;
    alone.adapter = &a;
    at::Tensor sum = at::zeros({}, at::kFloat);
    *tokens = 0;
    for (const at::Tensor& part : parts) {
      auto out = d.Loss(part, part, alone);
      EXPECT_TRUE(out.ok()) << out.status();
      if (!out.ok()) return sum;
      sum = sum + out->loss * static_cast<double>(out->tokens);
      *tokens += out->tokens;
    }
    return sum / static_cast<double>(*tokens);
  }
  static void ExpectSame(const Grads& a, const Grads& b) {
    EXPECT_NEAR(a.loss, b.loss, 1e-6);
    ASSERT_EQ(a.grads.size(), b.grads.size());
    double largest = 0;
    for (size_t i = 0; i < a.grads.size(); ++i) {
      EXPECT_TRUE(at::allclose(a.grads[i], b.grads[i], 1e-5, 1e-5))
          << "parameter " << i << ": max diff "
          << (a.grads[i] - b.grads[i]).abs().max().item<double>();
      largest = std::max(largest, a.grads[i].abs().max().item<double>());
    }
    EXPECT_GT(largest, 0.0);  // the comparison is not between zeros
  }

  static testing::TempDir* dir_;
};
testing::TempDir* CheckpointingTest::dir_ = nullptr;

at::Tensor Ids(int64_t rows, int64_t len) {
  at::manual_seed(5);
  return at::randint(3, 120, {rows, len}, at::kLong);
}

TEST_F(CheckpointingTest, LoraGradientsWithDropoutEqualAPlainForward) {
  Decoder d = Load();
  LoraAdapter a = Adapter(d, 3, /*dropout=*/0.2);
  std::vector<at::Tensor> params = a.Parameters();
  for (at::Tensor& p : params) p.set_requires_grad(true);
  at::Tensor ids = Ids(3, 12);
  ForwardOptions fo;
  fo.adapter = &a;
  // Padded rows.
  fo.attention_mask = at::ones({3, 12}, at::kLong);
  fo.attention_mask[1].narrow(0, 9, 3).fill_(0);
  ExpectSame(Run(d, params, ids, fo, false), Run(d, params, ids, fo, true));
  // Packed rows.
  ForwardOptions packed;
  packed.adapter = &a;
  packed.sequence_ids = at::zeros({3, 12}, at::kLong);
  packed.sequence_ids.narrow(1, 5, 7).fill_(1);
  ExpectSame(Run(d, params, ids, packed, false), Run(d, params, ids, packed, true));
  // Dropout really draws (else the RNG replay would be untested): another
  // seed gives another loss.
  at::manual_seed(99);
  packed.training = true;
  at::Tensor labels = ids.clone();
  auto other = d.Loss(ids, labels, packed);
  ASSERT_TRUE(other.ok());
  at::manual_seed(1234);
  auto same = d.Loss(ids, labels, packed);
  ASSERT_TRUE(same.ok());
  EXPECT_NE(other->loss.item<double>(), same->loss.item<double>());
}

TEST_F(CheckpointingTest, PerRowAdaptersAndFullFineTuningToo) {
  Decoder d = Load();
  LoraAdapter a = Adapter(d, 3, 0.1), b = Adapter(d, 4, 0.0);
  std::vector<at::Tensor> params = a.Parameters();
  for (const at::Tensor& p : b.Parameters()) params.push_back(p);
  for (at::Tensor& p : params) p.set_requires_grad(true);
  at::Tensor ids = Ids(3, 10);
  ForwardOptions fo;
  fo.adapter = std::vector<const LoraAdapter*>{&a, nullptr, &b};
  ExpectSame(Run(d, params, ids, fo, false), Run(d, params, ids, fo, true));

  // Full fine-tuning: the base weights themselves.
  Decoder full = Load();
  std::vector<at::Tensor> weights = full.Parameters();
  for (at::Tensor& p : weights) p.set_requires_grad(true);
  ExpectSame(Run(full, weights, ids, ForwardOptions(), false),
             Run(full, weights, ids, ForwardOptions(), true));
}

// Packed rows attend per sequence (one attention per run of equal ids, not
// a masked [T,T] over the row): the loss and the gradients equal those of
// the sequences run alone, token-weighted.
TEST_F(CheckpointingTest, PackedGradientsEqualTheSequencesRunAlone) {
  Decoder d = Load();
  LoraAdapter a = Adapter(d, 6, /*dropout=*/0.0);
  std::vector<at::Tensor> params = a.Parameters();
  for (at::Tensor& p : params) p.set_requires_grad(true);
  at::Tensor ids = Ids(1, 15);  // 6 + 9 tokens
  ForwardOptions packed;
  packed.adapter = &a;
  packed.sequence_ids = at::cat({at::zeros({1, 6}, at::kLong), at::ones({1, 9}, at::kLong)}, 1);
  // Alone, a sequence's first token is nobody's label; packed, the previous
  // sequence's last token would predict it, so it is masked there.
  at::Tensor labels = ids.clone();
  labels[0][6] = -100;
  auto together = d.Loss(ids, labels, packed);
  ASSERT_TRUE(together.ok()) << together.status();
  Grads want = Backward(params, together->loss);

  int64_t tokens = 0;
  at::Tensor alone = AloneLoss(d, a, {ids.narrow(1, 0, 6), ids.narrow(1, 6, 9)}, &tokens);
  EXPECT_EQ(tokens, together->tokens);
  ExpectSame(want, Backward(params, alone));
}

// Many runs of mixed lengths in two rows, the second ending in padding:
// the runs are batched into groups of similar length (a long run alone,
// short ones padded to the longest of theirs), and the loss and gradients
// still equal those of each sequence run alone.
TEST_F(CheckpointingTest, GroupedRunsOfMixedLengthsEqualTheSequencesRunAlone) {
  Decoder d = Load();
  LoraAdapter a = Adapter(d, 7, /*dropout=*/0.0);
  std::vector<at::Tensor> params = a.Parameters();
  for (at::Tensor& p : params) p.set_requires_grad(true);
  const int64_t T = 128;
  const std::vector<std::vector<int64_t>> rows = {{100, 3, 25}, {7, 90, 5, 6}};  // row 1: 20 padding
  at::Tensor ids = Ids(2, T);
  at::Tensor seq = at::zeros({2, T}, at::kLong), mask = at::zeros({2, T}, at::kLong);
  at::Tensor labels = ids.clone();
  for (int64_t b = 0; b < 2; ++b) {
    int64_t start = 0, id = 0;
    for (int64_t n : rows[b]) {
      seq[b].narrow(0, start, n).fill_(id++);
      mask[b].narrow(0, start, n).fill_(1);
      if (start > 0) labels[b][start] = -100;  // the previous sequence's last token predicts it
      start += n;
    }
    if (start < T) {
      seq[b].narrow(0, start, T - start).fill_(id);
      labels[b].narrow(0, start, T - start).fill_(-100);
    }
  }
  // The plan: the two long runs share no group with the short ones.
  internal::AttentionSegments plan;
  plan.lengths = {100, 3, 25, 7, 90, 5, 6, 20};
  plan.padding = {0, 0, 0, 0, 0, 0, 0, 1};
  internal::GroupRuns(plan, 8192);
  EXPECT_GE(plan.group_runs.size(), 2u);
  EXPECT_EQ(plan.group_length.front(), 100);

  for (bool checkpointing : {false, true}) {
    SCOPED_TRACE(checkpointing ? "with checkpointing" : "without checkpointing");
    ForwardOptions packed;
    packed.adapter = &a;
    packed.sequence_ids = seq;
    packed.attention_mask = mask;
    packed.gradient_checkpointing = checkpointing;
    auto together = d.Loss(ids, labels, packed);
    ASSERT_TRUE(together.ok()) << together.status();
    Grads want = Backward(params, together->loss);

    std::vector<at::Tensor> parts;
    for (int64_t b = 0; b < 2; ++b) {
      int64_t start = 0;
      for (int64_t n : rows[b]) {
        parts.push_back(ids[b].narrow(0, start, n).unsqueeze(0));
        start += n;
      }
    }
    int64_t tokens = 0;
    at::Tensor alone = AloneLoss(d, a, parts, &tokens);
    EXPECT_EQ(tokens, together->tokens);
    ExpectSame(want, Backward(params, alone));
  }
}

// How runs are cut into groups: equal lengths share a group for free, a
// long run stays alone when padding short ones to it costs more than a
// call, and a call that costs more than any padding puts all in one group.
// Every real token has one slot, and its slot gathers it back.
TEST(GroupRunsTest, CutsByLengthAndMapsEveryTokenOnce) {
  internal::AttentionSegments s;
  s.lengths = {5, 100, 5, 10, 5};
  s.padding = {0, 0, 0, 1, 0};
  internal::GroupRuns(s, 0);
  EXPECT_THAT(s.group_runs, ::testing::ElementsAre(1, 3));
  EXPECT_THAT(s.group_length, ::testing::ElementsAre(100, 5));
  const int64_t slots = 100 + 3 * 5;
  ASSERT_EQ(s.gather.numel(), slots);
  ASSERT_EQ(s.scatter.numel(), 125);
  for (int64_t t = 0; t < 125; ++t) {
    const int64_t slot = s.scatter[t].item<int64_t>();
    if (t >= 110 && t < 120) {  // the padding run
      EXPECT_EQ(slot, slots) << t;
    } else {
      ASSERT_LT(slot, slots) << t;
      EXPECT_EQ(s.gather[slot].item<int64_t>(), t) << t;
    }
  }
  internal::GroupRuns(s, int64_t{1} << 40);
  EXPECT_THAT(s.group_runs, ::testing::ElementsAre(4));
  EXPECT_THAT(s.group_length, ::testing::ElementsAre(100));
  EXPECT_EQ(s.gather.numel(), 400);
}

TEST_F(CheckpointingTest, Bf16AutocastFollowsFp32AndSeesEveryOptimizerStep) {
  DecoderOptions mixed_options;
  mixed_options.autocast_dtype = at::kBFloat16;
  Decoder plain = Load(), mixed = Load(mixed_options);
  std::vector<at::Tensor> pw = plain.Parameters(), mw = mixed.Parameters();
  for (at::Tensor& p : pw) p.set_requires_grad(true);
  for (at::Tensor& p : mw) p.set_requires_grad(true);
  at::Tensor ids = Ids(3, 12);
  Grads p1 = Run(plain, pw, ids, ForwardOptions(), false);
  Grads m1 = Run(mixed, mw, ids, ForwardOptions(), false);
  EXPECT_NE(p1.loss, m1.loss);  // bf16 products really ran
  EXPECT_NEAR(m1.loss, p1.loss, 0.02 * p1.loss);
  // A large SGD step on both: the next forward under autocast must use the
  // new weights (autocast caches bf16 copies of fp32 leaves within a scope;
  // a cache kept past the scope would still hold the old ones).
  {
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < pw.size(); ++i) {
      pw[i].sub_(p1.grads[i], 20.0);
      mw[i].sub_(p1.grads[i], 20.0);
    }
  }
  Grads p2 = Run(plain, pw, ids, ForwardOptions(), false);
  Grads m2 = Run(mixed, mw, ids, ForwardOptions(), false);
  EXPECT_GT(std::abs(p2.loss - p1.loss), 10 * std::abs(m2.loss - p2.loss))
      << "before " << p1.loss << " after " << p2.loss << " (bf16 " << m2.loss << ")";
  // The recomputation of a checkpointed layer runs under the same autocast.
  ExpectSame(m2, Run(mixed, mw, ids, ForwardOptions(), true));
}

TEST_F(CheckpointingTest, AutocastOptionsAreChecked) {
  DecoderOptions o;
  o.autocast_dtype = at::kHalf;
  auto d = Decoder::Load(dir_->Join("m"), o);
  EXPECT_THAT(d.status(), tunefleet::testing::StatusIs(
                              absl::StatusCode::kInvalidArgument,
                              ::testing::HasSubstr("autocast to Half on cpu: autocast takes bfloat16 "
                                                   "on the CPU")));
}

TEST_F(CheckpointingTest, WithoutGradModeItIsAPlainForward) {
  Decoder d = Load();
  at::Tensor ids = Ids(2, 8);
  ForwardOptions fo;
  fo.gradient_checkpointing = true;
  at::NoGradGuard no_grad;
  auto with = d.Forward(ids, fo);
  ASSERT_TRUE(with.ok());
  auto plain = d.Forward(ids);
  ASSERT_TRUE(plain.ok());
  EXPECT_TRUE(at::equal(*with, *plain));
}

}  // namespace
}  // namespace tunefleet::model
