// The scheduler's pure parts (state table, queue, gang placement, the auto
// hyperparameter rule) and its SQLite store, including a reopen.
#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "services/scheduler/job_spec.h"
#include "services/scheduler/job_state.h"
#include "common/model/memory_estimate.h"
#include "services/scheduler/model_ids.h"
#include "services/scheduler/placement.h"
#include "services/scheduler/scheduler.h"
#include "services/scheduler/scheduler_store.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace tunefleet::scheduler {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Pair;
using ::testing::UnorderedElementsAre;
using ::tunefleet::testing::IsOk;
using ::tunefleet::testing::StatusIs;
using T = JobTrigger;

constexpr v1::JobState kValidating = v1::JOB_STATE_VALIDATING_FILES;
constexpr v1::JobState kQueued = v1::JOB_STATE_QUEUED;
constexpr v1::JobState kRunning = v1::JOB_STATE_RUNNING;
constexpr v1::JobState kPausing = v1::JOB_STATE_PAUSING;
constexpr v1::JobState kPaused = v1::JOB_STATE_PAUSED;
constexpr v1::JobState kCancelling = v1::JOB_STATE_CANCELLING;
constexpr v1::JobState kSucceeded = v1::JOB_STATE_SUCCEEDED;
constexpr v1::JobState kFailed = v1::JOB_STATE_FAILED;
constexpr v1::JobState kCancelled = v1::JOB_STATE_CANCELLED;

struct Row {
  v1::JobState from;
  JobTrigger trigger;
  v1::JobState to;  // UNSPECIFIED: refused
};

TEST(JobStateTest, TableOverEveryStateAndTrigger) {
  const v1::JobState U = v1::JOB_STATE_UNSPECIFIED;
  const std::vector<Row> rows = {
      {kValidating, T::kFilesValidated, kQueued}, {kValidating, T::kCancel, kCancelled},
      {kValidating, T::kFail, kFailed},           {kValidating, T::kStart, U},
      {kValidating, T::kPause, U},                {kValidating, T::kResume, U},
      {kQueued, T::kStart, kRunning},             {kQueued, T::kPause, kPaused},
      {kQueued, T::kCancel, kCancelled},          {kQueued, T::kFail, kFailed},
      {kQueued, T::kResume, U},                   {kQueued, T::kSucceed, U},
      {kQueued, T::kFilesValidated, U},           {kRunning, T::kPause, kPausing},
      {kRunning, T::kCancel, kCancelling},        {kRunning, T::kSucceed, kSucceeded},
      {kRunning, T::kFail, kFailed},              {kRunning, T::kRequeue, kQueued},
      {kRunning, T::kStopped, kQueued},           {kRunning, T::kResume, U},
      {kRunning, T::kStart, U},                   {kPausing, T::kStopped, kPaused},
      {kPausing, T::kRequeue, kPaused},           {kPausing, T::kCancel, kCancelling},
      {kPausing, T::kSucceed, kSucceeded},        {kPausing, T::kFail, kFailed},
      {kPausing, T::kPause, U},                   {kPausing, T::kResume, U},
      {kPaused, T::kResume, kQueued},             {kPaused, T::kCancel, kCancelled},
      {kPaused, T::kPause, U},                    {kPaused, T::kStart, U},
      {kCancelling, T::kStopped, kCancelled},     {kCancelling, T::kRequeue, kCancelled},
      {kCancelling, T::kFail, kCancelled},        {kCancelling, T::kSucceed, kCancelled},
      {kCancelling, T::kCancel, U},               {kCancelling, T::kPause, U},
  };
  for (const Row& r : rows) {
    auto got = Apply(r.from, r.trigger);
    SCOPED_TRACE(absl::StrCat(StateName(r.from), " + ", TriggerName(r.trigger)));
    if (r.to == U) {
      EXPECT_THAT(got, StatusIs(absl::StatusCode::kFailedPrecondition,
                                HasSubstr(std::string(StateName(r.from)))));
    } else {
      ASSERT_THAT(got, IsOk());
      EXPECT_EQ(*got, r.to);
    }
  }
  // Finished jobs refuse everything, naming their state.
  for (v1::JobState done : {kSucceeded, kFailed, kCancelled}) {
    for (T t : {T::kFilesValidated, T::kStart, T::kPause, T::kResume, T::kCancel, T::kStopped,
                T::kSucceed, T::kFail, T::kRequeue}) {
      EXPECT_THAT(Apply(done, t), StatusIs(absl::StatusCode::kFailedPrecondition,
                                           HasSubstr(std::string(StateName(done)))));
    }
  }
  EXPECT_THAT(Apply(kSucceeded, T::kCancel),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       "cannot cancel a job that is succeeded"));
}

TEST(QueueTest, PriorityThenAge) {
  std::vector<QueuedJob> q = {{"old-low", 0, 1, 1}, {"new-high", 5, 9, 1}, {"old-high", 5, 2, 1},
                              {"mid", 1, 3, 1}};
  SortQueue(q);
  std::vector<std::string> ids;
  for (const auto& j : q) ids.push_back(j.id);
  EXPECT_THAT(ids, ElementsAre("old-high", "new-high", "mid", "old-low"));
}

TEST(PlacementTest, TwoGangsOfTwoOnThreeSlotsNeverStartPartially) {
  // Three slots over two nodes: only one W=2 job fits; the other waits whole.
  auto r = Place({{"a", 0, 1, 2}, {"b", 0, 2, 2}}, {{"n1", 2, 2}, {"n2", 1, 1}});
  ASSERT_EQ(r.placed.size(), 1u);
  EXPECT_EQ(r.placed[0].job_id, "a");
  EXPECT_THAT(r.placed[0].nodes, ElementsAre(Pair("n1", 2)));  // packed on one node
  EXPECT_THAT(r.never_fit, IsEmpty());
  // Three single slots on three nodes: a spans two nodes, b waits.
  r = Place({{"a", 0, 1, 2}, {"b", 0, 2, 2}}, {{"n1", 1, 1}, {"n2", 1, 1}, {"n3", 1, 1}});
  ASSERT_EQ(r.placed.size(), 1u);
  int ranks = 0;
  for (const auto& [node, n] : r.placed[0].nodes) ranks += n;
  EXPECT_EQ(ranks, 2);
  EXPECT_EQ(r.placed[0].nodes.size(), 2u);
}

TEST(PlacementTest, PriorityFirstAndSmallJobsBackfill) {
  auto r = Place({{"low", 0, 1, 1}, {"high", 9, 2, 2}, {"big", 5, 3, 3}},
                 {{"n1", 2, 2}, {"n2", 1, 1}});
  std::vector<std::string> placed;
  for (const auto& p : r.placed) placed.push_back(p.job_id);
  // high takes n1's two slots; big (3) cannot fit now; low backfills n2.
  EXPECT_THAT(placed, ElementsAre("high", "low"));
  EXPECT_THAT(r.never_fit, IsEmpty());
}

