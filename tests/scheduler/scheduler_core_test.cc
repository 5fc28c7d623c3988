// The scheduler's pure parts (state table, queue, gang placement, the auto
// hyperparameter rule) and its SQLite store, including a reopen.
#include <atomic>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "services/scheduler/job_spec.h"
#include "services/scheduler/job_state.h"
#include "services/scheduler/placement.h"
#include "services/scheduler/scheduler_store.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace tunefleet::scheduler {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Pair;
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
    b.nodes.push_back(NodeRecord{"node-1", "gpu-a", "10.0.0.1:7000", 4});
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
  ASSERT_EQ(snap->events["ftjob-1"].size(), 1u);
  ASSERT_EQ(snap->models.size(), 1u);
  EXPECT_EQ(snap->models[0].artifact, "jobs/ftjob-1/result");
  ASSERT_EQ(snap->deployments.size(), 1u);
  ASSERT_EQ(snap->assignments.size(), 1u);
  EXPECT_EQ(snap->assignments[0].node_id, "node-1");
  ASSERT_EQ(snap->nodes.size(), 1u);
  EXPECT_EQ(snap->nodes[0].slots, 4);
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

}  // namespace
}  // namespace tunefleet::scheduler
