#include "services/serving/grpc/inference_service.h"


#include <memory>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "common/base/ids.h"
#include "common/errors/error_details.h"
#include "common/rpc/metrics.h"
#include "common/rpc/stream_reactor.h"
#include "common/rpc/status.h"
#include "services/serving/grpc/proto_convert.h"

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

// The prompt's filter results ride beside the status's own details
// (ErrorInfo PROMPT_BLOCKED, the field violation on `messages`).
absl::Status WithPromptResults(const absl::Status& status, const FilterVerdict& verdict) {
  v1::ChatCompletionResponse detail;
  VerdictToProto(verdict, detail.mutable_prompt_filter_results(),
                 detail.mutable_prompt_filter_findings());
  absl::Status with_results = status;
  with_results.SetPayload(
      absl::StrCat("type.googleapis.com/", v1::ChatCompletionResponse::descriptor()->full_name()),
      absl::Cord(detail.SerializeAsString()));
  return with_results;
}

std::string Outcome(const ChatResult& r) {
  if (!r.status.ok()) return rpc::StatusCodeName(static_cast<int>(r.status.code()));
  return r.finish == ChatFinish::kContentFilter ? "content_filter" : "ok";
}

}  // namespace

grpc::Status BlockedPromptStatus(const absl::Status& status, const FilterVerdict& verdict) {
  return rpc::ToGrpcStatus(WithPromptResults(status, verdict));
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

// Streaming. The engine thread appends what it releases (text that passed
// the filters' hold-back window, with its tokens' logprobs) and the final
// result to the stream's feed and wakes the reactor; the reactor is the
// shared pull reactor (one write in flight), and each Pull builds the next
// chunk from what accumulated since the last write. Slow consumers: while a
// write waits on the client, the tokens released meanwhile coalesce into the
// next chunk's text, so a stream holds at most the rest of one answer, never
// a queue of messages, and the engine never waits for it. The first chunk
// carries the prompt's filter results; the last the finish reason, the
// completion's results and usage.
//
// Thread-safety: the engine thread (OnDelta, OnDone), the executor (Begin)
// and the reactor (Next, Detach; any thread) meet under mu_. Wakes run under
// wake_mu_, which Detach takes to unhook the reactor, so no wake reaches it
// once it is gone. A wake may run Next inline, so nothing wakes under mu_.
class InferenceServiceImpl::StreamFeed final : public ChatSink {
 public:
  StreamFeed(ServingMetrics* metrics, std::string deployment)
      : metrics_(metrics),
        deployment_(std::move(deployment)),
        id_(NewCompletionId()),
        created_(UnixSeconds()) {}

  void Attach(rpc::PullWriteReactor<v1::ChatCompletionChunk>* reactor) {
    absl::MutexLock lock(&wake_mu_);
    reactor_ = reactor;
  }

  // The stream is over (written, failed, cancelled, or the client went
  // away): no more wakes; a chat still running is cancelled (frees its slot).
  void Detach() {
    {
      absl::MutexLock lock(&wake_mu_);
      reactor_ = nullptr;
    }
    std::shared_ptr<ChatCall> call;
    {
      absl::MutexLock lock(&mu_);
      detached_ = true;
      if (!done_) call = call_;
    }
    if (call) call->Cancel();
  }

  // Once, from the executor, with the outcome of the start.
  void Begin(absl::StatusOr<ChatStart> start, const FilterVerdict& prompt_verdict) {
    std::shared_ptr<ChatCall> cancel;
    {
      absl::MutexLock lock(&mu_);
      begun_ = true;
      if (!start.ok()) {
        if (metrics_) {
          metrics_->RecordChat(deployment_, rpc::StatusCodeName(static_cast<int>(start.status().code())), nullptr);
          if (prompt_verdict.blocked) metrics_->RecordBlock(deployment_, "prompt", prompt_verdict);
        }
        start_status_ = prompt_verdict.blocked ? WithPromptResults(start.status(), prompt_verdict)
                                               : start.status();
      } else {
        call_ = start->call;
        if (detached_ && !done_) cancel = call_;
        model_ = start->model;
        fingerprint_ = start->system_fingerprint;
        prompt_verdict_ = start->prompt_verdict;
      }
    }
    if (cancel) cancel->Cancel();
    Wake();
  }

  void OnDelta(std::string text, std::vector<ChatLogprob> logprobs) override {
    {
      absl::MutexLock lock(&mu_);
      text_ += text;
      for (ChatLogprob& l : logprobs) logprobs_.push_back(std::move(l));
    }
    Wake();
  }

  void OnDone(ChatResult result) override {
    if (metrics_) {
      metrics_->RecordChat(deployment_, Outcome(result), &result);
      if (result.finish == ChatFinish::kContentFilter) metrics_->RecordBlock(deployment_, "completion", result.completion_verdict);
    }
    {
      absl::MutexLock lock(&mu_);
      result.text.clear();  // streamed already, through OnDelta
      result.logprobs.clear();
      result_ = std::move(result);
      done_ = true;
    }
    Wake();
  }

  // The reactor's Pull.
  absl::StatusOr<rpc::Pulled> Next(v1::ChatCompletionChunk* out) {
    absl::MutexLock lock(&mu_);
    if (!begun_) return rpc::Pulled::kWait;
    if (!start_status_.ok()) return start_status_;
    if (!first_sent_) {
      *out = Chunk();
      VerdictToProto(prompt_verdict_, out->mutable_prompt_filter_results(),
                     out->mutable_prompt_filter_findings());
      first_sent_ = true;
      return rpc::Pulled::kMessage;
    }
    if (!text_.empty() || !logprobs_.empty()) {
      // Everything released since the last write: whole characters, each
      // token's logprobs beside the text it completes.
      *out = Chunk();
      out->set_delta(std::move(text_));
      text_.clear();
      if (!logprobs_.empty()) LogprobsToProto(logprobs_, out->mutable_logprobs());
      logprobs_.clear();
      return rpc::Pulled::kMessage;
    }
    if (!done_) return rpc::Pulled::kWait;
    if (last_sent_) return rpc::Pulled::kEnd;
    // An engine failure after the start (deadline, cancel, out of memory)
    // ends the stream with its status, after the text released before it.
    if (!result_.status.ok()) return result_.status;
    *out = Chunk();
    out->set_finish_reason(FinishToProto(result_.finish));
    FillUsage(out->mutable_usage(), result_);
    VerdictToProto(result_.completion_verdict, out->mutable_content_filter_results(),
                   out->mutable_content_filter_findings());
    last_sent_ = true;
    return rpc::Pulled::kMessage;
  }

 private:
  void Wake() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&wake_mu_);
    if (reactor_ != nullptr) reactor_->Wake();
  }
  v1::ChatCompletionChunk Chunk() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    v1::ChatCompletionChunk c;
    c.set_id(id_);
    c.set_created(created_);
    c.set_model(model_);
    c.set_system_fingerprint(fingerprint_);
    c.set_index(0);
    return c;
  }

  ServingMetrics* const metrics_;
  const std::string deployment_;
  const std::string id_;
  const int64_t created_;
  absl::Mutex wake_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  rpc::PullWriteReactor<v1::ChatCompletionChunk>* reactor_ ABSL_GUARDED_BY(wake_mu_) = nullptr;
  absl::Mutex mu_;
  bool begun_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status start_status_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<ChatCall> call_ ABSL_GUARDED_BY(mu_);
  std::string model_ ABSL_GUARDED_BY(mu_), fingerprint_ ABSL_GUARDED_BY(mu_);
  FilterVerdict prompt_verdict_ ABSL_GUARDED_BY(mu_);
  // Released and not yet written: the text of one answer at most.
  std::string text_ ABSL_GUARDED_BY(mu_);
  std::vector<ChatLogprob> logprobs_ ABSL_GUARDED_BY(mu_);
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  ChatResult result_ ABSL_GUARDED_BY(mu_);  // when done_ (its text and logprobs dropped)
  bool first_sent_ ABSL_GUARDED_BY(mu_) = false, last_sent_ ABSL_GUARDED_BY(mu_) = false;
  bool detached_ ABSL_GUARDED_BY(mu_) = false;
};

