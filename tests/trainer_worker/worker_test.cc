// The training worker as the agent runs it: a real tunefleet-train-worker
// process on a tiny Phi-3 with the Phi-3 tokenizer, reporting on a pipe.
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ATen/ATen.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <atomic>
#include <chrono>
#include <sstream>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "common/model/decoder.h"
#include "common/model/generate.h"
#include "common/model/lora.h"
#include "common/model/safetensors.h"
#include "common/model/tiny_model.h"
#include "common/text/chat_template.h"
#include "common/text/phi3_tokenizer_files.h"
#include "services/trainer/protocol/report.h"
#include "services/trainer/protocol/shard_file.h"
#include "services/trainer/protocol/worker_spec.h"
#include "tests/testing/child_guard.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tests/trainer_worker/worker_harness.h"

namespace tunefleet::trainer {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

const std::vector<std::pair<std::string, std::string>> kChats = {
    {"What is the capital of France?", "Paris."},
    {"Name a primary color.", "Blue is one."},
    {"What do cows drink?", "Water, mostly."},
    {"Say hello.", "Hello there, friend!"},
    {"How many legs does a spider have?", "Eight legs."},
    {"What is two plus two?", "Four."},
};

using worker_testing::ReadBytes;
using worker_testing::FreePort;
using worker_testing::RunResult;

class WorkerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    setenv("OMP_NUM_THREADS", "2", 1);
    dir_ = new testing::TempDir();
    model_dir_ = dir_->Join("tiny-phi3");
    auto chat = worker_testing::WriteTinyPhi3(model_dir_, /*lm_head_scale=*/40);
    ASSERT_TRUE(chat.ok()) << chat.status();
    chat_ = chat->release();
    train_shard_ = dir_->Join("train.shard");
    WriteShard(train_shard_, chat_->tokenizer().vocab_size());
  }
  static void TearDownTestSuite() {
    delete chat_;
    delete dir_;
  }

  static void WriteShard(const std::string& path, int64_t vocab, size_t begin = 0,
                         size_t end = kChats.size()) {
    auto w = ShardFileWriter::Create(path, vocab);
    ASSERT_TRUE(w.ok()) << w.status();
    for (size_t i = begin; i < end; ++i) {
      const auto& [q, a] = kChats[i];
      std::vector<text::ChatMessage> m = {{"user", q, {}}, {"assistant", a, {}}};
      auto t = chat_->Tokenize(m);
      ASSERT_TRUE(t.ok()) << t.status();
      ASSERT_TRUE((*w)->AddExample(t->ids, t->loss_mask).ok());
    }
    ASSERT_TRUE((*w)->Finish().ok());
  }

  WorkerSpec BaseSpec(const std::string& name) {
    WorkerSpec s;
    s.job_id = "ftjob-" + name;
    s.base_model_dir = model_dir_;
    s.train_shards = {train_shard_};
    s.output_dir = run_dir_.Join(name + "/result");
    s.checkpoint_root = run_dir_.Join(name + "/checkpoints");
    s.hyper.epochs = 4;
    s.hyper.batch_size = 2;
    s.hyper.learning_rate = 3e-3;
    s.hyper.lora_rank = 8;
    s.hyper.lora_alpha = 16;
    s.hyper.lora_dropout = 0.1;
    s.hyper.warmup_ratio = 0.1;
    s.hyper.weight_decay = 0.01;
    s.hyper.max_sequence_length = 64;
    s.hyper.seed = 7;
    s.progress_interval_s = 0;  // every step
    return s;
  }

  // Runs the worker to its end; `on_event` may return a signal to send it.
  // `child_pid` (optional) receives the worker's pid while it runs.
  RunResult RunWorker(const WorkerSpec& spec, const std::string& name,
                      worker_testing::OnEvent on_event = nullptr,
                      std::atomic<pid_t>* child_pid = nullptr) {
    return worker_testing::RunWorker(spec, run_dir_.path(), name, std::move(on_event), child_pid);
  }
  RunResult RunWorkerWithSpecFile(const std::string& spec_path, const std::string& name,
                                  worker_testing::OnEvent on_event = nullptr) {
    return worker_testing::RunWorkerWithSpecFile(spec_path, run_dir_.path(), name,
                                                 std::move(on_event));
  }

  static testing::TempDir* dir_;
  static std::string model_dir_;
  static std::string train_shard_;
  static text::ChatTokenizer* chat_;
  testing::TempDir run_dir_;
};

