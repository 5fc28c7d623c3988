// The real binaries together (fleet.h): a job runs to SUCCEEDED with its
// checkpoints and PEFT result; then an agent killed with SIGKILL mid-run
// leaves no worker process behind; pause, cancel, and two ranks on a node.
#include "tests/trainer_agent/fleet.h"

namespace tunefleet {
namespace {

using ::tunefleet::testing::IsOk;
using namespace ::tunefleet::fleet_testing;  // NOLINT

class AgentFleetTest : public FleetTest {};

TEST_F(AgentFleetTest, AJobRunsToSucceededAndAKilledAgentLeavesNoWorker) {
  TF_ASSERT_OK_AND_ASSIGN(std::string file, Upload(trainer::testing::ChatJsonl(12)));
  TF_ASSERT_OK_AND_ASSIGN(std::string valid, Upload(trainer::testing::ChatJsonl(10)));
  TF_ASSERT_OK_AND_ASSIGN(v1::Job job, CreateJob(file, /*epochs=*/2, /*batch=*/4, valid));
  v1::Job now;
  ASSERT_TRUE(WaitFor(
      [&] {
        auto j = GetJob(job.id());
        if (!j.ok()) return false;
        now = *j;
        return now.state() == v1::JOB_STATE_SUCCEEDED || now.state() == v1::JOB_STATE_FAILED;
      },
      absl::Seconds(120)))
      << Logs();
  ASSERT_EQ(now.state(), v1::JOB_STATE_SUCCEEDED) << now.error().message() << "\n" << Logs();
  EXPECT_EQ(now.result_model(), absl::StrCat("ft:phi-3-tiny:agent:", job.id()));
  EXPECT_GT(now.trained_tokens(), 0);
  EXPECT_GT(now.memory_estimate().measured_peak_bytes(), 0);  // the worker's, via the agent
  EXPECT_GT(now.memory_estimate().measured_runtime_bytes(), 0);
  EXPECT_LT(now.memory_estimate().measured_runtime_bytes(),
            now.memory_estimate().measured_peak_bytes());
  // The worker's evaluation, forwarded by the agent: the fine-tuned model
  // and its base on the same validation data.
  EXPECT_TRUE(now.evaluation().has_valid_loss());
  EXPECT_TRUE(now.evaluation().has_base_valid_loss());
  const std::string result = dir_.Join(absl::StrCat("artifacts/jobs/", job.id(), "/result"));
  EXPECT_TRUE(std::filesystem::exists(result + "/adapter_config.json"));
  EXPECT_TRUE(std::filesystem::exists(result + "/adapter_model.safetensors"));
  {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, tenant_.key, absl::Seconds(10));
    v1::ListCheckpointsRequest req;
    req.set_job_id(job.id());
    v1::ListCheckpointsResponse resp;
    ASSERT_TRUE(jobs_->ListCheckpoints(&ctx, req, &resp).ok());
    EXPECT_GE(resp.checkpoints_size(), 1);
  }

  // A long job: SIGKILL the agent while its worker trains.
  TF_ASSERT_OK_AND_ASSIGN(v1::Job longer, CreateJob(file, /*epochs=*/20, /*batch=*/1));
  const std::string needle = dir_.Join("trainer/work/");
  std::vector<pid_t> workers;
  ASSERT_TRUE(WaitFor([&] {
    auto j = GetJob(longer.id());
    workers = FindProcesses(needle);
    return j.ok() && j->completed_steps() > 0 && Checkpoints(longer.id()) >= 1 &&
           !workers.empty();
  }, absl::Seconds(120)))
      << Logs();
  ASSERT_THAT(agent_.process->Signal(SIGKILL), IsOk());
  ASSERT_THAT(agent_.process->Wait(absl::Seconds(10)), IsOk());
  for (pid_t pid : workers) {
    EXPECT_TRUE(WaitFor([&] { return Dead(pid); }, absl::Seconds(20))) << "worker " << pid;
  }
  EXPECT_TRUE(FindProcesses(needle).empty());

