// DPO, early stopping and gradient checkpointing in the training worker:
// the DPO loss against a hand computation on a tiny model, a few in-process
// steps raising the reward margin, and real tunefleet-train-worker runs on a
// tiny Phi-3 with the Phi-3 tokenizer from preference shard files (LoRA and
// full, resumed exactly, with gradient checkpointing), plus early stopping.
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "common/model/decoder.h"
#include "common/model/lora.h"
#include "common/model/safetensors.h"
#include "common/model/tiny_model.h"
#include "common/text/chat_template.h"
#include "common/text/phi3_tokenizer_files.h"
#include "services/trainer/protocol/report.h"
#include "services/trainer/protocol/shard_file.h"
#include "services/trainer/protocol/worker_spec.h"
#include "services/trainer/worker/data.h"
#include "services/trainer/worker/dpo.h"
#include "services/trainer/worker/optimizer.h"
#include "tests/testing/child_guard.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tests/trainer_worker/worker_harness.h"

namespace tunefleet::trainer {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

struct Preference {
  std::string prompt, chosen, rejected;
};
const std::vector<Preference> kPairs = {
    {"What is the capital of France?", "Paris.", "I refuse to say."},
    {"Name a primary color.", "Blue is one.", "Colors are boring."},
    {"What do cows drink?", "Water, mostly.", "Motor oil."},
    {"Say hello.", "Hello there, friend!", "No."},
    {"How many legs does a spider have?", "Eight legs.", "Three, I think."},
    {"What is two plus two?", "Four.", "Twenty-two."},
};

const std::vector<std::pair<std::string, std::string>> kChats = {
    {"What is the capital of France?", "Paris."},
    {"Name a primary color.", "Blue is one."},
    {"What do cows drink?", "Water, mostly."},
    {"Say hello.", "Hello there, friend!"},
};

using worker_testing::ReadBytes;
using worker_testing::RunResult;

class DpoTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    setenv("OMP_NUM_THREADS", "2", 1);
    dir_ = new testing::TempDir();
    model_dir_ = dir_->Join("tiny-phi3");
    auto chat = worker_testing::WriteTinyPhi3(model_dir_, /*lm_head_scale=*/40);
    ASSERT_TRUE(chat.ok()) << chat.status();
    chat_ = chat->release();
    pairs_shard_ = dir_->Join("pairs.shard");
    WritePairs(pairs_shard_, 0, kPairs.size());
    valid_pairs_shard_ = dir_->Join("valid-pairs.shard");
    WritePairs(valid_pairs_shard_, 0, 3);
    chat_shard_ = dir_->Join("chat.shard");
    WriteChats(chat_shard_, kChats, {});
  }
  static void TearDownTestSuite() {
    delete chat_;
    delete dir_;
  }

  static void WritePairs(const std::string& path, size_t begin, size_t end) {
    auto w = ShardFileWriter::Create(path, chat_->tokenizer().vocab_size());
    ASSERT_TRUE(w.ok()) << w.status();
    ASSERT_TRUE((*w)->SetPairs(true).ok());
    for (size_t i = begin; i < end; ++i) {
      for (const std::string& answer : {kPairs[i].chosen, kPairs[i].rejected}) {
        std::vector<text::ChatMessage> m = {{"user", kPairs[i].prompt, {}},
                                            {"assistant", answer, {}}};
        auto t = chat_->Tokenize(m);
        ASSERT_TRUE(t.ok()) << t.status();
        ASSERT_TRUE((*w)->AddExample(t->ids, t->loss_mask).ok());
      }
    }
    ASSERT_TRUE((*w)->Finish().ok());
  }
  // Chat examples; `answers` replaces the answers when given.
  static void WriteChats(const std::string& path,
                         const std::vector<std::pair<std::string, std::string>>& chats,
                         const std::vector<std::string>& answers) {
    auto w = ShardFileWriter::Create(path, chat_->tokenizer().vocab_size());
    ASSERT_TRUE(w.ok()) << w.status();
    for (size_t i = 0; i < chats.size(); ++i) {
      std::vector<text::ChatMessage> m = {
          {"user", chats[i].first, {}},
          {"assistant", answers.empty() ? chats[i].second : answers[i], {}}};
      auto t = chat_->Tokenize(m);
      ASSERT_TRUE(t.ok()) << t.status();
      ASSERT_TRUE((*w)->AddExample(t->ids, t->loss_mask).ok());
    }
    ASSERT_TRUE((*w)->Finish().ok());
  }

  WorkerSpec DpoSpec(const std::string& name) {
    WorkerSpec s;
    s.job_id = "ftjob-" + name;
    s.base_model_dir = model_dir_;
    s.train_shards = {pairs_shard_};
    s.valid_shards = {valid_pairs_shard_};
    s.output_dir = run_dir_.Join(name + "/result");
    s.checkpoint_root = run_dir_.Join(name + "/checkpoints");
    s.objective = TrainingObjective::kDpo;
    s.dpo_beta = 0.5;
    s.hyper.epochs = 3;
    s.hyper.batch_size = 2;  // pairs
    s.hyper.learning_rate = 3e-3;
    s.hyper.lora_rank = 8;
    s.hyper.lora_alpha = 16;
    s.hyper.lora_dropout = 0.1;
    s.hyper.max_sequence_length = 64;
    s.hyper.seed = 7;
    s.progress_interval_s = 0;
    return s;
  }

  RunResult RunWorker(const WorkerSpec& spec, const std::string& name,
                      worker_testing::OnEvent on_event = nullptr) {
    return worker_testing::RunWorker(spec, run_dir_.path(), name, std::move(on_event));
  }
  static model::NamedTensors ReadTensors(const std::string& path) {
    auto f = model::SafetensorsFile::Open(path);
    EXPECT_TRUE(f.ok()) << f.status();
    auto all = (*f)->GetAll();
    EXPECT_TRUE(all.ok());
    for (auto& [name, t] : *all) t = t.clone();
    return *all;
  }

  static testing::TempDir* dir_;
  static std::string model_dir_, pairs_shard_, valid_pairs_shard_, chat_shard_;
  static text::ChatTokenizer* chat_;
  testing::TempDir run_dir_;
};