TEST(PlacementTest, NeverFitFailsFast) {
  auto r = Place({{"huge", 0, 1, 4}, {"ok", 0, 2, 1}}, {{"n1", 2, 0}, {"n2", 1, 1}});
  EXPECT_THAT(r.never_fit, ElementsAre("huge"));
  ASSERT_EQ(r.placed.size(), 1u);
  EXPECT_EQ(r.placed[0].job_id, "ok");
  // With no fleet registered yet nothing is judged.
  r = Place({{"huge", 0, 1, 4}}, {});
  EXPECT_THAT(r.never_fit, IsEmpty());
  EXPECT_THAT(r.placed, IsEmpty());
}

TEST(PlacementTest, JobsGoOnlyToGpusThatHoldTheirMemory) {
  constexpr int64_t G = int64_t{1} << 30;
  // Two 24 GiB GPUs on n24, four 80 GiB on n80. "big" (40 GiB a rank) goes
  // to n80 although n24 is the better fit by slots; "small" (10 GiB) to n24.
  auto r = Place({{"big", 0, 1, 2, "", 40 * G}, {"small", 0, 2, 2, "", 10 * G}},
                 {{"n24", 2, 2, 24 * G, true}, {"n80", 4, 4, 80 * G, true}});
  ASSERT_EQ(r.placed.size(), 2u);
  EXPECT_THAT(r.placed[0].nodes, ElementsAre(Pair("n80", 2)));
  EXPECT_THAT(r.placed[1].nodes, ElementsAre(Pair("n24", 2)));
  // Four 40 GiB ranks: only n80's four slots hold them; with one taken the
  // job waits (it fits the fleet), and n24's free slots do not count.
  r = Place({{"big4", 0, 1, 4, "", 40 * G}}, {{"n24", 2, 2, 24 * G, true}, {"n80", 4, 3, 80 * G, true}});
  EXPECT_THAT(r.placed, IsEmpty());
  EXPECT_THAT(r.never_fit, IsEmpty());
  // Five such ranks never fit (n80 holds four); a 100 GiB rank fits no GPU.
  // A smaller job behind them still starts.
  r = Place({{"big5", 0, 1, 5, "", 40 * G}, {"huge", 0, 2, 1, "", 100 * G}, {"ok", 0, 3, 1, "", G}},
            {{"n24", 2, 2, 24 * G, true}, {"n80", 4, 4, 80 * G, true}});
  EXPECT_THAT(r.never_fit, ElementsAre("big5", "huge"));
  ASSERT_EQ(r.placed.size(), 1u);
  EXPECT_EQ(r.placed[0].job_id, "ok");
  // A gang across nodes: 6 ranks of 20 GiB over n24 (2) and n80 (4).
  r = Place({{"wide", 0, 1, 6, "", 20 * G}}, {{"n24", 2, 2, 24 * G, true}, {"n80", 4, 4, 80 * G, true}});
  ASSERT_EQ(r.placed.size(), 1u);
  EXPECT_THAT(r.placed[0].nodes, ElementsAre(Pair("n80", 4), Pair("n24", 2)));
  // CPU slots (memory 0) take any job; a job without an estimate goes anywhere.
  r = Place({{"any", 0, 1, 1, "", 500 * G}, {"unknown", 0, 2, 1}},
            {{"cpu", 1, 1, 0}, {"n24", 1, 1, 24 * G, true}});
  ASSERT_EQ(r.placed.size(), 2u);
  EXPECT_THAT(r.placed[0].nodes, ElementsAre(Pair("cpu", 1)));
  EXPECT_THAT(r.placed[1].nodes, ElementsAre(Pair("n24", 1)));
}

// A gang never mixes GPUs and CPU slots (one backend, one precision): it
// takes GPUs when enough are free, else CPU slots, else waits; it never fits
// when neither kind alone has its ranks.
TEST(PlacementTest, AGangIsAllGpusOrAllCpuSlots) {
  constexpr int64_t G = int64_t{1} << 30;
  // One free GPU and one free CPU slot: a 2-rank job waits, a 1-rank job
  // behind it takes the GPU.
  auto r = Place({{"two", 0, 1, 2, "", G}, {"one", 0, 2, 1, "", G}},
                 {{"gpu", 2, 1, 80 * G, true}, {"cpu", 2, 1, 0, false}});
  EXPECT_THAT(r.never_fit, IsEmpty());
  ASSERT_EQ(r.placed.size(), 1u);
  EXPECT_EQ(r.placed[0].job_id, "one");
  EXPECT_THAT(r.placed[0].nodes, ElementsAre(Pair("gpu", 1)));
  // Two free CPU slots across nodes, one GPU: the 2-rank job takes the CPU
  // slots.
  r = Place({{"two", 0, 1, 2, "", G}},
            {{"gpu", 1, 1, 80 * G, true}, {"cpu-a", 1, 1, 0, false}, {"cpu-b", 1, 1, 0, false}});
  ASSERT_EQ(r.placed.size(), 1u);
  EXPECT_THAT(r.placed[0].nodes, UnorderedElementsAre(Pair("cpu-a", 1), Pair("cpu-b", 1)));
  // Three ranks on a fleet of two GPUs and two CPU slots: never.
  r = Place({{"three", 0, 1, 3, "", G}}, {{"gpu", 2, 2, 80 * G, true}, {"cpu", 2, 2, 0, false}});
  EXPECT_THAT(r.placed, IsEmpty());
  EXPECT_THAT(r.never_fit, ElementsAre("three"));
}

TEST(HyperparametersTest, AutoRuleAndRanges) {
  BaseModel m{"tiny", "llama", 1000, 512};
  auto r = ResolveHyperparameters({}, v1::ADAPTER_TYPE_LORA, 1, 20, false, m, "ftjob-x");
  ASSERT_THAT(r, IsOk());
  const auto& h = r->hyperparameters;
  EXPECT_EQ(h.epochs(), 5);  // ceil(100 / 20)
  EXPECT_EQ(h.batch_size(), 1);
  EXPECT_DOUBLE_EQ(h.learning_rate(), kLoraBaseLearningRate);
  EXPECT_EQ(h.lora_rank(), 8);
  EXPECT_DOUBLE_EQ(h.lora_alpha(), 16);
  EXPECT_DOUBLE_EQ(h.lora_dropout(), 0.05);
  EXPECT_EQ(h.max_sequence_length(), 512);
  EXPECT_EQ(r->total_steps, 100);
  EXPECT_EQ(h.checkpoint_interval_steps(), 10);
  EXPECT_EQ(h.eval_interval_steps(), 0);
  // Large set, two ranks, full fine-tuning.
  v1::Hyperparameters given;
  given.set_learning_rate_multiplier(2);
  r = ResolveHyperparameters(given, v1::ADAPTER_TYPE_FULL, 2, 100000, true, m, "ftjob-y");
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->hyperparameters.epochs(), 1);
  EXPECT_EQ(r->hyperparameters.batch_size(), 256);
  EXPECT_EQ(r->hyperparameters.micro_batch_size(), 8);
  EXPECT_DOUBLE_EQ(r->hyperparameters.learning_rate(), 2 * kFullBaseLearningRate);
  EXPECT_FALSE(r->hyperparameters.has_lora_rank());
  // Each bad field named.
  v1::Hyperparameters bad;
  bad.set_epochs(0);
  bad.set_lora_dropout(1.5);
  bad.set_max_sequence_length(100000);
  EXPECT_THAT(ResolveHyperparameters(bad, v1::ADAPTER_TYPE_LORA, 1, 10, false, m, "j"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       ::testing::AllOf(HasSubstr("hyperparameters.epochs"),
                                        HasSubstr("hyperparameters.lora_dropout"),
                                        HasSubstr("hyperparameters.max_sequence_length"))));
  v1::Hyperparameters lora_on_full;
  lora_on_full.set_lora_rank(4);
  EXPECT_THAT(ResolveHyperparameters(lora_on_full, v1::ADAPTER_TYPE_FULL, 1, 10, false, m, "j"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("hyperparameters.lora_rank")));
}

