// Usage and cost over gRPC on loopback: a real dataset server, a real SQLite
// file, a manual clock, a price table, and a test-side trainer agent and
// serving replica speaking the internal control APIs.
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "common/rpc/channel.h"
#include "common/rpc/server.h"
#include "common/rpc/status.h"
#include "services/dataset/dataset_service.h"
#include "services/scheduler/grpc_dataset_client.h"
#include "services/scheduler/scheduler_service.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace tunefleet::scheduler {
namespace {

using ::testing::HasSubstr;
using ::testing::SizeIs;
using ::tunefleet::testing::IsOk;
using ::tunefleet::testing::StatusIs;

constexpr char kBase[] = "tiny-base";
// Per 1M trained tokens 4, per accelerator-hour 2.5, per replica-hour 1.5,
// per 1M prompt tokens 0.2, per 1M completion tokens 0.6.
constexpr char kPrices[] = R"({"tiny-base": {"currency": "EUR", "per_1m_trained_tokens": 4.0,
  "per_accelerator_hour": 2.5, "per_replica_hour": 1.5, "per_1m_prompt_tokens": 0.2,
  "per_1m_completion_tokens": 0.6}})";

template <typename Fn>
bool WaitFor(Fn fn, absl::Duration timeout = absl::Seconds(20)) {
  absl::Time end = absl::Now() + timeout;
  while (absl::Now() < end) {
    if (fn()) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return fn();
}

std::string ChatJsonl(int n) {
  std::string out;
  for (int i = 0; i < n; ++i) {
    absl::StrAppend(&out, R"({"messages":[{"role":"user","content":"question )", i,
                    R"("},{"role":"assistant","content":"answer )", i, R"("}]})", "\n");
  }
  return out;
}

google::protobuf::Timestamp Ts(absl::Time t) {
  google::protobuf::Timestamp ts;
  ts.set_seconds(absl::ToUnixSeconds(t));
  return ts;
}

class UsageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::filesystem::create_directories(dir_.Join("models/") + kBase);
    std::ofstream(dir_.Join("models/") + kBase + "/config.json")
        << R"({"model_type":"llama","hidden_size":64,"num_hidden_layers":2,)"
           R"("num_attention_heads":32,"intermediate_size":128,"vocab_size":300,)"
           R"("max_position_embeddings":512})";
    auth_ = std::make_unique<rpc::Authenticator>(*rpc::KeyRing::Parse(
        absl::StrCat(a_.line, "\n", b_.line, "\n", internal_.line, "\n"), "test"));
    dataset::FileRegistryOptions options;
    auto registry = dataset::FileRegistry::Open(dir_.Join("dataset"), options);
    ASSERT_THAT(registry, IsOk());
    registry_ = std::move(*registry);
    dataset_executor_ = std::make_unique<rpc::Executor>(2);
    processor_ = std::make_unique<dataset::FileProcessor>(registry_.get(), &dataset::EncodeReport);
    files_ = std::make_unique<dataset::DatasetServiceImpl>(auth_.get(), registry_.get(),
                                                           dataset_executor_.get(), processor_.get());
    control_ = std::make_unique<dataset::DatasetControlServiceImpl>(auth_.get(), registry_.get(),
                                                                    dataset_executor_.get());
    dataset_server_ = std::make_unique<rpc::Server>(ServerOptions());
    dataset_server_->AddService(files_.get());
    dataset_server_->AddService(control_.get());
    ASSERT_THAT(dataset_server_->Start(), IsOk());
    dataset_server_->SetServing(true);
    rpc::ChannelOptions co;
    co.target = absl::StrCat("127.0.0.1:", dataset_server_->port());
    dataset_channel_ = *rpc::MakeChannel(co);
    files_stub_ = v1::DatasetService::NewStub(dataset_channel_);
    StartScheduler();
  }
  void TearDown() override {
    StopScheduler();
    dataset_server_->Shutdown();
  }

  static rpc::ServerOptions ServerOptions() {
    rpc::ServerOptions so;
    so.listen_address = "127.0.0.1:0";
    so.metrics_address = "";
    so.drain_timeout = absl::Milliseconds(500);
    return so;
  }

  void StartScheduler() {
    dataset_client_ = std::make_unique<GrpcDatasetClient>(dataset_channel_, internal_.key);
    SchedulerOptions options;
    options.db_path = dir_.Join("scheduler.db");
    options.models_dir = dir_.Join("models");
    options.artifacts_dir = dir_.Join("artifacts");
    options.clock = &clock_;
    options.lease = absl::Hours(100);  // the manual clock jumps hours
    auto prices = PriceTable::Parse(kPrices, "test");
    ASSERT_THAT(prices, IsOk());
    options.prices = *prices;
    auto s = Scheduler::Open(options, dataset_client_.get());
    ASSERT_THAT(s, IsOk());
    scheduler_ = std::move(*s);
    executor_ = std::make_unique<rpc::Executor>(4);
    jobs_ = std::make_unique<JobServiceImpl>(auth_.get(), scheduler_.get(), executor_.get());
    deployments_ =
        std::make_unique<DeploymentServiceImpl>(auth_.get(), scheduler_.get(), executor_.get());
    trainer_ =
        std::make_unique<TrainerControlServiceImpl>(auth_.get(), scheduler_.get(), executor_.get());
    serving_ =
        std::make_unique<ServingControlServiceImpl>(auth_.get(), scheduler_.get(), executor_.get());
    usage_ = std::make_unique<UsageServiceImpl>(auth_.get(), scheduler_.get(), executor_.get());
    server_ = std::make_unique<rpc::Server>(ServerOptions());
    server_->AddService(jobs_.get());
    server_->AddService(deployments_.get());
    server_->AddService(trainer_.get());
    server_->AddService(serving_.get());
    server_->AddService(usage_.get());
    ASSERT_THAT(server_->Start(), IsOk());
    server_->SetServing(true);
    rpc::ChannelOptions co;
    co.target = absl::StrCat("127.0.0.1:", server_->port());
    auto channel = *rpc::MakeChannel(co);
    job_stub_ = v1::JobService::NewStub(channel);
    dep_stub_ = v1::DeploymentService::NewStub(channel);
    trainer_stub_ = iv1::TrainerControlService::NewStub(channel);
    serving_stub_ = iv1::ServingControlService::NewStub(channel);
    usage_stub_ = v1::UsageService::NewStub(channel);
  }

  void StopScheduler() {
    if (server_) server_->Shutdown();
    server_.reset();
    executor_.reset();
    jobs_.reset();
    deployments_.reset();
    trainer_.reset();
    serving_.reset();
    usage_.reset();
    scheduler_.reset();
  }

  template <typename Stub, typename Req, typename Resp>
  absl::StatusOr<Resp> Call(Stub* stub,
                            grpc::Status (Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
                            const std::string& key, const Req& req) {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, key, absl::Seconds(30));
    Resp resp;
    grpc::Status s = (stub->*method)(&ctx, req, &resp);
    if (!s.ok()) return rpc::FromGrpcStatus(s);
    return resp;
  }

  absl::StatusOr<v1::File> UploadProcessed(const std::string& key, const std::string& content) {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, key, absl::Seconds(30));
    v1::File file;
    auto writer = files_stub_->UploadFile(&ctx, &file);
    v1::UploadFileRequest req;
    req.mutable_metadata()->set_filename("train.jsonl");
    req.mutable_metadata()->set_purpose(v1::FILE_PURPOSE_FINE_TUNE);
    writer->Write(req);
    req.set_chunk(content);
    writer->Write(req);
    writer->WritesDone();
    grpc::Status s = writer->Finish();
    if (!s.ok()) return rpc::FromGrpcStatus(s);
    v1::GetFileRequest get;
    get.set_file_id(file.id());
    absl::StatusOr<v1::File> got;
    WaitFor([&] {
      got = Call(files_stub_.get(), &v1::DatasetService::Stub::GetFile, key, get);
      return got.ok() && (got->status() == v1::FILE_STATUS_PROCESSED ||
                          got->status() == v1::FILE_STATUS_ERROR);
    });
    return got;
  }

  absl::StatusOr<v1::Job> CreateJob(const std::string& key, const std::string& file,
                                    bool validate_only = false) {
    v1::CreateJobRequest req;
    req.set_base_model(kBase);
    req.set_training_file(file);
    req.set_suffix("mine");
    req.set_validate_only(validate_only);
    return Call(job_stub_.get(), &v1::JobService::Stub::CreateJob, key, req);
  }
  absl::StatusOr<v1::Job> GetJob(const std::string& key, const std::string& id) {
    v1::GetJobRequest req;
    req.set_job_id(id);
    return Call(job_stub_.get(), &v1::JobService::Stub::GetJob, key, req);
  }

  absl::StatusOr<v1::UsageReport> Usage(const std::string& key, absl::Time start, absl::Time end,
                                        const std::string& tenant = "") {
    v1::GetUsageRequest req;
    *req.mutable_start_time() = Ts(start);
    *req.mutable_end_time() = Ts(end);
    req.set_tenant(tenant);
    return Call(usage_stub_.get(), &v1::UsageService::Stub::GetUsage, key, req);
  }

  absl::Status Report(const std::string& replica, const std::string& dep, int64_t requests,
                      int64_t prompt, int64_t completion) {
    iv1::ReportReplicaStatusRequest req;
    req.set_replica_id(replica);
    auto* s = req.add_deployments();
    s->set_deployment_id(dep);
    s->set_ready(true);
    s->set_requests(requests);
    s->set_prompt_tokens(prompt);
    s->set_completion_tokens(completion);
    return Call(serving_stub_.get(), &iv1::ServingControlService::Stub::ReportReplicaStatus,
                internal_.key, req)
        .status();
  }

  testing::TempDir dir_;
  ManualClock clock_;
  rpc::NewKey a_ = rpc::GenerateKey("tenant-a", rpc::Role::kTenant, "a");
  rpc::NewKey b_ = rpc::GenerateKey("tenant-b", rpc::Role::kTenant, "b");
  rpc::NewKey internal_ = rpc::GenerateKey("", rpc::Role::kInternal, "svc");
  std::unique_ptr<rpc::Authenticator> auth_;
  std::unique_ptr<dataset::FileRegistry> registry_;
  std::unique_ptr<rpc::Executor> dataset_executor_;
  std::unique_ptr<dataset::FileProcessor> processor_;
  std::unique_ptr<dataset::DatasetServiceImpl> files_;
  std::unique_ptr<dataset::DatasetControlServiceImpl> control_;
  std::unique_ptr<rpc::Server> dataset_server_;
  std::shared_ptr<grpc::Channel> dataset_channel_;
  std::unique_ptr<v1::DatasetService::Stub> files_stub_;
  std::unique_ptr<GrpcDatasetClient> dataset_client_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<rpc::Executor> executor_;
  std::unique_ptr<JobServiceImpl> jobs_;
  std::unique_ptr<DeploymentServiceImpl> deployments_;
  std::unique_ptr<TrainerControlServiceImpl> trainer_;
  std::unique_ptr<ServingControlServiceImpl> serving_;
  std::unique_ptr<UsageServiceImpl> usage_;
  std::unique_ptr<rpc::Server> server_;
  std::unique_ptr<v1::JobService::Stub> job_stub_;
  std::unique_ptr<v1::DeploymentService::Stub> dep_stub_;
  std::unique_ptr<iv1::TrainerControlService::Stub> trainer_stub_;
  std::unique_ptr<iv1::ServingControlService::Stub> serving_stub_;
  std::unique_ptr<v1::UsageService::Stub> usage_stub_;
};

