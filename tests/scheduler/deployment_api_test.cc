// The public deployment API over gRPC on loopback: user-chosen ids and
// ALREADY_EXISTS, request_id idempotency (across a restart), WatchDeployment
// from CREATING to ACTIVE / FAILED / deleted with a replica reporting through
// the real internal API, Delete returning the deployment, and the content
// filter policy's validation (blocklist regexes checked with RE2). A real
// scheduler with its SQLite file; deployments never call the dataset service.
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "common/errors/error_details.h"
#include "tests/scheduler/scheduler_fixture.h"
#include "tests/testing/status_matchers.h"

namespace tunefleet::scheduler {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::SizeIs;
using ::tunefleet::testing::IsOk;
using ::tunefleet::testing::StatusIs;

class DeploymentApiTest : public SchedulerFixture {
 protected:
  // Deployments never call the dataset service.
  DeploymentApiTest() { with_dataset_ = false; }

  absl::StatusOr<v1::Deployment> Create(const std::string& key, const std::string& id,
                                        const std::string& request_id = "") {
    v1::CreateDeploymentRequest req;
    req.set_model(kBase);
    req.set_deployment_id(id);
    req.set_request_id(request_id);
    return Call(dep_stub_.get(), &v1::DeploymentService::Stub::CreateDeployment, key, req);
  }
  absl::StatusOr<v1::Deployment> Create(const std::string& key,
                                        const v1::CreateDeploymentRequest& req) {
    return Call(dep_stub_.get(), &v1::DeploymentService::Stub::CreateDeployment, key, req);
  }

  // A registered replica's id.
  std::string NewReplica() {
    auto r = RegisterReplica("replica-a", "127.0.0.1:9000");
    EXPECT_THAT(r, IsOk());
    return r.ok() ? r->replica_id() : "";
  }
  void Report(const std::string& replica, const std::string& dep, bool ready,
              const std::string& error = "") {
    iv1::ReportReplicaStatusRequest rs;
    rs.set_replica_id(replica);
    auto* ds = rs.add_deployments();
    ds->set_deployment_id(dep);
    ds->set_ready(ready);
    ds->set_error(error);
    ASSERT_THAT(Call(serving_stub_.get(), &iv1::ServingControlService::Stub::ReportReplicaStatus,
                     internal_.key, rs),
                IsOk());
  }

  // A watch read by the test thread.
  struct Watch {
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientReader<v1::Deployment>> reader;
  };
  std::unique_ptr<Watch> StartWatch(const std::string& key, const std::string& id) {
    auto w = std::make_unique<Watch>();
    rpc::PrepareContext(&w->ctx, key, absl::Seconds(20));
    v1::WatchDeploymentRequest req;
    req.set_deployment_id(id);
    w->reader = dep_stub_->WatchDeployment(&w->ctx, req);
    return w;
  }
};

TEST_F(DeploymentApiTest, UserChosenIdsAreUniqueAndValidated) {
  auto generated = Create(a_.key, "");
  ASSERT_THAT(generated, IsOk());
  EXPECT_EQ(generated->id().rfind("dep-", 0), 0u) << generated->id();

  auto mine = Create(a_.key, "support-bot-2");
  ASSERT_THAT(mine, IsOk());
  EXPECT_EQ(mine->id(), "support-bot-2");
  EXPECT_EQ(mine->state(), v1::DEPLOYMENT_STATE_CREATING);

  // Taken: by the same tenant, and by another one (ids are global).
  for (const auto* key : {&a_.key, &b_.key}) {
    auto again = Create(*key, "support-bot-2");
    EXPECT_THAT(again, StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("support-bot-2")));
    errors::Details d = errors::GetDetails(again.status());
    EXPECT_EQ(d.reason, "DEPLOYMENT_EXISTS");
    ASSERT_THAT(d.field_violations, SizeIs(1));
    EXPECT_EQ(d.field_violations[0].field, "deployment_id");
  }
  // Another tenant still cannot see it.
  v1::GetDeploymentRequest get;
  get.set_deployment_id("support-bot-2");
  EXPECT_THAT(Call(dep_stub_.get(), &v1::DeploymentService::Stub::GetDeployment, b_.key, get),
              StatusIs(absl::StatusCode::kNotFound));

  for (const std::string& bad : std::vector<std::string>{"2fast", "Upper", "under_score", "-lead",
                                                        "a b", std::string(64, 'a')}) {
    auto r = Create(a_.key, bad);
    EXPECT_THAT(r, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("deployment_id")))
        << bad;
    errors::Details d = errors::GetDetails(r.status());
    ASSERT_THAT(d.field_violations, SizeIs(1)) << bad;
    EXPECT_EQ(d.field_violations[0].field, "deployment_id");
  }
  EXPECT_THAT(Create(a_.key, std::string(63, 'a')), IsOk());
  EXPECT_THAT(Create(a_.key, "a"), IsOk());
}