TEST(HyperparametersTest, NewFieldsAutoValuesAndTheirReport) {
  BaseModel m{"tiny", "llama", 1000, 512};
  JobShape shape;
  shape.examples = 20;
  auto r = ResolveHyperparameters({}, shape, m, "ftjob-x");
  ASSERT_THAT(r, IsOk());
  const auto& h = r->hyperparameters;
  EXPECT_DOUBLE_EQ(h.weight_decay(), kLoraWeightDecay);
  EXPECT_EQ(h.lr_scheduler(), v1::LR_SCHEDULER_COSINE);
  EXPECT_TRUE(h.has_packing() && h.packing());
  EXPECT_TRUE(h.has_gradient_checkpointing() && !h.gradient_checkpointing());
  EXPECT_EQ(h.keep_checkpoints(), 2);
  EXPECT_TRUE(h.has_early_stopping_patience());
  EXPECT_EQ(h.early_stopping_patience(), 0);
  EXPECT_TRUE(h.has_max_steps());
  EXPECT_EQ(h.max_steps(), 0);
  EXPECT_DOUBLE_EQ(h.learning_rate_multiplier(), 1.0);
  EXPECT_EQ(h.micro_batch_size(), 1);
  // Full fine-tuning, classification: 0.01 decay, no packing.
  shape.adapter = v1::ADAPTER_TYPE_FULL;
  shape.task = v1::TRAINING_TASK_CLASSIFICATION;
  r = ResolveHyperparameters({}, shape, m, "ftjob-x");
  ASSERT_THAT(r, IsOk());
  EXPECT_DOUBLE_EQ(r->hyperparameters.weight_decay(), kFullWeightDecay);
  EXPECT_FALSE(r->hyperparameters.packing());
  // DPO: no packing.
  shape = JobShape{};
  shape.examples = 20;
  shape.dpo = true;
  r = ResolveHyperparameters({}, shape, m, "ftjob-x");
  ASSERT_THAT(r, IsOk());
  EXPECT_FALSE(r->hyperparameters.packing());
  // Given values are kept; an absolute learning rate reports its multiplier;
  // max_steps caps total_steps and the intervals follow the capped total.
  shape = JobShape{};
  shape.examples = 20;
  shape.has_validation = true;
  v1::Hyperparameters given;
  given.set_learning_rate(1e-4);
  given.set_weight_decay(0.1);
  given.set_lr_scheduler(v1::LR_SCHEDULER_LINEAR);
  given.set_max_steps(12);
  given.set_packing(false);
  given.set_gradient_checkpointing(true);
  given.set_keep_checkpoints(5);
  given.set_early_stopping_patience(3);
  given.set_batch_size(4);
  given.set_micro_batch_size(2);
  r = ResolveHyperparameters(given, shape, m, "ftjob-x");
  ASSERT_THAT(r, IsOk());
  const auto& g = r->hyperparameters;
  EXPECT_DOUBLE_EQ(g.learning_rate(), 1e-4);
  EXPECT_DOUBLE_EQ(g.learning_rate_multiplier(), 0.5);  // 1e-4 / 2e-4
  EXPECT_DOUBLE_EQ(g.weight_decay(), 0.1);
  EXPECT_EQ(g.lr_scheduler(), v1::LR_SCHEDULER_LINEAR);
  EXPECT_FALSE(g.packing());
  EXPECT_TRUE(g.gradient_checkpointing());
  EXPECT_EQ(g.keep_checkpoints(), 5);
  EXPECT_EQ(g.early_stopping_patience(), 3);
  EXPECT_EQ(g.micro_batch_size(), 2);
  EXPECT_EQ(r->total_steps, 12);  // 5 epochs x 5 steps = 25, capped at 12
  EXPECT_EQ(g.checkpoint_interval_steps(), 2);  // ceil(12 / 10)
  EXPECT_EQ(g.eval_interval_steps(), 2);
  // Caller-chosen intervals are kept.
  given.set_checkpoint_interval_steps(7);
  given.set_eval_interval_steps(0);
  r = ResolveHyperparameters(given, shape, m, "ftjob-x");
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->hyperparameters.checkpoint_interval_steps(), 7);
  EXPECT_EQ(r->hyperparameters.eval_interval_steps(), 0);
}

TEST(HyperparametersTest, EveryNewFieldOutOfRangeIsNamed) {
  BaseModel m{"tiny", "llama", 1000, 512};
  JobShape shape;
  shape.examples = 20;
  v1::Hyperparameters bad;
  bad.set_learning_rate(0.5);
  bad.set_weight_decay(1.5);
  bad.set_lr_scheduler(static_cast<v1::LrScheduler>(9));
  bad.set_max_steps(-1);
  bad.set_keep_checkpoints(0);
  bad.set_early_stopping_patience(-2);
  bad.set_micro_batch_size(0);
  bad.set_checkpoint_interval_steps(-1);
  bad.set_eval_interval_steps(-1);
  auto r = ResolveHyperparameters(bad, shape, m, "j");
  for (const char* f : {"learning_rate: must be in (0, 0.1]", "weight_decay: must be in [0, 1]",
                        "lr_scheduler", "max_steps: must be in [0,", "keep_checkpoints: must be in [1, 100]",
                        "early_stopping_patience: must be in [0, 1000]",
                        "micro_batch_size: must be in [1, 1024]", "checkpoint_interval_steps",
                        "eval_interval_steps"}) {
    EXPECT_THAT(r, StatusIs(absl::StatusCode::kInvalidArgument,
                            HasSubstr(absl::StrCat("hyperparameters.", f))));
  }
  // learning_rate and its multiplier: both named.
  v1::Hyperparameters both;
  both.set_learning_rate(1e-4);
  both.set_learning_rate_multiplier(2);
  EXPECT_THAT(ResolveHyperparameters(both, shape, m, "j"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       ::testing::AllOf(HasSubstr("hyperparameters.learning_rate: give"),
                                        HasSubstr("hyperparameters.learning_rate_multiplier: give"),
                                        HasSubstr("not both"))));
  // micro_batch_size must divide batch_size / gpus.
  v1::Hyperparameters micro;
  micro.set_batch_size(8);
  micro.set_micro_batch_size(3);
  shape.gpus = 2;
  EXPECT_THAT(ResolveHyperparameters(micro, shape, m, "j"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("hyperparameters.micro_batch_size: must divide batch_size / gpus = 4")));
  shape.gpus = 1;
  // Early stopping and step evaluations need validation data; packing needs
  // supervised chat.
  v1::Hyperparameters needs;
  needs.set_early_stopping_patience(2);
  needs.set_eval_interval_steps(5);
  needs.set_packing(true);
  shape.task = v1::TRAINING_TASK_CLASSIFICATION;
  EXPECT_THAT(ResolveHyperparameters(needs, shape, m, "j"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       ::testing::AllOf(
                           HasSubstr("hyperparameters.early_stopping_patience: needs validation"),
                           HasSubstr("hyperparameters.eval_interval_steps: needs validation"),
                           HasSubstr("hyperparameters.packing: applies only to the chat task"))));
  // LoRA-only fields on full fine-tuning.
  v1::Hyperparameters targets;
  targets.add_lora_target_modules("q_proj");
  shape = JobShape{};
  shape.adapter = v1::ADAPTER_TYPE_FULL;
  EXPECT_THAT(ResolveHyperparameters(targets, shape, m, "j"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("hyperparameters.lora_target_modules")));
}

