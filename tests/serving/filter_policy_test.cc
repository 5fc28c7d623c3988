// A deployment's content filter policy, honoured by a real replica behind
// its real gRPC server on loopback (tiny Phi-3, real tokenizer), unary and
// streamed: custom blocklists named in the findings, with the byte offsets
// of the match; the annotate action that reports and never blocks; a rule
// without a target applying to prompt and completion; a rule for one source
// only; categories PII and BLOCKLIST; an external classifier that is down,
// failing closed or open as the policy says, its error in the findings.
#include <gmock/gmock.h>
#include <google/protobuf/any.pb.h>
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <re2/re2.h>
#include <stdlib.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/model/tiny_model.h"
#include "common/rpc/channel.h"
#include "common/rpc/server.h"
#include "common/text/phi3_tokenizer_files.h"
#include "services/serving/grpc/inference_service.h"
#include "services/serving/grpc/proto_convert.h"
#include "services/serving/grpc/remote_filter.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tunefleet/internal/v1/serving.pb.h"

namespace tunefleet::serving {
namespace {

using ::testing::HasSubstr;
namespace internal_v1 = ::tunefleet::internal::v1;

const char kPrompt[] = "Tell me a story about the sea.";
constexpr int kAnswerTokens = 40;

internal_v1::DesiredDeployment Desired(const std::string& id, bool filter = true) {
  internal_v1::DesiredDeployment d;
  d.mutable_deployment()->set_id(id);
  d.mutable_deployment()->set_model("tiny-phi3");
  d.mutable_deployment()->mutable_content_filter()->set_disabled(!filter);
  d.set_base_model_artifact("tiny-phi3");
  d.set_tenant("acme");
  return d;
}

class FilterPolicyTest : public ::testing::Test {
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
    ReplicaOptions o;
    o.models_dir = dir_->Join("models");
    o.artifacts_dir = dir_->Join("artifacts");
    o.engine.threads = 1;
    o.engine.max_batch = 16;
    o.builtin_filter.blocklist_terms = {"zorblax"};
    keys_ = new std::vector<rpc::NewKey>{rpc::GenerateKey("acme", rpc::Role::kTenant, "acme"),
                                         rpc::GenerateKey("", rpc::Role::kInternal, "svc")};
    o.remote_filter = [](const std::string& endpoint, const std::string& dep) {
      rpc::ChannelOptions co;
      co.target = endpoint;
      RemoteFilterOptions ro;
      ro.api_key = (*keys_)[1].key;
      ro.timeout = absl::Seconds(2);
      ro.deployment = dep;
      return std::shared_ptr<const ContentFilter>(MakeRemoteFilter(*rpc::MakeChannel(co), ro));
    };
    auto replica = Replica::Create(o);
    ASSERT_TRUE(replica.ok()) << replica.status();
    replica_ = replica->release();
    auth_ = new rpc::Authenticator(*rpc::KeyRing::Parse(
        absl::StrCat((*keys_)[0].line, "\n", (*keys_)[1].line, "\n"), "test"));
    executor_ = new rpc::Executor(2);
    rpc::ServerOptions so;
    so.listen_address = "127.0.0.1:0";
    so.metrics_address = "";
    so.drain_timeout = absl::Seconds(2);
    server_ = new rpc::Server(so);
    metrics_ = new ServingMetrics(server_->registry());
    service_ = new InferenceServiceImpl(auth_, replica_, executor_, metrics_);
    server_->AddService(service_);
    ASSERT_THAT(server_->Start(), testing::IsOk());
    server_->SetServing(true);
    rpc::ChannelOptions co;
    co.target = absl::StrCat("127.0.0.1:", server_->port());
    channel_ = new std::shared_ptr<grpc::Channel>(*rpc::MakeChannel(co));

