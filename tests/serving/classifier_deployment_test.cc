// A classification model fine-tuned on Tunefleet and deployed as a chat
// deployment's classifier: the real tunefleet-train-worker trains a tiny
// Phi-3 (real Phi-3 tokenizer) on a separable set labelled "safe" /
// "violence" (classification shards as the dataset service writes them);
// its result (PEFT adapter + score.safetensors + contract) is deployed on a
// real replica behind its real gRPC server on loopback, and
//  - ContentFilterService.Classify with that deployment reports VIOLENCE
//    for a violent text and not for a benign one (internal and owner keys);
//  - a chat to it is FAILED_PRECONDITION naming the deployment and its task;
//  - a chat deployment whose policy names it as classifier_deployment
//    blocks a violent prompt (unary and streamed, category VIOLENCE in the
//    error detail; a label mapped to HATE by classifier_labels reports
//    HATE) and serves a benign one;
//  - a policy naming a deployment this replica does not serve fails closed
//    with a classifier error naming it;
//  - the replica counts each deployment's usage (requests, tokens).
#include <gmock/gmock.h>
#include <google/protobuf/any.pb.h>
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/rpc/channel.h"
#include "common/rpc/server.h"
#include "services/serving/grpc/inference_service.h"
#include "services/serving/grpc/proto_convert.h"
#include "services/trainer/protocol/shard_file.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tests/trainer_worker/worker_harness.h"
#include "tunefleet/internal/v1/serving.pb.h"

namespace tunefleet::serving {
namespace {

using ::testing::HasSubstr;
namespace internal_v1 = ::tunefleet::internal::v1;
namespace fs = std::filesystem;

// Label names sorted: "safe" = 0, "violence" = 1.
const std::vector<std::pair<std::string, int>> kTrain = {
    {"I will kill you", 1},  {"tell me a story", 0}, {"kill them all now", 1},
    {"the sea is calm", 0},  {"we kill at dawn", 1},  {"a song about the sky", 0},
    {"kill the guard", 1},   {"the garden is green", 0},
};
const char kViolent[] = "I will kill you";
const char kBenign[] = "tell me a story";

internal_v1::DesiredDeployment Desired(const std::string& id, const std::string& adapter = "") {
  internal_v1::DesiredDeployment d;
  d.mutable_deployment()->set_id(id);
  d.mutable_deployment()->set_model("tiny-phi3");
  d.set_base_model_artifact("tiny-phi3");
  d.set_adapter_artifact(adapter);
  d.set_tenant("acme");
  return d;
}

// A chat deployment guarded by `classifier`: its VIOLENCE (or the mapped
// category's) rule applies to prompts, so the tiny model's answers are
// reported, never blocked.
internal_v1::DesiredDeployment Guarded(const std::string& id, const std::string& classifier,
                                       v1::ContentFilterCategory category) {
  internal_v1::DesiredDeployment d = Desired(id);
  auto* p = d.mutable_deployment()->mutable_content_filter();
  p->set_classifier_deployment(classifier);
  auto* label = p->add_classifier_labels();
  label->set_label("violence");
  label->set_category(category);
  auto* rule = p->add_rules();
  rule->set_category(category);
  rule->set_apply_to_prompt(true);
  return d;
}

class ClassifierDeploymentTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    setenv("OMP_NUM_THREADS", "2", 1);
    at::set_num_threads(1);
    dir_ = new testing::TempDir();
    const std::string base = dir_->Join("models/tiny-phi3");
    auto chat = trainer::worker_testing::WriteTinyPhi3(base, 1.0);
    ASSERT_TRUE(chat.ok()) << chat.status();