TEST(HyperparametersTest, BoundsTableIsWhatResolveChecksAndReports) {
  BaseModel m{"tiny", "llama", 1000, 512};
  v1::ModelCapabilities c = CapabilitiesOf(m);
  EXPECT_THAT(c.methods(), ElementsAre("supervised", "dpo"));
  EXPECT_EQ(c.min_gpus(), 1);
  EXPECT_EQ(c.max_sequence_length(), 512);
  // Every Hyperparameters field has a row, in field order.
  const auto* desc = v1::Hyperparameters::descriptor();
  ASSERT_EQ(c.hyperparameters_size(), desc->field_count());
  for (int i = 0; i < desc->field_count(); ++i)
    EXPECT_EQ(c.hyperparameters(i).name(), desc->field(i)->name());
  v1::HyperparameterBounds keep = BoundsOf("keep_checkpoints", m);
  EXPECT_EQ(keep.min(), 1);
  EXPECT_EQ(keep.max(), 100);
  EXPECT_EQ(keep.default_value(), 2);
  v1::HyperparameterBounds len = BoundsOf("max_sequence_length", m);
  EXPECT_EQ(len.max(), 512);
  EXPECT_EQ(len.default_value(), 512);
  // A value just past a bound is refused, the bound itself accepted.
  JobShape shape;
  shape.examples = 20;
  v1::Hyperparameters h;
  h.set_keep_checkpoints(static_cast<int32_t>(keep.max()));
  EXPECT_THAT(ResolveHyperparameters(h, shape, m, "j"), IsOk());
  h.set_keep_checkpoints(static_cast<int32_t>(keep.max()) + 1);
  EXPECT_THAT(ResolveHyperparameters(h, shape, m, "j"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("keep_checkpoints")));
}

TEST(MethodTest, DpoBetaTaskAndFormat) {
  v1::Method none;
  auto m = ResolveMethod(none, v1::TRAINING_TASK_CHAT);
  ASSERT_THAT(m, IsOk());
  EXPECT_TRUE(m->has_supervised());
  EXPECT_EQ(NeededFormat(*m, v1::TRAINING_TASK_CHAT), v1::DATA_FORMAT_CHAT);
  EXPECT_EQ(NeededFormat(*m, v1::TRAINING_TASK_CLASSIFICATION), v1::DATA_FORMAT_CLASSIFICATION);
  v1::Method dpo;
  dpo.mutable_dpo();
  m = ResolveMethod(dpo, v1::TRAINING_TASK_UNSPECIFIED);
  ASSERT_THAT(m, IsOk());
  EXPECT_DOUBLE_EQ(m->dpo().beta(), kDefaultDpoBeta);
  EXPECT_EQ(NeededFormat(*m, v1::TRAINING_TASK_CHAT), v1::DATA_FORMAT_PREFERENCE);
  EXPECT_EQ(MethodName(*m), "dpo");
  dpo.mutable_dpo()->set_beta(10);
  EXPECT_THAT(ResolveMethod(dpo, v1::TRAINING_TASK_CHAT), IsOk());
  for (double beta : {0.0, -1.0, 10.5}) {
    dpo.mutable_dpo()->set_beta(beta);
    EXPECT_THAT(ResolveMethod(dpo, v1::TRAINING_TASK_CHAT),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         HasSubstr("method.dpo.beta: must be in (0, 10]")));
  }
  dpo.mutable_dpo()->set_beta(0.5);
  EXPECT_THAT(ResolveMethod(dpo, v1::TRAINING_TASK_CLASSIFICATION),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("task: method dpo needs the chat task")));
}

// The tiny Phi-3 of common/model/tiny_model.h: h 64, 2 layers, 4 heads and
// 4 kv heads (d 16), I 128, V 32064, untied, fused qkv/gate_up.
model::ModelConfig TinyPhi3() {
  model::ModelConfig c;
  c.model_type = "phi3";
  c.family = model::ModelFamily::kPhi3;
  c.hidden_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 4;
  c.head_dim = 16;
  c.intermediate_size = 128;
  c.vocab_size = 32064;
  return c;
}

