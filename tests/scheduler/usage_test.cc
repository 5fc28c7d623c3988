// Usage and cost over gRPC on loopback: a real dataset server, a real SQLite
// file, a manual clock, a price table, and a test-side trainer agent and
// serving replica speaking the internal control APIs.
#include <memory>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "tests/scheduler/scheduler_fixture.h"
#include "tests/testing/status_matchers.h"

namespace tunefleet::scheduler {
namespace {

using ::testing::HasSubstr;
using ::testing::SizeIs;
using ::tunefleet::testing::IsOk;
using ::tunefleet::testing::StatusIs;

// Per 1M trained tokens 4, per accelerator-hour 2.5, per replica-hour 1.5,
// per 1M prompt tokens 0.2, per 1M completion tokens 0.6.
constexpr char kPrices[] = R"({"tiny-base": {"currency": "EUR", "per_1m_trained_tokens": 4.0,
  "per_accelerator_hour": 2.5, "per_replica_hour": 1.5, "per_1m_prompt_tokens": 0.2,
  "per_1m_completion_tokens": 0.6}})";

google::protobuf::Timestamp Ts(absl::Time t) {
  google::protobuf::Timestamp ts;
  ts.set_seconds(absl::ToUnixSeconds(t));
  return ts;
}

class UsageTest : public SchedulerFixture {
 protected:
  void Configure(SchedulerOptions& options) override {
    options.lease = absl::Hours(100);  // the manual clock jumps hours
    auto prices = PriceTable::Parse(kPrices, "test");
    ASSERT_THAT(prices, IsOk());
    options.prices = *prices;
  }

  using SchedulerFixture::CreateJob;
  absl::StatusOr<v1::Job> CreateJob(const std::string& key, const std::string& file,
                                    bool validate_only = false) {
    v1::CreateJobRequest req = JobRequest(file);
    req.set_validate_only(validate_only);
    return CreateJob(key, req);
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
  done.set_peak_device_bytes(123456789);  // a GPU run: the device's count wins
  done.set_runtime_bytes(23456789);         // its CUDA context, before the model
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
  // The measured peak beside the estimate (agent_fleet_test: a CPU run's RSS).
  EXPECT_EQ(after->memory_estimate().measured_peak_bytes(), 123456789);
  EXPECT_EQ(after->memory_estimate().measured_runtime_bytes(), 23456789);
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
  auto replica = RegisterReplica("replica-1");
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
    return RunCli("usage " + args, a_.key, out);
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
