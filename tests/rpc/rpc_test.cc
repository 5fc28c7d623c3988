// The shared RPC runtime over real loopback servers: authentication and
// tenancy, health, /metrics, TLS and mTLS.
#include <memory>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "cli/fleet.h"
#include "common/errors/error_details.h"
#include "common/rpc/auth.h"
#include "common/rpc/channel.h"
#include "common/rpc/server.h"
#include "common/rpc/status.h"
#include "common/rpc/service_util.h"
#include "tunefleet/internal/v1/trainer.grpc.pb.h"
#include "tunefleet/v1/jobs.grpc.pb.h"
#include "tests/testing/http_get.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/tls_certs.h"

namespace tunefleet::rpc {
namespace {

using ::testing::HasSubstr;
using ::tunefleet::testing::IsOk;
using ::tunefleet::testing::StatusIs;

struct Keys {
  NewKey tenant_a = GenerateKey("tenant-a", Role::kTenant, "a");
  NewKey tenant_b = GenerateKey("tenant-b", Role::kTenant, "b");
  NewKey internal = GenerateKey("", Role::kInternal, "svc");
  std::shared_ptr<const KeyRing> ring() const {
    return *KeyRing::Parse(absl::StrCat("# test keys\n", tenant_a.line, "\n\n", tenant_b.line,
                                        "\n", internal.line, "\n"),
                           "test");
  }
};

TEST(StatusConversion, RoundTripsEveryCode) {
  for (int c = 0; c <= 16; ++c) {
    absl::Status s(static_cast<absl::StatusCode>(c), c == 0 ? "" : "msg");
    grpc::Status g = ToGrpcStatus(s);
    EXPECT_EQ(static_cast<int>(g.error_code()), c);
    const absl::Status back = FromGrpcStatus(g);
    EXPECT_EQ(back.code(), s.code());
    EXPECT_EQ(back.message(), s.message());
    // Every error carries an ErrorInfo; its reason defaults to the code.
    if (c != 0) {
      EXPECT_EQ(errors::GetDetails(back).reason, errors::DefaultReason(s.code()));
      EXPECT_EQ(errors::GetDetails(back).domain, "tunefleet.dev");
    }
  }
}

TEST(KeyRing, ParsesAndRejectsWithLineNumbers) {
  Keys keys;
  auto ring = keys.ring();
  EXPECT_EQ(ring->size(), 3u);
  TF_ASSERT_OK_AND_ASSIGN(Principal a, ring->Lookup(keys.tenant_a.key));
  EXPECT_EQ(a.tenant, "tenant-a");
  EXPECT_FALSE(a.internal());
  TF_ASSERT_OK_AND_ASSIGN(Principal i, ring->Lookup(keys.internal.key));
  EXPECT_TRUE(i.internal());
  EXPECT_THAT(ring->Lookup("tfk-not-a-key"), StatusIs(absl::StatusCode::kUnauthenticated));
  // The file holds digests, never the key itself.
  EXPECT_THAT(keys.tenant_a.line, ::testing::Not(HasSubstr(keys.tenant_a.key)));

  EXPECT_THAT(KeyRing::Parse("\nnot-hex tenant\n", "keys.txt"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("keys.txt:2")));
  std::string digest(64, 'a');
  EXPECT_THAT(KeyRing::Parse(digest + " t admin\n", "k"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unknown role 'admin'")));
  EXPECT_THAT(KeyRing::Parse(digest + " t\n" + digest + " u\n", "k"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("k:2: duplicate")));
}

TEST(CheckOwner, AnotherTenantsResourceLooksMissing) {
  Principal b{"tenant-b", Role::kTenant, "b"};
  absl::Status foreign = CheckOwner(b, "tenant-a", "file", "file-x");
  EXPECT_THAT(foreign, StatusIs(absl::StatusCode::kNotFound, "file file-x not found"));
  EXPECT_THAT(CheckOwner(b, "tenant-b", "file", "file-x"), IsOk());
  Principal platform{"", Role::kInternal, "svc"};
  EXPECT_THAT(CheckOwner(platform, "tenant-a", "file", "file-x"), IsOk());
  Principal acting{"tenant-b", Role::kInternal, "svc"};
  EXPECT_THAT(CheckOwner(acting, "tenant-a", "file", "file-x"),
              StatusIs(absl::StatusCode::kNotFound));
}

// Stand-ins for a tenant-facing and an internal service: they authenticate
// exactly as the real services do, then GetJob answers UNIMPLEMENTED, so a
// test sees where authentication stopped a call (the real services' own
// behaviour is tested in their areas).
class TenantJobs final : public v1::JobService::CallbackService {
 public:
  explicit TenantJobs(const Authenticator* auth) : auth_(*auth) {}
  TF_NOT_IMPLEMENTED_UNARY(GetJob, v1::GetJobRequest, v1::Job, Audience::kTenant)
  // Fails with every kind of detail, as core code would attach them.
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* context,
                                      const v1::CancelJobRequest* request, v1::Job*) override {
    auto principal = auth_.AuthenticateTenant(*context);
    if (!principal.ok()) return FinishUnary(context, principal.status());
    absl::Status status = absl::FailedPreconditionError(
        absl::StrCat("job ", request->job_id(), " is in state SUCCEEDED"));
    status = errors::WithReason(status, "JOB_STATE", {{"state", "SUCCEEDED"}});
    status = errors::WithPreconditionViolation(status, "JOB_STATE", request->job_id(),
                                               "the job already ended");
    status = errors::WithFieldViolation(status, "job_id", "names an ended job");
    status = errors::WithFieldViolation(status, "reason", "too long");
    status = errors::WithQuotaViolation(status, "tenant:a/max_active_jobs", "2 of 2 in use");
    status = errors::WithRetryDelay(status, absl::Milliseconds(1500));
    return FinishUnary(context, status);
  }

 private:
  const Authenticator& auth_;
};

class InternalAgent final : public internal::v1::TrainerAgentService::CallbackService {
 public:
  InternalAgent(const Authenticator* auth, std::string node_name)
      : auth_(*auth), node_name_(std::move(node_name)) {}
  grpc::ServerUnaryReactor* GetNodeStatus(grpc::CallbackServerContext* context,
                                          const internal::v1::GetNodeStatusRequest*,
                                          internal::v1::NodeStatus* response) override {
    auto principal = auth_.AuthenticateInternal(*context);
    if (!principal.ok()) return FinishUnary(context, principal.status());
    response->set_node_name(node_name_);
    return FinishUnary(context, absl::OkStatus());
  }

 private:
  const Authenticator& auth_;
  const std::string node_name_;
};

// A real server on a loopback port with a tenant-facing and an internal
// service.
class ServerTest : public ::testing::Test {
 protected:
  void StartServer(TlsOptions tls = {}) {
    ServerOptions options;
    options.service_name = "test";
    options.listen_address = "127.0.0.1:0";
    options.metrics_address = "127.0.0.1:0";
    options.tls = tls;
    options.drain_timeout = absl::Seconds(2);
    auth_ = std::make_unique<Authenticator>(keys_.ring());
    jobs_ = std::make_unique<TenantJobs>(auth_.get());
    agent_ = std::make_unique<InternalAgent>(auth_.get(), "node-7");
    server_ = std::make_unique<Server>(options);
    server_->AddService(jobs_.get());
    server_->AddService(agent_.get());
    ASSERT_THAT(server_->Start(), IsOk());
    ASSERT_GT(server_->port(), 0);
    ASSERT_GT(server_->metrics_port(), 0);
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
  }

  std::string Target() const { return absl::StrCat("127.0.0.1:", server_->port()); }
  std::shared_ptr<grpc::Channel> Plain() const {
    ChannelOptions o;
    o.target = Target();
    return *MakeChannel(o);
  }
  absl::Status GetJob(const std::string& key, const std::string& on_behalf_of = "") {
    auto stub = v1::JobService::NewStub(Plain());
    grpc::ClientContext ctx;
    PrepareContext(&ctx, key, absl::Seconds(10), on_behalf_of);
    v1::GetJobRequest req;
    req.set_job_id("ftjob-abc");
    v1::Job job;
    return FromGrpcStatus(stub->GetJob(&ctx, req, &job));
  }
  absl::StatusOr<std::string> NodeName(const std::string& key) {
    auto stub = internal::v1::TrainerAgentService::NewStub(Plain());
    grpc::ClientContext ctx;
    PrepareContext(&ctx, key, absl::Seconds(10));
    internal::v1::NodeStatus status;
    grpc::Status s = stub->GetNodeStatus(&ctx, {}, &status);
    if (!s.ok()) return FromGrpcStatus(s);
    return status.node_name();
  }

  Keys keys_;
  std::unique_ptr<Authenticator> auth_;
  std::unique_ptr<TenantJobs> jobs_;
  std::unique_ptr<InternalAgent> agent_;
  std::unique_ptr<Server> server_;
};

TEST_F(ServerTest, AuthenticationAndRoles) {
  StartServer();
  server_->SetServing(true);
  // No key, a malformed header, a wrong key.
  EXPECT_THAT(GetJob(""), StatusIs(absl::StatusCode::kUnauthenticated,
                                   HasSubstr("authorization: Bearer")));
  {
    auto stub = v1::JobService::NewStub(Plain());
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Basic abc");
    v1::Job job;
    EXPECT_THAT(FromGrpcStatus(stub->GetJob(&ctx, {}, &job)),
                StatusIs(absl::StatusCode::kUnauthenticated, HasSubstr("malformed")));
  }
  EXPECT_THAT(GetJob("tfk-wrong"), StatusIs(absl::StatusCode::kUnauthenticated,
                                            "invalid API key"));
  // A tenant key passes authentication (the method itself is not built yet).
  EXPECT_THAT(GetJob(keys_.tenant_a.key),
              StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("GetJob")));
  // Tenant keys cannot call internal services; the internal key can.
  EXPECT_THAT(NodeName(keys_.tenant_a.key), StatusIs(absl::StatusCode::kPermissionDenied));
  TF_ASSERT_OK_AND_ASSIGN(std::string node, NodeName(keys_.internal.key));
  EXPECT_EQ(node, "node-7");
  // The internal key must say which tenant it acts for on tenant APIs.
  EXPECT_THAT(GetJob(keys_.internal.key), StatusIs(absl::StatusCode::kPermissionDenied,
                                                   HasSubstr(kOnBehalfOfHeader)));
  EXPECT_THAT(GetJob(keys_.internal.key, "tenant-a"),
              StatusIs(absl::StatusCode::kUnimplemented));
}

TEST_F(ServerTest, ErrorDetailsCrossTheWire) {
  StartServer();
  server_->SetServing(true);
  auto stub = v1::JobService::NewStub(Plain());
  grpc::ClientContext ctx;
  PrepareContext(&ctx, keys_.tenant_a.key, absl::Seconds(10));
  v1::CancelJobRequest req;
  req.set_job_id("ftjob-done");
  v1::Job job;
  const absl::Status status = FromGrpcStatus(stub->CancelJob(&ctx, req, &job));
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kFailedPrecondition,
                               "job ftjob-done is in state SUCCEEDED"));
  const errors::Details d = errors::GetDetails(status);
  EXPECT_EQ(d.reason, "JOB_STATE");
  EXPECT_EQ(d.domain, "tunefleet.dev");
  EXPECT_EQ(d.metadata, (std::map<std::string, std::string>{{"state", "SUCCEEDED"}}));
  EXPECT_THAT(d.precondition_violations,
              ::testing::ElementsAre(errors::PreconditionViolation{
                  "JOB_STATE", "ftjob-done", "the job already ended"}));
  EXPECT_THAT(d.field_violations,
              ::testing::ElementsAre(errors::FieldViolation{"job_id", "names an ended job"},
                                     errors::FieldViolation{"reason", "too long"}));
  EXPECT_THAT(d.quota_violations, ::testing::ElementsAre(errors::QuotaViolation{
                                      "tenant:a/max_active_jobs", "2 of 2 in use"}));
  ASSERT_TRUE(d.retry_delay.has_value());
  EXPECT_EQ(*d.retry_delay, absl::Milliseconds(1500));
  // An error raised by the runtime itself (authentication) carries the
  // default reason.
  grpc::ClientContext bad;
  PrepareContext(&bad, "tfk-wrong", absl::Seconds(10));
  const absl::Status unauth = FromGrpcStatus(stub->CancelJob(&bad, req, &job));
  EXPECT_EQ(errors::GetDetails(unauth).reason, "UNAUTHENTICATED");
}