testing::TempDir* WorkerTest::dir_ = nullptr;
std::string WorkerTest::model_dir_;
std::string WorkerTest::train_shard_;
text::ChatTokenizer* WorkerTest::chat_ = nullptr;

TEST_F(WorkerTest, FineTunedPhi3AnswersAndStopsAtEnd) {
  WorkerSpec s = BaseSpec("memorize");
  s.valid_shards = {train_shard_};
  s.hyper.epochs = 40;
  s.hyper.batch_size = 6;
  s.hyper.lora_dropout = 0;
  s.hyper.weight_decay = 0;
  s.hyper.learning_rate = 1e-2;
  s.hyper.lora_rank = 16;
  s.hyper.lora_alpha = 32;
  s.hyper.eval_interval_steps = 10;
  s.progress_interval_s = 0;
  RunResult r = RunWorker(s, "memorize");
  ASSERT_EQ(r.exit_code, 0) << r.stderr_tail;
  const ReportEvent* started = r.Last(ReportKind::kStarted);
  ASSERT_NE(started, nullptr);
  EXPECT_EQ(started->total_steps, 40);
  const ReportEvent* done = r.Last(ReportKind::kCompleted);
  ASSERT_NE(done, nullptr) << r.stderr_tail;
  ASSERT_TRUE(done->valid_loss && done->base_valid_loss);
  EXPECT_LT(*done->valid_loss, *done->base_valid_loss * 0.2);
  EXPECT_GT(done->trained_tokens, 0);
  EXPECT_NE(r.Last(ReportKind::kEval), nullptr);
  EXPECT_NE(r.Last(ReportKind::kCheckpoint), nullptr);
  EXPECT_GT(done->metrics.at("estimated_memory_bytes"), 0);
  EXPECT_GT(done->metrics.at("peak_rss_bytes"), 0);
  // The process before the model (libtorch and the rest): part of the peak.
  EXPECT_GT(done->metrics.at("runtime_bytes"), 0);
  EXPECT_LT(done->metrics.at("runtime_bytes"), done->metrics.at("peak_rss_bytes"));
  EXPECT_GE(done->metrics.at("padding_fraction"), 0);

  // The result is a PEFT directory plus the contract.
  const std::string out = done->result_dir;
  EXPECT_TRUE(fs::exists(out + "/adapter_config.json"));
  EXPECT_TRUE(fs::exists(out + "/adapter_model.safetensors"));
  nlohmann::json contract = nlohmann::json::parse(ReadBytes(out + "/tunefleet_contract.json"));
  EXPECT_EQ(contract["chat_template"], "phi3");
  EXPECT_EQ(contract["base_model_id"], "tiny-phi3");
  const int32_t end_id = *chat_->tokenizer().TokenToId("<|end|>");
  EXPECT_THAT(contract["stop_token_ids"].get<std::vector<int64_t>>(), ::testing::Contains(end_id));
  EXPECT_EQ(contract["tokenizer_sha256"].get<std::string>().size(), 64u);

  // Greedy generation with the adapter reproduces every answer and stops at <|end|>.
  auto decoder = model::Decoder::Load(model_dir_);
  ASSERT_TRUE(decoder.ok());
  auto adapter = model::LoraAdapter::Load(out, decoder->config());
  ASSERT_TRUE(adapter.ok()) << adapter.status();
  std::vector<std::vector<int64_t>> prompts;
  for (const auto& [q, a] : kChats) {
    std::vector<text::ChatMessage> m = {{"user", q, {}}};
    auto p = chat_->EncodePrompt(m);
    ASSERT_TRUE(p.ok());
    prompts.emplace_back(p->begin(), p->end());
  }
  model::GenerationOptions g;
  g.max_new_tokens = 24;
  g.adapter = &*adapter;
  for (int32_t id : chat_->StopIds()) g.stop_token_ids.push_back(id);
  auto gens = model::Generate(*decoder, prompts, g);
  ASSERT_TRUE(gens.ok()) << gens.status();
  for (size_t i = 0; i < kChats.size(); ++i) {
    std::vector<int32_t> ids((*gens)[i].tokens.begin(), (*gens)[i].tokens.end());
    EXPECT_EQ(chat_->tokenizer().Decode(ids), kChats[i].second) << "chat " << i;
    EXPECT_EQ((*gens)[i].finish_reason, model::FinishReason::kStopToken) << "chat " << i;
    EXPECT_EQ((*gens)[i].stop_token_id, end_id) << "chat " << i;
  }
}

