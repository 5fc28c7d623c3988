#include "common/model/decoder.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "common/model/decode_attention.h"
#include "common/model/decoder_internal.h"
#include "tests/model/model_test_util.h"
#include "tests/testing/status_matchers.h"

namespace tunefleet::model {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::tunefleet::model::testing::MaxAbsDiff;
using ::tunefleet::model::testing::ScopedTempDir;
using ::tunefleet::testing::StatusIs;

constexpr double kTol = 1e-5;

// One fixture per model family, written and loaded once.
class DecoderTest : public ::testing::TestWithParam<const char*> {
 protected:
  static void SetUpTestSuite() {
    testing::UseFewThreads();
    dir_ = new ScopedTempDir();
    ASSERT_TRUE(WriteTinyPhi3(dir_->Join("phi3"), testing::TinyPhi3Options()).ok());
    testing::WriteTinyMistral(dir_->Join("mistral"), 5);
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  void SetUp() override {
    auto d = Decoder::Load(dir_->Join(GetParam()));
    ASSERT_TRUE(d.ok()) << d.status();
    decoder_ = std::make_unique<Decoder>(*std::move(d));
  }
  at::Tensor Ids(std::vector<int64_t> ids) { return at::tensor(ids, at::kLong).view({1, -1}); }
  at::Tensor Full(const std::vector<int64_t>& ids) {
    auto r = decoder_->Forward(Ids(ids));
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? (*r)[0] : at::Tensor();
  }

  static ScopedTempDir* dir_;
  std::unique_ptr<Decoder> decoder_;
};
ScopedTempDir* DecoderTest::dir_ = nullptr;

const std::vector<int64_t> kSeq = {1, 17, 250, 3, 99, 42, 7, 8, 120, 5, 61, 200};

TEST_P(DecoderTest, ForwardShapesAndCausality) {
  at::Tensor full = Full(kSeq);
  ASSERT_EQ(full.sizes(), (std::vector<int64_t>{12, decoder_->config().vocab_size}));
  EXPECT_EQ(full.scalar_type(), at::kFloat);
  // Logits of a prefix do not depend on later tokens.
  at::Tensor prefix = Full({kSeq.begin(), kSeq.begin() + 6});
  EXPECT_LE(MaxAbsDiff(prefix, full.narrow(0, 0, 6)), kTol);
}

TEST_P(DecoderTest, KvCacheDecodeEqualsFullForward) {
  at::Tensor full = Full(kSeq);
  TF_ASSERT_OK_AND_ASSIGN(KvCache cache, decoder_->NewCache(1, 32));
  TF_ASSERT_OK_AND_ASSIGN(at::Tensor last,
                          decoder_->Extend(cache, Ids({kSeq.begin(), kSeq.begin() + 4})));
  EXPECT_LE(MaxAbsDiff(last[0], full[3]), kTol);
  for (size_t t = 4; t < kSeq.size(); ++t) {
    TF_ASSERT_OK_AND_ASSIGN(at::Tensor step, decoder_->Extend(cache, Ids({kSeq[t]})));
    EXPECT_LE(MaxAbsDiff(step[0], full[t]), kTol) << "position " << t;
  }
  EXPECT_EQ(cache.lengths()[0], static_cast<int64_t>(kSeq.size()));
}

TEST_P(DecoderTest, BatchedCacheWithPerRowLengths) {
  const std::vector<std::vector<int64_t>> rows = {
      {5, 6, 7, 8, 9, 10, 11}, {20, 21, 22}, {30, 31, 32, 33, 34}};
  std::vector<int64_t> flat(3 * 7, 0), lengths;
  for (size_t b = 0; b < rows.size(); ++b) {
    std::copy(rows[b].begin(), rows[b].end(), flat.begin() + b * 7);
    lengths.push_back(static_cast<int64_t>(rows[b].size()));
  }
  TF_ASSERT_OK_AND_ASSIGN(KvCache cache, decoder_->NewCache(3, 16));
  TF_ASSERT_OK_AND_ASSIGN(
      at::Tensor last, decoder_->Extend(cache, at::tensor(flat, at::kLong).view({3, 7}), lengths));
  std::vector<std::vector<int64_t>> seqs = rows;
  for (size_t b = 0; b < rows.size(); ++b) {
    EXPECT_LE(MaxAbsDiff(last[b], Full(seqs[b])[lengths[b] - 1]), kTol) << "row " << b;
  }
  // Three decode steps; row 1 sits out the second one.
  for (int step = 0; step < 3; ++step) {
    std::vector<int64_t> next = {40 + step, 50 + step, 60 + step};
    std::vector<int64_t> chunk = {1, step == 1 ? 0 : 1, 1};
    TF_ASSERT_OK_AND_ASSIGN(
        at::Tensor logits,
        decoder_->Extend(cache, at::tensor(next, at::kLong).view({3, 1}), chunk));
    for (size_t b = 0; b < 3; ++b) {
      if (chunk[b] == 0) continue;
      seqs[b].push_back(next[b]);
      at::Tensor want = Full(seqs[b]);
      EXPECT_LE(MaxAbsDiff(logits[b], want[want.size(0) - 1]), kTol)
          << "row " << b << " step " << step;
    }
  }
  EXPECT_EQ(cache.lengths(), (std::vector<int64_t>{10, 5, 8}));
}

TEST_P(DecoderTest, ChunkedPrefillWithAllLogits) {
  at::Tensor full = Full(kSeq);
  TF_ASSERT_OK_AND_ASSIGN(KvCache cache, decoder_->NewCache(1, 12));
  TF_ASSERT_OK_AND_ASSIGN(
      at::Tensor a, decoder_->Extend(cache, Ids({kSeq.begin(), kSeq.begin() + 5}), {}, nullptr,
                                     /*all_logits=*/true));
  TF_ASSERT_OK_AND_ASSIGN(at::Tensor b, decoder_->Extend(cache, Ids({kSeq.begin() + 5, kSeq.end()}),
                                                         {}, nullptr, true));
  EXPECT_LE(MaxAbsDiff(at::cat({a[0], b[0]}), full), kTol);
  EXPECT_THAT(decoder_->Extend(cache, Ids({1})), StatusIs(absl::StatusCode::kResourceExhausted));
}

TEST_P(DecoderTest, PaddingMaskLeftAndRight) {
  const std::vector<int64_t> seq = {3, 14, 15, 92, 65};
  at::Tensor want = Full(seq);
  at::Tensor ids =
      at::tensor({3, 14, 15, 92, 65, 0, 0, 0, 0, 3, 14, 15, 92, 65}, at::kLong).view({2, 7});
  at::Tensor mask = at::tensor({1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1}, at::kLong).view({2, 7});
  ForwardOptions opts;
  opts.attention_mask = mask;
  TF_ASSERT_OK_AND_ASSIGN(at::Tensor got, decoder_->Forward(ids, opts));
  EXPECT_LE(MaxAbsDiff(got[0].narrow(0, 0, 5), want), kTol);  // right padding
  EXPECT_LE(MaxAbsDiff(got[1].narrow(0, 2, 5), want), kTol);  // left padding
  EXPECT_FALSE(at::isnan(got).any().item<bool>());
}

TEST_P(DecoderTest, PackedSequencesEqualSeparateOnes) {
  const std::vector<int64_t> a = {7, 8, 9, 10}, b = {11, 12, 13};
  at::Tensor ids = at::tensor({7, 8, 9, 10, 11, 12, 13}, at::kLong).view({1, 7});
  ForwardOptions opts;
  opts.sequence_ids = at::tensor({0, 0, 0, 0, 1, 1, 1}, at::kLong).view({1, 7});
  opts.position_ids = at::tensor({0, 1, 2, 3, 0, 1, 2}, at::kLong).view({1, 7});
  TF_ASSERT_OK_AND_ASSIGN(at::Tensor got, decoder_->Forward(ids, opts));
  EXPECT_LE(MaxAbsDiff(got[0].narrow(0, 0, 4), Full(a)), kTol);
  EXPECT_LE(MaxAbsDiff(got[0].narrow(0, 4, 3), Full(b)), kTol);
}

TEST_P(DecoderTest, PackedPositionsRestartByThemselves) {
  at::Tensor ids = at::tensor({7, 8, 9, 10, 11, 12, 13}, at::kLong).view({1, 7});
  ForwardOptions opts;
  opts.sequence_ids = at::tensor({4, 4, 4, 4, 9, 9, 9}, at::kLong).view({1, 7});
  TF_ASSERT_OK_AND_ASSIGN(at::Tensor got, decoder_->Forward(ids, opts));
  EXPECT_LE(MaxAbsDiff(got[0].narrow(0, 4, 3), Full({11, 12, 13})), kTol);
}

// Masks that are not one run per sequence take the masked path and keep
// their meaning: a hole in a row's tokens, a sequence id that comes back.
TEST_P(DecoderTest, MaskHolesAndReturningIdsKeepTheirMeaning) {
  ForwardOptions holes;
  holes.attention_mask = at::tensor({1, 1, 0, 1, 1}, at::kLong).view({1, 5});
  TF_ASSERT_OK_AND_ASSIGN(at::Tensor got,
                          decoder_->Forward(Ids({3, 14, 0, 15, 92}), holes));
  at::Tensor want = Full({3, 14, 15, 92});
  EXPECT_LE(MaxAbsDiff(got[0].narrow(0, 0, 2), want.narrow(0, 0, 2)), kTol);
  EXPECT_LE(MaxAbsDiff(got[0].narrow(0, 3, 2), want.narrow(0, 2, 2)), kTol);

  ForwardOptions back;  // a0 a1 b0 a2 a3 (within mistral's window of 5 slots)
  back.sequence_ids = at::tensor({0, 0, 1, 0, 0}, at::kLong).view({1, 5});
  back.position_ids = at::tensor({0, 1, 0, 2, 3}, at::kLong).view({1, 5});
  TF_ASSERT_OK_AND_ASSIGN(got, decoder_->Forward(Ids({7, 8, 11, 9, 10}), back));
  want = Full({7, 8, 9, 10});
  EXPECT_LE(MaxAbsDiff(got[0].narrow(0, 3, 2), want.narrow(0, 2, 2)), kTol);
  EXPECT_LE(MaxAbsDiff(got[0].narrow(0, 2, 1), Full({11})), kTol);
}

TEST_P(DecoderTest, ContinuousBatchingReusesARow) {
  // Row 0 decodes while row 1 is reset and prefilled with a new prompt in
  // the same step.
  TF_ASSERT_OK_AND_ASSIGN(KvCache cache, decoder_->NewCache(2, 16));
  at::Tensor first = at::tensor({1, 2, 3, 4, 5, 6, 7, 8}, at::kLong).view({2, 4});
  TF_ASSERT_OK(decoder_->Extend(cache, first).status());
  cache.ResetRow(1);
  at::Tensor step = at::tensor({9, 0, 0, 40, 41, 42}, at::kLong).view({2, 3});
  TF_ASSERT_OK_AND_ASSIGN(at::Tensor logits, decoder_->Extend(cache, step, {1, 3}));
  EXPECT_LE(MaxAbsDiff(logits[0], Full({1, 2, 3, 4, 9})[4]), kTol);
  EXPECT_LE(MaxAbsDiff(logits[1], Full({40, 41, 42})[2]), kTol);
  EXPECT_EQ(cache.lengths(), (std::vector<int64_t>{5, 3}));
}

TEST_P(DecoderTest, ExtendRowsFeedsEachRowItsOwnChunk) {
  // Row 0 decodes one token, row 1 sits out, row 2 reads six more tokens of
  // its prompt and row 3 starts one: with the AVX2 kernel (ragged, only the
  // real tokens computed) and without it (padded), each row's logits are
  // those of its whole sequence.
  for (bool kernel : {true, false}) {
    SCOPED_TRACE(kernel ? "kernel on" : "kernel off");
    EnableDecodeAttention(kernel);
    EXPECT_EQ(decoder_->RaggedExtend(), kernel && DecodeAttentionAvailable());
    TF_ASSERT_OK_AND_ASSIGN(KvCache cache, decoder_->NewCache(4, 16));
    TF_ASSERT_OK_AND_ASSIGN(at::Tensor first,
                            decoder_->ExtendRows(cache, {5, 6, 7, 8, 20, 21, 30, 31, 32}, {4, 2, 3, 0}));
    EXPECT_LE(MaxAbsDiff(first[1], Full({20, 21})[1]), kTol);
    TF_ASSERT_OK_AND_ASSIGN(
        at::Tensor logits,
        decoder_->ExtendRows(cache, {9, 33, 34, 35, 36, 37, 38, 40, 41, 42}, {1, 0, 6, 3}));
    // One row of logits per cache row (the idle row's not computed).
    EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{4, decoder_->config().vocab_size}));
    EXPECT_LE(MaxAbsDiff(logits[0], Full({5, 6, 7, 8, 9})[4]), kTol);
    EXPECT_LE(MaxAbsDiff(logits[2], Full({30, 31, 32, 33, 34, 35, 36, 37, 38})[8]), kTol);
    EXPECT_LE(MaxAbsDiff(logits[3], Full({40, 41, 42})[2]), kTol);
    EXPECT_EQ(cache.lengths(), (std::vector<int64_t>{5, 2, 9, 3}));
    // Row 2 one token short of the capacity: a ragged step needs room for
    // each row's own chunk only, a padded one for the longest chunk in every row.
    TF_ASSERT_OK(decoder_->ExtendRows(cache, {1, 2, 3, 4, 5, 6, 50}, {0, 0, 6, 1}).status());
    absl::StatusOr<at::Tensor> near_full = decoder_->ExtendRows(cache, {9, 7, 1, 2, 3, 4}, {1, 0, 1, 4});
    if (decoder_->RaggedExtend()) {
      TF_ASSERT_OK(near_full.status());
      EXPECT_EQ(cache.lengths(), (std::vector<int64_t>{6, 2, 16, 8}));
      EXPECT_THAT(decoder_->ExtendRows(cache, {1, 2}, {0, 1, 1, 0}),
                  StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("row 2")));
    } else {
      EXPECT_THAT(near_full, StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("row 2")));
    }
  }
  EnableDecodeAttention(true);
  TF_ASSERT_OK_AND_ASSIGN(KvCache cache, decoder_->NewCache(2, 8));
  EXPECT_THAT(decoder_->ExtendRows(cache, {1}, {1}), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(decoder_->ExtendRows(cache, {1}, {1, 1}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("2 tokens")));
  EXPECT_THAT(decoder_->ExtendRows(cache, {}, {0, 0}), StatusIs(absl::StatusCode::kInvalidArgument));
  // A token outside the vocabulary, on the ragged and the padded path; the
  // cache is left as it was.
  const int64_t vocab = decoder_->config().vocab_size;
  EXPECT_THAT(decoder_->ExtendRows(cache, {vocab}, {1, 0}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("token ids must be in [0, ")));
  EXPECT_THAT(decoder_->ExtendRows(cache, {1, -1}, {1, 1}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("token ids must be in [0, ")));
  EXPECT_EQ(cache.lengths(), (std::vector<int64_t>{0, 0}));
}