testing::TempDir* DpoTest::dir_ = nullptr;
std::string DpoTest::model_dir_, DpoTest::pairs_shard_, DpoTest::valid_pairs_shard_,
    DpoTest::chat_shard_;
text::ChatTokenizer* DpoTest::chat_ = nullptr;

TEST(DpoLossTest, MatchesAHandComputedValue) {
  // margin = 0.5 * ((-1 - -1.5) - (-2 - -1.5)) = 0.5; loss = log(1 + e^-0.5).
  at::Tensor pc = at::tensor({-1.0}), pr = at::tensor({-2.0});
  at::Tensor rc = at::tensor({-1.5}), rr = at::tensor({-1.5});
  DpoLoss l = DpoLossFromLogProbs(pc, pr, rc, rr, 0.5);
  EXPECT_NEAR(l.loss_sum.item<double>(), 0.47407698418010663, 1e-6);
  EXPECT_EQ(l.pairs, 1);
  EXPECT_EQ(l.correct, 1);
  EXPECT_NEAR(l.margin_sum, 0.5, 1e-6);
  EXPECT_NEAR(l.chosen_reward_sum, 0.25, 1e-6);
  EXPECT_NEAR(l.rejected_reward_sum, -0.25, 1e-6);
}

// On the tiny model: DpoBatch against log-probabilities summed by hand from
// the full logits of separate forwards, then a few AdamW steps raise the
// margin from 0 (a fresh adapter is the reference) to a clear preference.
TEST_F(DpoTest, BatchLossMatchesHandComputationAndStepsRaiseTheMargin) {
  auto decoder = model::Decoder::Load(model_dir_);
  ASSERT_TRUE(decoder.ok()) << decoder.status();
  auto data = Dataset::Load({pairs_shard_}, "train_shards", 64, decoder->config().vocab_size,
                            chat_->tokenizer().vocab_size());
  ASSERT_TRUE(data.ok()) << data.status();
  ASSERT_TRUE(data->pairs());
  model::LoraConfig lc;
  lc.rank = 4;
  lc.alpha = 8;
  auto lora = model::LoraAdapter::Create(decoder->config(), lc, 1);
  ASSERT_TRUE(lora.ok());
  {
    at::NoGradGuard no_grad;
    at::manual_seed(2);
    for (at::Tensor& p : lora->Parameters()) p.normal_(0, 0.02);
  }
  const double beta = 0.3;
  DpoModels models;
  models.policy = &*decoder;
  models.policy_adapter = &*lora;
  models.reference = &*decoder;
  models.beta = beta;

  // By hand: each example alone, log_softmax of the whole logits, summed
  // over the loss-masked tokens after the first.
  auto seq_logp = [&](int64_t e, const model::LoraAdapter* adapter) {
    at::NoGradGuard no_grad;
    const Example& x = data->at(e);
    at::Tensor ids = at::empty({1, x.length}, at::kLong);
    for (int64_t k = 0; k < x.length; ++k) ids[0][k] = x.ids[k];
    model::ForwardOptions fo;
    fo.adapter = adapter;
    auto logits = decoder->Forward(ids, fo);
    EXPECT_TRUE(logits.ok());
    at::Tensor lp = at::log_softmax(logits->to(at::kDouble), -1);
    double sum = 0;
    for (int64_t k = 1; k < x.length; ++k)
      if (x.mask[k]) sum += lp[0][k - 1][x.ids[k]].item<double>();
    return sum;
  };
  std::vector<int64_t> pairs = {0, 3, 5};
  double want = 0;
  for (int64_t p : pairs) {
    const double margin = beta * ((seq_logp(2 * p, &*lora) - seq_logp(2 * p, nullptr)) -
                                  (seq_logp(2 * p + 1, &*lora) - seq_logp(2 * p + 1, nullptr)));
    want += std::log1p(std::exp(-margin));
  }
  {
    at::NoGradGuard no_grad;
    auto got = DpoBatch(models, *data, pairs, 64, /*training=*/false);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->loss.pairs, 3);
    EXPECT_NEAR(got->loss.loss_sum.item<double>(), want, 1e-4);
  }

  // Training: the margin over all pairs grows and every pair is won.
  std::vector<at::Tensor> params = lora->Parameters();
  AdamW opt(params, AdamWOptions());
  std::vector<int64_t> all;
  for (int64_t p = 0; p < data->size() / 2; ++p) all.push_back(p);
  auto margin = [&]() {
    at::NoGradGuard no_grad;
    auto out = DpoBatch(models, *data, all, 64, false);
    EXPECT_TRUE(out.ok());
    return std::make_pair(out->loss.margin_sum / static_cast<double>(all.size()),
                          out->loss.correct);
  };
  const auto before = margin();
  for (int step = 0; step < 15; ++step) {
    for (at::Tensor& p : params) p.mutable_grad() = at::Tensor();
    auto out = DpoBatch(models, *data, all, 64, /*training=*/true);
    ASSERT_TRUE(out.ok()) << out.status();
    (out->loss.loss_sum / static_cast<double>(all.size())).backward();
    opt.Step(5e-3);
  }
  const auto after = margin();
  EXPECT_GT(after.first, before.first + 1.0) << "margin " << before.first << " -> " << after.first;
  EXPECT_EQ(after.second, static_cast<int64_t>(all.size()));
}