    // The greedy answer without filters; a policy list then targets a piece
    // from its middle.
    ApplyAll({Desired("dep-open", false)});
    v1::ChatCompletionResponse resp;
    grpc::Status s = Unary(Chat("dep-open", kPrompt), &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    answer_ = new std::string(resp.choices(0).message().content());
    ASSERT_GT(answer_->size(), 40u) << *answer_;
    piece_ = new std::string(answer_->substr(answer_->size() / 2, 6));
    std::vector<internal_v1::DesiredDeployment> set = {Desired("dep-open", false)};
    auto lists = [](internal_v1::DesiredDeployment d) {
      auto* p = d.mutable_deployment()->mutable_content_filter();
      auto* codenames = p->add_blocklists();
      codenames->set_name("codenames");
      codenames->add_terms("falcon");
      codenames->add_regexes("ticket-[0-9]{4}");
      auto* answer = p->add_blocklists();
      answer->set_name("answer");
      answer->add_regexes(re2::RE2::QuoteMeta(*piece_));
      return d;
    };
    auto rule = [](internal_v1::DesiredDeployment d, v1::ContentFilterCategory c,
                   v1::ContentFilterAction action, bool prompt, bool completion) {
      auto* r = d.mutable_deployment()->mutable_content_filter()->add_rules();
      r->set_category(c);
      r->set_action(action);
      r->set_apply_to_prompt(prompt);
      r->set_apply_to_completion(completion);
      return d;
    };
    set.push_back(lists(Desired("dep-lists")));
    // No target: the annotate rule covers prompt and completion.
    set.push_back(rule(lists(Desired("dep-annotate")), v1::CONTENT_FILTER_CATEGORY_BLOCKLIST,
                       v1::CONTENT_FILTER_ACTION_ANNOTATE, false, false));
    set.push_back(rule(lists(Desired("dep-completion-only")),
                       v1::CONTENT_FILTER_CATEGORY_BLOCKLIST, v1::CONTENT_FILTER_ACTION_BLOCK,
                       false, true));
    set.push_back(rule(Desired("dep-pii"), v1::CONTENT_FILTER_CATEGORY_PII,
                       v1::CONTENT_FILTER_ACTION_BLOCK, false, false));
    for (auto [id, on_error] : {std::pair{"dep-down", v1::CLASSIFIER_ERROR_POLICY_UNSPECIFIED},
                                std::pair{"dep-down-open", v1::CLASSIFIER_ERROR_POLICY_FAIL_OPEN},
                                std::pair{"dep-down-closed",
                                          v1::CLASSIFIER_ERROR_POLICY_FAIL_CLOSED}}) {
      internal_v1::DesiredDeployment d = Desired(id);
      d.mutable_deployment()->mutable_content_filter()->set_classifier_endpoint("127.0.0.1:1");
      d.mutable_deployment()->mutable_content_filter()->set_on_classifier_error(on_error);
      set.push_back(d);
    }
    ApplyAll(set);
    set_ = new std::vector<internal_v1::DesiredDeployment>(set);
  }
  static void TearDownTestSuite() {
    server_->Shutdown();
    delete channel_;
    delete server_;
    delete service_;
    delete metrics_;
    delete executor_;
    delete replica_;
    delete auth_;
    delete keys_;
    delete answer_;
    delete piece_;
    delete set_;
    delete dir_;
  }

