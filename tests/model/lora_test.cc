#include "common/model/lora.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/optim/adam.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "common/model/decoder.h"
#include "tests/model/model_test_util.h"
#include "tests/testing/status_matchers.h"

namespace tunefleet::model {
namespace {

using ::testing::HasSubstr;
using ::tunefleet::model::testing::MaxAbsDiff;
using ::tunefleet::model::testing::ScopedTempDir;
using ::tunefleet::testing::StatusIs;

constexpr double kTol = 1e-5;

class LoraTest : public ::testing::TestWithParam<const char*> {
 protected:
  static void SetUpTestSuite() {
    testing::UseFewThreads();
    dir_ = new ScopedTempDir();
    ASSERT_TRUE(WriteTinyPhi3(dir_->Join("phi3"), testing::TinyPhi3Options(9)).ok());
    testing::WriteTinyMistral(dir_->Join("mistral"), 11);
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  void SetUp() override {
    auto d = Decoder::Load(dir_->Join(GetParam()));
    ASSERT_TRUE(d.ok()) << d.status();
    decoder_ = std::make_unique<Decoder>(*std::move(d));
    ids_ = at::tensor({1, 5, 9, 200, 17, 33, 64, 2}, at::kLong).view({1, -1});
  }
  // An adapter whose B is random too, so that it changes the output.
  LoraAdapter Trained(uint64_t seed, int64_t rank = 4) {
    LoraConfig lc;
    lc.rank = rank;
    lc.alpha = 8;
    auto a = LoraAdapter::Create(decoder_->config(), lc, seed);
    EXPECT_TRUE(a.ok()) << a.status();
    at::NoGradGuard no_grad;
    at::manual_seed(static_cast<int64_t>(seed));
    for (at::Tensor& p : a->Parameters()) p.copy_(at::randn(p.sizes()) * 0.05);
    return *std::move(a);
  }
  at::Tensor Logits(const LoraAdapter* adapter) {
    ForwardOptions o;
    o.adapter = adapter;
    auto r = decoder_->Forward(ids_, o);
    EXPECT_TRUE(r.ok()) << r.status();
    return *r;
  }

  static ScopedTempDir* dir_;
  std::unique_ptr<Decoder> decoder_;
  at::Tensor ids_;
};
ScopedTempDir* LoraTest::dir_ = nullptr;

TEST_P(LoraTest, FreshAdapterEqualsBase) {
  TF_ASSERT_OK_AND_ASSIGN(LoraAdapter a, LoraAdapter::Create(decoder_->config(), LoraConfig{}, 1));
  const size_t n_proj = ModelProjections(decoder_->config()).size();
  EXPECT_EQ(a.Parameters().size(), 2 * n_proj * decoder_->config().num_hidden_layers);
  for (const at::Tensor& p : a.Parameters()) EXPECT_TRUE(p.requires_grad());
  EXPECT_LE(MaxAbsDiff(Logits(&a), Logits(nullptr)), 1e-7);
  EXPECT_EQ(a.config().target_modules.size(), n_proj);
}

TEST_P(LoraTest, MergeEqualsUnmergedAndUnmergeRestores) {
  LoraAdapter a = Trained(2);
  at::Tensor base = Logits(nullptr);
  at::Tensor with = Logits(&a);
  EXPECT_GT(MaxAbsDiff(base, with), 1e-3);
  Decoder copy = *decoder_;
  TF_ASSERT_OK(decoder_->MergeAdapter(a));
  EXPECT_LE(MaxAbsDiff(Logits(nullptr), with), kTol);
  // A copy made before the merge keeps the base weights.
  TF_ASSERT_OK_AND_ASSIGN(at::Tensor from_copy, copy.Forward(ids_));
  EXPECT_TRUE(at::equal(from_copy, base));
  TF_ASSERT_OK(decoder_->UnmergeAdapter(a));
  EXPECT_LE(MaxAbsDiff(Logits(nullptr), base), kTol);
}

TEST_P(LoraTest, PeftSaveLoadGivesIdenticalLogits) {
  LoraAdapter a = Trained(3);
  ScopedTempDir out;
  TF_ASSERT_OK(a.Save(out.path(), "tunefleet/tiny"));
  nlohmann::json cfg = nlohmann::json::parse(std::ifstream(out.Join("adapter_config.json")));
  EXPECT_EQ(cfg["peft_type"], "LORA");
  EXPECT_EQ(cfg["r"], 4);
  EXPECT_EQ(cfg["lora_alpha"], 8.0);
  EXPECT_EQ(cfg["base_model_name_or_path"], "tunefleet/tiny");
  TF_ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::Open(out.Join("adapter_model.safetensors")));
  const std::string first_proj(ProjName(ModelProjections(decoder_->config())[0]));
  EXPECT_GE(file->header().Find("base_model.model.model.layers.0.self_attn." + first_proj +
                                ".lora_A.weight"),
            0);
  EXPECT_GE(file->header().Find("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"), 0);