TEST(ErrorDetails, BuildersMergeAndDescribe) {
  absl::Status s = errors::FieldError("hyperparameters.epochs", "must be in [1, 50], got 0");
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument,
                          "hyperparameters.epochs: must be in [1, 50], got 0"));
  s = errors::WithFieldViolation(s, "suffix", "too long");
  errors::Details d = errors::GetDetails(s);
  EXPECT_EQ(d.reason, "INVALID_FIELD");
  ASSERT_EQ(d.field_violations.size(), 2u);
  EXPECT_FALSE(d.retry_delay.has_value());
  EXPECT_THAT(errors::DescribeDetails(d),
              ::testing::ElementsAre("field hyperparameters.epochs: must be in [1, 50], got 0",
                                     "field suffix: too long"));
  absl::Status held = errors::WithPreconditionViolation(
      absl::FailedPreconditionError("file file-1 is held"), "FILE_HELD", "ftjob-9",
      "training file of a running job");
  EXPECT_THAT(errors::DescribeDetails(errors::GetDetails(held)),
              ::testing::ElementsAre("held by ftjob-9: training file of a running job"));
  // Details never turn an OK status into an error.
  EXPECT_TRUE(errors::WithReason(absl::OkStatus(), "X").ok());
  EXPECT_TRUE(errors::GetDetails(absl::OkStatus()).reason.empty());
}