// The uninterrupted run the resume tests compare with (dropout on, so the
// RNG must resume too).
WorkerSpec ResumeSpec(WorkerSpec s) {
  s.hyper.epochs = 4;  // 3 steps per epoch: 12 steps
  s.hyper.checkpoint_interval_steps = 2;
  s.hyper.keep_checkpoints = 20;
  return s;
}

void ExpectSameAdapter(const std::string& a, const std::string& b) {
  std::ifstream fa(a + "/adapter_model.safetensors", std::ios::binary);
  std::ifstream fb(b + "/adapter_model.safetensors", std::ios::binary);
  std::string x(std::istreambuf_iterator<char>(fa), {}), y(std::istreambuf_iterator<char>(fb), {});
  EXPECT_FALSE(x.empty());
  EXPECT_TRUE(x == y) << "final adapters differ";
}

TEST_F(WorkerTest, ResumeAfterSigkillIsExact) {
  RunResult ref = RunWorker(ResumeSpec(BaseSpec("ref")), "ref");
  ASSERT_EQ(ref.exit_code, 0) << ref.stderr_tail;
  const std::map<int64_t, double> want = ref.Losses();
  ASSERT_EQ(want.size(), 12u);

  WorkerSpec s = ResumeSpec(BaseSpec("killed"));
  std::string checkpoint;
  int64_t checkpoint_step = 0;
  RunResult killed = RunWorker(s, "killed", [&](const ReportEvent& e) {
    if (e.kind == ReportKind::kCheckpoint && e.step >= 4) {
      checkpoint = e.checkpoint_dir;
      checkpoint_step = e.step;
      return SIGKILL;
    }
    return 0;
  });
  ASSERT_EQ(killed.exit_code, 128 + SIGKILL);
  ASSERT_FALSE(checkpoint.empty());
  for (const auto& [step, loss] : killed.Losses()) EXPECT_EQ(loss, want.at(step)) << "step " << step;

  s.resume_from = checkpoint;
  RunResult resumed = RunWorker(s, "resumed");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.stderr_tail;
  ASSERT_NE(resumed.Last(ReportKind::kStarted), nullptr);
  EXPECT_EQ(resumed.Last(ReportKind::kStarted)->resumed_step, checkpoint_step);
  const std::map<int64_t, double> got = resumed.Losses();
  EXPECT_EQ(got.size(), static_cast<size_t>(12 - checkpoint_step));
  for (const auto& [step, loss] : got) EXPECT_EQ(loss, want.at(step)) << "step " << step;
  ASSERT_NE(resumed.Last(ReportKind::kCompleted), nullptr);
  EXPECT_EQ(resumed.Last(ReportKind::kCompleted)->trained_tokens,
            ref.Last(ReportKind::kCompleted)->trained_tokens);
  ExpectSameAdapter(ref.Last(ReportKind::kCompleted)->result_dir,
                    resumed.Last(ReportKind::kCompleted)->result_dir);
}

TEST_F(WorkerTest, SigtermCheckpointsAndResumesExactly) {
  RunResult ref = RunWorker(ResumeSpec(BaseSpec("ref")), "ref");
  ASSERT_EQ(ref.exit_code, 0) << ref.stderr_tail;
  const std::map<int64_t, double> want = ref.Losses();

  WorkerSpec s = ResumeSpec(BaseSpec("term"));
  s.hyper.checkpoint_interval_steps = 0;  // only epoch ends: the stop writes its own
  RunResult stopped = RunWorker(s, "term", [&](const ReportEvent& e) {
    return e.kind == ReportKind::kProgress && e.step == 5 ? SIGTERM : 0;
  });
  ASSERT_EQ(stopped.exit_code, 0) << stopped.stderr_tail;
  const ReportEvent* stop = stopped.Last(ReportKind::kStopped);
  ASSERT_NE(stop, nullptr) << stopped.stderr_tail;
  EXPECT_GE(stop->step, 5);
  EXPECT_LT(stop->step, 12);
  EXPECT_TRUE(fs::exists(stop->checkpoint_dir + "/manifest.json"));
  EXPECT_EQ(stopped.Last(ReportKind::kCompleted), nullptr);

  s.resume_from = stop->checkpoint_dir;
  RunResult resumed = RunWorker(s, "term-resumed");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.stderr_tail;
  std::map<int64_t, double> got = stopped.Losses();
  for (const auto& [step, loss] : resumed.Losses()) got[step] = loss;
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [step, loss] : got) EXPECT_EQ(loss, want.at(step)) << "step " << step;
  ExpectSameAdapter(ref.Last(ReportKind::kCompleted)->result_dir,
                    resumed.Last(ReportKind::kCompleted)->result_dir);
}

