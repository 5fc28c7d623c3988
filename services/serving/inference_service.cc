#include "services/serving/inference_service.h"


#include <deque>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "common/base/ids.h"
#include "common/errors/error_details.h"
#include "common/rpc/metrics.h"
#include "common/rpc/status.h"
#include "services/serving/proto_convert.h"

namespace tunefleet::serving {

namespace {

std::chrono::steady_clock::time_point SteadyDeadline(const grpc::CallbackServerContext& context) {
  const auto deadline = context.deadline();
  const auto now = std::chrono::system_clock::now();
  if (deadline >= std::chrono::system_clock::time_point::max() - std::chrono::hours(24 * 365)) {
    return std::chrono::steady_clock::time_point::max();
  }
  return std::chrono::steady_clock::now() +
         std::chrono::duration_cast<std::chrono::steady_clock::duration>(deadline - now);
}

std::string NewCompletionId() { return NewId("chatcmpl"); }

int64_t UnixSeconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void FillUsage(v1::Usage* usage, const ChatResult& r) {
  usage->set_prompt_tokens(r.prompt_tokens);
  usage->set_completion_tokens(r.completion_tokens);
  usage->set_total_tokens(r.prompt_tokens + r.completion_tokens);
}

// The lookup, tenancy check and start, shared by both methods (executor).
absl::StatusOr<ChatStart> Start(Replica* replica, const rpc::Principal& caller,
                                const ChatRequest& request, std::shared_ptr<ChatSink> sink,
                                FilterVerdict* prompt_verdict) {
  if (request.deployment.empty()) return errors::FieldError("deployment", "must not be empty");
  auto info = replica->Lookup(request.deployment);
  if (!info.ok()) return info.status();
  if (absl::Status s = rpc::CheckOwner(caller, info->tenant, "deployment", info->id); !s.ok()) return s;
  return replica->StartChat(request, std::move(sink), prompt_verdict);
}

std::string Outcome(const ChatResult& r) {
  if (!r.status.ok()) return rpc::StatusCodeName(static_cast<int>(r.status.code()));
  return r.finish == ChatFinish::kContentFilter ? "content_filter" : "ok";
}

}  // namespace

grpc::Status BlockedPromptStatus(const absl::Status& status, const FilterVerdict& verdict) {
  // The prompt's filter results ride beside the status's own details
  // (ErrorInfo PROMPT_BLOCKED, the field violation on `messages`).
  v1::ChatCompletionResponse detail;
  VerdictToProto(verdict, detail.mutable_prompt_filter_results(),
                 detail.mutable_prompt_filter_findings());
  absl::Status with_results = status;
  with_results.SetPayload(
      absl::StrCat("type.googleapis.com/", v1::ChatCompletionResponse::descriptor()->full_name()),
      absl::Cord(detail.SerializeAsString()));
  return rpc::ToGrpcStatus(with_results);
}

// Unary: the response is complete when both the start (prompt results) and
// the engine's result are in, in either order.
class InferenceServiceImpl::UnarySink final : public ChatSink {
 public:
  UnarySink(grpc::ServerUnaryReactor* reactor, v1::ChatCompletionResponse* response,
            ServingMetrics* metrics, std::string deployment, bool logprobs)
      : reactor_(reactor),
        response_(response),
        metrics_(metrics),
        deployment_(std::move(deployment)),
        logprobs_(logprobs) {}
  void OnDelta(std::string, std::vector<ChatLogprob>) override {}
  void OnDone(ChatResult result) override {
    std::unique_lock<std::mutex> lock(mu_);
    result_ = std::move(result);
    has_result_ = true;
    if (started_) Complete(lock);
  }
  void Started(const ChatStart& start) {
    std::unique_lock<std::mutex> lock(mu_);
    response_->set_id(NewCompletionId());
    response_->set_created(UnixSeconds());
    response_->set_model(start.model);
    response_->set_system_fingerprint(start.system_fingerprint);
    VerdictToProto(start.prompt_verdict, response_->mutable_prompt_filter_results(),
                   response_->mutable_prompt_filter_findings());
    started_ = true;
    if (has_result_) Complete(lock);
  }

