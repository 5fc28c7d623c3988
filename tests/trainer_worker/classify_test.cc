// Classification in the training worker: real tunefleet-train-worker runs on
// a tiny Phi-3 with the Phi-3 tokenizer from classification shard files
// (the text as one user message, loss on the last token, the label an index
// into the sorted label names, as the dataset service writes them): a
// separable set reaches accuracy and macro-F1 1.0 with a falling loss, a
// SIGTERM'd run resumes exactly (head included), and the result directory
// (PEFT adapter + score.safetensors) reloads and classifies the validation
// examples as the worker's evaluation did.
#include <fcntl.h>
#include <signal.h>
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
#include <nlohmann/json.hpp>

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
#include "tests/testing/child_guard.h"
#include "tests/testing/temp_dir.h"
#include "tests/trainer_worker/worker_harness.h"

namespace tunefleet::trainer {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// Label names sorted: "alpha" = 0, "beta" = 1.
const std::vector<std::pair<std::string, int>> kTrain = {
    {"a a a", 0}, {"b b b", 1}, {"a a", 0},     {"b b", 1},
    {"a a a a", 0}, {"b b b b", 1}, {"a", 0}, {"b", 1},
};
const std::vector<std::pair<std::string, int>> kValid = {
    {"a a a a a", 0}, {"b b b b b", 1}, {"a a a", 0}, {"b b", 1}};

using worker_testing::ReadBytes;
using worker_testing::RunResult;

class ClassifyTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    setenv("OMP_NUM_THREADS", "2", 1);
    dir_ = new testing::TempDir();
    model_dir_ = dir_->Join("tiny-phi3");
    auto chat = worker_testing::WriteTinyPhi3(model_dir_, /*lm_head_scale=*/1);
    ASSERT_TRUE(chat.ok()) << chat.status();
    chat_ = chat->release();
    train_shard_ = dir_->Join("train.shard");
    WriteShard(train_shard_, kTrain);
    valid_shard_ = dir_->Join("valid.shard");
    WriteShard(valid_shard_, kValid);
  }
  static void TearDownTestSuite() {
    delete chat_;
    delete dir_;
  }

  // As services/dataset/shards.h: one user message, loss on the last token.
  static std::vector<int32_t> Tokens(const std::string& text) {
    std::vector<text::ChatMessage> m = {{"user", text, {}}};
    auto t = chat_->Tokenize(m);
    EXPECT_TRUE(t.ok()) << t.status();
    return t->ids;
  }
  static void WriteShard(const std::string& path,
                         const std::vector<std::pair<std::string, int>>& examples) {
    auto w = ShardFileWriter::Create(path, chat_->tokenizer().vocab_size());
    ASSERT_TRUE(w.ok()) << w.status();
    for (const auto& [text, label] : examples) {
      std::vector<int32_t> ids = Tokens(text);
      std::vector<uint8_t> mask(ids.size(), 0);
      mask.back() = 1;
      ASSERT_TRUE((*w)->AddExample(ids, mask, label).ok());
    }
    ASSERT_TRUE((*w)->Finish().ok());
  }

  WorkerSpec Spec(const std::string& name) {
    WorkerSpec s;
    s.job_id = "ftjob-" + name;
    s.base_model_dir = model_dir_;
    s.train_shards = {train_shard_};
    s.valid_shards = {valid_shard_};
    s.output_dir = run_dir_.Join(name + "/result");
    s.checkpoint_root = run_dir_.Join(name + "/checkpoints");
    s.task = TrainingTask::kClassification;
    s.num_labels = 2;
    s.label_names = {"alpha", "beta"};
    s.hyper.epochs = 12;
    s.hyper.batch_size = 4;
    s.hyper.learning_rate = 1e-2;
    s.hyper.lr_scheduler = LrScheduler::kConstant;
    s.hyper.lora_rank = 4;
    s.hyper.lora_alpha = 8;
    s.hyper.max_sequence_length = 64;
    s.hyper.eval_interval_steps = 4;
    s.hyper.seed = 5;
    s.progress_interval_s = 0;
    return s;
  }

  RunResult RunWorker(const WorkerSpec& spec, const std::string& name,
                      worker_testing::OnEvent on_event = nullptr) {
    return worker_testing::RunWorker(spec, run_dir_.path(), name, std::move(on_event));
  }

  static testing::TempDir* dir_;
  static std::string model_dir_, train_shard_, valid_shard_;
  static text::ChatTokenizer* chat_;
  testing::TempDir run_dir_;
};

testing::TempDir* ClassifyTest::dir_ = nullptr;
std::string ClassifyTest::model_dir_, ClassifyTest::train_shard_, ClassifyTest::valid_shard_;
text::ChatTokenizer* ClassifyTest::chat_ = nullptr;