TEST_P(DecoderTest, ARowCopiedToALargerCacheDecodesOn) {
  // Two rows of different lengths move to rows 2 and 0 of a cache with four
  // (a batch that grows) and decode on as if they had never moved.
  TF_ASSERT_OK_AND_ASSIGN(KvCache small, decoder_->NewCache(2, 16));
  at::Tensor first = at::tensor({1, 2, 3, 4, 5, 6, 7, 0}, at::kLong).view({2, 4});
  TF_ASSERT_OK(decoder_->Extend(small, first, {4, 3}).status());
  TF_ASSERT_OK_AND_ASSIGN(KvCache big, decoder_->NewCache(4, 16));
  TF_ASSERT_OK(big.CopyRow(small, 0, 2));
  TF_ASSERT_OK(big.CopyRow(small, 1, 0));
  EXPECT_EQ(big.lengths(), (std::vector<int64_t>{3, 0, 4, 0}));
  at::Tensor step = at::tensor({9, 0, 8, 0}, at::kLong).view({4, 1});
  TF_ASSERT_OK_AND_ASSIGN(at::Tensor logits, decoder_->Extend(big, step, {1, 0, 1, 0}));
  EXPECT_LE(MaxAbsDiff(logits[2], Full({1, 2, 3, 4, 8})[4]), kTol);
  EXPECT_LE(MaxAbsDiff(logits[0], Full({5, 6, 7, 9})[3]), kTol);
  // Rows out of range, and a row longer than the destination's capacity.
  EXPECT_THAT(big.CopyRow(small, 2, 0), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(big.CopyRow(small, 0, 4), StatusIs(absl::StatusCode::kInvalidArgument));
  TF_ASSERT_OK_AND_ASSIGN(KvCache tiny, decoder_->NewCache(1, 2));
  EXPECT_THAT(tiny.CopyRow(small, 0, 0), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_P(DecoderTest, BadInputsAreErrors) {
  EXPECT_THAT(decoder_->Forward(Ids({decoder_->config().vocab_size})),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(decoder_->Forward(at::zeros({3}, at::kLong)),
              StatusIs(absl::StatusCode::kInvalidArgument));
  ForwardOptions opts;
  opts.attention_mask = at::ones({1, 2}, at::kLong);
  EXPECT_THAT(decoder_->Forward(Ids({1, 2, 3}), opts),
              StatusIs(absl::StatusCode::kInvalidArgument));
  TF_ASSERT_OK_AND_ASSIGN(KvCache cache, decoder_->NewCache(2, 8));
  EXPECT_THAT(decoder_->Extend(cache, Ids({1, 2})), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_P(DecoderTest, HfTensorsRoundTrip) {
  ScopedTempDir out;
  TF_ASSERT_OK(SaveHfModel(*decoder_, out.path(), nullptr, {}));
  TF_ASSERT_OK_AND_ASSIGN(Decoder again, Decoder::Load(out.path()));
  TF_ASSERT_OK_AND_ASSIGN(at::Tensor logits, again.Forward(Ids(kSeq)));
  EXPECT_TRUE(at::equal(logits[0], Full(kSeq)));
}

INSTANTIATE_TEST_SUITE_P(Families, DecoderTest, ::testing::Values("phi3", "mistral"));

TEST(DecoderLoadTest, SlidingWindowLimitsAttention) {
  testing::UseFewThreads();
  ScopedTempDir dir;
  testing::WriteTinyMistral(dir.path(), 5);
  TF_ASSERT_OK_AND_ASSIGN(Decoder windowed, Decoder::Load(dir.path()));
  nlohmann::json config = nlohmann::json::parse(std::ifstream(dir.Join("config.json")));
  config["sliding_window"] = nullptr;
  std::ofstream(dir.Join("config.json")) << config.dump();
  TF_ASSERT_OK_AND_ASSIGN(Decoder full, Decoder::Load(dir.path()));
  at::Tensor ids = at::arange(3, 12, at::kLong).view({1, -1});
  TF_ASSERT_OK_AND_ASSIGN(at::Tensor a, windowed.Forward(ids));
  TF_ASSERT_OK_AND_ASSIGN(at::Tensor b, full.Forward(ids));
  // Identical within the window (5 tokens), different beyond it.
  EXPECT_LE(MaxAbsDiff(a[0].narrow(0, 0, 5), b[0].narrow(0, 0, 5)), kTol);
  EXPECT_GT(MaxAbsDiff(a[0].narrow(0, 5, 4), b[0].narrow(0, 5, 4)), 1e-4);
  // A packed sequence longer than the window keeps the window.
  ForwardOptions packed;
  packed.sequence_ids = at::tensor({0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1}, at::kLong).view({1, 12});
  at::Tensor both = at::cat({ids, at::arange(20, 23, at::kLong).view({1, 3})}, 1);
  TF_ASSERT_OK_AND_ASSIGN(at::Tensor p, windowed.Forward(both, packed));
  EXPECT_LE(MaxAbsDiff(p[0].narrow(0, 0, 9), a[0]), kTol);
  TF_ASSERT_OK_AND_ASSIGN(at::Tensor c, windowed.Forward(at::arange(20, 23, at::kLong).view({1, 3})));
  EXPECT_LE(MaxAbsDiff(p[0].narrow(0, 9, 3), c[0]), kTol);
}

// The fused, chunked head (several chunks: a 70K vocabulary makes chunks of
// ~60 rows) equals linear -> log_softmax -> gather in value and in the
// gradients of the hidden states and, when trained, of the head.
TEST(LabelLogProbsTest, EqualThePlainPathAndItsGradients) {
  testing::UseFewThreads();
  at::manual_seed(3);
  const int64_t N = 150, H = 8, V = 70000;
  at::Tensor hs0 = at::randn({N, H}), w0 = at::randn({V, H}) * 0.5;
  at::Tensor target = at::randint(0, V, {N}, at::kLong);
  target[7] = at::linear(hs0[7], w0).argmax().item<int64_t>();  // one sure hit
  at::Tensor g = at::randn({N});
  for (bool train_head : {false, true}) {
    SCOPED_TRACE(train_head ? "head trained" : "head frozen");
    at::Tensor hs = hs0.clone().requires_grad_(true), w = w0.clone().requires_grad_(train_head);
    internal::HeadLogProbs got = internal::LabelLogProbs(hs, w, target);
    (got.logp * g).sum().backward();
    at::Tensor hs_ref = hs0.clone().requires_grad_(true), w_ref = w0.clone().requires_grad_(train_head);
    at::Tensor logits = at::linear(hs_ref, w_ref);
    at::Tensor want = at::log_softmax(logits, -1).gather(1, target.unsqueeze(1)).squeeze(1);
    (want * g).sum().backward();
    EXPECT_LE(MaxAbsDiff(got.logp, want.detach()), 1e-4);
    EXPECT_EQ(got.correct, (logits.argmax(-1) == target).sum().item<int64_t>());
    EXPECT_GE(got.correct, 1);
    EXPECT_LE(MaxAbsDiff(hs.grad(), hs_ref.grad()), 1e-4);
    if (train_head) {
      EXPECT_LE(MaxAbsDiff(w.grad(), w_ref.grad()), 1e-4);
    } else {
      EXPECT_FALSE(w.grad().defined());
    }
  }
  // Without autograd: the same values, nothing kept.
  at::NoGradGuard no_grad;
  internal::HeadLogProbs plain = internal::LabelLogProbs(hs0, w0, target);
  EXPECT_LE(MaxAbsDiff(plain.logp, at::log_softmax(at::linear(hs0, w0), -1)
                                       .gather(1, target.unsqueeze(1))
                                       .squeeze(1)),
            1e-4);
}

TEST(DecoderLoadTest, LongRopeSwitchesToLongFactorsPastTheOriginalContext) {
  testing::UseFewThreads();
  ScopedTempDir dir;
  TinyModelOptions o = testing::TinyPhi3Options();
  o.long_context = true;
  o.original_max_position_embeddings = 8;
  ASSERT_TRUE(WriteTinyPhi3(dir.path(), o).ok());
  TF_ASSERT_OK_AND_ASSIGN(Decoder d, Decoder::Load(dir.path()));
  EXPECT_EQ(d.config().rope_scaling.type, RopeScaling::Type::kLongRope);
  at::Tensor ids = at::arange(100, 112, at::kLong).view({1, -1});
  TF_ASSERT_OK_AND_ASSIGN(at::Tensor long_ctx, d.Forward(ids));  // 12 > 8: long factors
  TF_ASSERT_OK_AND_ASSIGN(at::Tensor short_ctx,
                          d.Forward(ids.narrow(1, 0, 8)));  // 8: short factors
  EXPECT_GT(MaxAbsDiff(long_ctx[0].narrow(0, 1, 7), short_ctx[0].narrow(0, 1, 7)), 1e-5);
  // A one-chunk prefill picks the same factors as the full forward.
  TF_ASSERT_OK_AND_ASSIGN(KvCache cache, d.NewCache(1, 12));
  TF_ASSERT_OK_AND_ASSIGN(at::Tensor all, d.Extend(cache, ids, {}, nullptr, true));
  EXPECT_LE(MaxAbsDiff(all, long_ctx), kTol);
}

TEST(DecoderLoadTest, MalformedDirectoriesNameTheTensor) {
  testing::UseFewThreads();
  ScopedTempDir dir;
  ASSERT_TRUE(WriteTinyPhi3(dir.path(), testing::TinyPhi3Options()).ok());
  TF_ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::Open(dir.Join("model.safetensors")));
  TF_ASSERT_OK_AND_ASSIGN(NamedTensors all, file->GetAll());
  file.reset();

  NamedTensors missing;
  for (auto& nt : all) {
    if (nt.first != "model.layers.1.mlp.down_proj.weight") missing.push_back(nt);
  }
  ScopedTempDir bad1;
  std::filesystem::copy(dir.Join("config.json"), bad1.Join("config.json"));
  TF_ASSERT_OK(WriteSafetensorsDir(bad1.path(), missing));
  EXPECT_THAT(Decoder::Load(bad1.path()),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("'model.layers.1.mlp.down_proj.weight'")));

  NamedTensors misshaped = all;
  for (auto& nt : misshaped) {
    if (nt.first == "model.layers.0.self_attn.qkv_proj.weight") nt.second = at::zeros({10, 64});
  }
  ScopedTempDir bad2;
  std::filesystem::copy(dir.Join("config.json"), bad2.Join("config.json"));
  TF_ASSERT_OK(WriteSafetensorsDir(bad2.path(), misshaped));
  EXPECT_THAT(Decoder::Load(bad2.path()),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("model.safetensors"),
                             HasSubstr("'model.layers.0.self_attn.qkv_proj.weight'"),
                             HasSubstr("[10, 64]"), HasSubstr("[192, 64]"))));

  ScopedTempDir bad3;
  TF_ASSERT_OK(WriteSafetensorsDir(bad3.path(), all));
  EXPECT_THAT(Decoder::Load(bad3.path()),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("config.json")));
}

TEST(TinyModelTest, DeterministicForASeed) {
  ScopedTempDir dir;
  TinyModelOptions o = testing::TinyPhi3Options(42);
  o.dtype = "bfloat16";
  ASSERT_TRUE(WriteTinyPhi3(dir.Join("a"), o).ok());
  ASSERT_TRUE(WriteTinyPhi3(dir.Join("b"), o).ok());
  o.seed = 43;
  ASSERT_TRUE(WriteTinyPhi3(dir.Join("c"), o).ok());
  auto bytes = [&](const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  for (const char* f : {"model.safetensors", "config.json", "generation_config.json"}) {
    EXPECT_EQ(bytes(dir.Join(std::string("a/") + f)), bytes(dir.Join(std::string("b/") + f))) << f;
  }
  EXPECT_NE(bytes(dir.Join("a/model.safetensors")), bytes(dir.Join("c/model.safetensors")));
  TF_ASSERT_OK_AND_ASSIGN(ModelConfig c, LoadModelConfig(dir.Join("a")));
  EXPECT_EQ(c.vocab_size, 32064);
  EXPECT_EQ(c.model_type, "phi3");
  // config.json's eos plus generation_config.json's (<|end|> among them).
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{32000, 32001, 32007}));
  // A bf16 checkpoint loads into an fp32 decoder.
  TF_ASSERT_OK_AND_ASSIGN(Decoder d, Decoder::Load(dir.Join("a")));
  TF_ASSERT_OK_AND_ASSIGN(at::Tensor logits,
                          d.Forward(at::tensor({1, 2, 3}, at::kLong).view({1, 3})));
  EXPECT_EQ(logits.scalar_type(), at::kFloat);
}