 private:
  void Complete(std::unique_lock<std::mutex>& lock) {
    if (metrics_) {
      metrics_->RecordChat(deployment_, Outcome(result_), &result_);
      if (result_.finish == ChatFinish::kContentFilter)
        metrics_->RecordBlock(deployment_, "completion", result_.completion_verdict);
    }
    if (!result_.status.ok()) {
      lock.unlock();
      reactor_->Finish(rpc::ToGrpcStatus(result_.status));
      return;
    }
    v1::Choice* choice = response_->add_choices();
    choice->set_index(0);
    choice->mutable_message()->set_role("assistant");
    // A blocked answer keeps none of its text.
    if (result_.finish != ChatFinish::kContentFilter) {
      choice->mutable_message()->set_content(result_.text);
      if (logprobs_) LogprobsToProto(result_.logprobs, choice->mutable_logprobs());
    }
    choice->set_finish_reason(FinishToProto(result_.finish));
    VerdictToProto(result_.completion_verdict, choice->mutable_content_filter_results(),
                   choice->mutable_content_filter_findings());
    FillUsage(response_->mutable_usage(), result_);
    lock.unlock();
    reactor_->Finish(grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* reactor_;
  v1::ChatCompletionResponse* response_;
  ServingMetrics* metrics_;
  std::string deployment_;
  const bool logprobs_;
  std::mutex mu_;
  bool started_ = false, has_result_ = false;
  ChatResult result_;
};

grpc::ServerUnaryReactor* InferenceServiceImpl::ChatCompletion(
    grpc::CallbackServerContext* context, const v1::ChatCompletionRequest* request,
    v1::ChatCompletionResponse* response) {
  auto caller = auth_.AuthenticateTenant(*context);
  if (!caller.ok()) return rpc::FinishUnary(context, caller.status());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  executor_->Submit([this, reactor, request, response, caller = *caller,
                     chat = ChatRequestFromProto(*request, SteadyDeadline(*context))] {
    auto sink = std::make_shared<UnarySink>(reactor, response, metrics_, request->deployment(),
                                            request->logprobs());
    FilterVerdict prompt_verdict;
    auto start = Start(replica_, caller, chat, sink, &prompt_verdict);
    if (!start.ok()) {
      if (metrics_) {
        metrics_->RecordChat(request->deployment(), rpc::StatusCodeName(static_cast<int>(start.status().code())), nullptr);
        if (prompt_verdict.blocked) metrics_->RecordBlock(request->deployment(), "prompt", prompt_verdict);
      }
      reactor->Finish(prompt_verdict.blocked ? BlockedPromptStatus(start.status(), prompt_verdict)
                                             : rpc::ToGrpcStatus(start.status()));
      return;
    }
    sink->Started(*start);
  });
  return reactor;
}

// Streaming: chunks are queued by the engine thread and written one at a
// time (the next write starts in OnWriteDone), so a slow client costs
// memory for its queued chunks only, never an engine stall; the text in
// them has passed the content filter's hold-back window. The first chunk
// carries the prompt's filter results, the last the finish reason and usage.
class InferenceServiceImpl::StreamReactor final : public grpc::ServerWriteReactor<v1::ChatCompletionChunk>,
                                                  public ChatSink,
                                                  public std::enable_shared_from_this<StreamReactor> {
 public:
  StreamReactor(InferenceServiceImpl* service, std::string deployment)
      : service_(service),
        deployment_(std::move(deployment)),
        id_(NewCompletionId()),
        created_(UnixSeconds()) {}

  // Called once from the executor with the outcome of the start.
  void Begin(absl::StatusOr<ChatStart> start, const FilterVerdict& prompt_verdict) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!start.ok()) {
      if (ServingMetrics* m = service_->metrics_) {
        m->RecordChat(deployment_, rpc::StatusCodeName(static_cast<int>(start.status().code())), nullptr);
        if (prompt_verdict.blocked) m->RecordBlock(deployment_, "prompt", prompt_verdict);
      }
      final_ = prompt_verdict.blocked ? BlockedPromptStatus(start.status(), prompt_verdict)
                                      : rpc::ToGrpcStatus(start.status());
      finishing_ = true;
      MaybeFinish(lock);
      return;
    }
    call_ = start->call;
    if (cancelled_) call_->Cancel();
    model_ = start->model;
    fingerprint_ = start->system_fingerprint;
    v1::ChatCompletionChunk first = Chunk();
    VerdictToProto(start->prompt_verdict, first.mutable_prompt_filter_results(),
                   first.mutable_prompt_filter_findings());
    queue_.push_front(std::move(first));  // before anything the engine sent already
    for (auto& c : queue_) {
      c.set_model(model_);
      c.set_system_fingerprint(fingerprint_);
    }
    started_ = true;
    Pump(lock);
  }