  TF_ASSERT_OK_AND_ASSIGN(LoraAdapter b, LoraAdapter::Load(out.path(), decoder_->config()));
  EXPECT_EQ(b.config().target_modules, a.config().target_modules);
  EXPECT_DOUBLE_EQ(b.scaling(), a.scaling());
  EXPECT_TRUE(at::equal(Logits(&a), Logits(&b)));
}

TEST_P(LoraTest, MergedModelDirectoryReloadsWithTheSameLogits) {
  LoraAdapter a = Trained(4);
  ScopedTempDir out;
  SaveOptions so;
  so.copy_files_from = dir_->Join(GetParam());
  so.max_shard_bytes = 4 << 20;  // sharded, as big checkpoints are
  TF_ASSERT_OK(SaveHfModel(*decoder_, out.path(), &a, so));
  TF_ASSERT_OK_AND_ASSIGN(Decoder merged, Decoder::Load(out.path()));
  TF_ASSERT_OK_AND_ASSIGN(at::Tensor got, merged.Forward(ids_));
  EXPECT_LE(MaxAbsDiff(got, Logits(&a)), kTol);
  if (std::string(GetParam()) == "phi3") {
    EXPECT_TRUE(std::filesystem::exists(out.Join("generation_config.json")));
    EXPECT_TRUE(std::filesystem::exists(out.Join("model.safetensors.index.json")));
  }
}

TEST_P(LoraTest, GradientsReachOnlyLoraParameters) {
  LoraConfig lc;
  lc.dropout = 0.1;
  TF_ASSERT_OK_AND_ASSIGN(LoraAdapter a, LoraAdapter::Create(decoder_->config(), lc, 5));
  ForwardOptions o;
  o.adapter = &a;
  o.training = true;
  TF_ASSERT_OK_AND_ASSIGN(at::Tensor logits, decoder_->Forward(ids_, o));
  TF_ASSERT_OK_AND_ASSIGN(at::Tensor loss, CausalLmLoss(logits, ids_));
  loss.backward();
  for (const at::Tensor& p : a.Parameters()) ASSERT_TRUE(p.grad().defined());
  // With B = 0 only B gets a gradient signal.
  double b_grad = 0;
  for (size_t i = 1; i < a.Parameters().size(); i += 2)
    b_grad += a.Parameters()[i].grad().abs().sum().item<double>();
  EXPECT_GT(b_grad, 0);
  for (const at::Tensor& w : decoder_->Parameters()) {
    EXPECT_FALSE(w.requires_grad());
    EXPECT_FALSE(w.grad().defined());
  }
}

TEST_P(LoraTest, SparseLossEqualsFullLossWithTheSameGradients) {
  LoraAdapter a = Trained(9);
  ForwardOptions o;
  o.adapter = &a;
  at::Tensor labels = ids_.clone();
  labels.narrow(1, 0, 4).fill_(-100);  // a "prompt" that does not count
  TF_ASSERT_OK_AND_ASSIGN(at::Tensor logits, decoder_->Forward(ids_, o));
  TF_ASSERT_OK_AND_ASSIGN(at::Tensor full, CausalLmLoss(logits, labels));
  full.backward();
  std::vector<at::Tensor> want;
  for (at::Tensor& p : a.Parameters()) {
    want.push_back(p.grad().clone());
    p.mutable_grad().zero_();
  }
  TF_ASSERT_OK_AND_ASSIGN(Decoder::LossOutput sparse, decoder_->Loss(ids_, labels, o));
  EXPECT_NEAR(sparse.loss.item<double>(), full.item<double>(), 1e-6);
  EXPECT_EQ(sparse.tokens, ids_.size(1) - 4);
  sparse.loss.backward();
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_LE(MaxAbsDiff(a.Parameters()[i].grad(), want[i]), 1e-6);
  // Accuracy counts the argmax hits among the counted labels.
  at::Tensor pred = logits.narrow(1, 0, ids_.size(1) - 1).argmax(-1)[0];
  int64_t correct = 0;
  for (int64_t t = 3; t < ids_.size(1) - 1; ++t)
    correct += pred[t].item<int64_t>() == ids_[0][t + 1].item<int64_t>();
  EXPECT_EQ(sparse.correct, correct);
  // No counted label: a zero loss that still backpropagates.
  TF_ASSERT_OK_AND_ASSIGN(Decoder::LossOutput none,
                          decoder_->Loss(ids_, at::full_like(ids_, -100), o));
  EXPECT_EQ(none.tokens, 0);
  none.loss.backward();
}

TEST_P(LoraTest, LoraTrainingLowersTheLoss) {
  LoraConfig lc;
  lc.rank = 8;
  lc.alpha = 16;
  TF_ASSERT_OK_AND_ASSIGN(LoraAdapter a, LoraAdapter::Create(decoder_->config(), lc, 6));
  torch::optim::Adam opt(a.Parameters(), torch::optim::AdamOptions(1e-2));
  ForwardOptions o;
  o.adapter = &a;
  o.training = true;
  double first = 0, last = 0;
  for (int step = 0; step < 15; ++step) {
    opt.zero_grad();
    TF_ASSERT_OK_AND_ASSIGN(at::Tensor logits, decoder_->Forward(ids_, o));
    TF_ASSERT_OK_AND_ASSIGN(at::Tensor loss, CausalLmLoss(logits, ids_));
    loss.backward();
    opt.step();
    (step == 0 ? first : last) = loss.item<double>();
  }
  EXPECT_LT(last, first * 0.9);
}

TEST_P(LoraTest, PerRowAdaptersShareABatch) {
  LoraAdapter a = Trained(7), b = Trained(8);
  at::Tensor ids = ids_.expand({3, ids_.size(1)}).contiguous();
  ForwardOptions o;
  o.adapter = std::vector<const LoraAdapter*>{&a, nullptr, &b};
  TF_ASSERT_OK_AND_ASSIGN(at::Tensor got, decoder_->Forward(ids, o));
  EXPECT_LE(MaxAbsDiff(got[0], Logits(&a)[0]), kTol);
  EXPECT_LE(MaxAbsDiff(got[1], Logits(nullptr)[0]), kTol);
  EXPECT_LE(MaxAbsDiff(got[2], Logits(&b)[0]), kTol);
  // The same through the KV cache.
  TF_ASSERT_OK_AND_ASSIGN(KvCache cache, decoder_->NewCache(3, 16));
  TF_ASSERT_OK_AND_ASSIGN(at::Tensor all,
                          decoder_->Extend(cache, ids, {}, o.adapter, /*all_logits=*/true));
  EXPECT_LE(MaxAbsDiff(all, got), kTol);
  o.adapter = std::vector<const LoraAdapter*>{&a};
  EXPECT_THAT(decoder_->Forward(ids, o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("per-row")));
}

// From three distinct adapters on, inference runs every adapter row through
// one batched matmul pair per projection; rows must still equal each adapter
// alone, beside a base row, with an adapter on two rows, through Forward and
// the KV cache. An adapter of another rank among them falls back to the
// per-adapter path and is still right.
TEST_P(LoraTest, ManyAdaptersInOneBatchAreGatheredAndEqualEachAlone) {
  LoraAdapter a = Trained(21), b = Trained(22), c = Trained(23);
  LoraAdapter other_rank = Trained(24, /*rank=*/2);
  at::Tensor ids = ids_.expand({5, ids_.size(1)}).contiguous();
  for (const LoraAdapter* last : std::vector<const LoraAdapter*>{&a, &other_rank}) {
    const std::vector<const LoraAdapter*> rows = {&a, nullptr, &b, &c, last};
    ForwardOptions o;
    o.adapter = rows;
    TF_ASSERT_OK_AND_ASSIGN(at::Tensor got, decoder_->Forward(ids, o));
    for (size_t r = 0; r < rows.size(); ++r) {
      EXPECT_LE(MaxAbsDiff(got[r], Logits(rows[r])[0]), kTol) << "row " << r;
    }
    TF_ASSERT_OK_AND_ASSIGN(KvCache cache, decoder_->NewCache(5, 16));
    TF_ASSERT_OK_AND_ASSIGN(at::Tensor all,
                            decoder_->Extend(cache, ids, {}, o.adapter, /*all_logits=*/true));
    EXPECT_LE(MaxAbsDiff(all, got), kTol);
  }
}

// A ragged step (ExtendRows) with an adapter per row: rows feeding one
// token each (three distinct adapters: gathered), rows feeding several (an
// adapter applied to their slice), a base row, a row sitting out, and an
// adapter of another rank among the one-token rows (the per-adapter path):
// each row's logits are its sequence's through its adapter alone.
TEST_P(LoraTest, RaggedStepsApplyEachRowsAdapter) {
  LoraAdapter a = Trained(31), b = Trained(32), c = Trained(33);
  LoraAdapter other_rank = Trained(34, /*rank=*/2);
  auto alone = [&](const std::vector<int64_t>& seq, const LoraAdapter* adapter) {
    ForwardOptions o;
    o.adapter = adapter;
    auto r = decoder_->Forward(at::tensor(seq, at::kLong).view({1, -1}), o);
    EXPECT_TRUE(r.ok()) << r.status();
    return (*r)[0][static_cast<int64_t>(seq.size()) - 1];
  };
  for (const LoraAdapter* fourth : std::vector<const LoraAdapter*>{&c, &other_rank}) {
    const std::vector<const LoraAdapter*> rows = {&a, &b, fourth, nullptr, &a, &c};
    // Prefixes of 3 tokens in rows 0-4 (row 5 starts in the ragged step).
    std::vector<std::vector<int64_t>> seqs = {{1, 2, 3}, {4, 5, 6}, {7, 8, 9}, {10, 11, 12}, {13, 14, 15}, {}};
    TF_ASSERT_OK_AND_ASSIGN(KvCache cache, decoder_->NewCache(6, 16));
    TF_ASSERT_OK(decoder_->ExtendRows(cache, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
                                      {3, 3, 3, 3, 3, 0}, rows)
                     .status());
    // One token for rows 0-2, row 3 sits out, five for row 4, four for row 5.
    const std::vector<std::vector<int64_t>> next = {{20}, {21}, {22}, {}, {23, 24, 25, 26, 27}, {30, 31, 32, 33}};
    std::vector<int64_t> ids, chunks;
    for (size_t r = 0; r < next.size(); ++r) {
      ids.insert(ids.end(), next[r].begin(), next[r].end());
      chunks.push_back(static_cast<int64_t>(next[r].size()));
      seqs[r].insert(seqs[r].end(), next[r].begin(), next[r].end());
    }
    TF_ASSERT_OK_AND_ASSIGN(at::Tensor logits, decoder_->ExtendRows(cache, ids, chunks, rows));
    for (size_t r = 0; r < rows.size(); ++r) {
      if (next[r].empty()) continue;
      EXPECT_LE(MaxAbsDiff(logits[static_cast<int64_t>(r)], alone(seqs[r], rows[r])), kTol)
          << "row " << r << (fourth == &c ? "" : " (another rank among them)");
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Families, LoraTest, ::testing::Values("phi3", "mistral"));

TEST(LoraErrorsTest, BadTargetsAndFiles) {
  testing::UseFewThreads();
  ScopedTempDir dir;
  ASSERT_TRUE(WriteTinyPhi3(dir.path(), testing::TinyPhi3Options()).ok());
  TF_ASSERT_OK_AND_ASSIGN(ModelConfig c, LoadModelConfig(dir.path()));
  LoraConfig lc;
  lc.target_modules = {"q_proj"};  // Phi-3 fuses q/k/v
  EXPECT_THAT(LoraAdapter::Create(c, lc, 0),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("'q_proj' is not a projection of phi3")));
  lc.target_modules = {"qkv_proj", "o_proj"};
  TF_ASSERT_OK_AND_ASSIGN(LoraAdapter a, LoraAdapter::Create(c, lc, 0));
  EXPECT_EQ(a.Parameters().size(), 2u * 2u * 2u);
  EXPECT_FALSE(a.module(0, Proj::kGateUp).defined());

  ScopedTempDir out;
  TF_ASSERT_OK(a.Save(out.path(), "base"));
  // A different rank in the config than in the tensors.
  nlohmann::json cfg = nlohmann::json::parse(std::ifstream(out.Join("adapter_config.json")));
  cfg["r"] = 16;
  std::ofstream(out.Join("adapter_config.json")) << cfg.dump();
  EXPECT_THAT(LoraAdapter::Load(out.path(), c),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("lora_A.weight': has shape [8, 64], expected [16, 64]")));
  cfg["r"] = 8;
  cfg["use_dora"] = true;
  std::ofstream(out.Join("adapter_config.json")) << cfg.dump();
  EXPECT_THAT(LoraAdapter::Load(out.path(), c),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("use_dora")));
  cfg["use_dora"] = false;
  std::ofstream(out.Join("adapter_config.json")) << cfg.dump();
  // A tensor naming a module Phi-3 does not have; and a lone lora_A.
  TF_ASSERT_OK(WriteSafetensors(
      out.Join("adapter_model.safetensors"),
      {{"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", at::zeros({8, 64})},
       {"base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", at::zeros({64, 8})}}));
  EXPECT_THAT(LoraAdapter::Load(out.path(), c),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("names no projection of a phi3 model")));
  TF_ASSERT_OK(
      WriteSafetensors(out.Join("adapter_model.safetensors"),
                       {{"base_model.model.model.layers.0.self_attn.o_proj.lora_A.default.weight",
                         at::zeros({8, 64})}}));
  EXPECT_THAT(
      LoraAdapter::Load(out.path(), c),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("only one of lora_A and lora_B")));
}