TEST_F(ClassifyTest, LoraHeadLearnsASeparableSetAndTheResultReloads) {
  RunResult r = RunWorker(Spec("lora"), "lora");
  ASSERT_EQ(r.exit_code, 0) << r.stderr_tail;
  const std::map<int64_t, double> losses = r.Losses();
  ASSERT_EQ(losses.size(), 24u);
  EXPECT_NEAR(losses.begin()->second, std::log(2.0), 1e-4);  // the zero head
  EXPECT_LT(losses.rbegin()->second, 0.2 * losses.begin()->second);
  const ReportEvent* eval = r.Last(ReportKind::kEval);
  ASSERT_NE(eval, nullptr);
  EXPECT_EQ(eval->valid_token_accuracy, 1.0);
  ASSERT_TRUE(eval->metrics.count("macro_f1"));
  EXPECT_EQ(eval->metrics.at("macro_f1"), 1.0);
  const ReportEvent* done = r.Last(ReportKind::kCompleted);
  ASSERT_NE(done, nullptr);
  ASSERT_TRUE(done->base_valid_loss.has_value());
  EXPECT_NEAR(*done->base_valid_loss, std::log(2.0), 1e-4);
  ASSERT_TRUE(done->valid_loss.has_value());
  EXPECT_LT(*done->valid_loss, *done->base_valid_loss);

  // The result: PEFT adapter + the head, and a contract naming the labels.
  const std::string out = done->result_dir;
  EXPECT_TRUE(fs::exists(out + "/adapter_model.safetensors"));
  nlohmann::json c = nlohmann::json::parse(ReadBytes(out + "/tunefleet_contract.json"));
  EXPECT_EQ(c["task"], "classification");
  EXPECT_EQ(c["num_labels"], 2);
  EXPECT_EQ(c["label_names"], (std::vector<std::string>{"alpha", "beta"}));
  EXPECT_EQ(c["classification_head"]["file"], "score.safetensors");

  auto decoder = model::Decoder::Load(model_dir_);
  ASSERT_TRUE(decoder.ok()) << decoder.status();
  auto adapter = model::LoraAdapter::Load(out, decoder->config());
  ASSERT_TRUE(adapter.ok()) << adapter.status();
  auto head_file = model::SafetensorsFile::Open(out + "/score.safetensors");
  ASSERT_TRUE(head_file.ok()) << head_file.status();
  auto head = (*head_file)->Get("score.weight");
  ASSERT_TRUE(head.ok()) << head.status();
  ASSERT_EQ(head->sizes(), (at::IntArrayRef{2, 64}));
  for (const auto& [text, label] : kValid) {
    std::vector<int32_t> ids = Tokens(text);
    at::Tensor input = at::tensor(std::vector<int64_t>(ids.begin(), ids.end())).unsqueeze(0);
    model::ForwardOptions fo;
    fo.adapter = model::AdapterChoice(&*adapter);
    at::NoGradGuard no_grad;
    auto h = decoder->ForwardHidden(input, fo);
    ASSERT_TRUE(h.ok()) << h.status();
    at::Tensor logits = at::matmul((*h)[0][-1], head->to(at::kFloat).t());
    EXPECT_EQ(logits.argmax().item<int64_t>(), label) << text;
  }
}

TEST_F(ClassifyTest, ResumeAfterSigtermIsExact) {
  WorkerSpec base = Spec("ref");
  base.hyper.epochs = 3;
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
  ASSERT_FALSE(resumed.Losses().empty());
  for (const auto& [step, loss] : resumed.Losses()) EXPECT_EQ(loss, want.at(step)) << "step " << step;
  const std::string a = ref.Last(ReportKind::kCompleted)->result_dir;
  const std::string b = resumed.Last(ReportKind::kCompleted)->result_dir;
  EXPECT_EQ(ReadBytes(a + "/adapter_model.safetensors"), ReadBytes(b + "/adapter_model.safetensors"));
  EXPECT_EQ(ReadBytes(a + "/score.safetensors"), ReadBytes(b + "/score.safetensors"));
  EXPECT_EQ(resumed.Last(ReportKind::kCompleted)->valid_loss,
            ref.Last(ReportKind::kCompleted)->valid_loss);
}

