// The real tunefleet-scheduler and tunefleet-dataset binaries as processes:
// a job runs, the scheduler is killed with SIGKILL mid-run and restarted on
// the same data directory, and nothing acknowledged is lost: the job, its
// events and checkpoint survive, the agent that is still there keeps its
// attempt, and the job finishes with its model registered.
#include <signal.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/base/subprocess.h"
#include "common/rpc/auth.h"
#include "common/rpc/channel.h"
#include "common/rpc/status.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tunefleet/internal/v1/trainer.grpc.pb.h"
#include "tunefleet/v1/files.grpc.pb.h"
#include "tunefleet/v1/jobs.grpc.pb.h"
#include "tunefleet/v1/models.grpc.pb.h"
#include "tunefleet/v1/usage.grpc.pb.h"

namespace tunefleet {
namespace {

using ::testing::SizeIs;
using ::tunefleet::testing::IsOk;
namespace iv1 = ::tunefleet::internal::v1;

template <typename Fn>
bool WaitFor(Fn fn, absl::Duration timeout = absl::Seconds(30)) {
  absl::Time end = absl::Now() + timeout;
  while (absl::Now() < end) {
    if (fn()) return true;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return fn();
}

// One service binary on a free port, found through its port file.
struct Service {
  std::unique_ptr<Subprocess> process;
  std::string target;

  static absl::StatusOr<Service> Start(const std::string& name, const std::string& dir,
                                       const std::string& keys,
                                       std::vector<std::string> extra) {
    std::string port_file = dir + "/" + name + ".ports.json";
    std::filesystem::remove(port_file);
    std::vector<std::string> argv = {std::string(TUNEFLEET_BIN_DIR) + "/tunefleet-" + name,
                                     "--listen=127.0.0.1:0", "--metrics_listen=off",
                                     "--keys_file=" + keys, "--data_dir=" + dir + "/" + name,
                                     "--port_file=" + port_file, "--drain_timeout=2s",
                                     "--log_level=warn"};
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

template <typename Stub, typename Req, typename Resp>
absl::StatusOr<Resp> Call(Stub* stub,
                          grpc::Status (Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
                          const std::string& key, const Req& req) {
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, key, absl::Seconds(10));
  Resp resp;
  grpc::Status s = (stub->*method)(&ctx, req, &resp);
  if (!s.ok()) return rpc::FromGrpcStatus(s);
  return resp;
}

// --price_table: a bad table stops the binary at start naming the key; a
// good one prices UsageService answers.
TEST(SchedulerProcessTest, PriceTableIsCheckedAtStartAndUsageIsServed) {
  testing::TempDir dir;
  rpc::NewKey tenant = rpc::GenerateKey("tenant-a", rpc::Role::kTenant, "a");
  const std::string keys = dir.Join("keys.txt");
  std::ofstream(keys) << tenant.line << "\n";
  std::ofstream(dir.Join("bad.json")) << R"({"tiny-base": {"currency": "USD", "per_gpu_hour": 1}})";
  std::ofstream(dir.Join("good.json")) << R"({"*": {"currency": "USD", "per_replica_hour": 1}})";
  const std::string bin = std::string(TUNEFLEET_BIN_DIR) + "/tunefleet-scheduler";
  auto bad = Subprocess::Start({bin, "--listen=127.0.0.1:0", "--metrics_listen=off",
                                "--keys_file=" + keys, "--data_dir=" + dir.Join("bad"),
                                "--price_table=" + dir.Join("bad.json")},
                               Subprocess::Options{dir.Join("bad.log"), {}});
  ASSERT_THAT(bad, IsOk());
  auto status = bad->Wait(absl::Seconds(20));
  ASSERT_THAT(status, IsOk());
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 2) << DescribeWaitStatus(*status);
  std::ifstream log(dir.Join("bad.log"));
  EXPECT_THAT(std::string(std::istreambuf_iterator<char>(log), {}),
              ::testing::HasSubstr("'tiny-base'.per_gpu_hour"));

  auto scheduler = Service::Start("scheduler", dir.path(), keys,
                                  {"--price_table=" + dir.Join("good.json")});
  ASSERT_THAT(scheduler, IsOk());
  auto usage = v1::UsageService::NewStub(scheduler->Channel());
  v1::GetUsageRequest req;
  req.mutable_start_time()->set_seconds(absl::ToUnixSeconds(absl::Now()) - 3600);
  auto report = Call(usage.get(), &v1::UsageService::Stub::GetUsage, tenant.key, req);
  ASSERT_THAT(report, IsOk());
  EXPECT_EQ(report->tenant(), "tenant-a");
  EXPECT_THAT(report->jobs(), SizeIs(0));
  (void)scheduler->process->Signal(SIGTERM);
  (void)scheduler->process->Wait(absl::Seconds(10));
}

TEST(SchedulerProcessTest, SigkillMidRunLosesNothingAndTheJobFinishes) {
  testing::TempDir dir;
  rpc::NewKey tenant = rpc::GenerateKey("tenant-a", rpc::Role::kTenant, "a");
  rpc::NewKey internal = rpc::GenerateKey("", rpc::Role::kInternal, "svc");
  const std::string keys = dir.Join("keys.txt");
  std::ofstream(keys) << tenant.line << "\n" << internal.line << "\n";
  std::ofstream(dir.Join("internal.key")) << internal.key << "\n";
  std::filesystem::create_directories(dir.Join("models/tiny-base"));
  std::ofstream(dir.Join("models/tiny-base/config.json"))
      << R"({"model_type":"llama","hidden_size":64,"num_hidden_layers":2,)"
         R"("num_attention_heads":32,"intermediate_size":256,"vocab_size":300,)"
         R"("max_position_embeddings":512})";

  auto dataset = Service::Start("dataset", dir.path(), keys, {});
  ASSERT_THAT(dataset, IsOk());
  const std::vector<std::string> scheduler_flags = {
      "--models_dir=" + dir.Join("models"), "--artifacts_dir=" + dir.Join("artifacts"),
      "--dataset_address=" + dataset->target, "--internal_key_file=" + dir.Join("internal.key"),
      "--heartbeat_interval=100ms", "--lease=30s", "--tick_interval=20ms"};
  auto scheduler = Service::Start("scheduler", dir.path(), keys, scheduler_flags);
  ASSERT_THAT(scheduler, IsOk());

  // A processed training file.
  auto files = v1::DatasetService::NewStub(dataset->Channel());
  v1::File file;
  {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, tenant.key, absl::Seconds(10));
    auto writer = files->UploadFile(&ctx, &file);
    v1::UploadFileRequest req;
    req.mutable_metadata()->set_filename("train.jsonl");
    req.mutable_metadata()->set_purpose(v1::FILE_PURPOSE_FINE_TUNE);
    writer->Write(req);
    std::string data;
    for (int i = 0; i < 20; ++i)
      absl::StrAppend(&data, R"({"messages":[{"role":"user","content":"q)", i,
                      R"("},{"role":"assistant","content":"a)", i, R"("}]})", "\n");
    req.set_chunk(data);
    writer->Write(req);
    writer->WritesDone();
    ASSERT_TRUE(writer->Finish().ok());
  }
  v1::GetFileRequest gf;
  gf.set_file_id(file.id());
  ASSERT_TRUE(WaitFor([&] {
    auto f = Call(files.get(), &v1::DatasetService::Stub::GetFile, tenant.key, gf);
    return f.ok() && f->status() == v1::FILE_STATUS_PROCESSED;
  }));

  auto jobs = v1::JobService::NewStub(scheduler->Channel());
  auto trainer = iv1::TrainerControlService::NewStub(scheduler->Channel());
  v1::CreateJobRequest cj;
  cj.set_base_model("tiny-base");
  cj.set_training_file(file.id());
  cj.set_suffix("kill");
  auto job = Call(jobs.get(), &v1::JobService::Stub::CreateJob, tenant.key, cj);
  ASSERT_THAT(job, IsOk());
  iv1::RegisterNodeRequest rn;
  rn.set_node_name("node-a");
  rn.set_slots(1);
  auto node = Call(trainer.get(), &iv1::TrainerControlService::Stub::RegisterNode, internal.key, rn);
  ASSERT_THAT(node, IsOk());
  EXPECT_EQ(node->heartbeat_interval_ms(), 100);
  iv1::HeartbeatRequest hb;
  hb.set_node_id(node->node_id());
  absl::StatusOr<iv1::HeartbeatResponse> beat;
  // The scheduler's own ticker places the job.
  ASSERT_TRUE(WaitFor([&] {
    beat = Call(trainer.get(), &iv1::TrainerControlService::Stub::Heartbeat, internal.key, hb);
    return beat.ok() && beat->assignments_size() == 1;
  }));
  const std::string asg = beat->assignments(0).assignment_id();
  iv1::ReportProgressRequest rp;
  rp.set_assignment_id(asg);
  rp.mutable_metrics()->set_step(12);
  ASSERT_THAT(Call(trainer.get(), &iv1::TrainerControlService::Stub::ReportProgress, internal.key, rp),
              IsOk());
  iv1::ReportCheckpointRequest rc;
  rc.set_assignment_id(asg);
  rc.set_step(12);
  rc.set_artifact("jobs/" + job->id() + "/checkpoints/step-000012");
  ASSERT_THAT(
      Call(trainer.get(), &iv1::TrainerControlService::Stub::ReportCheckpoint, internal.key, rc),
      IsOk());

  // kill -9 mid-run, then restart on the same data directory.
  ASSERT_THAT(scheduler->process->Signal(SIGKILL), IsOk());
  ASSERT_THAT(scheduler->process->Wait(absl::Seconds(10)), IsOk());
  scheduler = Service::Start("scheduler", dir.path(), keys, scheduler_flags);
  ASSERT_THAT(scheduler, IsOk());
  jobs = v1::JobService::NewStub(scheduler->Channel());
  trainer = iv1::TrainerControlService::NewStub(scheduler->Channel());

  v1::GetJobRequest gj;
  gj.set_job_id(job->id());
  auto got = Call(jobs.get(), &v1::JobService::Stub::GetJob, tenant.key, gj);
  ASSERT_THAT(got, IsOk());
  EXPECT_EQ(got->state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(got->completed_steps(), 12);
  v1::ListCheckpointsRequest lc;
  lc.set_job_id(job->id());
  auto cks = Call(jobs.get(), &v1::JobService::Stub::ListCheckpoints, tenant.key, lc);
  ASSERT_THAT(cks, IsOk());
  EXPECT_THAT(cks->checkpoints(), SizeIs(1));
  // The agent still runs its rank: its heartbeat keeps the attempt.
  hb.add_assignments()->set_assignment_id(asg);
  hb.mutable_assignments(0)->set_phase(iv1::AssignmentStatus::PHASE_RUNNING);
  beat = Call(trainer.get(), &iv1::TrainerControlService::Stub::Heartbeat, internal.key, hb);
  ASSERT_THAT(beat, IsOk());
  ASSERT_THAT(beat->assignments(), SizeIs(1));
  EXPECT_EQ(beat->assignments(0).assignment_id(), asg);
  iv1::CompleteAssignmentRequest ca;
  ca.set_assignment_id(asg);
  ca.set_succeeded(true);
  ca.set_result_artifact("jobs/" + job->id() + "/result");
  ASSERT_THAT(
      Call(trainer.get(), &iv1::TrainerControlService::Stub::CompleteAssignment, internal.key, ca),
      IsOk());
  got = Call(jobs.get(), &v1::JobService::Stub::GetJob, tenant.key, gj);
  ASSERT_THAT(got, IsOk());
  EXPECT_EQ(got->state(), v1::JOB_STATE_SUCCEEDED);

  // Every event is there, in order, once.
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, tenant.key, absl::Seconds(10));
  v1::StreamJobEventsRequest se;
  se.set_job_id(job->id());
  auto reader = jobs->StreamJobEvents(&ctx, se);
  v1::JobEvent e;
  std::vector<v1::JobEvent> events;
  while (reader->Read(&e)) events.push_back(e);
  ASSERT_TRUE(reader->Finish().ok());
  int checkpoints = 0, metrics = 0;
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].sequence(), static_cast<int64_t>(i + 1));
    checkpoints += events[i].payload_case() == v1::JobEvent::kCheckpointId;
    metrics += events[i].has_metrics();
  }
  EXPECT_EQ(checkpoints, 1);
  EXPECT_EQ(metrics, 1);
  EXPECT_EQ(events.back().state(), v1::JOB_STATE_SUCCEEDED);

  auto models = v1::ModelService::NewStub(scheduler->Channel());
  v1::GetModelRequest gm;
  gm.set_model_id("ft:tiny-base:kill:" + job->id());
  EXPECT_THAT(Call(models.get(), &v1::ModelService::Stub::GetModel, tenant.key, gm), IsOk());
  ASSERT_THAT(scheduler->process->Signal(SIGTERM), IsOk());
  auto status = scheduler->process->Wait(absl::Seconds(20));
  ASSERT_THAT(status, IsOk());
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << DescribeWaitStatus(*status);
}

}  // namespace
}  // namespace tunefleet
