// The serving replica end to end on loopback: a test-side scheduler
// (ServingControlService) drives the deployment reconciler; chat
// completions, unary and streamed, go through the real gRPC server, engine
// and content filters on a tiny Phi-3 with the real Phi-3 tokenizer.
#include <gmock/gmock.h>
#include <google/protobuf/any.pb.h>
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <re2/re2.h>
#include <stdlib.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <atomic>
#include <filesystem>
#include <condition_variable>
#include <fstream>
#include <iostream>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/base/sha256.h"
#include "common/base/subprocess.h"
#include "common/model/lora.h"
#include "common/model/tiny_model.h"
#include "common/rpc/channel.h"
#include "common/rpc/server.h"
#include "common/errors/error_details.h"
#include "common/rpc/status.h"
#include "common/text/chat_template.h"
#include "common/text/phi3_tokenizer_files.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "services/serving/deployment_reconciler.h"
#include "services/serving/grpc/grpc_control_plane.h"
#include "services/serving/grpc/inference_service.h"
#include "services/serving/grpc/proto_convert.h"
#include "services/serving/grpc/remote_filter.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tunefleet/internal/v1/serving.grpc.pb.h"

namespace tunefleet::serving {
namespace {

using ::testing::HasSubstr;
namespace internal_v1 = ::tunefleet::internal::v1;

// The scheduler's side of ServingControlService, kept in the test until the
// scheduler serves it: a desired set that tests change, streamed to every
// watcher after each change; reports recorded.
class FakeScheduler final : public internal_v1::ServingControlService::Service {
 public:
  grpc::Status RegisterReplica(grpc::ServerContext*, const internal_v1::RegisterReplicaRequest* r,
                               internal_v1::RegisterReplicaResponse* out) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++registrations_;
    out->set_replica_id("replica-" + r->replica_name());
    return grpc::Status::OK;
  }
  grpc::Status WatchDeployments(grpc::ServerContext* ctx, const internal_v1::WatchDeploymentsRequest*,
                                grpc::ServerWriter<internal_v1::DesiredDeployments>* writer) override {
    int64_t sent = -1;
    std::unique_lock<std::mutex> lock(mu_);
    while (!ctx->IsCancelled() && !stopping_) {
      if (desired_.generation() != sent) {
        internal_v1::DesiredDeployments d = desired_;
        sent = d.generation();
        lock.unlock();
        if (!writer->Write(d)) return grpc::Status::OK;
        lock.lock();
        continue;
      }
      // The cancellation of a sync stream has no callback: look again soon.
      cv_.wait_for(lock, std::chrono::milliseconds(50));
    }
    return grpc::Status::OK;
  }
  grpc::Status ReportReplicaStatus(grpc::ServerContext*, const internal_v1::ReportReplicaStatusRequest* r,
                                   internal_v1::ReportReplicaStatusResponse*) override {
    std::lock_guard<std::mutex> lock(mu_);
    last_ids_.clear();
    for (const auto& d : r->deployments()) {
      status_[d.deployment_id()] = d;
      last_ids_.insert(d.deployment_id());
    }
    ++reports_;
    cv_.notify_all();
    return grpc::Status::OK;
  }

  void SetDesired(std::vector<internal_v1::DesiredDeployment> deployments) {
    std::lock_guard<std::mutex> lock(mu_);
    desired_.set_generation(desired_.generation() + 1);
    desired_.clear_deployments();
    for (auto& d : deployments) *desired_.add_deployments() = d;
    cv_.notify_all();
  }
  // Waits for a report after the current generation was sent: one of the
  // desired set (a periodic report of the set before is not it).
  std::map<std::string, internal_v1::ReplicaDeploymentStatus> WaitForReport(int64_t after_reports) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] {
      std::set<std::string> want;
      for (const auto& d : desired_.deployments()) want.insert(d.deployment().id());
      return reports_ > after_reports && last_ids_ == want;
    });
    return status_;
  }
  // Waits (up to 30 s) until a report's status of `deployment` satisfies `pred`.
  bool WaitForStatus(const std::string& deployment,
                     std::function<bool(const internal_v1::ReplicaDeploymentStatus&)> pred) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(30), [&] {
      auto it = status_.find(deployment);
      return it != status_.end() && pred(it->second);
    });
  }
  int64_t reports() {
    std::lock_guard<std::mutex> lock(mu_);
    return reports_;
  }
  void Stop() {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  internal_v1::DesiredDeployments desired_;
  std::map<std::string, internal_v1::ReplicaDeploymentStatus> status_;
  std::set<std::string> last_ids_;  // the deployments of the last report
  int64_t reports_ = 0, registrations_ = 0;
  bool stopping_ = false;
};

internal_v1::DesiredDeployment Desired(const std::string& id, const std::string& tenant,
                                       const std::string& adapter, bool filter = true) {
  internal_v1::DesiredDeployment d;
  d.mutable_deployment()->set_id(id);
  d.mutable_deployment()->set_model(adapter.empty() ? "tiny-phi3" : "ft:tiny-phi3:" + id);
  d.mutable_deployment()->mutable_content_filter()->set_disabled(!filter);
  d.set_base_model_artifact("tiny-phi3");
  d.set_adapter_artifact(adapter);
  d.set_tenant(tenant);
  return d;
}

const char kPrompt[] = "Tell me a story about the sea.";
constexpr int kAnswerTokens = 40;

class ServingTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
    at::set_num_threads(1);
    dir_ = new testing::TempDir();
    const std::string base = dir_->Join("models/tiny-phi3");
    model::TinyModelOptions mo;
    mo.seed = 5;
    mo.max_position_embeddings = 256;
    ASSERT_THAT(model::WriteTinyPhi3(base, mo), testing::IsOk());
    ASSERT_THAT(text::WritePhi3TokenizerFiles(base), testing::IsOk());
    // Two adapters: one with a matching contract, one trained against another tokenizer.
    auto config = model::LoadModelConfig(base + "/config.json");
    ASSERT_TRUE(config.ok());
    std::ifstream tj(base + "/tokenizer.json", std::ios::binary);
    const std::string tokenizer_sha = Sha256Hex(std::string(std::istreambuf_iterator<char>(tj), {}));
    for (const char* name : {"good", "bad", "good2"}) {
      model::LoraConfig lc;
      lc.rank = 4;
      auto a = model::LoraAdapter::Create(*config, lc, 9);
      ASSERT_TRUE(a.ok());
      {
        at::NoGradGuard no_grad;
        at::manual_seed(9);
        for (at::Tensor& p : a->Parameters()) p.copy_(at::randn(p.sizes()) * 0.5);
      }
      const std::string dir = dir_->Join(absl::StrCat("artifacts/jobs/ftjob-", name, "/result"));
      ASSERT_THAT(a->Save(dir, "tiny-phi3"), testing::IsOk());
      std::ofstream(dir + "/tunefleet_contract.json")
          << R"({"base_model": "tiny-phi3", "tokenizer_sha256": ")"
          << (std::string(name) != "bad" ? tokenizer_sha : "0000") << R"(", "stop_token_ids": [32000, 32001, 32007]})";
    }
    // The greedy answer without filters picks the blocklist pattern that
    // will block it in the middle.
    {
      auto probe = Replica::Create(Options({}));
      ASSERT_TRUE(probe.ok());
      (*probe)->Apply({SpecFromProto(Desired("dep-probe", "acme", "", false))});
      answer_ = new std::string(GreedyAnswer(**probe, "dep-probe"));
      ASSERT_GT(answer_->size(), 40u) << *answer_;
    }
    blocked_piece_ = new std::string(answer_->substr(answer_->size() / 2, 6));
    auto replica = Replica::Create(Options({re2::RE2::QuoteMeta(*blocked_piece_)}));
    ASSERT_TRUE(replica.ok());
    replica_ = replica->release();

    keys_ = new std::vector<rpc::NewKey>{rpc::GenerateKey("acme", rpc::Role::kTenant, "acme"),
                                         rpc::GenerateKey("other", rpc::Role::kTenant, "other"),
                                         rpc::GenerateKey("", rpc::Role::kInternal, "svc")};
    auth_ = new rpc::Authenticator(*rpc::KeyRing::Parse(
        absl::StrCat((*keys_)[0].line, "\n", (*keys_)[1].line, "\n", (*keys_)[2].line, "\n"), "test"));
    executor_ = new rpc::Executor(4);
    rpc::ServerOptions so;
    so.listen_address = "127.0.0.1:0";
    so.metrics_address = "";
    so.drain_timeout = absl::Seconds(2);
    server_ = new rpc::Server(so);
    metrics_ = new ServingMetrics(server_->registry());
    service_ = new InferenceServiceImpl(auth_, replica_, executor_, metrics_);
    auto classifier = BuiltinFilter::Create({});
    classifier_ = classifier->release();
    classify_service_ = new ContentFilterServiceImpl(auth_, classifier_);
    server_->AddService(service_);
    server_->AddService(classify_service_);
    ASSERT_THAT(server_->Start(), testing::IsOk());
    // The scheduler.
    scheduler_ = new FakeScheduler();
    rpc::ServerOptions sso = so;
    scheduler_server_ = new rpc::Server(sso);
    scheduler_server_->AddService(scheduler_);
    ASSERT_THAT(scheduler_server_->Start(), testing::IsOk());
    scheduler_server_->SetServing(true);
    rpc::ChannelOptions co;
    co.target = absl::StrCat("127.0.0.1:", server_->port());
    channel_ = new std::shared_ptr<grpc::Channel>(*rpc::MakeChannel(co));
  }
  static void TearDownTestSuite() {
    delete reconciler_;
    reconciler_ = nullptr;
    delete control_;
    control_ = nullptr;  // --gtest_repeat sets the suite up again
    scheduler_->Stop();
    scheduler_server_->Shutdown();
    server_->Shutdown();
    delete channel_;
    delete scheduler_server_;
    delete scheduler_;
    delete server_;
    delete service_;
    delete classify_service_;
    delete metrics_;
    delete executor_;
    delete replica_;
    delete classifier_;
    delete auth_;
    delete keys_;
    delete answer_;
    delete blocked_piece_;
    delete dir_;
  }

  static ReplicaOptions Options(std::vector<std::string> patterns) {
    ReplicaOptions o;
    o.models_dir = dir_->Join("models");
    o.artifacts_dir = dir_->Join("artifacts");
    o.engine.threads = 1;
    o.engine.max_batch = 64;
    o.builtin_filter.blocklist_terms = {"zorblax"};
    o.builtin_filter.blocklist_patterns = std::move(patterns);
    o.remote_filter = [](const std::string& endpoint, const std::string& dep) {
      rpc::ChannelOptions co;
      co.target = endpoint;
      RemoteFilterOptions ro;
      ro.api_key = (*keys_)[2].key;
      ro.timeout = absl::Seconds(5);
      ro.deployment = dep;
      return std::shared_ptr<const ContentFilter>(MakeRemoteFilter(*rpc::MakeChannel(co), ro));  // fail-closed
    };
    return o;
  }

  struct Sink final : ChatSink {
    std::mutex mu;
    std::condition_variable cv;
    std::optional<ChatResult> result;
    void OnDelta(std::string, std::vector<ChatLogprob>) override {}
    void OnDone(ChatResult r) override {
      std::lock_guard<std::mutex> lock(mu);
      result = std::move(r);
      cv.notify_all();
    }
  };
  static std::string GreedyAnswer(Replica& r, const std::string& dep) {
    ChatRequest req;
    req.deployment = dep;
    req.messages = {{"user", kPrompt}};
    req.temperature = 0;
    req.max_tokens = kAnswerTokens;
    auto sink = std::make_shared<Sink>();
    FilterVerdict v;
    auto start = r.StartChat(req, sink, &v);
    EXPECT_TRUE(start.ok()) << start.status();
    if (!start.ok()) return "";
    std::unique_lock<std::mutex> lock(sink->mu);
    sink->cv.wait(lock, [&] { return sink->result.has_value(); });
    return sink->result->text;
  }

  // Starts the reconciler against the scheduler with the standard set.
  void SetUp() override {
    if (reconciler_) return;
    // Before anything is loaded the replica is not serving.
    EXPECT_EQ(Health(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
    scheduler_->SetDesired(StandardSet());
    rpc::ChannelOptions co;
    co.target = absl::StrCat("127.0.0.1:", scheduler_server_->port());
    ReconcilerOptions ro;
    ro.replica_name = "r1";
    ro.advertise_address = co.target;
    ro.report_interval = absl::Milliseconds(100);  // usage reports between applies
    GrpcControlPlaneOptions cpo;
    cpo.internal_key = (*keys_)[2].key;
    control_ = new GrpcControlPlane(*rpc::MakeChannel(co), cpo);
    const int64_t reports = scheduler_->reports();
    reconciler_ = new DeploymentReconciler(control_, replica_, ro, [](bool loaded) {
      if (loaded) server_->SetServing(true);
    });
    reconciler_->Start();
    statuses_ = scheduler_->WaitForReport(reports);
  }
  static std::vector<internal_v1::DesiredDeployment> StandardSet() {
    return {Desired("dep-base", "acme", ""), Desired("dep-open", "acme", "", false),
            Desired("dep-a", "acme", "jobs/ftjob-good/result"),
            Desired("dep-bad", "acme", "jobs/ftjob-bad/result"),
            Guarded("dep-guarded", absl::StrCat("127.0.0.1:", server_->port())),
            Guarded("dep-guard-down", "127.0.0.1:1")};
  }
  // A deployment whose policy names a remote classifier (here the replica's
  // own ContentFilterService, or an address where nothing listens).
  static internal_v1::DesiredDeployment Guarded(const std::string& id, const std::string& endpoint) {
    internal_v1::DesiredDeployment d = Desired(id, "acme", "");
    d.mutable_deployment()->mutable_content_filter()->set_classifier_endpoint(endpoint);
    return d;
  }

  static grpc::health::v1::HealthCheckResponse::ServingStatus Health() {
    auto stub = grpc::health::v1::Health::NewStub(*channel_);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    grpc::health::v1::HealthCheckRequest req;
    grpc::health::v1::HealthCheckResponse resp;
    grpc::Status s = stub->Check(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.status();
  }

  static v1::ChatCompletionRequest Chat(const std::string& dep, const std::string& content,
                                        int max_tokens = kAnswerTokens) {
    v1::ChatCompletionRequest r;
    r.set_deployment(dep);
    auto* m = r.add_messages();
    m->set_role("user");
    m->set_content(content);
    r.set_temperature(0);
    r.set_max_tokens(max_tokens);
    return r;
  }
  static grpc::Status Unary(const v1::ChatCompletionRequest& req, v1::ChatCompletionResponse* resp,
                            int key = 0) {
    auto stub = v1::InferenceService::NewStub(*channel_);
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, (*keys_)[key].key, absl::Seconds(60));
    return stub->ChatCompletion(&ctx, req, resp);
  }
  static grpc::Status Stream(const v1::ChatCompletionRequest& req,
                             std::vector<v1::ChatCompletionChunk>* chunks, int key = 0) {
    auto stub = v1::InferenceService::NewStub(*channel_);
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, (*keys_)[key].key, absl::Seconds(120));
    auto reader = stub->StreamChatCompletion(&ctx, req);
    v1::ChatCompletionChunk c;
    while (reader->Read(&c)) chunks->push_back(c);
    return reader->Finish();
  }
  static std::string Deltas(const std::vector<v1::ChatCompletionChunk>& chunks) {
    std::string out;
    for (const auto& c : chunks) out += c.delta();
    return out;
  }
  // The ChatCompletionResponse in a google.rpc.Status's details.
  static std::optional<v1::ChatCompletionResponse> Detail(const grpc::Status& s) {
    const std::string& bytes = s.error_details();
    google::protobuf::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(bytes.data()),
                                              static_cast<int>(bytes.size()));
    for (uint32_t tag; (tag = in.ReadTag()) != 0;) {
      if (tag == (3 << 3 | 2)) {
        std::string any_bytes;
        uint32_t n;
        in.ReadVarint32(&n);
        in.ReadString(&any_bytes, static_cast<int>(n));
        google::protobuf::Any any;
        v1::ChatCompletionResponse r;
        if (any.ParseFromString(any_bytes) && any.UnpackTo(&r)) return r;
      } else if (!google::protobuf::internal::WireFormatLite::SkipField(&in, tag)) {
        break;
      }
    }
    return std::nullopt;
  }

  static testing::TempDir* dir_;
  static std::string* answer_;
  static std::string* blocked_piece_;
  static Replica* replica_;
  static std::vector<rpc::NewKey>* keys_;
  static rpc::Authenticator* auth_;
  static rpc::Executor* executor_;
  static rpc::Server* server_;
  static ServingMetrics* metrics_;
  static InferenceServiceImpl* service_;
  static BuiltinFilter* classifier_;
  static ContentFilterServiceImpl* classify_service_;
  static FakeScheduler* scheduler_;
  static rpc::Server* scheduler_server_;
  static std::shared_ptr<grpc::Channel>* channel_;
  static GrpcControlPlane* control_;
  static DeploymentReconciler* reconciler_;
  static std::map<std::string, internal_v1::ReplicaDeploymentStatus> statuses_;
};
testing::TempDir* ServingTest::dir_ = nullptr;
std::string* ServingTest::answer_ = nullptr;
std::string* ServingTest::blocked_piece_ = nullptr;
Replica* ServingTest::replica_ = nullptr;
std::vector<rpc::NewKey>* ServingTest::keys_ = nullptr;
rpc::Authenticator* ServingTest::auth_ = nullptr;
rpc::Executor* ServingTest::executor_ = nullptr;
rpc::Server* ServingTest::server_ = nullptr;
ServingMetrics* ServingTest::metrics_ = nullptr;
InferenceServiceImpl* ServingTest::service_ = nullptr;
BuiltinFilter* ServingTest::classifier_ = nullptr;
ContentFilterServiceImpl* ServingTest::classify_service_ = nullptr;
FakeScheduler* ServingTest::scheduler_ = nullptr;
rpc::Server* ServingTest::scheduler_server_ = nullptr;
std::shared_ptr<grpc::Channel>* ServingTest::channel_ = nullptr;
GrpcControlPlane* ServingTest::control_ = nullptr;
DeploymentReconciler* ServingTest::reconciler_ = nullptr;
std::map<std::string, internal_v1::ReplicaDeploymentStatus> ServingTest::statuses_;