// Micro-batches of 1 accumulated to 4 == one batch of 4 (packed, and padded)
// with uneven lengths: the loss is normalised by the step's trained tokens.
TEST_F(WorkerTest, GradientAccumulationEqualsTheWholeBatch) {
  auto spec = [&](const std::string& name, int64_t micro, bool packing) {
    WorkerSpec s = BaseSpec(name);
    s.hyper.batch_size = 4;
    s.hyper.micro_batch_size = micro;
    s.hyper.packing = packing;
    s.hyper.lora_dropout = 0;
    s.hyper.epochs = 2;  // steps of 4 and 2 examples
    return s;
  };
  RunResult whole = RunWorker(spec("whole", 0, true), "whole");
  RunResult micro = RunWorker(spec("micro", 1, true), "micro");
  RunResult padded = RunWorker(spec("padded", 0, false), "padded");
  for (const RunResult* r : {&whole, &micro, &padded}) {
    ASSERT_EQ(r->exit_code, 0) << r->stderr_tail;
    ASSERT_NE(r->Last(ReportKind::kCompleted), nullptr);
  }
  const auto want = whole.Losses();
  ASSERT_EQ(want.size(), 4u);
  for (const RunResult* r : {&micro, &padded}) {
    const auto got = r->Losses();
    ASSERT_EQ(got.size(), want.size());
    // fp32 summation order differs between the layouts: a few ulps of ~20.
    for (const auto& [step, loss] : got) EXPECT_NEAR(loss, want.at(step), 4e-5) << "step " << step;
  }
  auto decoder = model::Decoder::Load(model_dir_);
  ASSERT_TRUE(decoder.ok());
  auto load = [&](const RunResult& r) {
    auto a = model::LoraAdapter::Load(r.Last(ReportKind::kCompleted)->result_dir, decoder->config());
    EXPECT_TRUE(a.ok()) << a.status();
    return a->Parameters();
  };
  const auto w = load(whole), m = load(micro), p = load(padded);
  ASSERT_EQ(w.size(), m.size());
  double diff_micro = 0, diff_padded = 0, max_abs = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    diff_micro = std::max(diff_micro, (w[i] - m[i]).abs().max().item<double>());
    diff_padded = std::max(diff_padded, (w[i] - p[i]).abs().max().item<double>());
    max_abs = std::max(max_abs, w[i].abs().max().item<double>());
  }
  // Adam divides each gradient element by its own RMS, which amplifies the
  // fp32 summation-order noise of near-zero elements: the weights agree to
  // ~1e-4 here (lr 3e-3), where averaging per micro-batch instead of per
  // trained token moves them by ~1.5e-2 and step 2's loss by 0.13.
  EXPECT_LT(diff_micro, 1e-3) << "max |w| " << max_abs;
  EXPECT_LT(diff_padded, 1e-3) << "max |w| " << max_abs;
}