TEST_F(ServerTest, HealthReportsReadinessOnlyWhenSet) {
  StartServer();
  ChannelOptions o;
  o.target = Target();
  TF_ASSERT_OK_AND_ASSIGN(std::string before, cli::CheckHealth(o, absl::Seconds(5)));
  EXPECT_EQ(before, "NOT_SERVING");
  server_->SetServing(true);
  TF_ASSERT_OK_AND_ASSIGN(std::string after, cli::CheckHealth(o, absl::Seconds(5)));
  EXPECT_EQ(after, "SERVING");
  TF_ASSERT_OK_AND_ASSIGN(std::string svc,
                          cli::CheckHealth(o, absl::Seconds(5), "tunefleet.v1.JobService"));
  EXPECT_EQ(svc, "SERVING");
}

TEST_F(ServerTest, MetricsCountEveryRpcByMethodAndCode) {
  StartServer();
  server_->SetServing(true);
  for (int i = 0; i < 3; ++i) (void)GetJob("tfk-wrong");
  for (int i = 0; i < 2; ++i) (void)GetJob(keys_.tenant_a.key);
  TF_ASSERT_OK_AND_ASSIGN(std::string body, testing::HttpGet(server_->metrics_port(), "/metrics"));
  EXPECT_THAT(body, HasSubstr("tunefleet_test_rpc_total{code=\"UNAUTHENTICATED\",method=\"/"
                              "tunefleet.v1.JobService/GetJob\"} 3"));
  EXPECT_THAT(body, HasSubstr("tunefleet_test_rpc_total{code=\"UNIMPLEMENTED\",method=\"/"
                              "tunefleet.v1.JobService/GetJob\"} 2"));
  EXPECT_THAT(body, HasSubstr("tunefleet_test_rpc_duration_seconds_count{method=\"/"
                              "tunefleet.v1.JobService/GetJob\"} 5"));
}