  void OnDelta(std::string text, std::vector<ChatLogprob> logprobs) override {
    std::unique_lock<std::mutex> lock(mu_);
    v1::ChatCompletionChunk c = Chunk();
    c.set_delta(std::move(text));
    if (!logprobs.empty()) LogprobsToProto(logprobs, c.mutable_logprobs());
    queue_.push_back(std::move(c));
    if (started_) Pump(lock);
  }

  void OnDone(ChatResult result) override {
    std::unique_lock<std::mutex> lock(mu_);
    if (ServingMetrics* m = service_->metrics_) {
      m->RecordChat(deployment_, Outcome(result), &result);
      if (result.finish == ChatFinish::kContentFilter) m->RecordBlock(deployment_, "completion", result.completion_verdict);
    }
    if (result.status.ok()) {
      v1::ChatCompletionChunk last = Chunk();
      last.set_finish_reason(FinishToProto(result.finish));
      FillUsage(last.mutable_usage(), result);
      VerdictToProto(result.completion_verdict, last.mutable_content_filter_results(),
                     last.mutable_content_filter_findings());
      queue_.push_back(std::move(last));
      final_ = grpc::Status::OK;
    } else {
      final_ = rpc::ToGrpcStatus(result.status);
    }
    finishing_ = true;
    if (started_) Pump(lock);
  }

  void OnWriteDone(bool ok) override {
    std::unique_lock<std::mutex> lock(mu_);
    writing_ = false;
    queue_.pop_front();
    if (!ok) {
      // The client is gone: stop generating; Finish once the engine is done.
      broken_ = true;
      queue_.clear();
      if (call_) call_->Cancel();
    }
    Pump(lock);
  }

  void OnCancel() override {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
    if (call_) call_->Cancel();
  }

  void OnDone() override {
    std::shared_ptr<StreamReactor> self;
    {
      std::lock_guard<std::mutex> lock(mu_);
      self = std::move(self_);
    }
    // `self` may be the last reference: this object goes here.
  }

  void Hold(std::shared_ptr<StreamReactor> self) { self_ = std::move(self); }

 private:
  v1::ChatCompletionChunk Chunk() const {
    v1::ChatCompletionChunk c;
    c.set_id(id_);
    c.set_created(created_);
    c.set_model(model_);
    c.set_system_fingerprint(fingerprint_);
    c.set_index(0);
    return c;
  }
  void Pump(std::unique_lock<std::mutex>& lock) {
    if (writing_) return;
    if (!queue_.empty() && !broken_) {
      writing_ = true;
      StartWrite(&queue_.front());
      return;
    }
    MaybeFinish(lock);
  }
  void MaybeFinish(std::unique_lock<std::mutex>&) {
    if (finishing_ && !finished_ && !writing_ && (queue_.empty() || broken_)) {
      finished_ = true;
      Finish(final_);
    }
  }

