// The real binaries together: tunefleet-dataset, tunefleet-scheduler,
// tunefleet-trainer (the agent) and the libtorch tunefleet-train-worker it
// spawns, on a tiny Phi-3 the test writes with `tunefleet-model init-tiny`.
// A job runs to SUCCEEDED with its checkpoints and PEFT result; then an agent
// killed with SIGKILL mid-run leaves no worker process behind.
#include <dirent.h>
#include <signal.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/base/subprocess.h"
#include "common/rpc/auth.h"
#include "common/rpc/channel.h"
#include "common/rpc/status.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tests/trainer_agent/dataset_server.h"
#include "tunefleet/v1/files.grpc.pb.h"
#include "tunefleet/v1/jobs.grpc.pb.h"

namespace tunefleet {
namespace {

using ::tunefleet::testing::IsOk;

template <typename Fn>
bool WaitFor(Fn fn, absl::Duration timeout = absl::Seconds(60)) {
  absl::Time end = absl::Now() + timeout;
  while (absl::Now() < end) {
    if (fn()) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return fn();
}

bool Dead(pid_t pid) {
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  if (!stat) return true;
  std::string content((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  size_t paren = content.rfind(')');
  return paren != std::string::npos && paren + 2 < content.size() &&
         (content[paren + 2] == 'Z' || content[paren + 2] == 'X');
}

// Live processes whose command line contains `needle`.
std::vector<pid_t> FindProcesses(const std::string& needle) {
  std::vector<pid_t> out;
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    int pid = 0;
    if (!absl::SimpleAtoi(e.path().filename().string(), &pid)) continue;
    std::ifstream in(e.path() / "cmdline", std::ios::binary);
    std::string cmd((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::replace(cmd.begin(), cmd.end(), '\0', ' ');
    if (absl::StrContains(cmd, needle) && !Dead(pid)) out.push_back(pid);
  }
  return out;
}

// One service binary on a free port, found through its port file.
struct Service {
  std::unique_ptr<Subprocess> process;
  std::string target;

  static absl::StatusOr<Service> Start(const std::string& name, const std::string& dir,
                                       const std::string& keys, std::vector<std::string> extra) {
    std::string port_file = dir + "/" + name + ".ports.json";
    std::filesystem::remove(port_file);
    std::vector<std::string> argv = {std::string(TUNEFLEET_BIN_DIR) + "/tunefleet-" + name,
                                     "--listen=127.0.0.1:0", "--metrics_listen=off",
                                     "--keys_file=" + keys, "--data_dir=" + dir + "/" + name,
                                     "--port_file=" + port_file, "--drain_timeout=2s",
                                     "--log_level=info"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto proc = Subprocess::Start(argv, Subprocess::Options{dir + "/" + name + ".log", {}});
    if (!proc.ok()) return proc.status();
    Service s;
    s.process = std::make_unique<Subprocess>(std::move(*proc));
    if (!WaitFor([&] { return std::filesystem::exists(port_file); }))
      return absl::DeadlineExceededError(absl::StrCat("tunefleet-", name, " did not start"));
    std::ifstream in(port_file);
    auto j = nlohmann::json::parse(in, nullptr, false);
    if (j.is_discarded()) return absl::InternalError("unreadable port file");
    s.target = absl::StrCat("127.0.0.1:", j["port"].get<int>());
    return s;
  }
  std::shared_ptr<grpc::Channel> Channel() const {
    rpc::ChannelOptions o;
    o.target = target;
    return *rpc::MakeChannel(o);
  }
};

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

class AgentFleetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(text::DefaultLlamaVocabSource())) {
      GTEST_SKIP() << "the npm vocabulary is not installed (scripts/install-deps)";
    }
    keys_ = dir_.Join("keys.txt");
    std::ofstream(keys_) << tenant_.line << "\n" << internal_.line << "\n";
    std::ofstream(dir_.Join("internal.key")) << internal_.key << "\n";
    // A tiny Phi-3 with the real Phi-3 tokenizer.
    auto init = Subprocess::Start({std::string(TUNEFLEET_BIN_DIR) + "/tunefleet-model", "init-tiny",
                                   "--out=" + dir_.Join("models/phi-3-tiny"), "--seed=3"},
                                  Subprocess::Options{dir_.Join("init.log"), {}});
    ASSERT_THAT(init, IsOk());
    auto st = init->Wait(absl::Seconds(120));
    ASSERT_THAT(st, IsOk());
    ASSERT_EQ(*st, 0) << ReadAll(dir_.Join("init.log"));

    auto dataset = Service::Start("dataset", dir_.path(), keys_,
                                  {"--models_dir=" + dir_.Join("models")});
    ASSERT_THAT(dataset, IsOk());
    dataset_ = std::move(*dataset);
    auto scheduler = Service::Start(
        "scheduler", dir_.path(), keys_,
        {"--models_dir=" + dir_.Join("models"), "--artifacts_dir=" + dir_.Join("artifacts"),
         "--dataset_address=" + dataset_.target, "--internal_key_file=" + dir_.Join("internal.key"),
         "--heartbeat_interval=100ms", "--lease=30s", "--tick_interval=20ms"});
    ASSERT_THAT(scheduler, IsOk());
    scheduler_ = std::move(*scheduler);
    StartAgent();
    jobs_ = v1::JobService::NewStub(scheduler_.Channel());
  }

  void StartAgent(int slots = 1) {
    auto agent = Service::Start(
        "trainer", dir_.path(), keys_,
        {"--scheduler_address=" + scheduler_.target, "--dataset_address=" + dataset_.target,
         "--internal_key_file=" + dir_.Join("internal.key"), "--models_dir=" + dir_.Join("models"),
         "--artifacts_dir=" + dir_.Join("artifacts"), "--node_name=node-a",
         absl::StrCat("--slots=", slots)});
    ASSERT_THAT(agent, IsOk());
    agent_ = std::move(*agent);
  }

  absl::StatusOr<std::string> Upload(const std::string& content) {
    auto files = v1::DatasetService::NewStub(dataset_.Channel());
    v1::File file;
    {
      grpc::ClientContext ctx;
      rpc::PrepareContext(&ctx, tenant_.key, absl::Seconds(30));
      auto writer = files->UploadFile(&ctx, &file);
      v1::UploadFileRequest req;
      req.mutable_metadata()->set_filename("train.jsonl");
      req.mutable_metadata()->set_purpose(v1::FILE_PURPOSE_FINE_TUNE);
      writer->Write(req);
      req.set_chunk(content);
      writer->Write(req);
      writer->WritesDone();
      absl::Status s = rpc::FromGrpcStatus(writer->Finish());
      if (!s.ok()) return s;
    }
    v1::File f;
    bool processed = WaitFor([&] {
      grpc::ClientContext ctx;
      rpc::PrepareContext(&ctx, tenant_.key, absl::Seconds(10));
      v1::GetFileRequest req;
      req.set_file_id(file.id());
      return files->GetFile(&ctx, req, &f).ok() && f.status() == v1::FILE_STATUS_PROCESSED;
    });
    if (!processed) return absl::DeadlineExceededError("file not processed");
    return file.id();
  }

  absl::StatusOr<v1::Job> CreateJob(const std::string& file, int epochs, int batch,
                                    const std::string& validation = "", int gpus = 1) {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, tenant_.key, absl::Seconds(10));
    v1::CreateJobRequest req;
    req.set_base_model("phi-3-tiny");
    req.set_training_file(file);
    req.set_validation_file(validation);
    req.set_suffix("agent");
    req.set_gpus(gpus);
    req.mutable_hyperparameters()->set_epochs(epochs);
    req.mutable_hyperparameters()->set_batch_size(batch);
    req.mutable_hyperparameters()->set_max_sequence_length(128);
    req.mutable_hyperparameters()->set_learning_rate_multiplier(10);
    v1::Job job;
    absl::Status s = rpc::FromGrpcStatus(jobs_->CreateJob(&ctx, req, &job));
    if (!s.ok()) return s;
    return job;
  }
  absl::StatusOr<v1::Job> GetJob(const std::string& id) {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, tenant_.key, absl::Seconds(10));
    v1::GetJobRequest req;
    req.set_job_id(id);
    v1::Job job;
    absl::Status s = rpc::FromGrpcStatus(jobs_->GetJob(&ctx, req, &job));
    if (!s.ok()) return s;
    return job;
  }
  // Waits for one of `states`; the job as last seen.
  v1::Job WaitState(const std::string& id, std::vector<v1::JobState> states,
                    absl::Duration timeout = absl::Seconds(180)) {
    v1::Job now;
    WaitFor(
        [&] {
          auto j = GetJob(id);
          if (!j.ok()) return false;
          now = *j;
          return std::find(states.begin(), states.end(), now.state()) != states.end();
        },
        timeout);
    return now;
  }
  int Checkpoints(const std::string& id) {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, tenant_.key, absl::Seconds(10));
    v1::ListCheckpointsRequest req;
    req.set_job_id(id);
    v1::ListCheckpointsResponse resp;
    if (!jobs_->ListCheckpoints(&ctx, req, &resp).ok()) return -1;
    return resp.checkpoints_size();
  }
  std::string Logs() {
    return absl::StrCat("--- trainer.log\n", ReadAll(dir_.Join("trainer.log")),
                        "--- scheduler.log\n", ReadAll(dir_.Join("scheduler.log")));
  }

  tunefleet::testing::TempDir dir_;
  rpc::NewKey tenant_ = rpc::GenerateKey("tenant-a", rpc::Role::kTenant, "a");
  rpc::NewKey internal_ = rpc::GenerateKey("", rpc::Role::kInternal, "svc");
  std::string keys_;
  Service dataset_, scheduler_, agent_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
};

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