TEST_F(DpoTest, LoraRunRaisesTheMarginAndCheckpointingGivesTheSameRun) {
  RunResult r = RunWorker(DpoSpec("dpo"), "dpo");
  ASSERT_EQ(r.exit_code, 0) << r.stderr_tail;
  const ReportEvent* done = r.Last(ReportKind::kCompleted);
  ASSERT_NE(done, nullptr);
  EXPECT_TRUE(fs::exists(done->result_dir + "/adapter_model.safetensors"));
  EXPECT_FALSE(done->stopped_early);
  // The base is the reference: its DPO loss is log 2 and it wins no pair.
  ASSERT_TRUE(done->base_valid_loss.has_value());
  EXPECT_NEAR(*done->base_valid_loss, std::log(2.0), 1e-6);
  // The first step starts from the reference too (B = 0): log 2.
  const std::map<int64_t, double> losses = r.Losses();
  ASSERT_EQ(losses.size(), 9u);  // 3 pairs-steps per epoch, 3 epochs
  EXPECT_NEAR(losses.at(1), std::log(2.0), 1e-6);
  ASSERT_TRUE(done->valid_loss.has_value());
  EXPECT_LT(*done->valid_loss, std::log(2.0) - 0.05);
  // Progress and eval report the reward accuracy and margin.
  const ReportEvent* last_eval = r.Last(ReportKind::kEval);
  ASSERT_NE(last_eval, nullptr);
  ASSERT_TRUE(last_eval->metrics.count("reward_margin"));
  EXPECT_GT(last_eval->metrics.at("reward_margin"), 0.1);
  EXPECT_GT(*last_eval->valid_token_accuracy, 0.5);
  const ReportEvent* last_progress = r.Last(ReportKind::kProgress);
  ASSERT_TRUE(last_progress->metrics.count("reward_margin"));
  ASSERT_TRUE(last_progress->train_token_accuracy.has_value());

  // With gradient checkpointing: the same run, up to float rounding.
  WorkerSpec s = DpoSpec("dpo-ckpt");
  s.hyper.gradient_checkpointing = true;
  RunResult c = RunWorker(s, "dpo-ckpt");
  ASSERT_EQ(c.exit_code, 0) << c.stderr_tail;
  for (const auto& [step, loss] : c.Losses()) EXPECT_NEAR(loss, losses.at(step), 1e-5) << step;
  model::NamedTensors a = ReadTensors(done->result_dir + "/adapter_model.safetensors");
  model::NamedTensors b =
      ReadTensors(c.Last(ReportKind::kCompleted)->result_dir + "/adapter_model.safetensors");
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_TRUE(at::allclose(a[i].second, b[i].second, 1e-4, 1e-5)) << a[i].first;
  }
}