TEST_F(UsageTest, JobEstimateBeforeTheRunAndCostAfterIt) {
  auto file = UploadProcessed(a_.key, ChatJsonl(20));
  ASSERT_THAT(file, IsOk());
  // The estimate, before anything is created.
  auto dry = CreateJob(a_.key, file->id(), /*validate_only=*/true);
  ASSERT_THAT(dry, IsOk());
  EXPECT_TRUE(dry->id().empty());
  EXPECT_GT(dry->estimated_trained_tokens(), 0);
  ASSERT_TRUE(dry->has_estimated_cost());
  EXPECT_DOUBLE_EQ(dry->estimated_cost(), dry->estimated_trained_tokens() / 1e6 * 4.0);
  EXPECT_EQ(dry->currency(), "EUR");
  auto job = CreateJob(a_.key, file->id());
  ASSERT_THAT(job, IsOk());
  EXPECT_EQ(job->estimated_trained_tokens(), dry->estimated_trained_tokens());
  EXPECT_DOUBLE_EQ(job->estimated_cost(), dry->estimated_cost());
  EXPECT_DOUBLE_EQ(job->cost(), 0);  // nothing trained or held yet

  // It runs for an hour on one slot: 500 tokens at 10 min, 1234 at the end.
  const absl::Time t0 = clock_.Now();
  iv1::RegisterNodeRequest reg;
  reg.set_node_name("node-a");
  reg.set_slots(1);
  auto node = Call(trainer_stub_.get(), &iv1::TrainerControlService::Stub::RegisterNode,
                   internal_.key, reg);
  ASSERT_THAT(node, IsOk());
  scheduler_->Tick(clock_.Now());
  iv1::HeartbeatRequest hb;
  hb.set_node_id(node->node_id());
  auto beat = Call(trainer_stub_.get(), &iv1::TrainerControlService::Stub::Heartbeat,
                   internal_.key, hb);
  ASSERT_THAT(beat, IsOk());
  ASSERT_THAT(beat->assignments(), SizeIs(1));
  const std::string asg = beat->assignments(0).assignment_id();
  clock_.Advance(absl::Minutes(10));
  iv1::ReportProgressRequest progress;
  progress.set_assignment_id(asg);
  progress.mutable_metrics()->set_step(1);
  progress.mutable_metrics()->set_trained_tokens(500);
  ASSERT_THAT(Call(trainer_stub_.get(), &iv1::TrainerControlService::Stub::ReportProgress,
                   internal_.key, progress),
              IsOk());
  clock_.Advance(absl::Minutes(20));
  auto mid = GetJob(a_.key, job->id());
  ASSERT_THAT(mid, IsOk());
  EXPECT_DOUBLE_EQ(mid->accelerator_seconds(), 1800);  // so far
  EXPECT_DOUBLE_EQ(mid->cost(), 500 / 1e6 * 4.0 + 0.5 * 2.5);
  clock_.Advance(absl::Minutes(30));
  iv1::CompleteAssignmentRequest done;
  done.set_assignment_id(asg);
  done.set_succeeded(true);
  done.set_result_artifact("jobs/x/result");
  done.set_trained_tokens(1234);
  done.set_peak_rss_bytes(987654321);
  ASSERT_THAT(Call(trainer_stub_.get(), &iv1::TrainerControlService::Stub::CompleteAssignment,
                   internal_.key, done),
              IsOk());
  clock_.Advance(absl::Hours(5));  // time after the end costs nothing

  auto after = GetJob(a_.key, job->id());
  ASSERT_THAT(after, IsOk());
  EXPECT_EQ(after->state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_DOUBLE_EQ(after->accelerator_seconds(), 3600);
  EXPECT_DOUBLE_EQ(after->cost(), 1234 / 1e6 * 4.0 + 1 * 2.5);
  EXPECT_DOUBLE_EQ(after->estimated_cost(), dry->estimated_cost());
  // The measured peak beside the estimate.
  EXPECT_EQ(after->memory_estimate().measured_peak_bytes(), 987654321);
  EXPECT_GT(after->memory_estimate().total_bytes(), 0);

  // The whole run inside the period.
  auto all = Usage(a_.key, t0 - absl::Hours(1), t0 + absl::Hours(24));
  ASSERT_THAT(all, IsOk());
  ASSERT_THAT(all->jobs(), SizeIs(1));
  const v1::JobUsage& line = all->jobs(0);
  EXPECT_EQ(line.job_id(), job->id());
  EXPECT_EQ(line.trained_tokens(), 1234);
  EXPECT_DOUBLE_EQ(line.accelerator_seconds(), 3600);
  EXPECT_DOUBLE_EQ(line.cost().amount(), after->cost());
  EXPECT_EQ(line.cost().currency(), "EUR");
  EXPECT_DOUBLE_EQ(line.estimated_cost().amount(), dry->estimated_cost());
  EXPECT_DOUBLE_EQ(line.job_cost().amount(), after->cost());
  EXPECT_EQ(all->totals().trained_tokens(), 1234);
  ASSERT_THAT(all->totals().costs(), SizeIs(1));
  EXPECT_DOUBLE_EQ(all->totals().costs(0).amount(), after->cost());
  // The second half hour only: its slot time and the tokens reported in it.
  auto half = Usage(a_.key, t0 + absl::Minutes(30), t0 + absl::Hours(24));
  ASSERT_THAT(half, IsOk());
  ASSERT_THAT(half->jobs(), SizeIs(1));
  EXPECT_EQ(half->jobs(0).trained_tokens(), 1234 - 500);
  EXPECT_DOUBLE_EQ(half->jobs(0).accelerator_seconds(), 1800);
  EXPECT_DOUBLE_EQ(half->jobs(0).cost().amount(), 734 / 1e6 * 4.0 + 0.5 * 2.5);
  EXPECT_DOUBLE_EQ(half->jobs(0).job_cost().amount(), after->cost());
  // Before it ran: nothing.
  auto before = Usage(a_.key, t0 - absl::Hours(2), t0);
  ASSERT_THAT(before, IsOk());
  EXPECT_THAT(before->jobs(), SizeIs(0));
}

TEST_F(UsageTest, DeploymentHoursAndInferenceCountedOnceAcrossARestart) {
  const absl::Time t0 = clock_.Now();
  v1::CreateDeploymentRequest create;
  create.set_deployment_id("dep-usage");
  create.set_model(kBase);
  create.set_replicas(2);
  ASSERT_THAT(Call(dep_stub_.get(), &v1::DeploymentService::Stub::CreateDeployment, a_.key, create),
              IsOk());
  iv1::RegisterReplicaRequest reg;
  reg.set_replica_name("replica-1");
  auto replica = Call(serving_stub_.get(), &iv1::ServingControlService::Stub::RegisterReplica,
                      internal_.key, reg);
  ASSERT_THAT(replica, IsOk());
  const std::string rid = replica->replica_id();
  // Two hours at 2 replicas, then 1 replica.
  clock_.Advance(absl::Hours(2));
  ASSERT_THAT(Report(rid, "dep-usage", 3, 100, 50), IsOk());
  ASSERT_THAT(Report(rid, "dep-usage", 3, 100, 50), IsOk());  // repeated
  ASSERT_THAT(Report(rid, "dep-usage", 2, 80, 40), IsOk());   // stale (older)
  ASSERT_THAT(Report(rid, "dep-usage", 5, 160, 90), IsOk());
  v1::UpdateDeploymentRequest update;
  update.mutable_deployment()->set_id("dep-usage");
  update.mutable_deployment()->set_replicas(1);
  update.mutable_update_mask()->add_paths("replicas");
  ASSERT_THAT(Call(dep_stub_.get(), &v1::DeploymentService::Stub::UpdateDeployment, a_.key, update),
              IsOk());
  clock_.Advance(absl::Hours(3));
  auto check = [&](const v1::UsageReport& u, double hours, bool deleted) {
    ASSERT_THAT(u.deployments(), SizeIs(1));
    const v1::DeploymentUsage& d = u.deployments(0);
    EXPECT_EQ(d.deployment_id(), "dep-usage");
    EXPECT_EQ(d.base_model(), kBase);
    EXPECT_DOUBLE_EQ(d.replica_hours(), hours);
    EXPECT_EQ(d.requests(), 5);
    EXPECT_EQ(d.prompt_tokens(), 160);
    EXPECT_EQ(d.completion_tokens(), 90);
    EXPECT_EQ(d.deleted(), deleted);
    EXPECT_DOUBLE_EQ(d.cost().amount(), hours * 1.5 + 160 / 1e6 * 0.2 + 90 / 1e6 * 0.6);
    EXPECT_EQ(u.totals().prompt_tokens(), 160);
    EXPECT_DOUBLE_EQ(u.totals().replica_hours(), hours);
  };
  auto u = Usage(a_.key, t0 - absl::Hours(1), t0 + absl::Hours(24));
  ASSERT_THAT(u, IsOk());
  check(*u, 2 * 2 + 3 * 1, false);
  // A window inside: the last hour at 2 replicas and the first at 1.
  auto inner = Usage(a_.key, t0 + absl::Hours(1), t0 + absl::Hours(3));
  ASSERT_THAT(inner, IsOk());
  ASSERT_THAT(inner->deployments(), SizeIs(1));
  EXPECT_DOUBLE_EQ(inner->deployments(0).replica_hours(), 2 + 1);

  // A restarted scheduler keeps the totals and the replica's counters: the
  // same cumulative report again counts nothing.
  StopScheduler();
  StartScheduler();
  u = Usage(a_.key, t0 - absl::Hours(1), t0 + absl::Hours(24));
  ASSERT_THAT(u, IsOk());
  check(*u, 2 * 2 + 3 * 1, false);
  ASSERT_THAT(Report(rid, "dep-usage", 5, 160, 90), IsOk());
  // Deleted: its hours stop; what it served stays.
  v1::DeleteDeploymentRequest del;
  del.set_deployment_id("dep-usage");
  ASSERT_THAT(Call(dep_stub_.get(), &v1::DeploymentService::Stub::DeleteDeployment, a_.key, del),
              IsOk());
  clock_.Advance(absl::Hours(4));
  u = Usage(a_.key, t0 - absl::Hours(1), t0 + absl::Hours(24));
  ASSERT_THAT(u, IsOk());
  check(*u, 2 * 2 + 3 * 1, true);

  // Another tenant sees nothing of it; an internal caller names the tenant.
  auto theirs = Usage(b_.key, t0 - absl::Hours(1), t0 + absl::Hours(24));
  ASSERT_THAT(theirs, IsOk());
  EXPECT_THAT(theirs->deployments(), SizeIs(0));
  EXPECT_THAT(theirs->jobs(), SizeIs(0));
  EXPECT_EQ(theirs->totals().prompt_tokens(), 0);
  EXPECT_THAT(theirs->totals().costs(), SizeIs(0));
  auto admin = Usage(internal_.key, t0 - absl::Hours(1), t0 + absl::Hours(24), "tenant-a");
  ASSERT_THAT(admin, IsOk());
  check(*admin, 2 * 2 + 3 * 1, true);
  EXPECT_EQ(admin->tenant(), "tenant-a");
}

TEST_F(UsageTest, BadPeriodsAndOtherTenantsAreRefusedNamingTheField) {
  const absl::Time now = clock_.Now();
  EXPECT_THAT(Usage(a_.key, now, now - absl::Hours(1)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("end_time")));
  EXPECT_THAT(Usage(a_.key, now, now),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("end_time")));
  v1::GetUsageRequest req;  // no start
  EXPECT_THAT(Call(usage_stub_.get(), &v1::UsageService::Stub::GetUsage, a_.key, req),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("start_time")));
  req.mutable_start_time()->set_seconds(1);
  req.mutable_start_time()->set_nanos(-5);
  EXPECT_THAT(Call(usage_stub_.get(), &v1::UsageService::Stub::GetUsage, a_.key, req),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("start_time")));
  // Unset end: now, so a start in the future is refused naming end_time.
  req.mutable_start_time()->set_nanos(0);
  req.mutable_start_time()->set_seconds(absl::ToUnixSeconds(now) + 3600);
  EXPECT_THAT(Call(usage_stub_.get(), &v1::UsageService::Stub::GetUsage, a_.key, req),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("end_time")));
  EXPECT_THAT(Usage(a_.key, now - absl::Hours(1), now, "tenant-b"),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("tenant")));
  EXPECT_THAT(Usage(internal_.key, now - absl::Hours(1), now),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tenant")));
  EXPECT_THAT(Usage(a_.key, now - absl::Hours(1), now, "tenant-a"), IsOk());
}

