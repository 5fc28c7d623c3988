// The agent's reconcile loop against a test-side TrainerControlService (a
// real gRPC server), a real dataset server with the Phi-3 tokenizer, and
// stand-in workers: shell scripts that read their spec and speak the report
// protocol on fd 3 (the real worker has its own tests; here the subject is
// the agent: fetch, spec, spawn, forward, kill, stop, recover).
#include "services/trainer/agent/agent.h"
#include "services/trainer/agent/gpu_info.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/base/subprocess.h"
#include "common/rpc/channel.h"
#include "services/trainer/agent/agent_service.h"
#include "services/trainer/protocol/shard_file.h"
#include "services/trainer/protocol/worker_spec.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tests/trainer_agent/dataset_server.h"
#include "tests/trainer_agent/fake_scheduler.h"

namespace tunefleet::trainer {
namespace {

using ::testing::HasSubstr;
using ::tunefleet::testing::IsOk;
using testing::FakeScheduler;
namespace iv1 = ::tunefleet::internal::v1;

constexpr absl::Duration kDeadline = absl::Seconds(30);

// The stand-in worker's common part: $spec, field(), say().
constexpr char kPreamble[] = R"(#!/bin/sh
spec="${1#--spec=}"
field() { sed -n "s/.*\"$1\": \"\([^\"]*\)\".*/\1/p" "$spec" | head -1; }
say() { printf '%s\n' "$1" >&3; }
out=$(field output_dir)
ck=$(field checkpoint_root)
)";

bool WaitDead(pid_t pid) {
  absl::Time deadline = absl::Now() + kDeadline;
  while (absl::Now() < deadline) {
    std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
    if (!stat) return true;
    std::string content((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    size_t paren = content.rfind(')');
    if (paren != std::string::npos && paren + 2 < content.size() &&
        (content[paren + 2] == 'Z' || content[paren + 2] == 'X')) {
      return true;
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
  return false;
}

class AgentTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    suite_dir_ = new tunefleet::testing::TempDir();
    skip_ = testing::WriteTokenizerModel(suite_dir_->Join("models"));
    if (!skip_.ok()) return;
    keys_ = *rpc::KeyRing::Parse(absl::StrCat(tenant_.line, "\n", internal_.line, "\n"), "test");
    dataset_ = new testing::DatasetServer(suite_dir_->Join("dataset"), suite_dir_->Join("models"),
                                          keys_);
    auto train = dataset_->Upload(tenant_.key, testing::ChatJsonl(12));
    auto valid = dataset_->Upload(tenant_.key, testing::ChatJsonl(10), "valid.jsonl");
    ASSERT_THAT(train, IsOk());
    ASSERT_THAT(valid, IsOk());
    train_file_ = *train;
    valid_file_ = *valid;
  }
  static void TearDownTestSuite() {
    delete dataset_;
    dataset_ = nullptr;
    delete suite_dir_;
    suite_dir_ = nullptr;
  }
  void SetUp() override {
    if (absl::IsFailedPrecondition(skip_)) GTEST_SKIP() << skip_;
    ASSERT_THAT(skip_, IsOk());
    scheduler_ = std::make_unique<FakeScheduler>(keys_);
  }
  void TearDown() override {
    if (agent_) agent_->Stop();
    agent_.reset();
    scheduler_.reset();
  }

  std::string Worker(const std::string& body) {
    std::string path = dir_.Join(absl::StrCat("worker-", ++workers_, ".sh"));
    std::ofstream(path) << kPreamble << body << "\n";
    chmod(path.c_str(), 0755);
    return path;
  }
  TrainerAgentOptions Options(const std::string& worker) {
    TrainerAgentOptions o;
    o.node_name = "node-a";
    o.slots = 2;
    o.models_dir = suite_dir_->Join("models");
    o.artifacts_dir = dir_.Join("artifacts");
    o.data_dir = dir_.Join("data");
    o.worker_binary = worker;
    o.api_key = internal_.key;
    o.rpc_timeout = absl::Seconds(5);
    o.max_backoff = absl::Milliseconds(100);
    return o;
  }
  void StartAgent(TrainerAgentOptions o) {
    rpc::ChannelOptions sc;
    sc.target = scheduler_->address();
    rpc::ChannelOptions dc;
    dc.target = dataset_->address();
    agent_ = std::make_unique<TrainerAgent>(o, *rpc::MakeChannel(sc), *rpc::MakeChannel(dc));
    agent_->Start("127.0.0.1:1");
  }
  static iv1::Assignment Assignment(const std::string& id, const std::string& job = "ftjob-1") {
    iv1::Assignment a;
    a.set_assignment_id(id);
    a.set_job_id(job);
    a.set_rank(0);
    a.set_world_size(1);
    a.set_master_address("127.0.0.1");
    a.set_master_port(29500);
    a.set_base_model(testing::kTinyModel);
    a.set_training_file(train_file_);
    a.set_validation_file(valid_file_);
    a.set_tenant("tenant-a");
    a.set_total_steps(3);
    a.mutable_hyperparameters()->set_epochs(1);
    a.mutable_hyperparameters()->set_batch_size(4);
    a.mutable_hyperparameters()->set_learning_rate(2e-4);
    a.mutable_hyperparameters()->set_max_sequence_length(256);
    a.mutable_hyperparameters()->set_seed(7);
    a.add_gpu_indices(0);
    return a;
  }
  std::string SpecPath(const std::string& assignment) {
    return dir_.Join(absl::StrCat("data/work/", assignment, "/spec.json"));
  }
  pid_t ReadPid(const std::string& path) {
    absl::Time deadline = absl::Now() + kDeadline;
    while (absl::Now() < deadline) {
      std::ifstream in(path);
      std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      int pid = 0;
      if (!s.empty() && s.back() == '\n' &&
          absl::SimpleAtoi(absl::StripAsciiWhitespace(s), &pid)) {
        return pid;
      }
      absl::SleepFor(absl::Milliseconds(5));
    }
    ADD_FAILURE() << "no pid in " << path;
    return -1;
  }

  // The real tunefleet-trainer binary against this test's scheduler and
  // dataset service, with `args` added.
  absl::StatusOr<Subprocess> StartAgentBinary(std::vector<std::string> args) {
    std::string keys_file = dir_.Join("keys");
    std::ofstream(keys_file) << internal_.line << "\n";
    std::string key_file = dir_.Join("internal.key");
    std::ofstream(key_file) << internal_.key << "\n";
    std::vector<std::string> argv = {
        absl::StrCat(TUNEFLEET_BIN_DIR, "/tunefleet-trainer"), "--listen=127.0.0.1:0",
        "--metrics_listen=off", absl::StrCat("--keys_file=", keys_file),
        absl::StrCat("--internal_key_file=", key_file),
        absl::StrCat("--scheduler_address=", scheduler_->address()),
        absl::StrCat("--dataset_address=", dataset_->address()),
        absl::StrCat("--models_dir=", suite_dir_->Join("models")),
        absl::StrCat("--artifacts_dir=", dir_.Join("artifacts")),
        absl::StrCat("--data_dir=", dir_.Join("data")), "--log_level=warn"};
    argv.insert(argv.end(), args.begin(), args.end());
    return Subprocess::Start(argv, Subprocess::Options{dir_.Join("agent.log"), {}});
  }

  static inline tunefleet::testing::TempDir* suite_dir_ = nullptr;
  static inline absl::Status skip_;
  static inline rpc::NewKey tenant_ = rpc::GenerateKey("tenant-a", rpc::Role::kTenant, "a");
  static inline rpc::NewKey internal_ = rpc::GenerateKey("", rpc::Role::kInternal, "svc");
  static inline std::shared_ptr<const rpc::KeyRing> keys_;
  static inline testing::DatasetServer* dataset_ = nullptr;
  static inline std::string train_file_, valid_file_;

  tunefleet::testing::TempDir dir_;
  int workers_ = 0;
  std::unique_ptr<FakeScheduler> scheduler_;
  std::unique_ptr<TrainerAgent> agent_;
};

TEST_F(AgentTest, RunsAnAssignmentAndForwardsEveryReport) {
  std::string env_file = dir_.Join("env");
  StartAgent(Options(Worker(absl::StrCat(R"(
echo "$OMP_WAIT_POLICY" > )", env_file, R"(
say '{"event":"started","total_steps":3,"world_size":1,"rank":0,"resumed_step":0}'
for s in 1 2 3; do
  say "{\"event\":\"progress\",\"step\":$s,\"total_steps\":3,\"epoch\":0.5,\"train_loss\":1.5,\"train_token_accuracy\":0.25,\"learning_rate\":0.0002,\"tokens_per_second\":100,\"trained_tokens\":$((s * 40)),\"metrics\":{\"reward_margin\":0.$s}}"
done
say '{"event":"eval","step":3,"epoch":1,"valid_loss":1.25,"valid_token_accuracy":0.5,"metrics":{"macro_f1":0.75}}'
mkdir -p "$ck/step-00000003"
say "{\"event\":\"checkpoint\",\"step\":3,\"epoch\":1,\"dir\":\"$ck/step-00000003\",\"metrics\":{\"train_loss\":1.5}}"
mkdir -p "$out"
say "{\"event\":\"completed\",\"result_dir\":\"$out\",\"trained_tokens\":120,\"valid_loss\":1.25,\"valid_token_accuracy\":0.5,\"base_valid_loss\":2.5,\"metrics\":{\"base_valid_token_accuracy\":0.125}}"
)"))));
  scheduler_->SetDesired({Assignment("asg-1")});
  auto done = scheduler_->WaitForCompletion("asg-1");
  ASSERT_TRUE(done.has_value());
  EXPECT_TRUE(done->succeeded()) << done->error().message();
  EXPECT_EQ(done->result_artifact(), "jobs/ftjob-1/result");
  EXPECT_EQ(done->trained_tokens(), 120);
  ASSERT_TRUE(done->has_evaluation());
  EXPECT_DOUBLE_EQ(done->evaluation().valid_loss(), 1.25);
  EXPECT_DOUBLE_EQ(done->evaluation().valid_token_accuracy(), 0.5);
  EXPECT_DOUBLE_EQ(done->evaluation().base_valid_loss(), 2.5);
  EXPECT_DOUBLE_EQ(done->evaluation().base_valid_token_accuracy(), 0.125);

  FakeScheduler::Record r = scheduler_->record();
  ASSERT_EQ(r.registrations.size(), 1u);
  EXPECT_EQ(r.registrations[0].node_name(), "node-a");
  EXPECT_EQ(r.registrations[0].slots(), 2);
  EXPECT_EQ(r.registrations[0].agent_address(), "127.0.0.1:1");
  ASSERT_EQ(r.progress.size(), 4u);  // three steps and the evaluation
  EXPECT_EQ(r.progress[2].metrics().step(), 3);
  EXPECT_EQ(r.progress[2].total_steps(), 3);
  EXPECT_DOUBLE_EQ(r.progress[2].metrics().train_loss(), 1.5);
  EXPECT_EQ(r.progress[2].metrics().trained_tokens(), 120);
  EXPECT_DOUBLE_EQ(r.progress[3].metrics().valid_loss(), 1.25);
  // The method's figures: a step's as they are, an evaluation's as valid_*.
  EXPECT_DOUBLE_EQ(r.progress[1].metrics().extra().at("reward_margin"), 0.2);
  EXPECT_DOUBLE_EQ(r.progress[3].metrics().extra().at("valid_macro_f1"), 0.75);
  ASSERT_EQ(r.checkpoints.size(), 1u);
  EXPECT_EQ(r.checkpoints[0].artifact(), "jobs/ftjob-1/checkpoints/step-00000003");
  EXPECT_EQ(r.checkpoints[0].step(), 3);

  // The spec the worker ran with: fetched shards, resolved paths.
  TF_ASSERT_OK_AND_ASSIGN(WorkerSpec spec, ReadWorkerSpecFile(SpecPath("asg-1")));
  EXPECT_EQ(spec.base_model_dir, suite_dir_->Join("models/phi-3-tiny"));
  EXPECT_EQ(spec.output_dir, dir_.Join("artifacts/jobs/ftjob-1/result"));
  EXPECT_EQ(spec.checkpoint_root, dir_.Join("artifacts/jobs/ftjob-1/checkpoints"));
  EXPECT_EQ(spec.hyper.learning_rate, 2e-4);
  EXPECT_EQ(spec.hyper.max_sequence_length, 256);
  EXPECT_EQ(spec.device, "cpu");
  ASSERT_EQ(spec.train_shards.size(), 1u);
  ASSERT_EQ(spec.valid_shards.size(), 1u);
  TF_ASSERT_OK_AND_ASSIGN(ShardFile train, ShardFile::Read(spec.train_shards[0]));
  EXPECT_EQ(train.size(), 12);
  TF_ASSERT_OK_AND_ASSIGN(ShardFile valid, ShardFile::Read(spec.valid_shards[0]));
  EXPECT_EQ(valid.size(), 10);
  std::ifstream env(env_file);
  std::string omp;
  std::getline(env, omp);
  EXPECT_EQ(omp, "PASSIVE");

  // Finished: reported as exited while the scheduler still lists it, and
  // never started twice.
  ASSERT_TRUE(scheduler_->WaitFor([](const FakeScheduler::Record& r) {
    return r.last_heartbeat.assignments_size() == 1 &&
           r.last_heartbeat.assignments(0).phase() == iv1::AssignmentStatus::PHASE_EXITED;
  }));
  int beats = scheduler_->record().heartbeats;
  ASSERT_TRUE(scheduler_->WaitFor(
      [beats](const FakeScheduler::Record& r) { return r.heartbeats >= beats + 3; }));
  EXPECT_EQ(scheduler_->record().completions.size(), 1u);
}

TEST_F(AgentTest, EveryResolvedHyperparameterAndTheMethodReachTheSpec) {
  StartAgent(Options(Worker(R"(
mkdir -p "$out"
say "{\"event\":\"completed\",\"result_dir\":\"$out\",\"trained_tokens\":1}"
)")));
  iv1::Assignment a = Assignment("asg-h");
  v1::Hyperparameters* h = a.mutable_hyperparameters();
  h->set_micro_batch_size(2);
  h->set_weight_decay(0.05);
  h->set_lr_scheduler(v1::LR_SCHEDULER_LINEAR);
  h->set_max_steps(9);
  h->set_packing(false);
  h->set_gradient_checkpointing(true);
  h->set_keep_checkpoints(4);
  h->set_early_stopping_patience(3);
  h->set_checkpoint_interval_steps(5);
  h->set_eval_interval_steps(6);
  a.mutable_method()->mutable_dpo()->set_beta(0.25);
  a.set_write_merged(true);
  scheduler_->SetDesired({a});
  auto done = scheduler_->WaitForCompletion("asg-h");
  ASSERT_TRUE(done.has_value());
  EXPECT_TRUE(done->succeeded()) << done->error().message();
  TF_ASSERT_OK_AND_ASSIGN(WorkerSpec spec, ReadWorkerSpecFile(SpecPath("asg-h")));
  EXPECT_EQ(spec.objective, TrainingObjective::kDpo);
  EXPECT_DOUBLE_EQ(spec.dpo_beta, 0.25);
  EXPECT_TRUE(spec.write_merged);
  EXPECT_EQ(spec.hyper.micro_batch_size, 2);
  EXPECT_DOUBLE_EQ(spec.hyper.weight_decay, 0.05);
  EXPECT_EQ(spec.hyper.lr_scheduler, LrScheduler::kLinear);
  EXPECT_EQ(spec.hyper.max_steps, 9);
  EXPECT_FALSE(spec.hyper.packing);
  EXPECT_TRUE(spec.hyper.gradient_checkpointing);
  EXPECT_EQ(spec.hyper.keep_checkpoints, 4);
  EXPECT_EQ(spec.hyper.early_stopping_patience, 3);
  EXPECT_EQ(spec.hyper.checkpoint_interval_steps, 5);
  EXPECT_EQ(spec.hyper.eval_interval_steps, 6);
}

// Classification: the training file's sorted labels become num_labels and
// label_names; the validation file's labels are mapped to them by name.
TEST_F(AgentTest, ClassificationSendsTheTrainingFilesLabelNames) {
  StartAgent(Options(Worker(R"(mkdir -p "$out"; say "{\"event\":\"completed\",\"result_dir\":\"$out\",\"trained_tokens\":1}")")));
  auto jsonl = [](const std::vector<std::string>& labels) {
    std::string out;
    for (size_t i = 0; i < 10; ++i) {
      absl::StrAppend(&out, R"({"text":"Item )", i, R"(","label":")", labels[i % labels.size()],
                      "\"}\n");
    }
    return out;
  };
  TF_ASSERT_OK_AND_ASSIGN(std::string train, dataset_->Upload(tenant_.key, jsonl({"spam", "ham"})));
  TF_ASSERT_OK_AND_ASSIGN(std::string valid, dataset_->Upload(tenant_.key, jsonl({"spam"})));
  iv1::Assignment a = Assignment("asg-c", "ftjob-c");
  a.set_task(v1::TRAINING_TASK_CLASSIFICATION);
  a.set_training_file(train);
  a.set_validation_file(valid);
  scheduler_->SetDesired({a});
  auto done = scheduler_->WaitForCompletion("asg-c");
  ASSERT_TRUE(done.has_value());
  EXPECT_TRUE(done->succeeded()) << done->error().message();
  TF_ASSERT_OK_AND_ASSIGN(WorkerSpec spec, ReadWorkerSpecFile(SpecPath("asg-c")));
  EXPECT_EQ(spec.task, TrainingTask::kClassification);
  EXPECT_EQ(spec.num_labels, 2);
  EXPECT_EQ(spec.label_names, (std::vector<std::string>{"ham", "spam"}));
  ASSERT_EQ(spec.valid_shards.size(), 1u);
  TF_ASSERT_OK_AND_ASSIGN(ShardFile v, ShardFile::Read(spec.valid_shards[0]));
  for (int64_t i = 0; i < v.size(); ++i) EXPECT_EQ(v.example(i).label, 1);  // "spam"
}

TEST_F(AgentTest, ResumeCheckpointIsResolvedUnderTheArtifactsDir) {
  StartAgent(Options(Worker(R"(mkdir -p "$out"; say "{\"event\":\"completed\",\"result_dir\":\"$out\",\"trained_tokens\":1}")")));
  iv1::Assignment a = Assignment("asg-r", "ftjob-r");
  a.set_resume_checkpoint("jobs/ftjob-r/checkpoints/step-00000002");
  scheduler_->SetDesired({a});
  ASSERT_TRUE(scheduler_->WaitForCompletion("asg-r").has_value());
  TF_ASSERT_OK_AND_ASSIGN(WorkerSpec spec, ReadWorkerSpecFile(SpecPath("asg-r")));
  EXPECT_EQ(spec.resume_from, dir_.Join("artifacts/jobs/ftjob-r/checkpoints/step-00000002"));
}

TEST_F(AgentTest, ACrashIsAFailedAttemptAndTheAgentGoesOn) {
  StartAgent(Options(Worker(R"(
case "$spec" in
  *asg-crash*)
    say '{"event":"started","total_steps":20,"world_size":1,"rank":0,"resumed_step":0}'
    say '{"event":"progress","step":12,"total_steps":20,"epoch":0.6,"train_loss":1.0}'
    echo "about to die" >&2
    kill -9 $$ ;;
  *)
    mkdir -p "$out"
    say "{\"event\":\"completed\",\"result_dir\":\"$out\",\"trained_tokens\":5}" ;;
esac
)")));
  scheduler_->SetDesired({Assignment("asg-crash", "ftjob-a")});
  auto crash = scheduler_->WaitForCompletion("asg-crash");
  ASSERT_TRUE(crash.has_value());
  EXPECT_FALSE(crash->succeeded());
  EXPECT_EQ(crash->error().code(), "worker_crashed");
  EXPECT_THAT(crash->error().message(), HasSubstr("worker killed by signal 9 at step 12"));
  EXPECT_THAT(crash->error().message(), HasSubstr("about to die"));

  scheduler_->SetDesired({Assignment("asg-crash", "ftjob-a"), Assignment("asg-next", "ftjob-b")});
  auto next = scheduler_->WaitForCompletion("asg-next");
  ASSERT_TRUE(next.has_value());
  EXPECT_TRUE(next->succeeded());
  EXPECT_EQ(agent_->metrics().crashed.Value(), 1);
  EXPECT_EQ(agent_->metrics().succeeded.Value(), 1);
  EXPECT_EQ(agent_->metrics().workers_started.Value(), 2);
}

TEST_F(AgentTest, AWorkerErrorIsForwardedWithItsCode) {
  StartAgent(Options(Worker(R"(
say '{"event":"error","code":"INVALID_ARGUMENT","message":"base model: tokenizer does not match the shards"}'
exit 2
)")));
  scheduler_->SetDesired({Assignment("asg-e")});
  auto done = scheduler_->WaitForCompletion("asg-e");
  ASSERT_TRUE(done.has_value());
  EXPECT_FALSE(done->succeeded());
  EXPECT_EQ(done->error().code(), "invalid_argument");
  EXPECT_THAT(done->error().message(), HasSubstr("tokenizer does not match the shards"));
  EXPECT_THAT(done->error().message(), HasSubstr("exited 2"));
  EXPECT_EQ(agent_->metrics().failed.Value(), 1);
}

TEST_F(AgentTest, AHungWorkerIsKilledAsAFailedAttempt) {
  std::string pidfile = dir_.Join("hung.pid");
  TrainerAgentOptions o = Options(Worker(absl::StrCat(R"(
say '{"event":"started","total_steps":3,"world_size":1,"rank":0,"resumed_step":0}'
echo $$ > )", pidfile, R"(
exec sleep 1000
)")));
  o.worker_timeout = absl::Milliseconds(500);
  StartAgent(o);
  scheduler_->SetDesired({Assignment("asg-h")});
  auto done = scheduler_->WaitForCompletion("asg-h");
  ASSERT_TRUE(done.has_value());
  EXPECT_FALSE(done->succeeded());
  EXPECT_EQ(done->error().code(), "worker_hung");
  EXPECT_THAT(done->error().message(), HasSubstr("no report for"));
  EXPECT_TRUE(WaitDead(ReadPid(pidfile)));
  EXPECT_EQ(agent_->metrics().hung.Value(), 1);
}

// A rank stopped with SIGSTOP (a hung peer) says nothing more: killed at
// the timeout like any silent worker, and the agent takes the next one.
TEST_F(AgentTest, AStoppedWorkerIsKilledAtTheTimeout) {
  TrainerAgentOptions o = Options(Worker(R"(
case "$spec" in
  *asg-stop*)
    say '{"event":"started","total_steps":3,"world_size":2,"rank":1,"resumed_step":0}'
    kill -STOP $$ ;;
  *)
    mkdir -p "$out"
    say "{\"event\":\"completed\",\"result_dir\":\"$out\",\"trained_tokens\":5}" ;;
esac
)"));
  o.worker_timeout = absl::Milliseconds(500);
  StartAgent(o);
  scheduler_->SetDesired({Assignment("asg-stop", "ftjob-s")});
  auto done = scheduler_->WaitForCompletion("asg-stop");
  ASSERT_TRUE(done.has_value());
  EXPECT_EQ(done->error().code(), "worker_hung");
  scheduler_->SetDesired({Assignment("asg-stop", "ftjob-s"), Assignment("asg-after", "ftjob-t")});
  auto next = scheduler_->WaitForCompletion("asg-after");
  ASSERT_TRUE(next.has_value());
  EXPECT_TRUE(next->succeeded());
}

TEST_F(AgentTest, AWithdrawnAssignmentIsKilledWithoutAReport) {
  std::string pidfile = dir_.Join("w.pid");
  StartAgent(Options(Worker(absl::StrCat(R"(
sleep 1000 &
echo $! > )", pidfile, R"(
say '{"event":"started","total_steps":3,"world_size":1,"rank":0,"resumed_step":0}'
wait
)"))));
  scheduler_->SetDesired({Assignment("asg-w")});
  pid_t child = ReadPid(pidfile);  // in the worker's process group
  ASSERT_TRUE(scheduler_->WaitFor([](const FakeScheduler::Record& r) {
    return r.last_heartbeat.assignments_size() == 1 &&
           r.last_heartbeat.assignments(0).phase() == iv1::AssignmentStatus::PHASE_RUNNING;
  }));
  scheduler_->SetDesired({});
  EXPECT_TRUE(WaitDead(child));
  ASSERT_TRUE(scheduler_->WaitFor(
      [](const FakeScheduler::Record& r) { return r.last_heartbeat.assignments_size() == 0; }));
  EXPECT_TRUE(scheduler_->record().completions.empty());
  EXPECT_EQ(agent_->metrics().withdrawn.Value(), 1);
}

constexpr char kStoppable[] = R"(
trap 'mkdir -p "$ck/step-00000005"; say "{\"event\":\"stopped\",\"step\":5,\"checkpoint_dir\":\"$ck/step-00000005\"}"; exit 0' TERM
say '{"event":"started","total_steps":50,"world_size":1,"rank":0,"resumed_step":0}'
s=0
while :; do
  s=$((s + 1))
  say "{\"event\":\"progress\",\"step\":$s,\"total_steps\":50,\"epoch\":0.1,\"train_loss\":1.0}"
  sleep 0.05
done
)";

TEST_F(AgentTest, CheckpointAndStopSendsSigtermAndReportsTheCheckpoint) {
  StartAgent(Options(Worker(kStoppable)));
  scheduler_->SetDesired({Assignment("asg-p")});
  ASSERT_TRUE(
      scheduler_->WaitFor([](const FakeScheduler::Record& r) { return r.progress.size() >= 2; }));
  scheduler_->SetDesired({Assignment("asg-p")}, {"asg-p"});
  auto done = scheduler_->WaitForCompletion("asg-p");
  ASSERT_TRUE(done.has_value());
  EXPECT_FALSE(done->succeeded());
  EXPECT_EQ(done->error().code(), "stopped");
  FakeScheduler::Record r = scheduler_->record();
  ASSERT_EQ(r.checkpoints.size(), 1u);
  EXPECT_EQ(r.checkpoints[0].artifact(), "jobs/ftjob-1/checkpoints/step-00000005");
  EXPECT_EQ(r.checkpoints[0].step(), 5);
  EXPECT_EQ(agent_->metrics().stopped.Value(), 1);
}

TEST_F(AgentTest, KeepRunningFalseStopsTheWorker) {
  StartAgent(Options(Worker(kStoppable)));
  scheduler_->SetKeepRunning(false);
  scheduler_->SetDesired({Assignment("asg-k")});
  auto done = scheduler_->WaitForCompletion("asg-k");
  ASSERT_TRUE(done.has_value());
  EXPECT_EQ(done->error().code(), "stopped");
}

TEST_F(AgentTest, RegistersAgainWhenForgottenAndRidesOutAnUnavailableScheduler) {
  StartAgent(Options(Worker("exit 0")));
  ASSERT_TRUE(
      scheduler_->WaitFor([](const FakeScheduler::Record& r) { return r.heartbeats >= 2; }));
  scheduler_->FailHeartbeats(3);
  ASSERT_TRUE(scheduler_->WaitFor(
      [](const FakeScheduler::Record& r) { return r.refused_heartbeats == 3; }));
  int beats = scheduler_->record().heartbeats;
  ASSERT_TRUE(scheduler_->WaitFor(
      [beats](const FakeScheduler::Record& r) { return r.heartbeats > beats; }));
  EXPECT_EQ(scheduler_->record().registrations.size(), 1u);

  scheduler_->ForgetNode();
  ASSERT_TRUE(scheduler_->WaitFor(
      [](const FakeScheduler::Record& r) { return r.registrations.size() == 2; }));
  ASSERT_TRUE(scheduler_->WaitFor(
      [](const FakeScheduler::Record& r) { return r.last_heartbeat.node_id() == "node-2"; }));
  EXPECT_EQ(agent_->Status().node_id(), "node-2");
  EXPECT_EQ(agent_->metrics().registrations.Value(), 2);
  EXPECT_GE(agent_->metrics().scheduler_errors.Value(), 4);  // 3 refused, 1 forgotten
}

TEST_F(AgentTest, BadAssignmentsFailWithTheirCause) {
  StartAgent(Options(Worker("exit 0")));
  iv1::Assignment missing_file = Assignment("asg-f");
  missing_file.set_training_file("file-doesnotexist");
  iv1::Assignment missing_model = Assignment("asg-m");
  missing_model.set_base_model("no-such-model");
  iv1::Assignment bad_lr = Assignment("asg-lr");
  bad_lr.mutable_hyperparameters()->set_learning_rate(std::nan(""));
  iv1::Assignment escape = Assignment("asg-x");
  escape.set_resume_checkpoint("../../etc");
  scheduler_->SetDesired({missing_file, missing_model, bad_lr, escape});
  auto f = scheduler_->WaitForCompletion("asg-f");
  ASSERT_TRUE(f.has_value());
  EXPECT_FALSE(f->succeeded());
  EXPECT_THAT(f->error().message(), HasSubstr("training_file file-doesnotexist"));
  auto m = scheduler_->WaitForCompletion("asg-m");
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->error().code(), "invalid_assignment");
  EXPECT_THAT(m->error().message(), HasSubstr("no-such-model"));
  auto lr = scheduler_->WaitForCompletion("asg-lr");
  ASSERT_TRUE(lr.has_value());
  EXPECT_THAT(lr->error().message(), HasSubstr("learning_rate"));
  auto x = scheduler_->WaitForCompletion("asg-x");
  ASSERT_TRUE(x.has_value());
  EXPECT_THAT(x->error().message(), HasSubstr("resume_checkpoint"));
  EXPECT_EQ(agent_->metrics().not_started.Value(), 4);
  EXPECT_EQ(agent_->metrics().workers_started.Value(), 0);
}

TEST_F(AgentTest, GetNodeStatusShowsTheNodeAndItsAssignments) {
  StartAgent(Options(Worker(kStoppable)));
  scheduler_->SetDesired({Assignment("asg-s")});
  ASSERT_TRUE(
      scheduler_->WaitFor([](const FakeScheduler::Record& r) { return r.progress.size() >= 1; }));
  rpc::Authenticator auth(keys_);
  TrainerAgentServiceImpl service(&auth, agent_.get());
  rpc::ServerOptions so;
  so.listen_address = "127.0.0.1:0";
  so.metrics_address = "";
  rpc::Server server(so);
  server.AddService(&service);
  ASSERT_THAT(server.Start(), IsOk());
  rpc::ChannelOptions co;
  co.target = absl::StrCat("127.0.0.1:", server.port());
  auto stub = iv1::TrainerAgentService::NewStub(*rpc::MakeChannel(co));
  {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, tenant_.key, absl::Seconds(5));
    iv1::NodeStatus st;
    EXPECT_EQ(stub->GetNodeStatus(&ctx, {}, &st).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, internal_.key, absl::Seconds(5));
  iv1::NodeStatus st;
  ASSERT_TRUE(stub->GetNodeStatus(&ctx, {}, &st).ok());
  EXPECT_EQ(st.node_name(), "node-a");
  EXPECT_EQ(st.node_id(), "node-1");
  ASSERT_EQ(st.assignments_size(), 1);
  EXPECT_EQ(st.assignments(0).assignment_id(), "asg-s");
  EXPECT_EQ(st.assignments(0).phase(), iv1::AssignmentStatus::PHASE_RUNNING);
  EXPECT_GT(st.last_heartbeat().seconds(), 0);
  server.Shutdown();
}

// The real agent binary, SIGKILLed: its worker must not outlive it.
TEST_F(AgentTest, AKilledAgentLeavesNoWorker) {
  std::string pidfile = dir_.Join("orphan.pid");
  std::string worker = Worker(absl::StrCat(R"(
echo $$ > )", pidfile, R"(
say '{"event":"started","total_steps":3,"world_size":1,"rank":0,"resumed_step":0}'
exec sleep 1000
)"));
  auto agent = StartAgentBinary(
      {absl::StrCat("--worker_binary=", worker), "--node_name=node-bin", "--slots=1"});
  ASSERT_THAT(agent, IsOk());
  scheduler_->SetDesired({Assignment("asg-o")});
  pid_t pid = ReadPid(pidfile);
  ASSERT_GT(pid, 0);
  EXPECT_EQ(scheduler_->record().registrations.at(0).node_name(), "node-bin");
  ASSERT_THAT(agent->Signal(SIGKILL), IsOk());
  ASSERT_THAT(agent->Wait(kDeadline), IsOk());
  EXPECT_TRUE(WaitDead(pid));
}

// GPUs: the agent registers each with its memory (NVML's, or
// --gpu_memory_gib where the operator gives it) for the scheduler's
// placement; without NVML and the flag the memory is 0 (unknown).
TEST_F(AgentTest, RegistersItsGpusWithTheirMemory) {
  // This machine's NVML, if it has one, names its GPUs.
  std::vector<iv1::GpuInfo> plain = NodeGpus(2, 0);
  ASSERT_EQ(plain.size(), 2u);
  EXPECT_EQ(plain[1].index(), 1);
  const std::optional<GpuDescription> gpu0 = DescribeGpu(0);
  EXPECT_EQ(plain[0].memory_bytes(), gpu0 ? gpu0->memory_bytes : 0);
  // CUDA_VISIBLE_DEVICES renumbers the GPUs the workers see.
  EXPECT_EQ(PhysicalGpuIndex(1, nullptr), 1u);
  EXPECT_EQ(PhysicalGpuIndex(1, "3,5"), 5u);
  EXPECT_EQ(PhysicalGpuIndex(2, "3,5"), std::nullopt);
  EXPECT_EQ(PhysicalGpuIndex(0, "GPU-0a1b2c3d"), std::nullopt);  // a UUID
  EXPECT_EQ(PhysicalGpuIndex(-1, nullptr), std::nullopt);

  auto agent = StartAgentBinary({"--node_name=node-gpus", "--gpus=2", "--gpu_memory_gib=24"});
  ASSERT_THAT(agent, IsOk());
  ASSERT_TRUE(scheduler_->WaitFor([](const FakeScheduler::Record& r) { return !r.registrations.empty(); }));
  const iv1::RegisterNodeRequest reg = scheduler_->record().registrations.at(0);
  EXPECT_EQ(reg.node_name(), "node-gpus");
  ASSERT_EQ(reg.gpus_size(), 2);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(reg.gpus(i).index(), i);
    EXPECT_EQ(reg.gpus(i).memory_bytes(), int64_t{24} << 30);
  }
  ASSERT_THAT(agent->Signal(SIGTERM), IsOk());
  ASSERT_THAT(agent->Wait(kDeadline), IsOk());

  // A negative size is refused at start (exit 2, the flag named), not
  // registered as "unknown".
  auto bad = StartAgentBinary({"--node_name=node-bad", "--gpus=1", "--gpu_memory_gib=-1"});
  ASSERT_THAT(bad, IsOk());
  absl::StatusOr<int> status = bad->Wait(kDeadline);
  ASSERT_THAT(status, IsOk());
  ASSERT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 2);
  std::ifstream log(dir_.Join("agent.log"));
  EXPECT_THAT(std::string(std::istreambuf_iterator<char>(log), {}),
              HasSubstr("--gpu_memory_gib must be >= 0"));
  EXPECT_EQ(scheduler_->record().registrations.size(), 1u);
}

}  // namespace
}  // namespace tunefleet::trainer