TEST(MemoryEstimateTest, TinyPhi3ByHand) {
  using model::EstimateTrainingMemory;
  using model::TrainingMemory;
  using model::TrainingPrecision;
  const model::ModelConfig s = TinyPhi3();
  // Per layer: 64*64 + 2*64*64 + 64*64 + 3*64*128 + 2*64 = 41088; x2 = 82176;
  // + 64 (final norm) + 32064*64*2 (embeddings, lm_head) = 4186432.
  EXPECT_EQ(s.NumParameters(), 4186432);
  // r 8 on qkv (64 -> 192), o (64 -> 64), gate_up (64 -> 256), down (128 -> 64):
  // 8 * (256 + 128 + 320 + 192) = 7168 per layer, x2.
  EXPECT_EQ(model::CountLoraParameters(s, 8, {}), 14336);
  EXPECT_EQ(model::CountLoraParameters(s, 8, {"qkv_proj"}), 2 * 8 * 256);
  EXPECT_EQ(model::CountLoraParameters(s, 8, {"nonexistent"}), 0);

  // LoRA, supervised, micro 1 x 128 tokens, fp32, no checkpointing.
  model::TrainingMemoryInput in;
  in.lora_rank = 8;
  in.micro_batch_size = 1;
  in.sequence_length = 128;
  TrainingMemory e = EstimateTrainingMemory(s, in);
  EXPECT_EQ(e.weights, 4186432 * 4 + 14336 * 4);  // 16803072
  EXPECT_EQ(e.gradients, 14336 * 4);
  EXPECT_EQ(e.optimizer_state, 14336 * 8);
  // A = 4*64 + 2*64 + 2*64 + 4*128 = 1024, + 2*4*128 score/probability
  // elements: 2048 a layer; per token 2*2048 + 64 (the vocabulary head's
  // Jacobian) = 4160 elements = 16640 bytes, x 128 tokens; + the head's
  // chunk: 2 x min(130, 128) rows x 32064 x 4 bytes = 32833536.
  EXPECT_EQ(e.activations, 16640 * 128 + 32833536);
  EXPECT_EQ(e.total(), 51938560);

  // The same on a GPU: the frozen base in bf16 (the adapter, its gradients
  // and moments fp32); per token 2 layers x 1024 x 2 bytes + a log-sum-exp
  // per head and layer (2 x 4 x 4 bytes) + the head's 64 x 2 = 4256 bytes,
  // x 128, + the same chunk.
  in.precision = TrainingPrecision::kBf16Autocast;
  e = EstimateTrainingMemory(s, in);
  EXPECT_EQ(e.weights, 4186432 * 2 + 14336 * 4);
  EXPECT_EQ(e.gradients, 14336 * 4);
  EXPECT_EQ(e.optimizer_state, 14336 * 8);
  EXPECT_EQ(e.activations, 4256 * 128 + 32833536);
  EXPECT_EQ(e.total(), 41980544);
  in.precision = TrainingPrecision::kFp32;

  // The data's longest example known (32 tokens): scores span 32 keys
  // (2 layers x 2*4*32 x 4 = 2048 bytes a token) and the micro-batch holds
  // 32 tokens, packed into one row or not: (8192 + 2048 + 256) x 32 + a
  // chunk of 32 rows. A longest example past S counts as S.
  in.longest_example = 32;
  EXPECT_EQ(EstimateTrainingMemory(s, in).activations, 10496 * 32 + 2 * 32 * 32064 * 4);
  in.longest_example = 1000;
  EXPECT_EQ(EstimateTrainingMemory(s, in).activations, 16640 * 128 + 32833536);
  in.longest_example = 0;

  // Classification with 3 labels: an fp32 [3, 64] label head is trained and
  // the vocabulary head is not run (per token 2 x 2048 elements only).
  model::TrainingMemoryInput cls = in;
  cls.num_labels = 3;
  TrainingMemory c = EstimateTrainingMemory(s, cls);
  EXPECT_EQ(c.weights, 16803072 + 3 * 64 * 4);
  EXPECT_EQ(c.gradients, 14336 * 4 + 3 * 64 * 4);
  EXPECT_EQ(c.optimizer_state, (14336 + 3 * 64) * 8);
  EXPECT_EQ(c.activations, 2 * 2048 * 128 * 4);
  EXPECT_EQ(c.total(), 19075328);

  // Full DPO (a reference copy), gradient checkpointing, micro 2 x 64.
  in.full = true;
  in.dpo = true;
  in.gradient_checkpointing = true;
  in.micro_batch_size = 2;
  in.sequence_length = 64;
  e = EstimateTrainingMemory(s, in);
  EXPECT_EQ(e.weights, 2 * 4186432 * 4);
  EXPECT_EQ(e.gradients, 4186432 * 4);
  EXPECT_EQ(e.optimizer_state, 4186432 * 8);
  // Per token: 2*64 (layer inputs) + 1024 + 2*4*64 (one layer's scores)
  // + 64 = 1728 elements = 6912 bytes; tokens 2 x 64 x 2 (pairs) = 256; + a
  // full chunk: 2 x 130 x 32064 x 4.
  EXPECT_EQ(e.activations, 6912 * 256 + 2 * 130 * 32064 * 4);
  EXPECT_EQ(e.total(), 118844672);
  // Checkpointing only ever lowers activations.
  in.gradient_checkpointing = false;
  EXPECT_GT(EstimateTrainingMemory(s, in).activations, e.activations);
  in.gradient_checkpointing = true;

  // The same on a GPU: fp32 trained weights and autocast's bf16 copies of
  // all but the input embedding ((4186432 - 32064*64) x 2), the reference in
  // bf16; per token (2*64 + 1024) x 2 + one layer's log-sum-exp (4 x 4) +
  // 64 x 2 = 2448 bytes; x 256, + the chunk.
  in.precision = TrainingPrecision::kBf16Autocast;
  e = EstimateTrainingMemory(s, in);
  EXPECT_EQ(e.weights, 4186432 * 4 + (4186432 - 32064 * 64) * 2 + 4186432 * 2);
  EXPECT_EQ(e.gradients, 4186432 * 4);
  EXPECT_EQ(e.optimizer_state, 4186432 * 8);
  EXPECT_EQ(e.activations, 2448 * 256 + 2 * 130 * 32064 * 4);
  EXPECT_EQ(e.total(), 113597696);
}

TEST(MemoryEstimateTest, Phi3MiniLoraFitsA16GiBGpuInBf16NotInFp32) {
  // Phi-3-mini's shapes (config.json of microsoft/Phi-3-mini-4k-instruct):
  // 3.82B parameters. LoRA r 16, micro-batch 1 x 2048, checkpointing.
  model::ModelConfig c = TinyPhi3();
  c.hidden_size = 3072;
  c.num_hidden_layers = 32;
  c.num_attention_heads = 32;
  c.num_key_value_heads = 32;
  c.head_dim = 96;
  c.intermediate_size = 8192;
  c.vocab_size = 32064;
  EXPECT_EQ(c.NumParameters(), 3821079552);
  model::TrainingMemoryInput in;
  in.lora_rank = 16;
  in.micro_batch_size = 1;
  in.sequence_length = 2048;
  in.gradient_checkpointing = true;
  constexpr int64_t G = int64_t{1} << 30;
  in.precision = model::TrainingPrecision::kBf16Autocast;
  const int64_t gpu = model::EstimateTrainingMemory(c, in).total();
  in.precision = model::TrainingPrecision::kFp32;
  const int64_t cpu = model::EstimateTrainingMemory(c, in).total();
  EXPECT_GT(gpu, 7 * G);  // the bf16 base alone is 7.1 GiB
  EXPECT_LT(gpu, 16 * G);  // 8.1 GiB
  EXPECT_GT(cpu, 16 * G);  // 16.9 GiB: fp32 weights and the S x S scores
}

TEST(MemoryEstimateTest, CatalogReadsTheShapeFromConfigJson) {
  testing::TempDir dir;
  std::filesystem::create_directories(dir.Join("tiny-phi3"));
  std::ofstream(dir.Join("tiny-phi3/config.json"))
      << R"({"model_type":"phi3","hidden_size":64,"num_hidden_layers":2,)"
         R"("num_attention_heads":4,"num_key_value_heads":4,"intermediate_size":128,)"
         R"("vocab_size":32064,"max_position_embeddings":4096,"tie_word_embeddings":false})";
  BaseModelCatalog catalog(dir.path());
  auto m = catalog.Get("tiny-phi3");
  ASSERT_THAT(m, IsOk());
  EXPECT_EQ(m->config.head_dim, 16);
  EXPECT_TRUE(m->config.fused_projections());
  EXPECT_EQ(m->parameters, 4186432);
  v1::Hyperparameters h;
  h.set_lora_rank(8);
  h.set_micro_batch_size(1);
  h.set_max_sequence_length(128);
  v1::Method sup;
  sup.mutable_supervised();
  v1::MemoryEstimate e =
      EstimateJobMemory(*m, v1::ADAPTER_TYPE_LORA, sup, h, 0, model::TrainingPrecision::kFp32);
  EXPECT_EQ(e.total_bytes(), 51938560);
  EXPECT_EQ(e.dtype(), "float32");
  e = EstimateJobMemory(*m, v1::ADAPTER_TYPE_LORA, sup, h, 0,
                        model::TrainingPrecision::kBf16Autocast);
  EXPECT_EQ(e.total_bytes(), 41980544);
  EXPECT_EQ(e.dtype(), "bfloat16");
}