    // Classification shards as the dataset service writes them: the text as
    // one user message, loss on the last token, label = index of the name.
    const std::string shard = dir_->Join("train.shard");
    {
      auto w = trainer::ShardFileWriter::Create(shard, (*chat)->tokenizer().vocab_size());
      ASSERT_TRUE(w.ok()) << w.status();
      for (const auto& [text, label] : kTrain) {
        std::vector<text::ChatMessage> m = {{"user", text, {}}};
        auto t = (*chat)->Tokenize(m);
        ASSERT_TRUE(t.ok()) << t.status();
        std::vector<uint8_t> mask(t->ids.size(), 0);
        mask.back() = 1;
        ASSERT_TRUE((*w)->AddExample(t->ids, mask, label).ok());
      }
      ASSERT_TRUE((*w)->Finish().ok());
    }
    trainer::WorkerSpec s;
    s.job_id = "ftjob-cls";
    s.base_model_dir = base;
    s.train_shards = {shard};
    s.output_dir = dir_->Join("artifacts/jobs/ftjob-cls/result");
    s.checkpoint_root = dir_->Join("artifacts/jobs/ftjob-cls/checkpoints");
    s.task = trainer::TrainingTask::kClassification;
    s.num_labels = 2;
    s.label_names = {"safe", "violence"};
    s.hyper.epochs = 12;
    s.hyper.batch_size = 4;
    s.hyper.learning_rate = 1e-2;
    s.hyper.lr_scheduler = trainer::LrScheduler::kConstant;
    s.hyper.lora_rank = 4;
    s.hyper.lora_alpha = 8;
    s.hyper.max_sequence_length = 64;
    s.hyper.seed = 5;
    s.progress_interval_s = 0;
    auto run = trainer::worker_testing::RunWorker(s, dir_->Join("run"), "cls");
    ASSERT_EQ(run.exit_code, 0) << run.stderr_tail;
    const auto* done = run.Last(trainer::ReportKind::kCompleted);
    ASSERT_NE(done, nullptr);
    ASSERT_EQ(fs::path(done->result_dir).lexically_normal(),
              fs::path(s.output_dir).lexically_normal());

    ReplicaOptions o;
    o.models_dir = dir_->Join("models");
    o.artifacts_dir = dir_->Join("artifacts");
    o.engine.threads = 1;
    o.engine.max_batch = 8;
    o.engine.max_context = 256;
    keys_ = new std::vector<rpc::NewKey>{rpc::GenerateKey("acme", rpc::Role::kTenant, "acme"),
                                         rpc::GenerateKey("", rpc::Role::kInternal, "svc"),
                                         rpc::GenerateKey("other", rpc::Role::kTenant, "other")};
    auto replica = Replica::Create(o);
    ASSERT_TRUE(replica.ok()) << replica.status();
    replica_ = replica->release();
    auth_ = new rpc::Authenticator(*rpc::KeyRing::Parse(
        absl::StrCat((*keys_)[0].line, "\n", (*keys_)[1].line, "\n", (*keys_)[2].line, "\n"),
        "test"));
    executor_ = new rpc::Executor(2);
    rpc::ServerOptions so;
    so.listen_address = "127.0.0.1:0";
    so.metrics_address = "";
    so.drain_timeout = absl::Seconds(2);
    server_ = new rpc::Server(so);
    builtin_ = BuiltinFilter::Create({})->release();
    inference_ = new InferenceServiceImpl(auth_, replica_, executor_);
    content_filter_ = new ContentFilterServiceImpl(auth_, builtin_, replica_, executor_);
    server_->AddService(inference_);
    server_->AddService(content_filter_);
    ASSERT_THAT(server_->Start(), testing::IsOk());
    server_->SetServing(true);
    rpc::ChannelOptions co;
    co.target = absl::StrCat("127.0.0.1:", server_->port());
    channel_ = new std::shared_ptr<grpc::Channel>(*rpc::MakeChannel(co));

    std::vector<DeploymentSpec> specs;
    for (const auto& d :
         {Desired("dep-cls", "jobs/ftjob-cls/result"),
          Guarded("dep-guarded", "dep-cls", v1::CONTENT_FILTER_CATEGORY_VIOLENCE),
          Guarded("dep-guarded-hate", "dep-cls", v1::CONTENT_FILTER_CATEGORY_HATE),
          Guarded("dep-guard-missing", "dep-nope", v1::CONTENT_FILTER_CATEGORY_VIOLENCE)}) {
      specs.push_back(SpecFromProto(d));
    }
    for (const DeploymentStatus& st : replica_->Apply(specs)) {
      EXPECT_TRUE(st.ready) << st.id << ": " << st.error;
    }
  }
  static void TearDownTestSuite() {
    server_->Shutdown();
    delete channel_;
    delete server_;
    delete content_filter_;
    delete inference_;
    delete builtin_;
    delete executor_;
    delete replica_;
    delete auth_;
    delete keys_;
    delete dir_;
  }