TEST_F(DeploymentApiTest, RequestIdReturnsTheSameDeploymentAcrossARestart) {
  auto first = Create(a_.key, "", "req-1");
  ASSERT_THAT(first, IsOk());
  auto retry = Create(a_.key, "", "req-1");
  ASSERT_THAT(retry, IsOk());
  EXPECT_EQ(retry->id(), first->id());
  // With a user id too: the retry is not "already exists".
  auto named = Create(a_.key, "named", "req-2");
  ASSERT_THAT(named, IsOk());
  auto named_retry = Create(a_.key, "named", "req-2");
  ASSERT_THAT(named_retry, IsOk());
  EXPECT_EQ(named_retry->id(), "named");
  // The key is the tenant's: another tenant's same key makes its own.
  auto other = Create(b_.key, "", "req-1");
  ASSERT_THAT(other, IsOk());
  EXPECT_NE(other->id(), first->id());
  v1::CreateDeploymentRequest long_key;
  long_key.set_model(kBase);
  long_key.set_request_id(std::string(129, 'k'));
  EXPECT_THAT(Create(a_.key, long_key),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("request_id")));

  StopScheduler();
  StartScheduler();
  auto after = Create(a_.key, "", "req-1");
  ASSERT_THAT(after, IsOk());
  EXPECT_EQ(after->id(), first->id());
  v1::ListDeploymentsRequest list;
  auto mine = Call(dep_stub_.get(), &v1::DeploymentService::Stub::ListDeployments, a_.key, list);
  ASSERT_THAT(mine, IsOk());
  EXPECT_THAT(mine->deployments(), SizeIs(2));

  // Once deleted, the key makes a new one.
  v1::DeleteDeploymentRequest del;
  del.set_deployment_id(first->id());
  ASSERT_THAT(Call(dep_stub_.get(), &v1::DeploymentService::Stub::DeleteDeployment, a_.key, del),
              IsOk());
  auto fresh = Create(a_.key, "", "req-1");
  ASSERT_THAT(fresh, IsOk());
  EXPECT_NE(fresh->id(), first->id());
}