TEST(SchedulerStoreTest, CommitsAndReopensWithNothingLost) {
  testing::TempDir dir;
  const std::string path = dir.Join("s.db");
  {
    auto store = SchedulerStore::Open(path);
    ASSERT_THAT(store, IsOk());
    Batch b;
    JobRecord j;
    j.tenant = "t1";
    j.queue_seq = 7;
    j.held_files = {"file-a", "file-b"};
    j.last_event_seq = 1;
    j.resume_artifact = "jobs/ftjob-1/checkpoints/step-10";
    j.alt_memory_estimate.set_total_bytes(123);
    j.alt_memory_estimate.set_dtype("bfloat16");
    j.job.set_id("ftjob-1");
    j.job.set_state(v1::JOB_STATE_QUEUED);
    b.jobs.emplace_back("ftjob-1", j);
    v1::JobEvent e;
    e.set_sequence(1);
    e.set_state(v1::JOB_STATE_QUEUED);
    b.events.emplace_back("ftjob-1", e);
    ModelRecord m;
    m.tenant = "t1";
    m.artifact = "jobs/ftjob-1/result";
    m.model.set_id("ft:base::ftjob-1");
    b.models.push_back(m);
    DeploymentRecord d;
    d.tenant = "t1";
    d.base_artifact = "base";
    d.deployment.set_id("dep-1");
    b.deployments.push_back(d);
    AssignmentRecord a;
    a.node_id = "node-1";
    a.assignment.set_assignment_id("asg-1");
    a.assignment.set_job_id("ftjob-1");
    b.assignments.push_back(a);
    b.nodes.push_back(NodeRecord{"node-1", "gpu-a", "10.0.0.1:7000", 4, 4, int64_t{80} << 30});
    ASSERT_THAT((*store)->Commit(b), IsOk());
    // A batch that fails (duplicate event) leaves nothing behind.
    Batch bad;
    JobRecord j2 = j;
    j2.job.set_state(v1::JOB_STATE_RUNNING);
    bad.jobs.emplace_back("ftjob-1", j2);
    bad.events.emplace_back("ftjob-1", e);
    EXPECT_THAT((*store)->Commit(bad), StatusIs(absl::StatusCode::kAlreadyExists));
  }
  auto store = SchedulerStore::Open(path);
  ASSERT_THAT(store, IsOk());
  auto snap = (*store)->Load();
  ASSERT_THAT(snap, IsOk());
  ASSERT_EQ(snap->jobs.count("ftjob-1"), 1u);
  const JobRecord& j = snap->jobs.at("ftjob-1");
  EXPECT_EQ(j.job.state(), v1::JOB_STATE_QUEUED);  // the failed batch did not land
  EXPECT_EQ(j.tenant, "t1");
  EXPECT_EQ(j.queue_seq, 7);
  EXPECT_THAT(j.held_files, ElementsAre("file-a", "file-b"));
  EXPECT_EQ(j.resume_artifact, "jobs/ftjob-1/checkpoints/step-10");
  EXPECT_EQ(j.alt_memory_estimate.total_bytes(), 123);
  EXPECT_EQ(j.alt_memory_estimate.dtype(), "bfloat16");
  ASSERT_EQ(snap->events["ftjob-1"].size(), 1u);
  ASSERT_EQ(snap->models.size(), 1u);
  EXPECT_EQ(snap->models[0].artifact, "jobs/ftjob-1/result");
  ASSERT_EQ(snap->deployments.size(), 1u);
  ASSERT_EQ(snap->assignments.size(), 1u);
  EXPECT_EQ(snap->assignments[0].node_id, "node-1");
  ASSERT_EQ(snap->nodes.size(), 1u);
  EXPECT_EQ(snap->nodes[0].slots, 4);
  EXPECT_EQ(snap->nodes[0].gpus, 4);
  EXPECT_EQ(snap->nodes[0].slot_memory_bytes, int64_t{80} << 30);
}

TEST(SchedulerStoreTest, ConcurrentCommitsShareFsyncsAndAllSurvive) {
  testing::TempDir dir;
  const std::string path = dir.Join("g.db");
  constexpr int kThreads = 8, kEach = 40;
  int64_t syncs = 0;
  {
    auto store = SchedulerStore::Open(path);
    ASSERT_THAT(store, IsOk());
    std::vector<std::thread> threads;
    std::atomic<int> failures{0};
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < kEach; ++i) {
          Batch b;
          JobRecord j;
          j.tenant = "t";
          j.queue_seq = t * kEach + i;
          std::string id = absl::StrCat("ftjob-", t, "-", i);
          j.job.set_id(id);
          b.jobs.emplace_back(id, j);
          auto seq = (*store)->Commit(b);
          if (!seq.ok() || !(*store)->Sync(*seq).ok()) ++failures;
        }
      });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(failures.load(), 0);
    syncs = (*store)->syncs();
  }
  EXPECT_GE(syncs, 1);
  EXPECT_LE(syncs, kThreads * kEach);
  auto store = SchedulerStore::Open(path);
  ASSERT_THAT(store, IsOk());
  auto snap = (*store)->Load();
  ASSERT_THAT(snap, IsOk());
  EXPECT_EQ(snap->jobs.size(), static_cast<size_t>(kThreads * kEach));
}


TEST(SchedulerStoreTest, AppendedBatchesShareOneCommitAndAFailingOneLeavesTheOthers) {
  testing::TempDir dir;
  const std::string path = dir.Join("a.db");
  {
    auto store = SchedulerStore::Open(path);
    ASSERT_THAT(store, IsOk());
    auto job = [](const std::string& id, v1::JobState state) {
      Batch b;
      JobRecord j;
      j.tenant = "t";
      j.job.set_id(id);
      j.job.set_state(state);
      b.jobs.emplace_back(id, j);
      v1::JobEvent e;
      e.set_sequence(1);
      b.events.emplace_back(id, e);
      return b;
    };
    auto first = (*store)->Append(job("ftjob-1", v1::JOB_STATE_QUEUED));
    ASSERT_THAT(first, IsOk());
    // The same event again: refused, and job 1's row keeps its state.
    EXPECT_THAT((*store)->Append(job("ftjob-1", v1::JOB_STATE_RUNNING)),
                StatusIs(absl::StatusCode::kAlreadyExists));
    auto second = (*store)->Append(job("ftjob-2", v1::JOB_STATE_QUEUED));
    ASSERT_THAT(second, IsOk());
    EXPECT_GT(*second, *first);
    EXPECT_EQ((*store)->syncs(), 0);  // nothing committed yet
    // No commit under way: the callback's caller leads it, and both batches
    // become durable in one round before the callback runs.
    bool called = false;
    (*store)->WhenDurable(*second, [&](absl::Status s) {
      EXPECT_THAT(s, IsOk());
      called = true;
    });
    EXPECT_TRUE(called);
    EXPECT_EQ((*store)->syncs(), 1);
    // Already durable: answered at once, without another round.
    EXPECT_THAT((*store)->Sync(*first), IsOk());
    EXPECT_EQ((*store)->syncs(), 1);
  }
  auto store = SchedulerStore::Open(path);
  ASSERT_THAT(store, IsOk());
  auto snap = (*store)->Load();
  ASSERT_THAT(snap, IsOk());
  ASSERT_EQ(snap->jobs.size(), 2u);
  EXPECT_EQ(snap->jobs.at("ftjob-1").job.state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(snap->events["ftjob-1"].size(), 1u);
  EXPECT_EQ(snap->events["ftjob-2"].size(), 1u);
}

TEST(ModelIds, ResultsAndCheckpointsParseAndPrint) {
  auto r = ParseFineTunedId("ft:tiny:mine:ftjob-1");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->base, "tiny");
  EXPECT_EQ(r->suffix, "mine");
  EXPECT_EQ(r->job, "ftjob-1");
  EXPECT_EQ(r->checkpoint_step, -1);
  auto c = ParseFineTunedId("ft:tiny::ftjob-1:ckpt-step-40");
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->suffix, "");
  EXPECT_EQ(c->checkpoint_step, 40);
  EXPECT_EQ(CheckpointModelId("tiny", "", "ftjob-1", 40), "ft:tiny::ftjob-1:ckpt-step-40");
  EXPECT_EQ(FineTunedModelId("tiny", "mine", "ftjob-1"), "ft:tiny:mine:ftjob-1");
  for (const char* bad : {"tiny", "ft:", "ft:tiny:mine", "ft::mine:ftjob-1", "ft:tiny:mine:",
                          "ft:tiny:mine:ftjob-1:step-4", "ft:tiny:mine:ftjob-1:ckpt-step-",
                          "ft:tiny:mine:ftjob-1:ckpt-step-x", "ft:a:b:c:ckpt-step-1:more"})
    EXPECT_FALSE(ParseFineTunedId(bad).has_value()) << bad;
  EXPECT_EQ(CheckpointAdapterArtifact("jobs/j/checkpoints/step-1"), "jobs/j/checkpoints/step-1/adapter");
}