class TlsTest : public ServerTest {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    good_ = new testing::TestPki(*testing::MakeTestPki(dir_->path(), "good"));
    other_ = new testing::TestPki(*testing::MakeTestPki(dir_->path(), "other"));
  }
  static void TearDownTestSuite() {
    delete good_;
    delete other_;
    delete dir_;
  }
  absl::StatusOr<std::string> Health(const std::string& ca, const std::string& cert = "",
                                     const std::string& key = "") {
    ChannelOptions o;
    o.target = Target();
    o.tls_ca_file = ca;
    o.tls_cert_file = cert;
    o.tls_key_file = key;
    return cli::CheckHealth(o, absl::Seconds(5));
  }
  static testing::TempDir* dir_;
  static testing::TestPki* good_;
  static testing::TestPki* other_;
};
testing::TempDir* TlsTest::dir_ = nullptr;
testing::TestPki* TlsTest::good_ = nullptr;
testing::TestPki* TlsTest::other_ = nullptr;

TEST_F(TlsTest, ServerTlsAcceptsTheRightCaOnly) {
  StartServer({good_->server_cert, good_->server_key, ""});
  server_->SetServing(true);
  TF_ASSERT_OK_AND_ASSIGN(std::string ok, Health(good_->ca_cert));
  EXPECT_EQ(ok, "SERVING");
  EXPECT_THAT(Health(other_->ca_cert), StatusIs(absl::StatusCode::kUnavailable));
  // A plaintext client cannot talk to a TLS server.
  ChannelOptions plain;
  plain.target = Target();
  EXPECT_THAT(cli::CheckHealth(plain, absl::Seconds(5)), ::testing::Not(IsOk()));
}