// Runs where libtorch has CUDA (the GPU check script); skipped elsewhere.
TEST(CudaDecoderTest, Bf16MatchesFp32AndKvCacheMatchesFullForward) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  ScopedTempDir dir;
  ASSERT_TRUE(WriteTinyPhi3(dir.path(), testing::TinyPhi3Options(3)).ok());
  TF_ASSERT_OK_AND_ASSIGN(Decoder cpu, Decoder::Load(dir.path()));
  DecoderOptions o;
  o.device = at::Device(at::kCUDA);
  o.dtype = at::kFloat;
  TF_ASSERT_OK_AND_ASSIGN(Decoder gpu32, Decoder::Load(dir.path(), o));
  o.dtype = at::kBFloat16;
  TF_ASSERT_OK_AND_ASSIGN(Decoder gpu16, Decoder::Load(dir.path(), o));
  at::Tensor ids = at::tensor(kSeq, at::kLong).view({1, -1});
  TF_ASSERT_OK_AND_ASSIGN(at::Tensor want, cpu.Forward(ids));
  TF_ASSERT_OK_AND_ASSIGN(at::Tensor got32, gpu32.Forward(ids));
  TF_ASSERT_OK_AND_ASSIGN(at::Tensor got16, gpu16.Forward(ids));
  const double scale = want.abs().max().item<double>();
  EXPECT_LE(MaxAbsDiff(got32.cpu(), want), 1e-3 * scale + 1e-4);
  EXPECT_LE(MaxAbsDiff(got16.cpu(), want), 0.05 * scale + 0.02);
  TF_ASSERT_OK_AND_ASSIGN(KvCache cache, gpu16.NewCache(1, 16));
  TF_ASSERT_OK_AND_ASSIGN(at::Tensor last, gpu16.Extend(cache, ids.narrow(1, 0, 6)));
  for (int64_t t = 6; t < ids.size(1); ++t) {
    TF_ASSERT_OK_AND_ASSIGN(last, gpu16.Extend(cache, ids.narrow(1, t, 1)));
  }
  EXPECT_LE(MaxAbsDiff(last[0].cpu(), got16[0][ids.size(1) - 1].cpu()), 0.05 * scale + 0.02);
}