// Two Gloo ranks holding unequal parts of the training and validation sets
// (3 and 5 examples, as StreamShard would split them by size): each step's
// examples, labels included, are gathered on both and split by tokens, and
// the run equals one rank with the whole sets.
TEST_F(ClassifyTest, TwoGlooRanksWithUnequalPartsEqualOneRank) {
  WorkerSpec one = Spec("one");
  one.hyper.epochs = 2;
  one.hyper.lora_dropout = 0;  // dropout draws depend on the rows a rank holds
  RunResult single = RunWorker(one, "one");
  ASSERT_EQ(single.exit_code, 0) << single.stderr_tail;

  const std::vector<std::pair<std::string, int>> train0(kTrain.begin(), kTrain.begin() + 3),
      train1(kTrain.begin() + 3, kTrain.end()), valid0(kValid.begin(), kValid.begin() + 1),
      valid1(kValid.begin() + 1, kValid.end());
  const std::string dir = run_dir_.Join("parts");
  fs::create_directories(dir);
  WriteShard(dir + "/train0.shard", train0);
  WriteShard(dir + "/train1.shard", train1);
  WriteShard(dir + "/valid0.shard", valid0);
  WriteShard(dir + "/valid1.shard", valid1);
  const std::vector<RunResult> ranks = worker_testing::RunTwoRanks(
      one, {dir + "/train0.shard", dir + "/train1.shard"}, {dir + "/valid0.shard", dir + "/valid1.shard"},
      run_dir_.path());
  const RunResult& rank0 = ranks[0];
  const RunResult& rank1 = ranks[1];
  ASSERT_EQ(rank0.exit_code, 0) << rank0.stderr_tail;
  ASSERT_EQ(rank1.exit_code, 0) << rank1.stderr_tail;
  const std::map<int64_t, double> want = single.Losses();
  ASSERT_EQ(want.size(), 4u);
  const ReportEvent* done = single.Last(ReportKind::kCompleted);
  ASSERT_NE(done, nullptr);
  for (const RunResult* r : {&rank0, &rank1}) {
    const std::map<int64_t, double> got = r->Losses();
    ASSERT_EQ(got.size(), want.size());
    for (const auto& [step, loss] : got) EXPECT_NEAR(loss, want.at(step), 1e-5) << "step " << step;
    const ReportEvent* d = r->Last(ReportKind::kCompleted);
    ASSERT_NE(d, nullptr);
    ASSERT_TRUE(d->valid_loss && done->valid_loss);
    EXPECT_NEAR(*d->valid_loss, *done->valid_loss, 1e-5);
  }
  auto a = model::SafetensorsFile::Open(done->result_dir + "/score.safetensors");
  auto b = model::SafetensorsFile::Open(rank0.Last(ReportKind::kCompleted)->result_dir + "/score.safetensors");
  ASSERT_TRUE(a.ok() && b.ok());
  auto ta = (*a)->GetAll();
  auto tb = (*b)->GetAll();
  ASSERT_TRUE(ta.ok() && tb.ok());
  ASSERT_EQ(ta->size(), tb->size());
  for (size_t i = 0; i < ta->size(); ++i)
    EXPECT_LT(((*ta)[i].second - (*tb)[i].second).abs().max().item<double>(), 1e-4) << (*ta)[i].first;
}

TEST_F(ClassifyTest, FullFineTuningTrainsTheHeadToo) {
  WorkerSpec s = Spec("full");
  s.method = TrainingMethod::kFull;
  s.hyper.epochs = 6;
  s.hyper.learning_rate = 3e-3;
  RunResult r = RunWorker(s, "full");
  ASSERT_EQ(r.exit_code, 0) << r.stderr_tail;
  const std::map<int64_t, double> losses = r.Losses();
  ASSERT_FALSE(losses.empty());
  EXPECT_LT(losses.rbegin()->second, losses.begin()->second);
  EXPECT_TRUE(fs::exists(r.Last(ReportKind::kCompleted)->result_dir + "/score.safetensors"));
}

TEST_F(ClassifyTest, ALabelOutsideTheClassesIsRefusedNamingIt) {
  WorkerSpec s = Spec("bad");
  s.num_labels = 1;  // invalid spec: named
  s.label_names.clear();
  RunResult r = RunWorker(s, "bad-spec");
  EXPECT_NE(r.exit_code, 0);
  ASSERT_NE(r.Last(ReportKind::kError), nullptr);
  EXPECT_THAT(r.Last(ReportKind::kError)->message, HasSubstr("num_labels"));

  // Chat shards (labels -1) under the classification task.
  const std::string chat = run_dir_.Join("chat.shard");
  {
    auto w = ShardFileWriter::Create(chat, chat_->tokenizer().vocab_size());
    ASSERT_TRUE(w.ok());
    std::vector<int32_t> ids = Tokens("hello");
    std::vector<uint8_t> mask(ids.size(), 1);
    ASSERT_TRUE((*w)->AddExample(ids, mask).ok());
    ASSERT_TRUE((*w)->Finish().ok());
  }
  s = Spec("bad");
  s.train_shards = {chat};
  r = RunWorker(s, "bad-label");
  EXPECT_NE(r.exit_code, 0);
  ASSERT_NE(r.Last(ReportKind::kError), nullptr);
  EXPECT_EQ(r.Last(ReportKind::kError)->code, "INVALID_ARGUMENT");
  EXPECT_THAT(r.Last(ReportKind::kError)->message, HasSubstr("train_shards: example 0 has label -1"));
}

}  // namespace
}  // namespace tunefleet::trainer