// Full fine-tuning of the tiny model memorizes a sample: the loss falls by
// 90% or more within a few dozen Adam steps.
TEST(TrainingTest, AdamMemorizesASample) {
  testing::UseFewThreads();
  ScopedTempDir dir;
  ASSERT_TRUE(WriteTinyPhi3(dir.path(), testing::TinyPhi3Options(12)).ok());
  TF_ASSERT_OK_AND_ASSIGN(Decoder d, Decoder::Load(dir.path()));
  std::vector<at::Tensor> params = d.Parameters();
  for (at::Tensor& p : params) p.set_requires_grad(true);
  torch::optim::Adam opt(params, torch::optim::AdamOptions(1e-2));
  at::Tensor ids = at::tensor({1, 32010, 450, 4996, 17354, 1701, 29916, 432, 17204, 975, 278, 17366,
                               11203, 29889, 32007, 32000},
                              at::kLong)
                       .view({1, -1});
  // Loss on everything after the first 2 tokens (the "prompt").
  at::Tensor labels = ids.clone();
  labels.narrow(1, 0, 2).fill_(-100);
  double first = 0, last = 0;
  for (int step = 0; step < 40; ++step) {
    opt.zero_grad();
    TF_ASSERT_OK_AND_ASSIGN(at::Tensor logits, d.Forward(ids, ForwardOptions{}));
    TF_ASSERT_OK_AND_ASSIGN(at::Tensor loss, CausalLmLoss(logits, labels));
    loss.backward();
    opt.step();
    (step == 0 ? first : last) = loss.item<double>();
  }
  EXPECT_GT(first, 9.0);  // about ln(32064)
  EXPECT_LE(last, 0.1 * first) << "first " << first << " last " << last;
}

}  // namespace
}  // namespace tunefleet::model