// Pulls run inline (on the engine thread after a token, a gRPC thread after
// a write, the executor after the start): building a chunk never blocks.
class InferenceServiceImpl::StreamReactor final
    : public rpc::PullWriteReactor<v1::ChatCompletionChunk> {
 public:
  explicit StreamReactor(std::shared_ptr<StreamFeed> feed) : feed_(std::move(feed)) {
    feed_->Attach(this);
    Start();
  }

 private:
  absl::StatusOr<rpc::Pulled> Pull(v1::ChatCompletionChunk* out) override { return feed_->Next(out); }
  void Cleanup() override { feed_->Detach(); }

  const std::shared_ptr<StreamFeed> feed_;  // the engine holds it too, until its OnDone
};

grpc::ServerWriteReactor<v1::ChatCompletionChunk>* InferenceServiceImpl::StreamChatCompletion(
    grpc::CallbackServerContext* context, const v1::ChatCompletionRequest* request) {
  auto caller = auth_.AuthenticateTenant(*context);
  if (!caller.ok()) return new rpc::RejectedWriteReactor<v1::ChatCompletionChunk>(caller.status());
  auto feed = std::make_shared<StreamFeed>(metrics_, request->deployment());
  auto* reactor = new StreamReactor(feed);  // deletes itself when the stream is done
  // The task holds the feed, never the reactor, which may be gone by then.
  executor_->Submit([this, feed, caller = *caller,
                     chat = ChatRequestFromProto(*request, SteadyDeadline(*context))] {
    FilterVerdict prompt_verdict;
    auto start = Start(replica_, caller, chat, feed, &prompt_verdict);
    feed->Begin(std::move(start), prompt_verdict);
  });
  return reactor;
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