TEST_F(DpoTest, ResumeAfterSigtermIsExact) {
  WorkerSpec base = DpoSpec("ref");
  base.hyper.epochs = 2;
  base.hyper.checkpoint_interval_steps = 2;
  base.hyper.keep_checkpoints = 10;
  RunResult ref = RunWorker(base, "ref");
  ASSERT_EQ(ref.exit_code, 0) << ref.stderr_tail;
  const std::map<int64_t, double> want = ref.Losses();
  ASSERT_EQ(want.size(), 6u);

  WorkerSpec s = base;
  s.job_id = "ftjob-term";
  s.output_dir = run_dir_.Join("term/result");
  s.checkpoint_root = run_dir_.Join("term/checkpoints");
  RunResult term = RunWorker(s, "term", [](const ReportEvent& e) {
    return e.kind == ReportKind::kProgress && e.step == 3 ? SIGTERM : 0;
  });
  ASSERT_EQ(term.exit_code, 0) << term.stderr_tail;
  const ReportEvent* stopped = term.Last(ReportKind::kStopped);
  ASSERT_NE(stopped, nullptr);
  s.resume_from = stopped->checkpoint_dir;
  RunResult resumed = RunWorker(s, "resumed");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.stderr_tail;
  for (const auto& [step, loss] : resumed.Losses()) EXPECT_EQ(loss, want.at(step)) << "step " << step;
  EXPECT_EQ(ReadBytes(ref.Last(ReportKind::kCompleted)->result_dir + "/adapter_model.safetensors"),
            ReadBytes(resumed.Last(ReportKind::kCompleted)->result_dir +
                      "/adapter_model.safetensors"));
  EXPECT_EQ(resumed.Last(ReportKind::kCompleted)->valid_loss,
            ref.Last(ReportKind::kCompleted)->valid_loss);
}