  static void ApplyAll(const std::vector<internal_v1::DesiredDeployment>& set) {
    std::vector<DeploymentSpec> specs;
    for (const auto& d : set) specs.push_back(SpecFromProto(d));
    for (const DeploymentStatus& st : replica_->Apply(specs)) {
      EXPECT_TRUE(st.ready) << st.id << ": " << st.error;
    }
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
  static std::string Deltas(const std::vector<v1::ChatCompletionChunk>& chunks) {
    std::string out;
    for (const auto& c : chunks) out += c.delta();
    return out;
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
  // The finding of `list` (or of `filter` when list is empty), or null.
  template <typename Findings>
  static const v1::ContentFilterFinding* Find(const Findings& fs, const std::string& filter,
                                              const std::string& list = "") {
    for (const auto& f : fs) {
      if (f.filter() == filter && (list.empty() || f.blocklist() == list)) return &f;
    }
    return nullptr;
  }

  static testing::TempDir* dir_;
  static std::string* answer_;
  static std::string* piece_;
  static std::vector<internal_v1::DesiredDeployment>* set_;
  static Replica* replica_;
  static std::vector<rpc::NewKey>* keys_;
  static rpc::Authenticator* auth_;
  static rpc::Executor* executor_;
  static rpc::Server* server_;
  static ServingMetrics* metrics_;
  static InferenceServiceImpl* service_;
  static std::shared_ptr<grpc::Channel>* channel_;
};
testing::TempDir* FilterPolicyTest::dir_ = nullptr;
std::string* FilterPolicyTest::answer_ = nullptr;
std::string* FilterPolicyTest::piece_ = nullptr;
std::vector<internal_v1::DesiredDeployment>* FilterPolicyTest::set_ = nullptr;
Replica* FilterPolicyTest::replica_ = nullptr;
std::vector<rpc::NewKey>* FilterPolicyTest::keys_ = nullptr;
rpc::Authenticator* FilterPolicyTest::auth_ = nullptr;
rpc::Executor* FilterPolicyTest::executor_ = nullptr;
rpc::Server* FilterPolicyTest::server_ = nullptr;
ServingMetrics* FilterPolicyTest::metrics_ = nullptr;
InferenceServiceImpl* FilterPolicyTest::service_ = nullptr;
std::shared_ptr<grpc::Channel>* FilterPolicyTest::channel_ = nullptr;

TEST_F(FilterPolicyTest, APolicyBlocklistRegexBlocksThePromptAndNamesTheListAndSpan) {
  v1::ChatCompletionResponse resp;
  grpc::Status s = Unary(Chat("dep-lists", "my ticket-1234 is late"), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("blocklist codenames: ticket-[0-9]{4}"));
  auto detail = Detail(s);
  ASSERT_TRUE(detail.has_value());
  const auto* f = Find(detail->prompt_filter_findings(), "blocklist", "codenames");
  ASSERT_NE(f, nullptr) << detail->DebugString();
  EXPECT_EQ(f->kind(), "ticket-[0-9]{4}");
  EXPECT_EQ(f->category(), v1::CONTENT_FILTER_CATEGORY_BLOCKLIST);
  EXPECT_TRUE(f->filtered());
  EXPECT_EQ(f->start_offset(), 3);  // "my " then the 11 bytes of "ticket-1234"
  EXPECT_EQ(f->end_offset(), 14);
  // A term of the same list, case-insensitive; streamed: refused before any chunk.
  std::vector<v1::ChatCompletionChunk> chunks;
  s = Stream(Chat("dep-lists", "Where is FALCON now?"), &chunks);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(chunks.empty());
  detail = Detail(s);
  ASSERT_TRUE(detail.has_value());
  f = Find(detail->prompt_filter_findings(), "blocklist", "codenames");
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->kind(), "falcon");
  EXPECT_EQ(f->start_offset(), 9);
  EXPECT_EQ(f->end_offset(), 15);
  // The replica's own list still applies, named "replica".
  s = Unary(Chat("dep-lists", "what is zorblax?"), &resp);
  detail = Detail(s);
  ASSERT_TRUE(detail.has_value());
  ASSERT_NE(Find(detail->prompt_filter_findings(), "blocklist", "replica"), nullptr);
}

TEST_F(FilterPolicyTest, ABlockedCompletionReportsTheListAndTheOffsetInTheWholeCompletion) {
  const size_t at = answer_->find(*piece_);
  v1::ChatCompletionResponse resp;
  ASSERT_TRUE(Unary(Chat("dep-lists", kPrompt), &resp).ok());
  EXPECT_EQ(resp.choices(0).finish_reason(), v1::FINISH_REASON_CONTENT_FILTER);
  EXPECT_EQ(resp.choices(0).message().content(), "");
  const auto* f = Find(resp.choices(0).content_filter_findings(), "blocklist", "answer");
  ASSERT_NE(f, nullptr) << resp.DebugString();
  EXPECT_TRUE(f->filtered());
  EXPECT_EQ(f->start_offset(), static_cast<int64_t>(at));
  EXPECT_EQ(f->end_offset(), static_cast<int64_t>(at + piece_->size()));

  std::vector<v1::ChatCompletionChunk> chunks;
  ASSERT_TRUE(Stream(Chat("dep-lists", kPrompt), &chunks).ok());
  ASSERT_FALSE(chunks.empty());
  EXPECT_EQ(chunks.back().finish_reason(), v1::FINISH_REASON_CONTENT_FILTER);
  EXPECT_THAT(Deltas(chunks), ::testing::Not(HasSubstr(*piece_)));
  f = Find(chunks.back().content_filter_findings(), "blocklist", "answer");
  ASSERT_NE(f, nullptr) << chunks.back().DebugString();
  EXPECT_TRUE(f->filtered());
  // Offsets in the whole completion, not in the window the stream checked.
  EXPECT_EQ(f->start_offset(), static_cast<int64_t>(at));
  EXPECT_EQ(f->end_offset(), static_cast<int64_t>(at + piece_->size()));
}

TEST_F(FilterPolicyTest, AnAnnotateRuleWithoutATargetReportsOnBothSidesAndNeverBlocks) {
  v1::ChatCompletionResponse resp;
  grpc::Status s = Unary(Chat("dep-annotate", "falcon ticket-0042", 2), &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(resp.prompt_filter_findings_size(), 2) << resp.DebugString();
  for (const auto& f : resp.prompt_filter_findings()) {
    EXPECT_EQ(f.blocklist(), "codenames");
    EXPECT_FALSE(f.filtered());
  }
  std::vector<v1::ChatCompletionChunk> chunks;
  ASSERT_TRUE(Stream(Chat("dep-annotate", "falcon ticket-0042", 2), &chunks).ok());
  ASSERT_FALSE(chunks.empty());
  EXPECT_EQ(chunks.front().prompt_filter_findings_size(), 2);

  // The completion: served whole, the list's match reported.
  ASSERT_TRUE(Unary(Chat("dep-annotate", kPrompt), &resp).ok());
  EXPECT_NE(resp.choices(0).finish_reason(), v1::FINISH_REASON_CONTENT_FILTER);
  EXPECT_THAT(resp.choices(0).message().content(), HasSubstr(*piece_));
  const auto* f = Find(resp.choices(0).content_filter_findings(), "blocklist", "answer");
  ASSERT_NE(f, nullptr) << resp.DebugString();
  EXPECT_FALSE(f->filtered());
  const std::string& content = resp.choices(0).message().content();
  EXPECT_EQ(content.substr(f->start_offset(), f->end_offset() - f->start_offset()), *piece_);

  chunks.clear();
  ASSERT_TRUE(Stream(Chat("dep-annotate", kPrompt), &chunks).ok());
  ASSERT_FALSE(chunks.empty());
  EXPECT_EQ(Deltas(chunks), content);
  EXPECT_NE(chunks.back().finish_reason(), v1::FINISH_REASON_CONTENT_FILTER);
  f = Find(chunks.back().content_filter_findings(), "blocklist", "answer");
  ASSERT_NE(f, nullptr);
  EXPECT_FALSE(f->filtered());
}

TEST_F(FilterPolicyTest, ARuleForOneSourceLeavesTheOtherReportedOnly) {
  // Blocklist rule on completions only: the prompt's match is reported.
  v1::ChatCompletionResponse resp;
  grpc::Status s = Unary(Chat("dep-completion-only", "falcon", 2), &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  const auto* f = Find(resp.prompt_filter_findings(), "blocklist", "codenames");
  ASSERT_NE(f, nullptr);
  EXPECT_FALSE(f->filtered());
  ASSERT_TRUE(Unary(Chat("dep-completion-only", kPrompt), &resp).ok());
  EXPECT_EQ(resp.choices(0).finish_reason(), v1::FINISH_REASON_CONTENT_FILTER);
}

TEST_F(FilterPolicyTest, APiiRuleWithoutATargetBlocksPromptsTooWhereTheDefaultOnlyReports) {
  const std::string prompt = "Write to jo.doe@example.com about the sea.";
  v1::ChatCompletionResponse resp;
  grpc::Status s = Unary(Chat("dep-pii", prompt, 2), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  auto detail = Detail(s);
  ASSERT_TRUE(detail.has_value());
  const auto* f = Find(detail->prompt_filter_findings(), "pii");
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->kind(), "email");
  EXPECT_EQ(f->category(), v1::CONTENT_FILTER_CATEGORY_PII);
  EXPECT_TRUE(f->filtered());
  EXPECT_EQ(prompt.substr(f->start_offset(), f->end_offset() - f->start_offset()),
            "jo.doe@example.com");
  // Without a PII rule: reported on the prompt, not blocked.
  ASSERT_TRUE(Unary(Chat("dep-lists", prompt, 2), &resp).ok());
  f = Find(resp.prompt_filter_findings(), "pii");
  ASSERT_NE(f, nullptr);
  EXPECT_FALSE(f->filtered());
}

TEST_F(FilterPolicyTest, AClassifierThatIsDownFailsClosedOrOpenAsThePolicySays) {
  for (const char* dep : {"dep-down", "dep-down-closed"}) {
    v1::ChatCompletionResponse resp;
    grpc::Status s = Unary(Chat(dep, "Hello there", 3), &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << dep;
    EXPECT_THAT(s.error_message(), HasSubstr("classifier error")) << dep;
    auto detail = Detail(s);
    ASSERT_TRUE(detail.has_value()) << dep;
    const auto* f = Find(detail->prompt_filter_findings(), "classifier");
    ASSERT_NE(f, nullptr) << dep;
    EXPECT_EQ(f->kind(), "error");
    EXPECT_TRUE(f->filtered());
    EXPECT_THAT(f->classifier_error(), HasSubstr("UNAVAILABLE")) << f->classifier_error();
  }
  // Fail open: served, the error reported on the prompt and the completion.
  v1::ChatCompletionResponse resp;
  grpc::Status s = Unary(Chat("dep-down-open", "Hello there", 3), &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  const auto* f = Find(resp.prompt_filter_findings(), "classifier");
  ASSERT_NE(f, nullptr) << resp.DebugString();
  EXPECT_FALSE(f->filtered());
  EXPECT_FALSE(f->classifier_error().empty());
  EXPECT_NE(resp.choices(0).finish_reason(), v1::FINISH_REASON_CONTENT_FILTER);
  f = Find(resp.choices(0).content_filter_findings(), "classifier");
  ASSERT_NE(f, nullptr);
  EXPECT_FALSE(f->filtered());
  std::vector<v1::ChatCompletionChunk> chunks;
  ASSERT_TRUE(Stream(Chat("dep-down-open", "Hello there", 3), &chunks).ok());
  ASSERT_FALSE(chunks.empty());
  f = Find(chunks.front().prompt_filter_findings(), "classifier");
  ASSERT_NE(f, nullptr);
  EXPECT_FALSE(f->filtered());
  EXPECT_EQ(Deltas(chunks), resp.choices(0).message().content());
}

TEST_F(FilterPolicyTest, AReplicaRefusesAPolicyWhoseRegexDoesNotCompile) {
  internal_v1::DesiredDeployment bad = Desired("dep-bad-regex");
  auto* list = bad.mutable_deployment()->mutable_content_filter()->add_blocklists();
  list->set_name("broken");
  list->add_regexes("(unclosed");
  std::vector<DeploymentSpec> specs;
  for (const auto& d : *set_) specs.push_back(SpecFromProto(d));
  specs.push_back(SpecFromProto(bad));
  auto statuses = replica_->Apply(specs);
  bool seen = false;
  for (const DeploymentStatus& st : statuses) {
    if (st.id != "dep-bad-regex") continue;
    seen = true;
    EXPECT_FALSE(st.ready);
    EXPECT_THAT(st.error, HasSubstr("content_filter.blocklists[0].regexes[0]"));
  }
  EXPECT_TRUE(seen);
}

}  // namespace
}  // namespace tunefleet::serving