  // The agent restarts under the same name: the scheduler counts the lost
  // attempt, requeues the job from its last checkpoint, and it finishes.
  StartAgent();
  v1::Job after = WaitState(longer.id(), {v1::JOB_STATE_SUCCEEDED, v1::JOB_STATE_FAILED});
  EXPECT_EQ(after.state(), v1::JOB_STATE_SUCCEEDED) << after.error().message() << "\n" << Logs();
}

TEST_F(AgentFleetTest, PauseCheckpointsAndStopsThenResumeFinishes) {
  TF_ASSERT_OK_AND_ASSIGN(std::string file, Upload(trainer::testing::ChatJsonl(12)));
  TF_ASSERT_OK_AND_ASSIGN(v1::Job job, CreateJob(file, /*epochs=*/50, /*batch=*/1));
  // Paused once the first checkpoint (every tenth of the run) is reported.
  ASSERT_TRUE(WaitFor([&] { return Checkpoints(job.id()) >= 1; }, absl::Seconds(120))) << Logs();
  {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, tenant_.key, absl::Seconds(10));
    v1::PauseJobRequest req;
    req.set_job_id(job.id());
    v1::Job paused;
    ASSERT_TRUE(jobs_->PauseJob(&ctx, req, &paused).ok());
  }
  // SIGTERM: the worker checkpoints where it is and exits 0.
  v1::Job paused = WaitState(job.id(), {v1::JOB_STATE_PAUSED, v1::JOB_STATE_FAILED,
                                        v1::JOB_STATE_SUCCEEDED});
  ASSERT_EQ(paused.state(), v1::JOB_STATE_PAUSED) << paused.error().message() << "\n" << Logs();
  EXPECT_GE(Checkpoints(job.id()), 1);
  EXPECT_TRUE(FindProcesses(dir_.Join("trainer/work/")).empty());
  {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, tenant_.key, absl::Seconds(10));
    v1::ResumeJobRequest req;
    req.set_job_id(job.id());
    v1::Job resumed;
    ASSERT_TRUE(jobs_->ResumeJob(&ctx, req, &resumed).ok());
  }
  v1::Job done = WaitState(job.id(), {v1::JOB_STATE_SUCCEEDED, v1::JOB_STATE_FAILED});
  EXPECT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.error().message() << "\n" << Logs();
}

TEST_F(AgentFleetTest, CancelKillsTheWorkerAndTheJobIsCancelled) {
  TF_ASSERT_OK_AND_ASSIGN(std::string file, Upload(trainer::testing::ChatJsonl(12)));
  TF_ASSERT_OK_AND_ASSIGN(v1::Job job, CreateJob(file, /*epochs=*/50, /*batch=*/1));
  const std::string needle = dir_.Join("trainer/work/");
  std::vector<pid_t> workers;
  ASSERT_TRUE(WaitFor([&] {
    workers = FindProcesses(needle);
    return Checkpoints(job.id()) >= 1 && !workers.empty();
  }, absl::Seconds(120))) << Logs();
  {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, tenant_.key, absl::Seconds(10));
    v1::CancelJobRequest req;
    req.set_job_id(job.id());
    v1::Job cancelling;
    ASSERT_TRUE(jobs_->CancelJob(&ctx, req, &cancelling).ok());
  }
  v1::Job done = WaitState(job.id(), {v1::JOB_STATE_CANCELLED, v1::JOB_STATE_SUCCEEDED,
                                      v1::JOB_STATE_FAILED});
  EXPECT_EQ(done.state(), v1::JOB_STATE_CANCELLED) << done.error().message() << "\n" << Logs();
  for (pid_t pid : workers) EXPECT_TRUE(Dead(pid)) << "worker " << pid;
}

// Two ranks of one job on this node's two slots: the agent passes the
// scheduler's rendezvous (its advertised host, a port per job) and each
// rank's own part of the shards; the ranks meet over Gloo and finish.
TEST_F(AgentFleetTest, TwoRanksOnOneNodeMeetAndFinish) {
  agent_.process->Signal(SIGTERM).IgnoreError();
  ASSERT_THAT(agent_.process->Wait(absl::Seconds(30)), IsOk());
  StartAgent(/*slots=*/2);
  TF_ASSERT_OK_AND_ASSIGN(std::string file, Upload(trainer::testing::ChatJsonl(12)));
  TF_ASSERT_OK_AND_ASSIGN(v1::Job job, CreateJob(file, /*epochs=*/2, /*batch=*/4, "", /*gpus=*/2));
  v1::Job done = WaitState(job.id(), {v1::JOB_STATE_SUCCEEDED, v1::JOB_STATE_FAILED});
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.error().message() << "\n" << Logs();
  EXPECT_TRUE(std::filesystem::exists(
      dir_.Join(absl::StrCat("artifacts/jobs/", job.id(), "/result/adapter_model.safetensors"))));
}

}  // namespace
}  // namespace tunefleet