// Two Gloo ranks, each with its half of the pairs (as StreamShard splits
// them), LoRA with gradient checkpointing, micro-batches of one
// pair accumulated: the same run as one rank with the whole set (LoRA +
// DDP + checkpointing is where "marked ready twice" shows up elsewhere).
TEST_F(DpoTest, TwoGlooRanksWithCheckpointingEqualOneRank) {
  WorkerSpec one = DpoSpec("one");
  one.hyper.epochs = 1;
  one.hyper.batch_size = 4;
  one.hyper.lora_dropout = 0;  // micro-batches of other shapes draw other masks
  one.valid_shards.clear();
  RunResult single = RunWorker(one, "one");
  ASSERT_EQ(single.exit_code, 0) << single.stderr_tail;
  const std::vector<std::string> parts = {run_dir_.Join("p0.shard"), run_dir_.Join("p1.shard")};
  WritePairs(parts[0], 0, 3);
  WritePairs(parts[1], 3, kPairs.size());
  one.hyper.micro_batch_size = 1;
  one.hyper.gradient_checkpointing = true;
  const std::vector<RunResult> ranks = worker_testing::RunTwoRanks(one, parts, {}, run_dir_.path());
  const RunResult& rank0 = ranks[0];
  const RunResult& rank1 = ranks[1];
  ASSERT_EQ(rank0.exit_code, 0) << rank0.stderr_tail;
  ASSERT_EQ(rank1.exit_code, 0) << rank1.stderr_tail;
  const auto want = single.Losses();
  ASSERT_EQ(want.size(), 2u);
  for (const RunResult* r : {&rank0, &rank1}) {
    const auto got = r->Losses();
    ASSERT_EQ(got.size(), want.size());
    for (const auto& [step, loss] : got) EXPECT_NEAR(loss, want.at(step), 1e-5) << "step " << step;
  }
  model::NamedTensors a =
      ReadTensors(single.Last(ReportKind::kCompleted)->result_dir + "/adapter_model.safetensors");
  model::NamedTensors b =
      ReadTensors(rank0.Last(ReportKind::kCompleted)->result_dir + "/adapter_model.safetensors");
  ASSERT_EQ(a.size(), b.size());
  double diff = 0;
  for (size_t i = 0; i < a.size(); ++i)
    diff = std::max(diff, (a[i].second - b[i].second).abs().max().item<double>());
  EXPECT_LT(diff, 1e-4);
}

TEST_F(DpoTest, FullFineTuningAgainstAFrozenCopyWithCheckpointing) {
  WorkerSpec s = DpoSpec("full");
  s.method = TrainingMethod::kFull;
  s.hyper.learning_rate = 1e-3;
  s.hyper.epochs = 1;
  s.hyper.gradient_checkpointing = true;
  RunResult r = RunWorker(s, "full");
  ASSERT_EQ(r.exit_code, 0) << r.stderr_tail;
  const ReportEvent* done = r.Last(ReportKind::kCompleted);
  ASSERT_NE(done, nullptr);
  EXPECT_TRUE(fs::exists(done->result_dir + "/config.json"));
  // Before any update the policy is its reference.
  EXPECT_NEAR(r.Losses().at(1), std::log(2.0), 1e-6);
  EXPECT_NEAR(*done->base_valid_loss, std::log(2.0), 1e-6);
  EXPECT_LT(*done->valid_loss, std::log(2.0));
}

TEST_F(DpoTest, ObjectiveAndShardsMustAgree) {
  WorkerSpec s = DpoSpec("mismatch");
  s.train_shards = {chat_shard_};
  s.valid_shards.clear();
  RunResult r = RunWorker(s, "mismatch");
  EXPECT_NE(r.exit_code, 0);
  const ReportEvent* err = r.Last(ReportKind::kError);
  ASSERT_NE(err, nullptr);
  EXPECT_EQ(err->code, "INVALID_ARGUMENT");
  EXPECT_THAT(err->message, HasSubstr("train_shards"));
  EXPECT_THAT(err->message, HasSubstr("preference"));

  WorkerSpec sft = DpoSpec("mismatch-sft");
  sft.objective = TrainingObjective::kSupervised;
  sft.valid_shards.clear();
  r = RunWorker(sft, "mismatch-sft");
  err = r.Last(ReportKind::kError);
  ASSERT_NE(err, nullptr);
  EXPECT_THAT(err->message, HasSubstr("objective dpo"));
}

// Early stopping on a validation set that contradicts the training set
// (same questions, other answers): the validation loss soon rises, the run
// stops after `patience` evaluations without a better one, and the result
// is the best evaluation's adapter.
WorkerSpec EarlySpec(WorkerSpec s, const std::string& chat_shard, const std::string& valid) {
  s.objective = TrainingObjective::kSupervised;
  s.train_shards = {chat_shard};
  s.valid_shards = {valid};
  s.hyper.epochs = 30;
  s.hyper.batch_size = 2;
  s.hyper.learning_rate = 1e-2;
  s.hyper.lora_dropout = 0;
  s.hyper.eval_interval_steps = 1;
  s.hyper.early_stopping_patience = 2;
  return s;
}