TEST_F(WorkerTest, BadInputIsAClearErrorNeverACrash) {
  auto expect_error = [&](const RunResult& r, const std::string& code, const std::string& needle) {
    EXPECT_EQ(r.exit_code, 2) << r.stderr_tail;
    const ReportEvent* e = r.Last(ReportKind::kError);
    ASSERT_NE(e, nullptr) << r.stderr_tail;
    EXPECT_EQ(e->code, code);
    EXPECT_THAT(e->message, HasSubstr(needle));
  };
  {
    WorkerSpec s = BaseSpec("nobase");
    s.base_model_dir = run_dir_.Join("no-such-model");
    expect_error(RunWorker(s, "nobase"), "INVALID_ARGUMENT", "base_model_dir");
  }
  {
    WorkerSpec s = BaseSpec("nan");
    s.hyper.learning_rate = std::nan("");
    expect_error(RunWorker(s, "nan"), "INVALID_ARGUMENT", "hyperparameters.learning_rate");
  }
  {
    const std::string other = run_dir_.Join("other-vocab.shard");
    WriteShard(other, chat_->tokenizer().vocab_size() + 100);
    WorkerSpec s = BaseSpec("vocab");
    s.train_shards = {other};
    expect_error(RunWorker(s, "vocab"), "INVALID_ARGUMENT", "train_shards[0]");
  }
  {
    WorkerSpec s = BaseSpec("corrupt");
    s.hyper.max_steps = 2;
    s.hyper.checkpoint_interval_steps = 1;
    RunResult ok = RunWorker(s, "corrupt");
    ASSERT_EQ(ok.exit_code, 0) << ok.stderr_tail;
    const ReportEvent* c = ok.Last(ReportKind::kCheckpoint);
    ASSERT_NE(c, nullptr);
    const std::string victim = c->checkpoint_dir + "/optimizer.safetensors";
    std::string bytes = ReadBytes(victim);
    ASSERT_GT(bytes.size(), 200u);
    bytes[bytes.size() - 7] ^= 0x40;
    std::ofstream(victim, std::ios::binary | std::ios::trunc) << bytes;
    s.resume_from = c->checkpoint_dir;
    expect_error(RunWorker(s, "corrupt-resume"), "INVALID_ARGUMENT", "optimizer.safetensors");
  }
}

// Two Gloo ranks on loopback, each holding half of the examples (as the
// dataset service's StreamShard splits them) and accumulating micro-batches,
// end where one rank with the whole set ends.
TEST_F(WorkerTest, TwoGlooRanksEqualOneRank) {
  WorkerSpec one = BaseSpec("one");
  one.hyper.batch_size = 4;
  one.hyper.lora_dropout = 0;
  one.hyper.epochs = 2;  // 2 steps per epoch
  RunResult single = RunWorker(one, "one");
  ASSERT_EQ(single.exit_code, 0) << single.stderr_tail;

  std::vector<std::string> parts = {run_dir_.Join("part0.shard"), run_dir_.Join("part1.shard")};
  WriteShard(parts[0], chat_->tokenizer().vocab_size(), 0, 3);
  WriteShard(parts[1], chat_->tokenizer().vocab_size(), 3, kChats.size());
  one.hyper.micro_batch_size = 1;
  const std::vector<RunResult> ranks = worker_testing::RunTwoRanks(one, parts, {}, run_dir_.path());
  const RunResult& rank0 = ranks[0];
  const RunResult& rank1 = ranks[1];
  ASSERT_EQ(rank0.exit_code, 0) << rank0.stderr_tail;
  ASSERT_EQ(rank1.exit_code, 0) << rank1.stderr_tail;
  const auto want = single.Losses();
  ASSERT_EQ(want.size(), 4u);
  for (const RunResult* r : {&rank0, &rank1}) {
    const auto got = r->Losses();
    ASSERT_EQ(got.size(), want.size());
    // fp32 summation order differs between the layouts: a few ulps of ~20.
    for (const auto& [step, loss] : got) EXPECT_NEAR(loss, want.at(step), 4e-5) << "step " << step;
    ASSERT_NE(r->Last(ReportKind::kCompleted), nullptr);
    EXPECT_EQ(r->Last(ReportKind::kCompleted)->trained_tokens,
              single.Last(ReportKind::kCompleted)->trained_tokens);
  }
  auto decoder = model::Decoder::Load(model_dir_);
  ASSERT_TRUE(decoder.ok());
  auto a = model::LoraAdapter::Load(single.Last(ReportKind::kCompleted)->result_dir, decoder->config());
  auto b = model::LoraAdapter::Load(rank0.Last(ReportKind::kCompleted)->result_dir, decoder->config());
  ASSERT_TRUE(a.ok() && b.ok());
  double diff = 0;
  for (size_t i = 0; i < a->Parameters().size(); ++i)
    diff = std::max(diff, (a->Parameters()[i] - b->Parameters()[i]).abs().max().item<double>());
  EXPECT_LT(diff, 1e-3);  // as in GradientAccumulationEqualsTheWholeBatch
}