  InferenceServiceImpl* service_;
  std::string deployment_;
  const std::string id_;
  const int64_t created_;
  std::mutex mu_;
  std::deque<v1::ChatCompletionChunk> queue_;  // front: being written
  std::shared_ptr<ChatCall> call_;
  std::shared_ptr<StreamReactor> self_;  // released in OnDone
  std::string model_, fingerprint_;
  grpc::Status final_;
  bool started_ = false, writing_ = false, finishing_ = false, finished_ = false;
  bool broken_ = false, cancelled_ = false;
};

grpc::ServerWriteReactor<v1::ChatCompletionChunk>* InferenceServiceImpl::StreamChatCompletion(
    grpc::CallbackServerContext* context, const v1::ChatCompletionRequest* request) {
  auto caller = auth_.AuthenticateTenant(*context);
  if (!caller.ok()) return new rpc::RejectedWriteReactor<v1::ChatCompletionChunk>(caller.status());
  // Owned by a shared_ptr: the engine's sink reference may outlive the
  // reactor's OnDone by the few instructions it takes to return.
  auto reactor = std::make_shared<StreamReactor>(this, request->deployment());
  reactor->Hold(reactor);
  executor_->Submit([this, reactor, caller = *caller,
                     chat = ChatRequestFromProto(*request, SteadyDeadline(*context))] {
    FilterVerdict prompt_verdict;
    auto start = Start(replica_, caller, chat, reactor, &prompt_verdict);
    reactor->Begin(std::move(start), prompt_verdict);
  });
  return reactor.get();
}

namespace {

// Results per category, `filtered` left to the caller's policy; only the
// requested categories when it names some.
void ClassifyResults(const std::vector<Detection>& detections, TextSource source,
                     const v1::ClassifyRequest& request, v1::ClassifyResponse* response) {
  FilterPolicy annotate;
  for (int c = 1; c < kNumFilterCategories; ++c) {
    annotate.rules.push_back(FilterRule{static_cast<FilterCategory>(c), FilterSeverity::kMedium, true,
                                        true, FindingAction::kAnnotate});
  }
  FilterVerdict v = ApplyPolicy(annotate, source, detections);
  if (request.categories_size() > 0) {
    std::vector<CategoryVerdict> kept;
    for (const CategoryVerdict& c : v.categories) {
      for (int want : request.categories()) {
        if (static_cast<int>(c.category) == want) kept.push_back(c);
      }
    }
    v.categories = std::move(kept);
  }
  google::protobuf::RepeatedPtrField<v1::ContentFilterFinding> ignored;
  VerdictToProto(v, response->mutable_results(), &ignored);
}

}  // namespace

grpc::ServerUnaryReactor* ContentFilterServiceImpl::Classify(grpc::CallbackServerContext* context,
                                                             const v1::ClassifyRequest* request,
                                                             v1::ClassifyResponse* response) {
  const TextSource source = request->source() == v1::ClassifyRequest::SOURCE_COMPLETION
                                ? TextSource::kCompletion
                                : TextSource::kPrompt;
  if (replica_ && executor_ && !request->deployment().empty()) {
    auto info = replica_->Lookup(request->deployment());
    if (info.ok() && !info->task.empty()) {
      // A classification deployment served here: its model classifies.
      return rpc::RunOnExecutor(
          context, auth_.Authenticate(*context), executor_,
          [this, request, response, source, info = *info](const rpc::Principal& caller) {
            if (!caller.internal()) {
              if (absl::Status s = rpc::CheckOwner(caller, info.tenant, "deployment", info.id);
                  !s.ok()) {
                return s;
              }
            }
            auto scores = replica_->Classify(request->deployment(), request->text());
            if (!scores.ok()) return scores.status();
            ClassifyResults(LabelDetections(*scores, {}, request->text().size()), source, *request,
                            response);
            return absl::OkStatus();
          });
    }
  }
  auto caller = auth_.AuthenticateInternal(*context);
  if (!caller.ok()) return rpc::FinishUnary(context, caller.status());
  auto detections = filter_->Classify(request->text(), source);
  if (!detections.ok()) return rpc::FinishUnary(context, detections.status());
  ClassifyResults(*detections, source, *request, response);
  return rpc::FinishUnary(context, absl::OkStatus());
}

}  // namespace tunefleet::serving