TEST(ModelIds, ContinuingTakesTheAdaptersShapeAndNamesEveryMismatch) {
  testing::TempDir dir;
  EXPECT_THAT(ReadAdapterConfig(dir.path()), StatusIs(absl::StatusCode::kNotFound));
  std::ofstream(dir.Join("adapter_config.json")) << "{not json";
  EXPECT_THAT(ReadAdapterConfig(dir.path()), StatusIs(absl::StatusCode::kDataLoss));
  std::ofstream(dir.Join("adapter_config.json"))
      << R"({"r": 4, "lora_alpha": 8, "target_modules": ["v_proj", "q_proj"]})";
  auto a = ReadAdapterConfig(dir.path());
  ASSERT_THAT(a, IsOk());
  EXPECT_EQ(a->rank, 4);
  EXPECT_DOUBLE_EQ(a->alpha, 8);

  v1::Hyperparameters h;  // auto: taken from the adapter
  std::vector<errors::FieldViolation> bad;
  ContinueFromAdapter(*a, v1::ADAPTER_TYPE_UNSPECIFIED, &h, &bad);
  EXPECT_THAT(bad, IsEmpty());
  EXPECT_EQ(h.lora_rank(), 4);
  EXPECT_DOUBLE_EQ(h.lora_alpha(), 8);
  EXPECT_THAT(h.lora_target_modules(), ElementsAre("v_proj", "q_proj"));

  v1::Hyperparameters same;  // equal values (targets in any order)
  same.set_lora_rank(4);
  same.add_lora_target_modules("q_proj");
  same.add_lora_target_modules("v_proj");
  ContinueFromAdapter(*a, v1::ADAPTER_TYPE_LORA, &same, &bad);
  EXPECT_THAT(bad, IsEmpty());

  v1::Hyperparameters other;
  other.set_lora_rank(16);
  other.set_lora_alpha(32);
  other.add_lora_target_modules("q_proj");
  ContinueFromAdapter(*a, v1::ADAPTER_TYPE_FULL, &other, &bad);
  std::vector<std::string> fields;
  for (const auto& v : bad) fields.push_back(v.field);
  EXPECT_THAT(fields, ElementsAre("adapter", "hyperparameters.lora_rank", "hyperparameters.lora_alpha",
                                  "hyperparameters.lora_target_modules"));
}

// Fair share at equal priority: the tenant holding fewer slots goes first,
// then age; a higher priority still goes first.
TEST(Placement, FairShareBetweenTenantsAtEqualPriority) {
  std::vector<QueuedJob> queue;
  for (int i = 1; i <= 6; ++i) queue.push_back({absl::StrCat("a", i), 0, i, 1, "tenant-a"});
  queue.push_back({"b7", 0, 7, 1, "tenant-b"});
  queue.push_back({"b8", 0, 8, 1, "tenant-b"});
  auto ids = [](const PlacementResult& r) {
    std::vector<std::string> out;
    for (const auto& p : r.placed) out.push_back(p.job_id);
    return out;
  };
  // Nothing running: alternate (ties to the older head job).
  EXPECT_THAT(ids(Place(queue, {{"n1", 4, 4}})), ElementsAre("a1", "b7", "a2", "b8"));
  // Tenant a already holds 3 slots: b's jobs first, then a's by age.
  EXPECT_THAT(ids(Place(queue, {{"n1", 4, 4}}, {{"tenant-a", 3}})),
              ElementsAre("b7", "b8", "a1", "a2"));
  // Gangs count their slots: a 3-slot b job makes b the larger holder.
  std::vector<QueuedJob> gangs = queue;
  gangs[6].world_size = 3;
  EXPECT_THAT(ids(Place(gangs, {{"n1", 6, 6}})), ElementsAre("a1", "b7", "a2", "a3"));
  // A gang that cannot start is skipped and does not count.
  EXPECT_THAT(ids(Place(gangs, {{"n1", 2, 2}, {"n2", 2, 0}})), ElementsAre("a1", "b8"));
  // A higher priority wins whatever its tenant holds.
  queue.push_back({"a-urgent", 5, 9, 1, "tenant-a"});
  EXPECT_THAT(ids(Place(queue, {{"n1", 2, 2}}, {{"tenant-a", 10}})),
              ElementsAre("a-urgent", "b7"));
  // The queue order (positions): as if each job started in turn.
  SortQueue(queue, {{"tenant-a", 1}});
  std::vector<std::string> order;
  for (const auto& q : queue) order.push_back(q.id);
  EXPECT_THAT(order, ElementsAre("a-urgent", "b7", "b8", "a1", "a2", "a3", "a4", "a5", "a6"));
}

// A deployment written before usage was kept (migration 4) is counted from
// its created_at once the scheduler opens the store.
TEST(UsageCoreTest, DeploymentsFromBeforeUsageAreCountedFromCreation) {
  testing::TempDir dir;
  const std::string path = dir.Join("s.db");
  const absl::Time t0 = absl::FromUnixSeconds(1700000000);
  {
    auto store = SchedulerStore::Open(path);
    ASSERT_THAT(store, IsOk());
    Batch b;
    DeploymentRecord d;
    d.tenant = "t1";
    d.base_artifact = "base";
    d.deployment.set_id("dep-old");
    d.deployment.set_model("base");
    d.deployment.set_replicas(3);
    d.deployment.mutable_created_at()->set_seconds(absl::ToUnixSeconds(t0));
    b.deployments.push_back(d);
    ASSERT_THAT((*store)->Commit(b), IsOk());
  }
  ManualClock clock(t0 + absl::Hours(2));
  SchedulerOptions options;
  options.db_path = path;
  options.clock = &clock;
  for (int open = 0; open < 2; ++open) {  // the stretch is written once, then kept
    auto s = Scheduler::Open(options, nullptr);
    ASSERT_THAT(s, IsOk());
    auto u = (*s)->GetUsage("t1", t0 - absl::Hours(1), t0 + absl::Hours(5));
    ASSERT_THAT(u, IsOk());
    ASSERT_EQ(u->deployments_size(), 1);
    EXPECT_DOUBLE_EQ(u->deployments(0).replica_hours(), 2 * 3);
    EXPECT_FALSE(u->deployments(0).has_cost());  // no price table
    EXPECT_THAT(u->totals().unpriced_base_models(), ElementsAre("base"));
    EXPECT_EQ((*s)->GetUsage("t2", t0, t0 + absl::Hours(5))->deployments_size(), 0);
  }
}