TEST_F(UsageTest, CliPrintsTheLinesAndTheCost) {
  const absl::Time t0 = clock_.Now();
  v1::CreateDeploymentRequest create;
  create.set_deployment_id("dep-cli");
  create.set_model(kBase);
  create.set_replicas(1);
  ASSERT_THAT(Call(dep_stub_.get(), &v1::DeploymentService::Stub::CreateDeployment, a_.key, create),
              IsOk());
  clock_.Advance(absl::Hours(2));
  auto run = [&](const std::string& args, std::string* out) {
    const std::string o = dir_.Join("cli.out");
    int status = std::system(absl::StrCat("env -u TUNEFLEET_CONFIG ", TUNEFLEET_BIN_DIR,
                                          "/tunefleet usage ", args, " --target 127.0.0.1:",
                                          server_->port(), " --api-key ", a_.key, " >", o,
                                          " 2>&1 </dev/null")
                                 .c_str());
    std::ifstream in(o);
    *out = std::string(std::istreambuf_iterator<char>(in), {});
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  auto rfc = [](absl::Time t) { return absl::FormatTime(absl::RFC3339_sec, t, absl::UTCTimeZone()); };
  std::string out;
  ASSERT_EQ(run(absl::StrCat("--start ", rfc(t0), " --end ", rfc(t0 + absl::Hours(1))), &out), 0)
      << out;
  EXPECT_THAT(out, HasSubstr("dep-cli"));
  EXPECT_THAT(out, HasSubstr("1.000 replica-hours"));
  EXPECT_THAT(out, HasSubstr("cost: 1.5000 EUR"));
  EXPECT_EQ(run("--since nonsense", &out), 2) << out;
  EXPECT_THAT(out, HasSubstr("--since"));
}

TEST(PriceTableTest, ParsesAndRefusesBadEntriesNamingThem) {
  auto t = PriceTable::Parse(R"({"m": {"currency": "USD", "per_replica_hour": 2},
                                 "*": {"currency": "EUR"}})", "p.json");
  ASSERT_THAT(t, IsOk());
  ASSERT_NE(t->Find("m"), nullptr);
  EXPECT_EQ(t->Find("m")->per_replica_hour, 2);
  EXPECT_EQ(t->Find("other")->currency, "EUR");
  EXPECT_THAT(PriceTable::Parse(R"({"m": {"currency": "USD", "per_gpu_hour": 2}})", "p.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'m'.per_gpu_hour")));
  EXPECT_THAT(PriceTable::Parse(R"({"m": {"per_replica_hour": 2}})", "p.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'m'.currency")));
  EXPECT_THAT(PriceTable::Parse(R"({"m": {"currency": "USD", "per_replica_hour": -1}})", "p"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("per_replica_hour")));
  EXPECT_THAT(PriceTable::Parse("[1]", "p"), StatusIs(absl::StatusCode::kInvalidArgument));
  auto none = PriceTable::Parse(R"({"m": {"currency": "USD"}})", "p");
  ASSERT_THAT(none, IsOk());
  EXPECT_EQ(none->Find("other"), nullptr);
}

}  // namespace
}  // namespace tunefleet::scheduler