TEST_F(ServingTest, ReconcilerLoadsDeploymentsReportsReadinessAndRefusesABadContract) {
  EXPECT_EQ(Health(), grpc::health::v1::HealthCheckResponse::SERVING);
  EXPECT_EQ(reconciler_->replica_id(), "replica-r1");
  EXPECT_TRUE(statuses_["dep-base"].ready());
  EXPECT_TRUE(statuses_["dep-a"].ready()) << statuses_["dep-a"].error();
  EXPECT_FALSE(statuses_["dep-bad"].ready());
  EXPECT_THAT(statuses_["dep-bad"].error(), HasSubstr("tokenizer_sha256"));
  v1::ChatCompletionResponse resp;
  grpc::Status s = Unary(Chat("dep-bad", "hi"), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(), HasSubstr("tokenizer_sha256"));
}

TEST_F(ServingTest, UnaryAndStreamedAnswersAgreeAndCarryUsage) {
  v1::ChatCompletionResponse resp;
  grpc::Status s = Unary(Chat("dep-open", kPrompt), &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(resp.choices_size(), 1);
  EXPECT_EQ(resp.choices(0).message().content(), *answer_);
  EXPECT_EQ(resp.choices(0).finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(resp.usage().completion_tokens(), kAnswerTokens);
  EXPECT_GT(resp.usage().prompt_tokens(), 5);
  EXPECT_EQ(resp.usage().total_tokens(), resp.usage().prompt_tokens() + kAnswerTokens);
  EXPECT_THAT(resp.id(), ::testing::StartsWith("chatcmpl-"));
  EXPECT_THAT(resp.system_fingerprint(), ::testing::StartsWith("fp_"));
  EXPECT_EQ(resp.model(), "tiny-phi3");

  std::vector<v1::ChatCompletionChunk> chunks;
  s = Stream(Chat("dep-base", kPrompt, 10), &chunks);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_GE(chunks.size(), 2u);
  // The prompt's results first; the finish reason and usage last.
  EXPECT_EQ(chunks.front().prompt_filter_results_size(), 1);
  EXPECT_EQ(chunks.back().finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(chunks.back().usage().completion_tokens(), 10);
  for (size_t i = 0; i + 1 < chunks.size(); ++i) EXPECT_EQ(chunks[i].finish_reason(), 0);
  v1::ChatCompletionResponse ten;
  ASSERT_TRUE(Unary(Chat("dep-base", kPrompt, 10), &ten).ok());
  EXPECT_EQ(Deltas(chunks), ten.choices(0).message().content());

  // A stop string cuts the answer before it.
  auto stopped = Chat("dep-open", kPrompt);
  size_t at = 20;
  while (at < answer_->size() && (static_cast<unsigned char>((*answer_)[at]) & 0xC0) == 0x80) ++at;
  size_t end = at + 1;  // two whole characters
  for (int chars = 0; end < answer_->size(); ++end) {
    if ((static_cast<unsigned char>((*answer_)[end]) & 0xC0) != 0x80 && ++chars == 2) break;
  }
  const std::string stop = answer_->substr(at, end - at);
  stopped.add_stop(stop);
  ASSERT_TRUE(Unary(stopped, &resp).ok());
  EXPECT_EQ(resp.choices(0).message().content(), answer_->substr(0, answer_->find(stop)));
  EXPECT_EQ(resp.choices(0).finish_reason(), v1::FINISH_REASON_STOP);

  // Per-deployment metrics.
  bool counted = false;
  for (const auto& family : server_->registry().Collect()) {
    if (family.name != "tunefleet_serving_tokens_total") continue;
    for (const auto& m : family.metric) {
      for (const auto& l : m.label) counted |= l.name == "deployment" && l.value == "dep-open" && m.counter.value > 0;
    }
  }
  EXPECT_TRUE(counted);

  // The adapter answers differently from the base.
  v1::ChatCompletionResponse adapted;
  ASSERT_TRUE(Unary(Chat("dep-a", kPrompt), &adapted).ok());
  EXPECT_NE(adapted.choices(0).message().content(), *answer_);
}

TEST_F(ServingTest, TheReconcilerReportsEachDeploymentsUsagePeriodically) {
  auto usage = [] {
    for (const DeploymentStatus& st : replica_->Statuses()) {
      if (st.id == "dep-open") return st.usage;
    }
    return DeploymentUsage{};
  };
  const DeploymentUsage before = usage();
  int64_t prompt = 0, completion = 0;
  for (int i = 0; i < 3; ++i) {
    v1::ChatCompletionResponse resp;
    ASSERT_TRUE(Unary(Chat("dep-open", kPrompt, 3 + i), &resp).ok());
    prompt += resp.usage().prompt_tokens();
    completion += resp.usage().completion_tokens();
  }
  // The replica's counters: what the answers' usage said.
  const DeploymentUsage after = usage();
  EXPECT_EQ(after.requests - before.requests, 3);
  EXPECT_EQ(after.prompt_tokens - before.prompt_tokens, prompt);
  EXPECT_EQ(after.completion_tokens - before.completion_tokens, 3 + 4 + 5);
  EXPECT_EQ(completion, 3 + 4 + 5);
  // No apply happens here: a periodic report carries them to the scheduler
  // (the counters since the registration, which came before any chat).
  internal_v1::ReplicaDeploymentStatus seen;
  EXPECT_TRUE(scheduler_->WaitForStatus("dep-open", [&](const auto& st) {
    seen = st;
    return st.requests() == after.requests;
  })) << seen.DebugString();
  EXPECT_EQ(seen.prompt_tokens(), after.prompt_tokens);
  EXPECT_EQ(seen.completion_tokens(), after.completion_tokens);
  EXPECT_TRUE(seen.ready());
}

TEST_F(ServingTest, EveryBadRequestNamesItsField) {
  v1::ChatCompletionResponse resp;
  auto expect = [&](v1::ChatCompletionRequest req, grpc::StatusCode code, const std::string& text,
                    int key = 0) {
    grpc::Status s = Unary(req, &resp, key);
    EXPECT_EQ(s.error_code(), code) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(text));
    std::vector<v1::ChatCompletionChunk> chunks;
    s = Stream(req, &chunks, key);
    EXPECT_EQ(s.error_code(), code) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(text));
  };
  expect(Chat("dep-nope", "hi"), grpc::StatusCode::NOT_FOUND, "dep-nope");
  expect(Chat("dep-base", "hi"), grpc::StatusCode::NOT_FOUND, "dep-base", /*key=*/1);  // another tenant
  auto r = Chat("dep-base", "hi");
  r.set_temperature(2.5);
  expect(r, grpc::StatusCode::INVALID_ARGUMENT, "temperature");
  r = Chat("dep-base", "hi");
  r.set_top_p(0);
  expect(r, grpc::StatusCode::INVALID_ARGUMENT, "top_p");
  r = Chat("dep-base", "hi");
  r.set_max_tokens(0);
  expect(r, grpc::StatusCode::INVALID_ARGUMENT, "max_tokens");
  r = Chat("dep-base", "hi");
  r.set_max_tokens(255);
  expect(r, grpc::StatusCode::INVALID_ARGUMENT, "max_tokens: 255");
  r = Chat("dep-base", "hi");
  r.clear_messages();
  expect(r, grpc::StatusCode::INVALID_ARGUMENT, "messages");
  r = Chat("dep-base", "hi");
  r.set_n(3);
  expect(r, grpc::StatusCode::INVALID_ARGUMENT, "n:");
  r = Chat("dep-base", "hi");
  r.mutable_messages(0)->set_role("robot");
  expect(r, grpc::StatusCode::INVALID_ARGUMENT, "messages[0].role");
  std::string long_prompt;
  for (int i = 0; i < 400; ++i) long_prompt += "word ";
  grpc::Status s = Unary(Chat("dep-base", long_prompt), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), ::testing::ContainsRegex("prompt has [0-9]+ tokens.*context holds 256"));
}