// Preemption across a restart. Before, which running jobs had been asked to
// checkpoint and stop (and for which queued job) lived only in memory: a
// scheduler restarted mid-preemption no longer asked the victim to stop, and
// the victim's rank, once stopped, was taken for a failure. Now the mark is a
// column of the job row (JobRecord::preempted_for, migration 5), written with
// the "preempted by" event; the victim keeps its queue_seq (admission age)
// when requeued, as before. The scheduler is dropped (every acknowledged
// mutation is already committed, as after SIGKILL) and reopened on the same
// file at two points of the preemption.
TEST(PreemptionRestartTest, AVictimAskedBeforeARestartStopsRequeuesAndResumes) {
  testing::TempDir dir;
  const std::string path = dir.Join("s.db");
  const absl::Time t0 = absl::FromUnixSeconds(1700000000);
  {
    auto store = SchedulerStore::Open(path);
    ASSERT_THAT(store, IsOk());
    Batch b;
    auto job = [&](const std::string& id, v1::JobState state, int priority, int64_t seq) {
      JobRecord j;
      j.tenant = "t1";
      j.queue_seq = seq;
      j.attempt = state == kRunning ? 1 : 0;
      j.last_event_seq = 0;
      j.job.set_id(id);
      j.job.set_state(state);
      j.job.set_priority(priority);
      j.job.set_gpus(1);
      j.job.set_base_model("base");
      b.jobs.emplace_back(id, j);
    };
    job("ftjob-low", kRunning, 0, 1);
    job("ftjob-high", kQueued, 10, 2);
    AssignmentRecord a;
    a.node_id = "node-1";
    a.assignment.set_assignment_id("asg-low-1");
    a.assignment.set_job_id("ftjob-low");
    a.assignment.set_world_size(1);
    a.assignment.add_gpu_indices(0);
    b.assignments.push_back(a);
    b.nodes.push_back(NodeRecord{"node-1", "gpu-a", "127.0.0.1:7000", 1});
    ASSERT_THAT((*store)->Commit(b), IsOk());
  }
  ManualClock clock(t0);
  SchedulerOptions options;
  options.db_path = path;
  options.clock = &clock;
  auto heartbeat = [](Scheduler& s, std::vector<std::string> running) {
    iv1::HeartbeatRequest req;
    req.set_node_id("node-1");
    for (const auto& id : running) req.add_assignments()->set_assignment_id(id);
    return s.Heartbeat(req);
  };
  auto state = [](Scheduler& s, const std::string& id) {
    auto j = s.GetJob("t1", id);
    return j.ok() ? j->state() : v1::JOB_STATE_UNSPECIFIED;
  };
  const std::string ckpt = "jobs/ftjob-low/checkpoints/step-000050";
  {
    auto s = Scheduler::Open(options, nullptr);
    ASSERT_THAT(s, IsOk());
    (*s)->Tick(clock.Now());  // no free slot: the low job is asked to stop
    auto hb = heartbeat(**s, {"asg-low-1"});
    ASSERT_THAT(hb, IsOk());
    EXPECT_THAT(hb->checkpoint_and_stop(), ElementsAre("asg-low-1"));
    EXPECT_EQ((*s)->store().Load()->jobs.at("ftjob-low").preempted_for, "ftjob-high");
  }  // killed before the victim checkpoints
  {
    auto s = Scheduler::Open(options, nullptr);
    ASSERT_THAT(s, IsOk());
    auto hb = heartbeat(**s, {"asg-low-1"});  // still asked, not re-chosen
    ASSERT_THAT(hb, IsOk());
    EXPECT_THAT(hb->checkpoint_and_stop(), ElementsAre("asg-low-1"));
    (*s)->Tick(clock.Now());
    iv1::ReportCheckpointRequest c;
    c.set_assignment_id("asg-low-1");
    c.set_step(50);
    c.set_artifact(ckpt);
    ASSERT_THAT((*s)->ReportCheckpoint(c), IsOk());
    auto events = (*s)->JobEvents("t1", "ftjob-low", 0, 100, nullptr);
    ASSERT_THAT(events, IsOk());
    int asked = 0;
    for (const auto& e : *events) asked += absl::StrContains(e.message(), "preempted by ftjob-high");
    EXPECT_EQ(asked, 1);  // asked once, across the restart
  }  // killed after the checkpoint, before the rank's exit is reported
  ManualClock later(t0 + absl::Seconds(3));
  options.clock = &later;
  auto s = Scheduler::Open(options, nullptr);
  ASSERT_THAT(s, IsOk());
  // The stopped rank reports failure (SIGTERM): a preempted stop, not a failure.
  iv1::CompleteAssignmentRequest done;
  done.set_assignment_id("asg-low-1");
  done.set_succeeded(false);
  ASSERT_THAT((*s)->CompleteAssignment(done), IsOk());
  EXPECT_EQ(state(**s, "ftjob-low"), kQueued);
  EXPECT_EQ((*s)->store().Load()->jobs.at("ftjob-low").preempted_for, "");
  (*s)->Tick(later.Now());
  EXPECT_EQ(state(**s, "ftjob-high"), kRunning);
  EXPECT_EQ(state(**s, "ftjob-low"), kQueued);
  auto hb = heartbeat(**s, {});
  ASSERT_THAT(hb, IsOk());
  ASSERT_EQ(hb->assignments_size(), 1);
  EXPECT_EQ(hb->assignments(0).job_id(), "ftjob-high");
  EXPECT_THAT(hb->checkpoint_and_stop(), IsEmpty());
  done.set_assignment_id(hb->assignments(0).assignment_id());
  done.set_succeeded(true);
  done.set_result_artifact("jobs/ftjob-high/result");
  ASSERT_THAT((*s)->CompleteAssignment(done), IsOk());
  EXPECT_EQ(state(**s, "ftjob-high"), kSucceeded);
  (*s)->Tick(later.Now());
  hb = heartbeat(**s, {});
  ASSERT_THAT(hb, IsOk());
  ASSERT_EQ(hb->assignments_size(), 1);
  EXPECT_EQ(hb->assignments(0).job_id(), "ftjob-low");
  EXPECT_EQ(hb->assignments(0).resume_checkpoint(), ckpt);
  EXPECT_EQ(state(**s, "ftjob-low"), kRunning);
}

}  // namespace
}  // namespace tunefleet::scheduler