// Full fine-tuning: every weight trains; the result is a Hugging Face model
// directory the decoder loads, better on the training chats than the base.
TEST_F(WorkerTest, FullFineTuningWritesAModelDirectory) {
  WorkerSpec s = BaseSpec("full");
  s.method = TrainingMethod::kFull;
  s.valid_shards = {train_shard_};
  s.hyper.batch_size = 6;
  s.hyper.epochs = 4;
  s.hyper.learning_rate = 1e-3;
  RunResult r = RunWorker(s, "full");
  ASSERT_EQ(r.exit_code, 0) << r.stderr_tail;
  const ReportEvent* done = r.Last(ReportKind::kCompleted);
  ASSERT_NE(done, nullptr);
  ASSERT_TRUE(done->valid_loss && done->base_valid_loss);
  EXPECT_LT(*done->valid_loss, *done->base_valid_loss);
  EXPECT_TRUE(fs::exists(done->result_dir + "/config.json"));
  EXPECT_TRUE(fs::exists(done->result_dir + "/tokenizer.json"));
  EXPECT_TRUE(fs::exists(done->result_dir + "/tunefleet_contract.json"));
  auto tuned = model::Decoder::Load(done->result_dir);
  ASSERT_TRUE(tuned.ok()) << tuned.status();
  // The base files are untouched by training in place.
  auto base = model::Decoder::Load(model_dir_);
  ASSERT_TRUE(base.ok());
  auto bt = base->HfTensors();
  auto tt = tuned->HfTensors();
  ASSERT_TRUE(bt.ok() && tt.ok());
  double moved = 0;
  for (size_t i = 0; i < bt->size(); ++i)
    moved = std::max(moved, ((*bt)[i].second - (*tt)[i].second).abs().max().item<double>());
  EXPECT_GT(moved, 1e-4);
}

// write_merged: beside the adapter, result/merged/ is a complete Hugging
// Face directory (config, weights, tokenizer files) whose logits equal the
// base's with the adapter applied.
TEST_F(WorkerTest, WriteMergedPublishesTheBaseWithTheAdapterFoldedIn) {
  WorkerSpec s = BaseSpec("merged");
  s.write_merged = true;
  s.hyper.epochs = 2;
  s.hyper.learning_rate = 1e-2;
  RunResult r = RunWorker(s, "merged");
  ASSERT_EQ(r.exit_code, 0) << r.stderr_tail;
  const ReportEvent* done = r.Last(ReportKind::kCompleted);
  ASSERT_NE(done, nullptr) << r.stderr_tail;
  const std::string merged = done->result_dir + "/merged";
  EXPECT_TRUE(fs::exists(done->result_dir + "/adapter_model.safetensors"));
  for (const char* f : {"config.json", "tokenizer.json", "tokenizer_config.json"}) {
    EXPECT_TRUE(fs::exists(merged + "/" + f)) << f;
    if (fs::exists(model_dir_ + "/" + f) && std::string(f) != "config.json") {
      EXPECT_EQ(ReadBytes(merged + "/" + f), ReadBytes(model_dir_ + "/" + f)) << f;
    }
  }
  nlohmann::json contract = nlohmann::json::parse(ReadBytes(done->result_dir + "/tunefleet_contract.json"));
  EXPECT_EQ(contract["merged_dir"], "merged");

  auto base = model::Decoder::Load(model_dir_);
  ASSERT_TRUE(base.ok()) << base.status();
  auto adapter = model::LoraAdapter::Load(done->result_dir, base->config());
  ASSERT_TRUE(adapter.ok()) << adapter.status();
  auto folded = model::Decoder::Load(merged);
  ASSERT_TRUE(folded.ok()) << folded.status();
  std::vector<text::ChatMessage> m = {{"user", kChats[0].first, {}}, {"assistant", kChats[0].second, {}}};
  auto t = chat_->Tokenize(m);
  ASSERT_TRUE(t.ok());
  at::Tensor ids = at::tensor(std::vector<int64_t>(t->ids.begin(), t->ids.end())).unsqueeze(0);
  model::ForwardOptions with;
  with.adapter = &*adapter;
  auto want = base->Forward(ids, with);
  auto plain = base->Forward(ids);
  auto got = folded->Forward(ids);
  ASSERT_TRUE(want.ok() && plain.ok() && got.ok());
  const double diff = (*want - *got).abs().max().item<double>();
  const double trained = (*want - *plain).abs().max().item<double>();
  const double scale = want->abs().max().item<double>();
  // fp32: (W + s·B·A)x rounds differently from Wx + s·B(Ax).
  EXPECT_LT(diff, 1e-5 * (1 + scale)) << "the adapter moved the logits by " << trained;
  EXPECT_GT(trained, 100 * diff);  // the comparison is not vacuous
}