TEST_F(TlsTest, MutualTlsRequiresAClientCertificateFromTheCa) {
  StartServer({good_->server_cert, good_->server_key, good_->ca_cert});
  server_->SetServing(true);
  TF_ASSERT_OK_AND_ASSIGN(std::string ok,
                          Health(good_->ca_cert, good_->client_cert, good_->client_key));
  EXPECT_EQ(ok, "SERVING");
  EXPECT_THAT(Health(good_->ca_cert), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(Health(good_->ca_cert, other_->client_cert, other_->client_key),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(Health(other_->ca_cert, good_->client_cert, good_->client_key),
              StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(TlsTest, PlaintextHealthPortMirrorsTheMutualTlsServer) {
  TlsOptions tls{good_->server_cert, good_->server_key, good_->ca_cert};
  ServerOptions options;
  options.service_name = "test";
  options.listen_address = "127.0.0.1:0";
  options.metrics_address = "";
  options.health_address = "127.0.0.1:0";
  options.tls = tls;
  options.drain_timeout = absl::Seconds(2);
  auth_ = std::make_unique<Authenticator>(keys_.ring());
  jobs_ = std::make_unique<TenantJobs>(auth_.get());
  server_ = std::make_unique<Server>(options);
  server_->AddService(jobs_.get());
  ASSERT_THAT(server_->Start(), IsOk());
  ASSERT_GT(server_->health_port(), 0);
  ChannelOptions plain;
  plain.target = absl::StrCat("127.0.0.1:", server_->health_port());
  TF_ASSERT_OK_AND_ASSIGN(std::string before, cli::CheckHealth(plain, absl::Seconds(5)));
  EXPECT_EQ(before, "NOT_SERVING");
  server_->SetServing(true);
  TF_ASSERT_OK_AND_ASSIGN(std::string after,
                          cli::CheckHealth(plain, absl::Seconds(5), "tunefleet.v1.JobService"));
  EXPECT_EQ(after, "SERVING");
  // The health port serves nothing else.
  auto stub = v1::JobService::NewStub(*MakeChannel(plain));
  grpc::ClientContext ctx;
  PrepareContext(&ctx, keys_.tenant_a.key, absl::Seconds(5));
  v1::Job job;
  EXPECT_EQ(stub->GetJob(&ctx, {}, &job).error_code(), grpc::StatusCode::UNIMPLEMENTED);
}

TEST(ServerStart, PortInUseIsAClearError) {
  ServerOptions a;
  a.listen_address = "127.0.0.1:0";
  a.metrics_address = "";
  Server first(a);
  ASSERT_THAT(first.Start(), IsOk());
  ServerOptions b = a;
  b.listen_address = absl::StrCat("127.0.0.1:", first.port());
  Server second(b);
  EXPECT_THAT(second.Start(), StatusIs(absl::StatusCode::kUnavailable, HasSubstr("cannot listen")));
}

}  // namespace
}  // namespace tunefleet::rpc