TEST_F(DeploymentApiTest, WatchSendsNowThenEachChangeAndEndsWhenActive) {
  const std::string replica = NewReplica();
  ASSERT_THAT(Create(a_.key, "watched"), IsOk());
  auto w = StartWatch(a_.key, "watched");
  v1::Deployment d;
  ASSERT_TRUE(w->reader->Read(&d));
  EXPECT_EQ(d.id(), "watched");
  EXPECT_EQ(d.state(), v1::DEPLOYMENT_STATE_CREATING);
  EXPECT_EQ(d.ready_replicas(), 0);

  // A change that is not the end: the replica count (UpdateDeployment).
  v1::UpdateDeploymentRequest up;
  up.mutable_deployment()->set_id("watched");
  up.mutable_deployment()->set_replicas(2);
  up.mutable_update_mask()->add_paths("replicas");
  ASSERT_THAT(Call(dep_stub_.get(), &v1::DeploymentService::Stub::UpdateDeployment, a_.key, up),
              IsOk());
  ASSERT_TRUE(w->reader->Read(&d));
  EXPECT_EQ(d.replicas(), 2);
  EXPECT_EQ(d.state(), v1::DEPLOYMENT_STATE_CREATING);

  Report(replica, "watched", true);
  ASSERT_TRUE(w->reader->Read(&d));
  EXPECT_EQ(d.state(), v1::DEPLOYMENT_STATE_ACTIVE);
  EXPECT_EQ(d.ready_replicas(), 1);
  EXPECT_FALSE(w->reader->Read(&d));
  EXPECT_TRUE(w->reader->Finish().ok());

  // Already active: one message, then the end.
  auto again = StartWatch(a_.key, "watched");
  std::vector<v1::DeploymentState> states;
  while (again->reader->Read(&d)) states.push_back(d.state());
  EXPECT_TRUE(again->reader->Finish().ok());
  EXPECT_THAT(states, ElementsAre(v1::DEPLOYMENT_STATE_ACTIVE));

  // Unknown, or another tenant's: NOT_FOUND naming it; no id: INVALID_ARGUMENT.
  for (auto [key, id] : {std::pair{&a_.key, std::string("nope")},
                         std::pair{&b_.key, std::string("watched")}}) {
    auto missing = StartWatch(*key, id);
    EXPECT_FALSE(missing->reader->Read(&d));
    grpc::Status s = missing->reader->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << id;
    EXPECT_THAT(s.error_message(), HasSubstr(id));
  }
  auto no_id = StartWatch(a_.key, "");
  EXPECT_FALSE(no_id->reader->Read(&d));
  EXPECT_EQ(no_id->reader->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(DeploymentApiTest, WatchEndsOnFailureAndOnDeletion) {
  const std::string replica = NewReplica();
  ASSERT_THAT(Create(a_.key, "broken"), IsOk());
  auto w = StartWatch(a_.key, "broken");
  v1::Deployment d;
  ASSERT_TRUE(w->reader->Read(&d));
  Report(replica, "broken", false, "adapter does not load: missing adapter_config.json");
  ASSERT_TRUE(w->reader->Read(&d));
  EXPECT_EQ(d.state(), v1::DEPLOYMENT_STATE_FAILED);
  EXPECT_THAT(d.error().message(), HasSubstr("adapter_config.json"));
  EXPECT_FALSE(w->reader->Read(&d));
  EXPECT_TRUE(w->reader->Finish().ok());

  // Deleted while watched: the last message is the deployment in DELETING.
  ASSERT_THAT(Create(a_.key, "short-lived"), IsOk());
  auto w2 = StartWatch(a_.key, "short-lived");
  ASSERT_TRUE(w2->reader->Read(&d));
  EXPECT_EQ(d.state(), v1::DEPLOYMENT_STATE_CREATING);
  v1::DeleteDeploymentRequest del;
  del.set_deployment_id("short-lived");
  EXPECT_THAT(Call(dep_stub_.get(), &v1::DeploymentService::Stub::DeleteDeployment, b_.key, del),
              StatusIs(absl::StatusCode::kNotFound));
  auto gone = Call(dep_stub_.get(), &v1::DeploymentService::Stub::DeleteDeployment, a_.key, del);
  ASSERT_THAT(gone, IsOk());
  EXPECT_EQ(gone->id(), "short-lived");
  EXPECT_EQ(gone->model(), kBase);
  EXPECT_EQ(gone->state(), v1::DEPLOYMENT_STATE_DELETING);
  ASSERT_TRUE(w2->reader->Read(&d));
  EXPECT_EQ(d.id(), "short-lived");
  EXPECT_EQ(d.state(), v1::DEPLOYMENT_STATE_DELETING);
  EXPECT_FALSE(w2->reader->Read(&d));
  EXPECT_TRUE(w2->reader->Finish().ok());
  v1::GetDeploymentRequest get;
  get.set_deployment_id("short-lived");
  EXPECT_THAT(Call(dep_stub_.get(), &v1::DeploymentService::Stub::GetDeployment, a_.key, get),
              StatusIs(absl::StatusCode::kNotFound));
  // The id is free again.
  EXPECT_THAT(Create(a_.key, "short-lived"), IsOk());

  // A client that cancels ends its watch (CANCELLED).
  auto w3 = StartWatch(a_.key, "short-lived");
  ASSERT_TRUE(w3->reader->Read(&d));
  w3->ctx.TryCancel();
  while (w3->reader->Read(&d)) {
  }
  EXPECT_EQ(w3->reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST_F(DeploymentApiTest, PolicyBlocklistsAreCheckedWithRe2AtCreateAndUpdate) {
  v1::CreateDeploymentRequest req;
  req.set_model(kBase);
  req.set_deployment_id("filtered");
  v1::ContentFilterPolicy* p = req.mutable_content_filter();
  v1::Blocklist* ok = p->add_blocklists();
  ok->set_name("codenames");
  ok->add_terms("project falcon");
  ok->add_regexes("ticket-[0-9]{4}");
  v1::Blocklist* bad = p->add_blocklists();
  bad->set_name("broken");
  bad->add_regexes("(unclosed");
  auto r = Create(a_.key, req);
  EXPECT_THAT(r, StatusIs(absl::StatusCode::kInvalidArgument,
                          HasSubstr("content_filter.blocklists[1].regexes[0]")));
  errors::Details d = errors::GetDetails(r.status());
  ASSERT_THAT(d.field_violations, SizeIs(1));
  EXPECT_EQ(d.field_violations[0].field, "content_filter.blocklists[1].regexes[0]");
  EXPECT_THAT(d.field_violations[0].description, HasSubstr("missing )"));  // RE2's words

  // Names: required, unique; a rule's action and the error policy: known values.
  bad->set_name("codenames");
  bad->set_regexes(0, "fine");
  auto* rule = p->add_rules();
  rule->set_category(v1::CONTENT_FILTER_CATEGORY_BLOCKLIST);
  rule->set_action(static_cast<v1::ContentFilterAction>(9));
  p->set_on_classifier_error(static_cast<v1::ClassifierErrorPolicy>(7));
  r = Create(a_.key, req);
  EXPECT_THAT(r, StatusIs(absl::StatusCode::kInvalidArgument));
  d = errors::GetDetails(r.status());
  std::vector<std::string> fields;
  for (const auto& v : d.field_violations) fields.push_back(v.field);
  EXPECT_THAT(fields, ::testing::UnorderedElementsAre("content_filter.rules[0].action",
                                                      "content_filter.on_classifier_error",
                                                      "content_filter.blocklists[1].name"));

  bad->set_name("more");
  rule->set_action(v1::CONTENT_FILTER_ACTION_ANNOTATE);
  p->set_on_classifier_error(v1::CLASSIFIER_ERROR_POLICY_FAIL_OPEN);
  auto created = Create(a_.key, req);
  ASSERT_THAT(created, IsOk());
  EXPECT_EQ(created->content_filter().blocklists_size(), 2);
  EXPECT_EQ(created->content_filter().blocklists(0).regexes(0), "ticket-[0-9]{4}");
  EXPECT_EQ(created->content_filter().rules(0).action(), v1::CONTENT_FILTER_ACTION_ANNOTATE);

  // Update: the same check, under "deployment.".
  v1::UpdateDeploymentRequest up;
  up.mutable_deployment()->set_id("filtered");
  *up.mutable_deployment()->mutable_content_filter() = created->content_filter();
  up.mutable_deployment()->mutable_content_filter()->mutable_blocklists(0)->set_regexes(0, "a**");
  up.mutable_update_mask()->add_paths("content_filter");
  auto updated =
      Call(dep_stub_.get(), &v1::DeploymentService::Stub::UpdateDeployment, a_.key, up);
  EXPECT_THAT(updated, StatusIs(absl::StatusCode::kInvalidArgument,
                                HasSubstr("deployment.content_filter.blocklists[0].regexes[0]")));
  EXPECT_THAT(updated.status().message(), HasSubstr("bad repetition operator"));
}

// The CLI: `deployments create --id --request-id`, `--wait` and `watch`
// follow WatchDeployment to ACTIVE (a replica reports ready meanwhile),
// `delete` prints the deployment in DELETING with --json.
TEST_F(DeploymentApiTest, CliCreatesWithAnIdAndWaitsOverTheWatch) {
  const std::string replica = NewReplica();
  auto run = [&](const std::string& args, std::string* out, std::string* err) {
    return RunCli(args, a_.key, out, err);
  };
  // The replica reports the deployment ready once the scheduler has it.
  std::thread ready([&] {
    v1::GetDeploymentRequest get;
    get.set_deployment_id("cli-bot");
    for (int i = 0; i < 2000; ++i) {
      if (Call(dep_stub_.get(), &v1::DeploymentService::Stub::GetDeployment, a_.key, get).ok()) {
        Report(replica, "cli-bot", true);
        return;
      }
      absl::SleepFor(absl::Milliseconds(5));
    }
  });
  std::string out, err;
  int rc = run("deployments create --model tiny-base --id cli-bot --request-id k1 --wait "
               "--wait-seconds 30",
               &out, &err);
  ready.join();
  ASSERT_EQ(rc, 0) << err;
  EXPECT_THAT(out, HasSubstr("cli-bot"));
  EXPECT_THAT(out, HasSubstr("active"));
  // The same request id: the same deployment, no "already exists".
  ASSERT_EQ(run("deployments create --model tiny-base --id cli-bot --request-id k1", &out, &err),
            0)
      << err;
  EXPECT_EQ(run("deployments create --model tiny-base --id cli-bot", &out, &err), 4);
  EXPECT_THAT(err, HasSubstr("already exists"));
  ASSERT_EQ(run("deployments watch cli-bot --wait-seconds 10", &out, &err), 0) << err;
  EXPECT_THAT(out, HasSubstr("active"));
  ASSERT_EQ(run("deployments delete cli-bot --json", &out, &err), 0) << err;
  EXPECT_THAT(out, HasSubstr("DEPLOYMENT_STATE_DELETING"));
  EXPECT_EQ(run("deployments watch cli-bot", &out, &err), 3);  // NOT_FOUND
}

}  // namespace
}  // namespace tunefleet::scheduler