// A hung peer (SIGSTOP) turns into an error on the other rank within the
// collective timeout, not a hang.
TEST_F(WorkerTest, HungPeerFailsWithinTheCollectiveTimeout) {
  std::vector<std::string> parts = {run_dir_.Join("h0.shard"), run_dir_.Join("h1.shard")};
  WriteShard(parts[0], chat_->tokenizer().vocab_size(), 0, 3);
  WriteShard(parts[1], chat_->tokenizer().vocab_size(), 3, kChats.size());
  const int port = FreePort();
  std::vector<WorkerSpec> specs;
  for (int r = 0; r < 2; ++r) {
    WorkerSpec s = BaseSpec("hung");
    s.hyper.batch_size = 2;
    s.hyper.epochs = 50;
    s.rank = r;
    s.world_size = 2;
    s.master_addr = "127.0.0.1";
    s.master_port = port;
    s.train_shards = {parts[r]};
    s.collective_timeout_s = 3;
    s.checkpoint_root = run_dir_.Join("hung/checkpoints");
    s.output_dir = run_dir_.Join("hung/result");
    specs.push_back(s);
  }
  RunResult rank1;
  std::atomic<pid_t> pid1{-1};
  std::thread t([&] {
    rank1 = RunWorker(
        specs[1], "hung1",
        [](const ReportEvent& e) { return e.kind == ReportKind::kProgress && e.step == 2 ? SIGSTOP : 0; },
        &pid1);
  });
  const auto t0 = std::chrono::steady_clock::now();
  RunResult rank0 = RunWorker(specs[0], "hung0");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // Rank 1 is still stopped; end it so that its runner returns.
  if (pid1.load() > 0) ::kill(pid1.load(), SIGKILL);
  t.join();
  EXPECT_EQ(rank1.exit_code, 128 + SIGKILL);
  EXPECT_EQ(rank0.exit_code, 2) << rank0.stderr_tail;
  const ReportEvent* e = rank0.Last(ReportKind::kError);
  ASSERT_NE(e, nullptr) << rank0.stderr_tail;
  EXPECT_EQ(e->code, "UNAVAILABLE");
  EXPECT_THAT(e->message, HasSubstr("all-reduce"));
  EXPECT_LT(seconds, 40);
}

// A GPU node (scripts/gpu-check) runs this; skipped elsewhere. The worker on
// CUDA trains under bf16 autocast (LoRA's base stored in bf16, the adapter in
// fp32): its per-step losses follow the CPU's fp32 run, for LoRA and for
// full fine-tuning, and the adapter it writes loads like any other.
TEST_F(WorkerTest, CudaBf16RunsFollowTheCpuRun) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  for (TrainingMethod method : {TrainingMethod::kLora, TrainingMethod::kFull}) {
    const std::string m = method == TrainingMethod::kLora ? "lora" : "full";
    auto spec = [&](const std::string& device) {
      WorkerSpec s = BaseSpec(m + "-" + device);
      s.method = method;
      s.device = device;
      s.hyper.lora_dropout = 0;
      s.hyper.epochs = 2;
      if (method == TrainingMethod::kFull) s.hyper.learning_rate = 1e-4;
      return s;
    };
    RunResult cpu = RunWorker(spec("cpu"), m + "-cpu");
    RunResult gpu = RunWorker(spec("cuda"), m + "-cuda");
    ASSERT_EQ(cpu.exit_code, 0) << cpu.stderr_tail;
    ASSERT_EQ(gpu.exit_code, 0) << gpu.stderr_tail;
    const auto want = cpu.Losses(), got = gpu.Losses();
    ASSERT_EQ(got.size(), want.size());
    for (const auto& [step, loss] : got)
      EXPECT_NEAR(loss, want.at(step), 0.03 * want.at(step) + 0.02) << m << " step " << step;
    const ReportEvent* done = gpu.Last(ReportKind::kCompleted);
    ASSERT_NE(done, nullptr);
    // What the run used on the GPU, beside its estimate.
    ASSERT_EQ(done->metrics.count("peak_device_bytes"), 1u);
    EXPECT_GT(done->metrics.at("peak_device_bytes"), 0);
  }
}

}  // namespace
}  // namespace tunefleet::trainer