  static v1::ChatCompletionRequest Chat(const std::string& dep, const std::string& content) {
    v1::ChatCompletionRequest r;
    r.set_deployment(dep);
    auto* m = r.add_messages();
    m->set_role("user");
    m->set_content(content);
    r.set_temperature(0);
    r.set_max_tokens(4);
    return r;
  }
  static grpc::Status Unary(const v1::ChatCompletionRequest& req, v1::ChatCompletionResponse* resp) {
    auto stub = v1::InferenceService::NewStub(*channel_);
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, (*keys_)[0].key, absl::Seconds(60));
    return stub->ChatCompletion(&ctx, req, resp);
  }
  static grpc::Status Stream(const v1::ChatCompletionRequest& req,
                             std::vector<v1::ChatCompletionChunk>* chunks) {
    auto stub = v1::InferenceService::NewStub(*channel_);
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, (*keys_)[0].key, absl::Seconds(60));
    auto reader = stub->StreamChatCompletion(&ctx, req);
    v1::ChatCompletionChunk c;
    while (reader->Read(&c)) chunks->push_back(c);
    return reader->Finish();
  }
  static grpc::Status Classify(const std::string& key, const std::string& dep,
                               const std::string& text, v1::ClassifyResponse* resp) {
    auto stub = v1::ContentFilterService::NewStub(*channel_);
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, key, absl::Seconds(60));
    v1::ClassifyRequest req;
    req.set_source(v1::ClassifyRequest::SOURCE_PROMPT);
    req.set_deployment(dep);
    req.set_text(text);
    return stub->Classify(&ctx, req, resp);
  }
  // The ChatCompletionResponse in a blocked prompt's status details.
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
  template <typename Results>
  static const v1::ContentFilterResult* Result(const Results& rs, v1::ContentFilterCategory c) {
    for (const auto& r : rs) {
      if (r.category() == c) return &r;
    }
    return nullptr;
  }
  static DeploymentUsage UsageOf(const std::string& dep) {
    for (const DeploymentStatus& st : replica_->Statuses()) {
      if (st.id == dep) return st.usage;
    }
    ADD_FAILURE() << "no status for " << dep;
    return {};
  }

  static testing::TempDir* dir_;
  static Replica* replica_;
  static std::vector<rpc::NewKey>* keys_;
  static rpc::Authenticator* auth_;
  static rpc::Executor* executor_;
  static rpc::Server* server_;
  static ContentFilter* builtin_;
  static InferenceServiceImpl* inference_;
  static ContentFilterServiceImpl* content_filter_;
  static std::shared_ptr<grpc::Channel>* channel_;
};
testing::TempDir* ClassifierDeploymentTest::dir_ = nullptr;
Replica* ClassifierDeploymentTest::replica_ = nullptr;
std::vector<rpc::NewKey>* ClassifierDeploymentTest::keys_ = nullptr;
rpc::Authenticator* ClassifierDeploymentTest::auth_ = nullptr;
rpc::Executor* ClassifierDeploymentTest::executor_ = nullptr;
rpc::Server* ClassifierDeploymentTest::server_ = nullptr;
ContentFilter* ClassifierDeploymentTest::builtin_ = nullptr;
InferenceServiceImpl* ClassifierDeploymentTest::inference_ = nullptr;
ContentFilterServiceImpl* ClassifierDeploymentTest::content_filter_ = nullptr;
std::shared_ptr<grpc::Channel>* ClassifierDeploymentTest::channel_ = nullptr;

