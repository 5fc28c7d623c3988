// A serving replica's core (no gRPC): the base models it holds (one engine
// each), its deployments (a base, an optional adapter, a filter policy) and
// chat completions through them — prompt rendering and filtering, sampling
// defaults, stop strings, streamed text released through the content
// filter's hold-back window, usage.
//
// Thread-safety: every method may be called from any thread. Apply is
// serialized internally and may block for model loads; chat calls never
// wait for it except to look a deployment up.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/decoder.h"
#include "common/text/chat_template.h"
#include "services/serving/engine/adapter_cache.h"
#include "services/serving/engine/engine.h"
#include "services/serving/filters/builtin_filter.h"
#include "services/serving/filters/content_filter.h"
#include "services/serving/model_classifier.h"

namespace tunefleet::serving {

struct ReplicaOptions {
  // <models_dir>/<base model id>/ holds Hugging Face directories.
  std::string models_dir;
  // Adapter artifact names are relative to it.
  std::string artifacts_dir;
  model::DecoderOptions decoder;
  EngineOptions engine;
  int64_t adapter_budget_bytes = int64_t{2} << 30;
  BuiltinFilterOptions builtin_filter;
  // PII and blocklist actions where a policy has no rule for them.
  FindingAction pii_prompt = FindingAction::kAnnotate;
  FindingAction pii_completion = FindingAction::kBlock;
  FindingAction blocklist = FindingAction::kBlock;
  // A failed external classifier where the policy leaves on_classifier_error
  // unspecified: false blocks the text (fail closed).
  bool classifier_fail_open = false;
  // Stream hold-back in bytes; 0: what the filter needs (its max_span).
  size_t holdback_bytes = 0;
  // What system_fingerprint says of the build; empty: the sha256 of the
  // running executable.
  std::string build_id;
  // Makes the filter for a deployment whose policy names a classifier
  // endpoint (a remote ContentFilterService); null: such policies fail.
  std::function<std::shared_ptr<const ContentFilter>(const std::string& endpoint,
                                                     const std::string& deployment)>
      remote_filter;
};

// One desired deployment, as the scheduler states it.
struct DeploymentSpec {
  std::string id;      // dep-…
  std::string tenant;  // owner
  std::string model;   // the model name answers report
  std::string base_model;        // folder under models_dir
  std::string adapter_artifact;  // empty: the base itself
  FilterPolicy filter;           // pii/blocklist defaults come from ReplicaOptions
  std::string classifier_endpoint;  // a remote ContentFilterService, besides the built-in one
  // A classification deployment of the same tenant, run in-process as the
  // classifier (when this replica serves it), and its labels' categories.
  std::string classifier_deployment;
  std::map<std::string, FilterCategory> classifier_labels;
  // The policy's on_classifier_error; unset: ReplicaOptions' default.
  std::optional<bool> classifier_fail_open;
};

// Usage served for a deployment since the replica started: chats that
// reached the engine (prompt and completion tokens, a cancelled one's tokens
// too) and classifications (their tokens as prompt tokens).
struct DeploymentUsage {
  int64_t requests = 0;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

struct DeploymentStatus {
  std::string id;
  bool ready = false;
  std::string error;
  DeploymentUsage usage;  // filled by Statuses()
};

struct DeploymentInfo {
  std::string id, tenant, model;
  bool ready = false;
  std::string error;
  std::string task;  // "classification" for a classification model; else empty (chat)
};

struct ChatMessageIn {
  std::string role, content;
  std::vector<text::ToolCall> tool_calls;
  std::string tool_call_id;
};

struct ChatRequest {
  std::string deployment;
  std::vector<ChatMessageIn> messages;
  std::optional<double> temperature, top_p;
  std::optional<int64_t> max_tokens;  // deprecated alias of max_completion_tokens
  std::optional<int64_t> max_completion_tokens;
  std::vector<std::string> stop;
  std::optional<int64_t> seed;
  int n = 0;
  bool logprobs = false;
  std::optional<int64_t> top_logprobs;
  std::optional<double> frequency_penalty, presence_penalty;
  std::string user;  // logged only
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
};

enum class ChatFinish { kStop, kLength, kContentFilter };

// One generated token's log-probability, with its text (OpenAI's shape).
struct ChatLogprob {
  struct Alternative {
    std::string token;  // the token's text decoded alone
    std::string bytes;  // its bytes (a byte-fallback token: that byte)
    double logprob = 0;
  };
  Alternative chosen;
  std::vector<Alternative> top;  // most likely first
};

struct ChatResult {
  absl::Status status;  // not OK: cancelled, deadline, engine failure
  ChatFinish finish = ChatFinish::kStop;
  std::string text;  // everything released (a blocked answer: what passed before the block)
  std::vector<ChatLogprob> logprobs;  // of the released text's tokens, when asked
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  FilterVerdict completion_verdict;
  double queue_seconds = 0, ttft_seconds = 0, total_seconds = 0;
  double filter_seconds = 0;  // time spent in the completion's filters
};

// Receives a chat's output on the engine thread: must not block.
class ChatSink {
 public:
  virtual ~ChatSink() = default;
  // Whole UTF-8 characters, already filtered, and (when the request asked)
  // the log-probabilities of the tokens whose text it completes: a token's
  // logprobs are released with its text, never before (they name it).
  virtual void OnDelta(std::string text, std::vector<ChatLogprob> logprobs) = 0;
  virtual void OnDone(ChatResult result) = 0;  // exactly once, last
};

// A running chat; Cancel is thread-safe and idempotent.
class ChatCall {
 public:
  virtual ~ChatCall() = default;
  virtual void Cancel() = 0;
};

struct ChatStart {
  std::shared_ptr<ChatCall> call;  // null when the prompt was blocked
  FilterVerdict prompt_verdict;
  int64_t prompt_tokens = 0;
  std::string model;
  std::string system_fingerprint;
};

class Replica {
 public:
  static absl::StatusOr<std::unique_ptr<Replica>> Create(ReplicaOptions options);
  ~Replica();