TEST_F(ServingTest, LogprobsComeWithTheirTokensInUnaryAndStream) {
  auto req = Chat("dep-open", kPrompt, 10);
  req.set_logprobs(true);
  req.set_top_logprobs(3);
  v1::ChatCompletionResponse resp;
  grpc::Status s = Unary(req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_GT(resp.created(), 1700000000);
  const v1::ChoiceLogprobs& lps = resp.choices(0).logprobs();
  ASSERT_EQ(lps.content_size(), resp.usage().completion_tokens());
  for (const v1::TokenLogprob& t : lps.content()) {
    EXPECT_LE(t.logprob(), 0);
    ASSERT_EQ(t.top_logprobs_size(), 3);
    // Greedy: the chosen token is the most likely one.
    EXPECT_NEAR(t.top_logprobs(0).logprob(), t.logprob(), 1e-9);
    EXPECT_EQ(t.top_logprobs(0).token(), t.token());
    EXPECT_GE(t.top_logprobs(0).logprob(), t.top_logprobs(1).logprob());
    EXPECT_GE(t.top_logprobs(1).logprob(), t.top_logprobs(2).logprob());
    EXPECT_FALSE(t.bytes().empty() && !t.token().empty());
  }
  // Asking for logprobs does not change the answer.
  EXPECT_EQ(resp.choices(0).message().content(), answer_->substr(0, resp.choices(0).message().content().size()));

  std::vector<v1::ChatCompletionChunk> chunks;
  s = Stream(req, &chunks);
  ASSERT_TRUE(s.ok()) << s.error_message();
  std::vector<double> streamed;
  for (const auto& c : chunks) {
    EXPECT_EQ(c.created(), chunks.front().created());
    // A chunk's logprobs name the tokens of its own text.
    if (c.logprobs().content_size() > 0) {
      EXPECT_FALSE(c.delta().empty());
    }
    for (const auto& t : c.logprobs().content()) streamed.push_back(t.logprob());
  }
  ASSERT_EQ(static_cast<int>(streamed.size()), lps.content_size());
  for (size_t i = 0; i < streamed.size(); ++i) EXPECT_NEAR(streamed[i], lps.content(static_cast<int>(i)).logprob(), 1e-9);
  // Not asked: none.
  ASSERT_TRUE(Unary(Chat("dep-open", kPrompt, 10), &resp).ok());
  EXPECT_FALSE(resp.choices(0).has_logprobs());
}

TEST_F(ServingTest, PenaltiesAndMaxCompletionTokensAreValidatedAndApplied) {
  v1::ChatCompletionResponse resp;
  auto expect_bad = [&](const v1::ChatCompletionRequest& req, const std::string& field) {
    grpc::Status s = Unary(req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << field;
    EXPECT_THAT(s.error_message(), HasSubstr(field + ":"));
    errors::Details d = errors::GetDetails(rpc::FromGrpcStatus(s));
    ASSERT_EQ(d.field_violations.size(), 1u) << field;
    EXPECT_EQ(d.field_violations[0].field, field);
    std::vector<v1::ChatCompletionChunk> chunks;
    EXPECT_EQ(Stream(req, &chunks).error_code(), grpc::StatusCode::INVALID_ARGUMENT) << field;
  };
  auto r = Chat("dep-base", "hi");
  r.set_frequency_penalty(2.5);
  expect_bad(r, "frequency_penalty");
  r = Chat("dep-base", "hi");
  r.set_presence_penalty(-2.01);
  expect_bad(r, "presence_penalty");
  r = Chat("dep-base", "hi");
  r.set_logprobs(true);
  r.set_top_logprobs(21);
  expect_bad(r, "top_logprobs");
  r = Chat("dep-base", "hi");
  r.set_top_logprobs(2);  // without logprobs
  expect_bad(r, "top_logprobs");
  r = Chat("dep-base", "hi");
  r.set_user(std::string(257, 'u'));
  expect_bad(r, "user");
  r = Chat("dep-base", "hi");
  r.set_max_completion_tokens(0);
  expect_bad(r, "max_completion_tokens");
  r = Chat("dep-base", "hi");
  r.set_max_completion_tokens(255);
  expect_bad(r, "max_completion_tokens");
  r = Chat("dep-base", "hi", 6);
  r.set_max_completion_tokens(5);  // and max_tokens 6
  expect_bad(r, "max_completion_tokens");

  // max_completion_tokens is the budget; the alias may repeat it.
  r = Chat("dep-open", kPrompt);
  r.clear_max_tokens();
  r.set_max_completion_tokens(7);
  r.set_user("end-user-42");
  ASSERT_TRUE(Unary(r, &resp).ok());
  EXPECT_EQ(resp.usage().completion_tokens(), 7);
  r.set_max_tokens(7);
  ASSERT_TRUE(Unary(r, &resp).ok());
  EXPECT_EQ(resp.usage().completion_tokens(), 7);

  // Penalties reach the engine: the tiny model's greedy answer never
  // repeats a token, so positive ones leave it as it is and negative ones
  // (which favour what was generated) change it.
  r = Chat("dep-open", kPrompt);
  r.set_frequency_penalty(2);
  r.set_presence_penalty(2);
  grpc::Status s = Unary(r, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.choices(0).message().content(), *answer_);
  r.set_frequency_penalty(-2);
  r.set_presence_penalty(-2);
  s = Unary(r, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_NE(resp.choices(0).message().content(), *answer_);
}

TEST_F(ServingTest, ToolCallsRenderThroughTheTemplateOrAreRefusedWithTOOLS_UNSUPPORTED) {
  v1::ChatCompletionRequest req = Chat("dep-base", "What is the weather in Paris?", 5);
  v1::ChatMessage* call = req.add_messages();
  call->set_role("assistant");
  v1::ToolCall* tc = call->add_tool_calls();
  tc->set_id("call_1");
  tc->set_type("function");
  tc->mutable_function()->set_name("get_weather");
  tc->mutable_function()->set_arguments(R"({"city": "Paris"})");
  v1::ChatMessage* answer = req.add_messages();
  answer->set_role("tool");
  answer->set_tool_call_id("call_1");
  answer->set_content(R"({"temp": 21})");

  // The tiny Phi-3's template cannot render them: a stable reason, the
  // field and the template named.
  v1::ChatCompletionResponse resp;
  grpc::Status s = Unary(req, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("phi3"));
  errors::Details d = errors::GetDetails(rpc::FromGrpcStatus(s));
  EXPECT_EQ(d.reason, "TOOLS_UNSUPPORTED");
  EXPECT_EQ(d.metadata["chat_template"], "phi3");
  ASSERT_EQ(d.field_violations.size(), 1u);
  EXPECT_EQ(d.field_violations[0].field, "messages[1].tool_calls");
  std::vector<v1::ChatCompletionChunk> chunks;
  s = Stream(req, &chunks);
  EXPECT_EQ(errors::GetDetails(rpc::FromGrpcStatus(s)).reason, "TOOLS_UNSUPPORTED");
  // A malformed call names its field.
  auto bad = req;
  bad.mutable_messages(1)->mutable_tool_calls(0)->mutable_function()->clear_name();
  s = Unary(bad, &resp);
  EXPECT_THAT(s.error_message(), HasSubstr("messages[1].tool_calls[0].function.name"));

  // A base whose template renders tools (Qwen3's markers): the request,
  // converted from the proto, is the prompt the template renders.
  const std::string qwen = dir_->Join("models/tiny-qwen-template");
  std::filesystem::create_directories(qwen);
  for (const auto& e : std::filesystem::directory_iterator(dir_->Join("models/tiny-phi3"))) {
    std::filesystem::copy_file(e.path(), qwen + "/" + e.path().filename().string(),
                               std::filesystem::copy_options::overwrite_existing);
  }
  {
    std::ifstream in(qwen + "/tokenizer_config.json");
    nlohmann::json tc = nlohmann::json::parse(in);
    tc["chat_template"] = "{{'<|im_start|>'}}{% if '</think>' in c %}{% endif %}";
    std::ofstream(qwen + "/tokenizer_config.json") << tc.dump();
  }
  auto replica = Replica::Create(Options({}));
  ASSERT_TRUE(replica.ok());
  DeploymentSpec spec = SpecFromProto(Desired("dep-tools", "acme", "", false));
  spec.base_model = "tiny-qwen-template";
  auto statuses = (*replica)->Apply({spec});
  ASSERT_TRUE(statuses[0].ready) << statuses[0].error;
  ChatRequest chat = ChatRequestFromProto(req, std::chrono::steady_clock::time_point::max());
  chat.deployment = "dep-tools";
  auto sink = std::make_shared<Sink>();
  FilterVerdict verdict;
  auto start = (*replica)->StartChat(chat, sink, &verdict);
  ASSERT_TRUE(start.ok()) << start.status();
  TF_ASSERT_OK_AND_ASSIGN(text::ChatTokenizer tok, text::ChatTokenizer::Load(qwen));
  EXPECT_EQ(tok.chat_template().format(), text::ChatFormat::kQwen3);
  std::vector<text::ChatMessage> messages(3);
  messages[0].role = "user";
  messages[0].content = "What is the weather in Paris?";
  messages[1].role = "assistant";
  messages[1].tool_calls = {{"call_1", "function", "get_weather", R"({"city": "Paris"})"}};
  messages[2].role = "tool";
  messages[2].content = R"({"temp": 21})";
  TF_ASSERT_OK_AND_ASSIGN(std::string rendered, tok.chat_template().Render(messages, true));
  EXPECT_EQ(rendered,
            "<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n"
            "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
            "{\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n"
            "<|im_start|>user\n<tool_response>\n{\"temp\": 21}\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\n");
  TF_ASSERT_OK_AND_ASSIGN(auto ids, tok.EncodePrompt(messages));
  EXPECT_EQ(start->prompt_tokens, static_cast<int64_t>(ids.size()));
  std::unique_lock<std::mutex> lock(sink->mu);
  sink->cv.wait(lock, [&] { return sink->result.has_value(); });
  EXPECT_TRUE(sink->result->status.ok()) << sink->result->status;
}

TEST_F(ServingTest, TheFingerprintFollowsTheWeightsAndTheBuild) {
  auto fingerprint = [&](const std::string& build, const std::string& adapter) {
    ReplicaOptions o = Options({});
    o.build_id = build;
    auto replica = Replica::Create(o);
    EXPECT_TRUE(replica.ok());
    auto statuses = (*replica)->Apply({SpecFromProto(Desired("dep-fp", "acme", adapter, false))});
    EXPECT_TRUE(statuses[0].ready) << statuses[0].error;
    ChatRequest chat;
    chat.deployment = "dep-fp";
    chat.messages = {{"user", "hi", {}, ""}};
    chat.max_tokens = 1;
    auto sink = std::make_shared<Sink>();
    FilterVerdict verdict;
    auto start = (*replica)->StartChat(chat, sink, &verdict);
    EXPECT_TRUE(start.ok()) << start.status();
    std::unique_lock<std::mutex> lock(sink->mu);
    sink->cv.wait(lock, [&] { return sink->result.has_value(); });
    return start.ok() ? start->system_fingerprint : std::string();
  };
  const std::string base = fingerprint("build-1", "");
  EXPECT_EQ(fingerprint("build-1", ""), base);
  EXPECT_NE(fingerprint("build-2", ""), base);
  // An adapter of its own (its weights change below).
  const std::string adapter_dir = dir_->Join("artifacts/jobs/ftjob-fp/result");
  std::filesystem::create_directories(adapter_dir);
  for (const auto& e : std::filesystem::directory_iterator(dir_->Join("artifacts/jobs/ftjob-good/result"))) {
    std::filesystem::copy_file(e.path(), adapter_dir + "/" + e.path().filename().string(),
                               std::filesystem::copy_options::overwrite_existing);
  }
  const std::string adapted = fingerprint("build-1", "jobs/ftjob-fp/result");
  EXPECT_NE(adapted, base);
  // New adapter weights under the same name: a new fingerprint.
  const std::string file = adapter_dir + "/adapter_model.safetensors";
  std::string bytes;
  {
    std::ifstream in(file, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  ASSERT_GT(bytes.size(), 64u);
  bytes[bytes.size() - 1] ^= 0x01;  // the last byte of the last tensor
  std::ofstream(file, std::ios::binary | std::ios::trunc) << bytes;
  EXPECT_NE(fingerprint("build-1", "jobs/ftjob-fp/result"), adapted);
}

TEST_F(ServingTest, ABlockedPromptFailsWithItsResultsAndNoModelCall) {
  const auto before = replica_->Stats()[0].engine.prompt_tokens;
  v1::ChatCompletionResponse resp;
  grpc::Status s = Unary(Chat("dep-base", "what is zorblax?"), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("blocked"));
  auto detail = Detail(s);
  ASSERT_TRUE(detail.has_value());
  ASSERT_EQ(detail->prompt_filter_findings_size(), 1);
  EXPECT_EQ(detail->prompt_filter_findings(0).filter(), "blocklist");
  EXPECT_TRUE(detail->prompt_filter_findings(0).filtered());
  std::vector<v1::ChatCompletionChunk> chunks;
  s = Stream(Chat("dep-base", "what is zorblax?"), &chunks);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(chunks.empty());
  EXPECT_TRUE(Detail(s).has_value());
  EXPECT_EQ(replica_->Stats()[0].engine.prompt_tokens, before);
  // A deployment that opted out is not filtered.
  EXPECT_TRUE(Unary(Chat("dep-open", "what is zorblax?", 2), &resp).ok());
}

TEST_F(ServingTest, ABlockedAnswerEndsWithContentFilterAndNeverReachesTheStream) {
  v1::ChatCompletionResponse resp;
  ASSERT_TRUE(Unary(Chat("dep-base", kPrompt), &resp).ok());
  EXPECT_EQ(resp.choices(0).finish_reason(), v1::FINISH_REASON_CONTENT_FILTER);
  EXPECT_EQ(resp.choices(0).message().content(), "");
  ASSERT_EQ(resp.choices(0).content_filter_findings_size(), 1);
  EXPECT_TRUE(resp.choices(0).content_filter_findings(0).filtered());

  std::vector<v1::ChatCompletionChunk> chunks;
  ASSERT_TRUE(Stream(Chat("dep-base", kPrompt), &chunks).ok());
  const std::string streamed = Deltas(chunks);
  EXPECT_EQ(chunks.back().finish_reason(), v1::FINISH_REASON_CONTENT_FILTER);
  EXPECT_EQ(answer_->find(*blocked_piece_), answer_->size() / 2);
  // Every chunk read: the text before the blocked piece, never the piece.
  EXPECT_THAT(streamed, ::testing::Not(HasSubstr(*blocked_piece_)));
  EXPECT_LE(streamed.size(), answer_->size() / 2);
  EXPECT_EQ(answer_->substr(0, streamed.size()), streamed);
  EXPECT_FALSE(streamed.empty()) << "nothing was released before the block";
}

TEST_F(ServingTest, ARemoteClassifierJoinsTheFiltersAndFailsClosed) {
  v1::ChatCompletionResponse resp;
  grpc::Status s = Unary(Chat("dep-guarded", "Hello there", 3), &resp);
  EXPECT_TRUE(s.ok()) << s.error_message();
  s = Unary(Chat("dep-guard-down", "Hello there", 3), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  auto detail = Detail(s);
  ASSERT_TRUE(detail.has_value());
  ASSERT_EQ(detail->prompt_filter_findings_size(), 1);
  EXPECT_EQ(detail->prompt_filter_findings(0).filter(), "classifier");
  EXPECT_EQ(detail->prompt_filter_findings(0).kind(), "error");
  EXPECT_THAT(detail->prompt_filter_findings(0).classifier_error(), HasSubstr("UNAVAILABLE"));
}

TEST_F(ServingTest, TwoHundredConcurrentStreamsComplete) {
  constexpr int kClients = 200;
  std::atomic<int> ok{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      auto req = Chat(i % 2 ? "dep-a" : "dep-open", absl::StrCat("Question number ", i), 8);
      req.set_temperature(0.7);
      req.set_seed(i);
      std::vector<v1::ChatCompletionChunk> chunks;
      grpc::Status s = Stream(req, &chunks);
      if (s.ok() && !chunks.empty() && chunks.back().finish_reason() != 0) ++ok;
      else ADD_FAILURE() << "client " << i << ": " << s.error_message();
    });
  }
  // The rows grew while they ran (they shrink again as the last ones finish).
  std::atomic<bool> joined{false};
  std::atomic<int64_t> most_rows{0};
  std::thread monitor([&] {
    while (!joined) {
      most_rows = std::max<int64_t>(most_rows, replica_->Stats()[0].engine.cache_rows);
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  for (auto& t : clients) t.join();
  joined = true;
  monitor.join();
  EXPECT_EQ(ok.load(), kClients);
  EXPECT_GT(most_rows.load(), 1);
}

// A client slower than the engine: with a small HTTP/2 receive window (no
// BDP growth) and nothing read, the stream's one write in flight waits on
// flow control while the engine finishes; what it released meanwhile
// coalesces into the next chunk instead of queueing a message per token.
TEST_F(ServingTest, ASlowReaderGetsTheAnswerInFewerChunksThanTokens) {
  const auto req = Chat("dep-open", kPrompt);
  v1::ChatCompletionResponse unary;
  ASSERT_TRUE(Unary(req, &unary).ok());
  ASSERT_EQ(unary.usage().completion_tokens(), kAnswerTokens);
  auto finished = [] {
    double n = 0;
    for (const auto& family : server_->registry().Collect()) {
      if (family.name != "tunefleet_serving_requests_total") continue;
      for (const auto& m : family.metric) {
        int match = 0;
        for (const auto& l : m.label) {
          match += (l.name == "deployment" && l.value == "dep-open") + (l.name == "outcome" && l.value == "ok");
        }
        if (match == 2) n += m.counter.value;
      }
    }
    return n;
  };
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 256);
  auto channel = grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", server_->port()),
                                           grpc::InsecureChannelCredentials(), args);
  auto stub = v1::InferenceService::NewStub(channel);
  const double before = finished();
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, (*keys_)[0].key, absl::Seconds(120));
  auto reader = stub->StreamChatCompletion(&ctx, req);
  // Nothing is read until the stream has seen the engine finish the answer.
  for (int i = 0; i < 12000 && finished() == before; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_GT(finished(), before);
  std::vector<v1::ChatCompletionChunk> chunks;
  v1::ChatCompletionChunk c;
  while (reader->Read(&c)) chunks.push_back(c);
  grpc::Status s = reader->Finish();
  ASSERT_TRUE(s.ok()) << s.error_message();
  int with_text = 0;
  for (const auto& chunk : chunks) with_text += !chunk.delta().empty();
  EXPECT_LT(with_text, kAnswerTokens) << chunks.size() << " chunks";
  EXPECT_GT(with_text, 0);
  EXPECT_EQ(Deltas(chunks), unary.choices(0).message().content());
  EXPECT_EQ(chunks.back().finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(chunks.back().usage().completion_tokens(), kAnswerTokens);
  EXPECT_EQ(chunks.back().usage().prompt_tokens(), unary.usage().prompt_tokens());
  std::cout << "slow reader: " << kAnswerTokens << " tokens in " << with_text
            << " chunks with text (" << chunks.size() << " in all)\n";
}

TEST_F(ServingTest, ACancelledStreamFreesItsSlot) {
  auto stub = v1::InferenceService::NewStub(*channel_);
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, (*keys_)[0].key, absl::Seconds(60));
  auto req = Chat("dep-open", kPrompt, 200);
  auto reader = stub->StreamChatCompletion(&ctx, req);
  v1::ChatCompletionChunk c;
  int got = 0;
  while (got < 3 && reader->Read(&c)) ++got;
  ctx.TryCancel();
  while (reader->Read(&c)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  for (int i = 0; i < 500 && replica_->Stats()[0].engine.running > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(replica_->Stats()[0].engine.running, 0);
}

TEST_F(ServingTest, AdaptersUnloadAndComeBackWithoutARestart) {
  // Undeploy dep-a: its adapter leaves the cache; redeploy: it is back.
  auto set = StandardSet();
  set.erase(set.begin() + 2);
  int64_t reports = scheduler_->reports();
  scheduler_->SetDesired(set);
  scheduler_->WaitForReport(reports);
  EXPECT_EQ(replica_->Stats()[0].adapters.resident, 0);
  v1::ChatCompletionResponse resp;
  EXPECT_EQ(Unary(Chat("dep-a", "hi"), &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  reports = scheduler_->reports();
  scheduler_->SetDesired(StandardSet());
  scheduler_->WaitForReport(reports);
  EXPECT_TRUE(Unary(Chat("dep-a", "hi", 3), &resp).ok());
  EXPECT_EQ(replica_->Stats()[0].adapters.resident, 1);
}

TEST_F(ServingTest, AdaptersHotLoadAndUnloadWhileTrafficRunsWithoutAFailedRequest) {
  std::atomic<bool> stop{false};
  std::atomic<int> done{0}, failed{0};
  std::vector<std::thread> traffic;
  for (int t = 0; t < 4; ++t) {
    traffic.emplace_back([&, t] {
      while (!stop) {
        v1::ChatCompletionResponse resp;
        grpc::Status s = Unary(Chat(t % 2 ? "dep-a" : "dep-open", "Keep going", 4), &resp);
        if (s.ok()) ++done; else ++failed, ADD_FAILURE() << s.error_message();
      }
    });
  }
  auto with_a2 = StandardSet();
  with_a2.push_back(Desired("dep-a2", "acme", "jobs/ftjob-good2/result"));
  for (int round = 0; round < 3; ++round) {
    int64_t reports = scheduler_->reports();
    scheduler_->SetDesired(with_a2);
    EXPECT_TRUE(scheduler_->WaitForReport(reports)["dep-a2"].ready());
    v1::ChatCompletionResponse resp;
    EXPECT_TRUE(Unary(Chat("dep-a2", "hi", 3), &resp).ok());
    reports = scheduler_->reports();
    scheduler_->SetDesired(StandardSet());
    scheduler_->WaitForReport(reports);
    EXPECT_EQ(Unary(Chat("dep-a2", "hi", 3), &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  stop = true;
  for (auto& t : traffic) t.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_GT(done.load(), 0);
}

TEST_F(ServingTest, ADeadlineEndsTheCallAndFreesItsSlot) {
  auto stub = v1::InferenceService::NewStub(*channel_);
  // How long the (greedy) answer takes on an idle engine: on a busy one it
  // takes longer, so a third of that cannot be enough, however fast the
  // machine is (a fixed 200 ms stopped being enough once decoding got faster).
  const absl::Time before = absl::Now();
  {
    v1::ChatCompletionResponse idle;
    ASSERT_TRUE(Unary(Chat("dep-open", kPrompt, 200), &idle).ok());
  }
  const absl::Duration deadline = std::max(absl::Milliseconds(5), (absl::Now() - before) / 3);
  grpc::ClientContext ctx;
  v1::ChatCompletionResponse resp;
  std::vector<std::thread> load;
  for (int i = 0; i < 8; ++i) {
    load.emplace_back([&] {
      v1::ChatCompletionResponse r;
      (void)Unary(Chat("dep-open", kPrompt, 100), &r);
    });
  }
  rpc::PrepareContext(&ctx, (*keys_)[0].key, deadline);
  grpc::Status s = stub->ChatCompletion(&ctx, Chat("dep-open", kPrompt, 200), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << "deadline " << deadline;
  for (auto& t : load) t.join();
  for (int i = 0; i < 500 && replica_->Stats()[0].engine.running > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(replica_->Stats()[0].engine.running, 0);
}

TEST_F(ServingTest, ClassifyServesTheBuiltinFilterToInternalCallers) {
  auto stub = v1::ContentFilterService::NewStub(*channel_);
  v1::ClassifyRequest req;
  req.set_text("Well, arschloch!");
  v1::ClassifyResponse resp;
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, (*keys_)[2].key, absl::Seconds(10));
  ASSERT_TRUE(stub->Classify(&ctx, req, &resp).ok());
  bool profanity = false;
  for (const auto& r : resp.results()) {
    if (r.category() == v1::CONTENT_FILTER_CATEGORY_PROFANITY) profanity = r.detected() && !r.filtered();
  }
  EXPECT_TRUE(profanity);
  grpc::ClientContext tenant;
  rpc::PrepareContext(&tenant, (*keys_)[0].key, absl::Seconds(10));
  EXPECT_EQ(stub->Classify(&tenant, req, &resp).error_code(), grpc::StatusCode::PERMISSION_DENIED);
}

// --device and --dtype: a value the replica cannot run with stops it at
// start (exit 2) with the flag named, before it registers anywhere.
TEST_F(ServingTest, TheReplicaRefusesADeviceOrDtypeItCannotRun) {
  struct Case {
    std::vector<std::string> flags;
    std::string says;
  };
  std::vector<Case> cases = {
      {{"--device=tpu"}, "device: \"tpu\" is not cpu, cuda or cuda:N"},
      {{"--device=cuda:x"}, "device: \"cuda:x\" is not cuda:N"},
      {{"--dtype=int8"}, "dtype: \"int8\" is not auto, float32, bfloat16 (float16 runs on CUDA only)"},
  };
  if (!at::hasCUDA()) cases.push_back({{"--device=cuda"}, "device cuda: no CUDA here"});
  std::ofstream(dir_->Join("keys.txt")) << (*keys_)[0].line << "\n" << (*keys_)[2].line << "\n";
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string log = dir_->Join(absl::StrCat("bad-device-", i, ".log"));
    std::vector<std::string> argv = {
        std::string(TUNEFLEET_BIN_DIR) + "/tunefleet-serving", "--listen=127.0.0.1:0",
        "--metrics_listen=off", "--keys_file=" + dir_->Join("keys.txt"),
        "--models_dir=" + dir_->Join("models"), "--scheduler_address=127.0.0.1:1"};
    argv.insert(argv.end(), cases[i].flags.begin(), cases[i].flags.end());
    auto proc = Subprocess::Start(argv, Subprocess::Options{log, {"OMP_WAIT_POLICY=PASSIVE"}});
    ASSERT_TRUE(proc.ok()) << proc.status();
    auto status = proc->Wait(absl::Seconds(60));
    ASSERT_TRUE(status.ok()) << status.status();
    EXPECT_EQ(DescribeWaitStatus(*status), "exited 2") << cases[i].flags[0];
    std::ifstream in(log);
    const std::string text((std::istreambuf_iterator<char>(in)), {});
    EXPECT_THAT(text, HasSubstr(cases[i].says)) << cases[i].flags[0];
  }
}

// The replica is stateless: killed with SIGKILL and started again, it
// registers, is given the same deployments and serves the same answers.
TEST_F(ServingTest, AReplicaKilledAndRestartedServesTheSameDeploymentsAgain) {
  std::ofstream(dir_->Join("keys.txt")) << (*keys_)[0].line << "\n" << (*keys_)[2].line << "\n";
  std::ofstream(dir_->Join("internal.key")) << (*keys_)[2].key << "\n";
  const std::string port_file = dir_->Join("serving.ports.json");
  auto start = [&]() -> std::pair<std::unique_ptr<Subprocess>, std::string> {
    std::filesystem::remove(port_file);
    std::vector<std::string> argv = {
        std::string(TUNEFLEET_BIN_DIR) + "/tunefleet-serving", "--listen=127.0.0.1:0",
        "--metrics_listen=off", "--keys_file=" + dir_->Join("keys.txt"),
        "--port_file=" + port_file, "--log_level=warn", "--models_dir=" + dir_->Join("models"),
        "--artifacts_dir=" + dir_->Join("artifacts"),
        absl::StrCat("--scheduler_address=127.0.0.1:", scheduler_server_->port()),
        "--internal_key_file=" + dir_->Join("internal.key"), "--replica_name=proc",
        "--engine_threads=1", "--max_batch=4"};
    auto proc = Subprocess::Start(argv, Subprocess::Options{dir_->Join("serving.log"),
                                                             {"OMP_WAIT_POLICY=PASSIVE"}});
    EXPECT_TRUE(proc.ok()) << proc.status();
    if (!proc.ok()) return {nullptr, ""};
    auto p = std::make_unique<Subprocess>(std::move(*proc));
    for (int i = 0; i < 3000 && !std::filesystem::exists(port_file); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    std::ifstream in(port_file);
    std::string text((std::istreambuf_iterator<char>(in)), {});
    const size_t colon = text.find(':');
    const int port = colon == std::string::npos ? 0 : std::atoi(text.c_str() + colon + 1);
    return {std::move(p), absl::StrCat("127.0.0.1:", port)};
  };
  auto answer = [&](const std::string& target) -> std::string {
    rpc::ChannelOptions co;
    co.target = target;
    auto channel = *rpc::MakeChannel(co);
    // Not serving until the base is loaded; then the deployment answers.
    auto health = grpc::health::v1::Health::NewStub(channel);
    for (int i = 0; i < 3000; ++i) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
      grpc::health::v1::HealthCheckResponse resp;
      if (health->Check(&ctx, {}, &resp).ok() &&
          resp.status() == grpc::health::v1::HealthCheckResponse::SERVING) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    auto stub = v1::InferenceService::NewStub(channel);
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, (*keys_)[0].key, absl::Seconds(60));
    v1::ChatCompletionResponse resp;
    grpc::Status s = stub->ChatCompletion(&ctx, Chat("dep-open", kPrompt), &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return s.ok() ? resp.choices(0).message().content() : "";
  };
  auto [first, target] = start();
  ASSERT_TRUE(first);
  EXPECT_EQ(answer(target), *answer_);
  ASSERT_TRUE(first->Signal(SIGKILL).ok());
  ASSERT_TRUE(first->Wait(absl::Seconds(10)).ok());
  auto [second, target2] = start();
  ASSERT_TRUE(second);
  EXPECT_EQ(answer(target2), *answer_);
  ASSERT_TRUE(second->Signal(SIGTERM).ok());
  auto status = second->Wait(absl::Seconds(30));
  ASSERT_TRUE(status.ok());
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << DescribeWaitStatus(*status);
}

}  // namespace
}  // namespace tunefleet::serving