TEST(DecoderOptionsForTest, DeviceAndDtypeFromAnOperatorsWords) {
  auto cpu = DecoderOptionsFor("cpu", "auto");
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EXPECT_TRUE(cpu->device.is_cpu());
  EXPECT_EQ(cpu->dtype, at::kFloat);
  auto bf16 = DecoderOptionsFor("cpu", "bfloat16");
  ASSERT_TRUE(bf16.ok()) << bf16.status();
  EXPECT_EQ(bf16->dtype, at::kBFloat16);
  EXPECT_EQ(DecoderOptionsFor("cpu", "float16").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecoderOptionsFor("gpu", "auto").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecoderOptionsFor("cuda:-1", "auto").status().code(), absl::StatusCode::kInvalidArgument);
  auto cuda = DecoderOptionsFor("cuda", "auto");
  if (!at::hasCUDA()) {
    EXPECT_EQ(cuda.status().code(), absl::StatusCode::kFailedPrecondition);
    return;
  }
  ASSERT_TRUE(cuda.ok()) << cuda.status();
  EXPECT_TRUE(cuda->device.is_cuda());
  EXPECT_EQ(cuda->dtype, at::kBFloat16);
  EXPECT_EQ(DecoderOptionsFor("cuda:1000", "auto").status().code(),
            absl::StatusCode::kFailedPrecondition);
  auto half = DecoderOptionsFor("cuda:0", "float16");
  ASSERT_TRUE(half.ok()) << half.status();
  EXPECT_EQ(half->dtype, at::kHalf);
}

}  // namespace
}  // namespace tunefleet::model