  // Reconciles toward `desired`: loads the bases it names that are not held
  // (and drops the ones nothing needs any more), checks each adapter's
  // contract and loads it, forgets deployments not listed. Returns each
  // deployment's status (a failure names its reason).
  std::vector<DeploymentStatus> Apply(const std::vector<DeploymentSpec>& desired);
  // Whether every base of the last Apply is loaded (false before the first).
  bool BasesLoaded() const;

  // NOT_FOUND when the replica does not have it.
  absl::StatusOr<DeploymentInfo> Lookup(const std::string& deployment) const;

  // The deployments of the last Apply with their status and usage (the
  // usage is cumulative since this Replica was created, per deployment id).
  std::vector<DeploymentStatus> Statuses() const;

  // Classifies `text` with a classification deployment: the text rendered
  // as the trainer rendered its examples (one user message through the chat
  // template, the start cut when it exceeds the context), one forward, the
  // label probabilities. `tenant` non-empty: the caller's (another tenant's
  // deployment is NOT_FOUND). NOT_FOUND for a deployment not served here;
  // FAILED_PRECONDITION when it is not ready or not a classification model
  // (naming its task). Runs on the caller's thread (any thread, the engine
  // thread included).
  absl::StatusOr<LabelScores> Classify(const std::string& deployment, absl::string_view text,
                                       const std::string& tenant = "") const;

  // Starts a chat: NOT_FOUND for an unknown deployment; FAILED_PRECONDITION
  // when it is not ready; INVALID_ARGUMENT naming the field (messages,
  // temperature, top_p, max_completion_tokens / max_tokens, stop, n,
  // top_logprobs, frequency_penalty, presence_penalty, user; a prompt over
  // the context with both sizes; tool calls under a chat template that
  // cannot render them, with reason TOOLS_UNSUPPORTED; a blocked prompt,
  // with `prompt_verdict` set); FAILED_PRECONDITION naming the deployment
  // and its task for a classification deployment. May block on
  // an adapter load: call it from a worker thread.
  absl::StatusOr<ChatStart> StartChat(const ChatRequest& request, std::shared_ptr<ChatSink> sink,
                                      FilterVerdict* prompt_verdict);

  // Engine and adapter-cache figures per base model id.
  struct BaseStats {
    std::string base;
    EngineStats engine;
    AdapterCacheStats adapters;
  };
  std::vector<BaseStats> Stats() const;

 private:
  struct Base;
  struct Deployment;
  struct Usage;
  struct ClassifierEntry;
  struct ClassifierRegistry;
  explicit Replica(ReplicaOptions options) : options_(std::move(options)) {}
  absl::StatusOr<std::shared_ptr<Base>> LoadBase(const std::string& id) const;

  const ReplicaOptions options_;
  std::shared_ptr<const ContentFilter> filter_;  // the built-in one
  std::mutex apply_mu_;  // one Apply at a time
  std::string build_id_;
  // An adapter directory's stat identity -> its content identity (guarded by apply_mu_).
  std::map<std::string, std::string> adapter_ids_;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<Base>> bases_;              // guarded by mu_
  std::map<std::string, std::shared_ptr<Deployment>> deployments_;  // guarded by mu_
  bool bases_loaded_ = false;                                       // guarded by mu_
  // Per deployment id, never dropped (cumulative).
  std::map<std::string, std::shared_ptr<Usage>> usage_;  // guarded by mu_
  // What in-process classifier filters look up (they may outlive an Apply).
  std::shared_ptr<ClassifierRegistry> classifiers_;
};

}  // namespace tunefleet::serving