TEST_F(DpoTest, EarlyStoppingPublishesTheBestWeights) {
  const std::string contradicting = run_dir_.Join("contradicting.shard");
  WriteChats(contradicting, kChats, {"Lyon.", "Red, surely.", "Milk only.", "Goodbye."});
  WorkerSpec s = EarlySpec(DpoSpec("early"), chat_shard_, contradicting);
  RunResult r = RunWorker(s, "early");
  ASSERT_EQ(r.exit_code, 0) << r.stderr_tail;
  const ReportEvent* done = r.Last(ReportKind::kCompleted);
  ASSERT_NE(done, nullptr);
  EXPECT_TRUE(done->stopped_early);
  std::vector<const ReportEvent*> evals = r.All(ReportKind::kEval);
  ASSERT_GE(evals.size(), 3u);
  EXPECT_LT(evals.back()->step, 60);  // stopped well before 30 epochs
  const ReportEvent* best = evals.front();
  for (const ReportEvent* e : evals)
    if (*e->valid_loss < *best->valid_loss) best = e;
  // The last `patience` evaluations were no better than the best.
  EXPECT_EQ(evals.back()->step - best->step, 2 * 1);
  EXPECT_DOUBLE_EQ(*done->valid_loss, *best->valid_loss);
  EXPECT_EQ(done->metrics.at("best_step"), static_cast<double>(best->step));
  // The published adapter is the best one, not the last.
  EXPECT_EQ(ReadBytes(done->result_dir + "/adapter_model.safetensors"),
            ReadBytes(s.checkpoint_root + "/best/adapter/adapter_model.safetensors"));
  const std::string contract = ReadBytes(done->result_dir + "/tunefleet_contract.json");
  EXPECT_THAT(contract, HasSubstr("\"steps\""));
}

// Early stopping survives a crash: the counters are in the checkpoint and
// the best weights under checkpoint_root/best, so a run killed after a
// checkpoint and resumed stops at the same step with the same result.
TEST_F(DpoTest, EarlyStoppingResumesExactly) {
  const std::string contradicting = run_dir_.Join("contradicting.shard");
  WriteChats(contradicting, kChats, {"Lyon.", "Red, surely.", "Milk only.", "Goodbye."});
  WorkerSpec base = EarlySpec(DpoSpec("early-ref"), chat_shard_, contradicting);
  base.hyper.checkpoint_interval_steps = 1;
  base.hyper.keep_checkpoints = 50;
  RunResult ref = RunWorker(base, "early-ref");
  ASSERT_EQ(ref.exit_code, 0) << ref.stderr_tail;
  const ReportEvent* want = ref.Last(ReportKind::kCompleted);
  ASSERT_NE(want, nullptr);
  ASSERT_TRUE(want->stopped_early);
  const int64_t best_step = static_cast<int64_t>(want->metrics.at("best_step"));

  WorkerSpec s = base;
  s.job_id = "ftjob-early-killed";
  s.output_dir = run_dir_.Join("early-killed/result");
  s.checkpoint_root = run_dir_.Join("early-killed/checkpoints");
  // Killed after the best step's checkpoint (if the best is the first
  // evaluation, right after it).
  const int64_t kill_at = std::max<int64_t>(best_step, 1);
  std::string checkpoint;
  RunResult killed = RunWorker(s, "early-killed", [&](const ReportEvent& e) {
    if (e.kind == ReportKind::kCheckpoint && e.step == kill_at) {
      checkpoint = e.checkpoint_dir;
      return SIGKILL;
    }
    return 0;
  });
  ASSERT_EQ(killed.exit_code, 128 + SIGKILL);
  ASSERT_FALSE(checkpoint.empty());
  s.resume_from = checkpoint;
  RunResult resumed = RunWorker(s, "early-resumed");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.stderr_tail;
  const ReportEvent* got = resumed.Last(ReportKind::kCompleted);
  ASSERT_NE(got, nullptr);
  EXPECT_TRUE(got->stopped_early);
  EXPECT_EQ(got->step, want->step);
  EXPECT_EQ(got->valid_loss, want->valid_loss);
  EXPECT_EQ(got->metrics.at("best_step"), want->metrics.at("best_step"));
  EXPECT_EQ(ReadBytes(got->result_dir + "/adapter_model.safetensors"),
            ReadBytes(want->result_dir + "/adapter_model.safetensors"));
}

}  // namespace
}  // namespace tunefleet::trainer