TEST_F(ClassifierDeploymentTest, ClassifyWithTheDeploymentReportsItsLabelAsACategory) {
  const DeploymentUsage before = UsageOf("dep-cls");
  for (const std::string& key : {(*keys_)[1].key, (*keys_)[0].key}) {  // internal, then the owner
    v1::ClassifyResponse resp;
    grpc::Status s = Classify(key, "dep-cls", kViolent, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    const auto* r = Result(resp.results(), v1::CONTENT_FILTER_CATEGORY_VIOLENCE);
    ASSERT_NE(r, nullptr) << resp.DebugString();
    EXPECT_TRUE(r->detected());
    EXPECT_GE(r->severity(), v1::SEVERITY_MEDIUM);
    EXPECT_FALSE(r->filtered());  // the caller's policy decides
  }
  v1::ClassifyResponse resp;
  ASSERT_TRUE(Classify((*keys_)[1].key, "dep-cls", kBenign, &resp).ok());
  const auto* r = Result(resp.results(), v1::CONTENT_FILTER_CATEGORY_VIOLENCE);
  EXPECT_TRUE(r == nullptr || !r->detected()) << resp.DebugString();
  // Counted as the classification deployment's usage.
  const DeploymentUsage after = UsageOf("dep-cls");
  EXPECT_EQ(after.requests, before.requests + 3);
  EXPECT_GT(after.prompt_tokens, before.prompt_tokens);
  EXPECT_EQ(after.completion_tokens, 0);
  // Another tenant cannot use it.
  grpc::Status s = Classify((*keys_)[2].key, "dep-cls", kViolent, &resp);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
}

TEST_F(ClassifierDeploymentTest, AChatToAClassificationDeploymentIsRefusedNamingItsTask) {
  v1::ChatCompletionResponse resp;
  grpc::Status s = Unary(Chat("dep-cls", kBenign), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(), HasSubstr("dep-cls"));
  EXPECT_THAT(s.error_message(), HasSubstr("classification"));
}

TEST_F(ClassifierDeploymentTest, TheClassifierDeploymentBlocksAViolentPromptAndServesABenignOne) {
  const DeploymentUsage before = UsageOf("dep-guarded");
  v1::ChatCompletionResponse resp;
  grpc::Status s = Unary(Chat("dep-guarded", kViolent), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("blocked"));
  auto detail = Detail(s);
  ASSERT_TRUE(detail.has_value());
  const auto* r = Result(detail->prompt_filter_results(), v1::CONTENT_FILTER_CATEGORY_VIOLENCE);
  ASSERT_NE(r, nullptr) << detail->DebugString();
  EXPECT_TRUE(r->detected());
  EXPECT_TRUE(r->filtered());

  // Streamed: refused before any chunk.
  std::vector<v1::ChatCompletionChunk> chunks;
  s = Stream(Chat("dep-guarded", kViolent), &chunks);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(chunks.empty());
  detail = Detail(s);
  ASSERT_TRUE(detail.has_value());
  r = Result(detail->prompt_filter_results(), v1::CONTENT_FILTER_CATEGORY_VIOLENCE);
  ASSERT_NE(r, nullptr);
  EXPECT_TRUE(r->filtered());

  // The benign prompt is served, unary and streamed.
  s = Unary(Chat("dep-guarded", kBenign), &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_NE(resp.choices(0).finish_reason(), v1::FINISH_REASON_CONTENT_FILTER);
  r = Result(resp.prompt_filter_results(), v1::CONTENT_FILTER_CATEGORY_VIOLENCE);
  EXPECT_TRUE(r == nullptr || !r->filtered());
  chunks.clear();
  ASSERT_TRUE(Stream(Chat("dep-guarded", kBenign), &chunks).ok());
  ASSERT_FALSE(chunks.empty());
  EXPECT_NE(chunks.back().finish_reason(), v1::FINISH_REASON_CONTENT_FILTER);
  // Blocked prompts never reached the engine: two chats counted, with their tokens.
  const DeploymentUsage after = UsageOf("dep-guarded");
  EXPECT_EQ(after.requests, before.requests + 2);
  EXPECT_EQ(after.prompt_tokens - before.prompt_tokens, 2 * resp.usage().prompt_tokens());
  EXPECT_GE(after.completion_tokens - before.completion_tokens, resp.usage().completion_tokens());

  // The policy's label mapping: "violence" reported as HATE.
  s = Unary(Chat("dep-guarded-hate", kViolent), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  detail = Detail(s);
  ASSERT_TRUE(detail.has_value());
  r = Result(detail->prompt_filter_results(), v1::CONTENT_FILTER_CATEGORY_HATE);
  ASSERT_NE(r, nullptr) << detail->DebugString();
  EXPECT_TRUE(r->filtered());
}

TEST_F(ClassifierDeploymentTest, AClassifierDeploymentNotServedHereIsAClassifierError) {
  v1::ChatCompletionResponse resp;
  grpc::Status s = Unary(Chat("dep-guard-missing", kBenign), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);  // fails closed by default
  EXPECT_THAT(s.error_message(), HasSubstr("classifier error"));
  auto detail = Detail(s);
  ASSERT_TRUE(detail.has_value());
  const v1::ContentFilterFinding* f = nullptr;
  for (const auto& x : detail->prompt_filter_findings()) {
    if (x.filter() == "classifier") f = &x;
  }
  ASSERT_NE(f, nullptr) << detail->DebugString();
  EXPECT_TRUE(f->filtered());
  EXPECT_THAT(f->classifier_error(), HasSubstr("dep-nope"));
  EXPECT_THAT(f->classifier_error(), HasSubstr("NOT_FOUND"));
}

}  // namespace
}  // namespace tunefleet::serving
