#include "services/serving/replica.h"

#include <algorithm>
#include <spdlog/spdlog.h>

#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/base/sha256.h"
#include "common/errors/error_details.h"
#include "common/model/sequence.h"
#include "common/text/tokenizer.h"

namespace tunefleet::serving {

using Clock = std::chrono::steady_clock;

struct Replica::Base {
  std::string id;
  std::shared_ptr<const text::ChatTokenizer> tokenizer;
  std::unique_ptr<AdapterCache> adapters;
  std::unique_ptr<Engine> engine;
  BaseIdentity identity;
  ~Base() {
    engine.reset();  // ends running requests before the tokenizer goes
  }
};

struct Replica::Deployment {
  DeploymentSpec spec;
  std::shared_ptr<Base> base;
  bool ready = false;
  std::string error;
  GenerationDefaults defaults;
  FilterPolicy policy;
  std::shared_ptr<const ContentFilter> filter;
  std::string fingerprint;
};

namespace {

const char* FormatName(text::ChatFormat f) {
  switch (f) {
    case text::ChatFormat::kPhi3: return "phi3";
    case text::ChatFormat::kLlama3: return "llama3";
    case text::ChatFormat::kChatML: return "chatml";
    case text::ChatFormat::kQwen3: return "qwen3";
  }
  return "";
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot be read"));
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

// One chat's passage through the engine: tokens to text (whole
// characters), stop strings, the content filter's hold-back, the result.
class ChatCallImpl final : public ChatCall, public std::enable_shared_from_this<ChatCallImpl> {
 public:
  ChatCallImpl(std::shared_ptr<const void> keep_alive, const text::Tokenizer* tokenizer,
               std::shared_ptr<const ContentFilter> filter, FilterPolicy policy, size_t holdback,
               std::vector<std::string> stops, std::shared_ptr<ChatSink> sink, int64_t prompt_tokens)
      : keep_alive_(std::move(keep_alive)),
        filter_(std::move(filter)),
        decoder_(tokenizer, /*skip_special_tokens=*/true),
        policy_(std::move(policy)),
        guard_(filter_.get(), &policy_, holdback),
        stops_(std::move(stops)),
        sink_(std::move(sink)) {
    result_.prompt_tokens = prompt_tokens;
  }

  void Cancel() override {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
    if (handle_) handle_->Cancel();
  }
  void SetHandle(std::shared_ptr<RequestHandle> h) {
    std::lock_guard<std::mutex> lock(mu_);
    handle_ = std::move(h);
    if (cancelled_ || stopped_) handle_->Cancel();
  }

  // Engine thread from here on.
  void OnToken(int64_t token) {
    if (stopped_) return;
    Feed(decoder_.Push(static_cast<int32_t>(token)));
  }

  void OnDone(const Completion& c) {
    result_.completion_tokens = static_cast<int64_t>(c.tokens.size());
    result_.queue_seconds = c.queue_seconds;
    result_.ttft_seconds = c.ttft_seconds;
    result_.total_seconds = c.total_seconds;
    const bool natural = c.finish == EngineFinish::kStop || c.finish == EngineFinish::kLength;
    if (!stopped_ && natural) {
      result_.finish = c.finish == EngineFinish::kStop ? ChatFinish::kStop : ChatFinish::kLength;
      Feed(decoder_.Flush());
      if (!stopped_) ToGuard(stops_.Flush());
    } else if (!stopped_) {
      result_.status = c.status.ok() ? absl::InternalError("generation ended early") : c.status;
    }
    if (result_.status.ok() && result_.finish != ChatFinish::kContentFilter) {
      const Clock::time_point t = Clock::now();
      auto rest = guard_.Finish();
      result_.filter_seconds += std::chrono::duration<double>(Clock::now() - t).count();
      if (!rest.ok()) {
        result_.status = rest.status();
      } else if (guard_.blocked()) {
        result_.finish = ChatFinish::kContentFilter;
      } else {
        Release(*std::move(rest));
      }
    }
    result_.completion_verdict = guard_.verdict();
    std::shared_ptr<ChatSink> sink = std::move(sink_);
    sink->OnDone(std::move(result_));
  }

 private:
  void Feed(std::string piece) {
    if (stopped_) return;
    // The model library's incremental matcher: a stop string split across
    // tokens is found, and no part of one is ever released.
    model::StopMatcher::Step step = stops_.Feed(piece);
    ToGuard(std::move(step.release));
    if (step.stop && !stopped_) Stop(ChatFinish::kStop);
  }

  void ToGuard(std::string text) {
    if (text.empty() || stopped_) return;
    const Clock::time_point t = Clock::now();
    auto out = guard_.Push(text);
    result_.filter_seconds += std::chrono::duration<double>(Clock::now() - t).count();
    if (!out.ok()) {
      result_.status = out.status();
      Stop(ChatFinish::kStop);
      return;
    }
    if (guard_.blocked()) {
      Stop(ChatFinish::kContentFilter);
      return;
    }
    Release(*std::move(out));
  }

  void Release(std::string text) {
    if (text.empty()) return;
    result_.text += text;
    sink_->OnDelta(std::move(text));
  }

  void Stop(ChatFinish finish) {
    result_.finish = finish;
    std::lock_guard<std::mutex> lock(mu_);
    stopped_ = true;
    if (handle_) handle_->Cancel();
  }

  std::shared_ptr<const void> keep_alive_;  // the tokenizer
  std::shared_ptr<const ContentFilter> filter_;
  text::StreamDecoder decoder_;
  FilterPolicy policy_;
  StreamGuard guard_;
  model::StopMatcher stops_;  // holds decoded text not yet given to the guard
  std::shared_ptr<ChatSink> sink_;
  ChatResult result_;
  std::mutex mu_;
  std::shared_ptr<RequestHandle> handle_;  // guarded by mu_
  bool cancelled_ = false;                 // guarded by mu_
  std::atomic<bool> stopped_{false};
};

}  // namespace

absl::StatusOr<std::unique_ptr<Replica>> Replica::Create(ReplicaOptions options) {
  std::unique_ptr<Replica> r(new Replica(std::move(options)));
  auto filter = BuiltinFilter::Create(r->options_.builtin_filter);
  if (!filter.ok()) return filter.status();
  r->filter_ = std::shared_ptr<const ContentFilter>(*std::move(filter));
  return r;
}

Replica::~Replica() = default;

absl::StatusOr<std::shared_ptr<Replica::Base>> Replica::LoadBase(const std::string& id) const {
  if (id.empty() || id.find('/') != std::string::npos || id == "." || id == "..") {
    return absl::InvalidArgumentError(
        absl::StrCat("base_model_artifact \"", id, "\" must be a folder name under the models directory"));
  }
  const std::string dir = absl::StrCat(options_.models_dir, "/", id);
  auto base = std::make_shared<Base>();
  base->id = id;
  auto decoder = model::Decoder::Load(dir, options_.decoder);
  if (!decoder.ok()) return decoder.status();
  auto tokenizer = text::ChatTokenizer::Load(dir);
  if (!tokenizer.ok()) return tokenizer.status();
  base->tokenizer = std::make_shared<const text::ChatTokenizer>(*std::move(tokenizer));
  auto tokenizer_json = ReadFile(dir + "/tokenizer.json");
  if (!tokenizer_json.ok()) return tokenizer_json.status();
  base->identity.model_id = id;
  base->identity.tokenizer_sha256 = Sha256Hex(*tokenizer_json);
  base->identity.chat_template = FormatName(base->tokenizer->chat_template().format());
  for (int32_t s : base->tokenizer->StopIds()) base->identity.stop_token_ids.push_back(s);
  // The model's own end-of-sequence ids (config.json's eos_token_id, e.g.
  // Phi-3's <|assistant|>) stop generation too: the same set the trainer
  // writes into an adapter's contract.
  for (int64_t id : decoder->config().eos_token_ids) {
    auto& stops = base->identity.stop_token_ids;
    if (std::find(stops.begin(), stops.end(), id) == stops.end()) stops.push_back(id);
  }
  AdapterCacheOptions ao;
  ao.artifacts_dir = options_.artifacts_dir;
  ao.budget_bytes = options_.adapter_budget_bytes;
  ao.base = base->identity;
  base->adapters = std::make_unique<AdapterCache>(decoder->config(), options_.decoder.device, ao);
  auto engine = Engine::Create(*std::move(decoder), options_.engine);
  if (!engine.ok()) return engine.status();
  base->engine = *std::move(engine);
  return base;
}

std::vector<DeploymentStatus> Replica::Apply(const std::vector<DeploymentSpec>& desired) {
  std::lock_guard<std::mutex> apply_lock(apply_mu_);
  std::map<std::string, std::shared_ptr<Base>> bases;
  {
    std::lock_guard<std::mutex> lock(mu_);
    bases = bases_;
  }
  std::map<std::string, std::shared_ptr<Base>> next_bases;
  std::map<std::string, std::string> base_errors;
  for (const DeploymentSpec& d : desired) {
    if (next_bases.count(d.base_model) || base_errors.count(d.base_model)) continue;
    auto it = bases.find(d.base_model);
    if (it != bases.end()) {
      next_bases[d.base_model] = it->second;
      continue;
    }
    const Clock::time_point t = Clock::now();
    auto loaded = LoadBase(d.base_model);
    if (!loaded.ok()) {
      spdlog::error("base={} load failed: {}", d.base_model, loaded.status().ToString());
      base_errors[d.base_model] = std::string(loaded.status().message());
      continue;
    }
    spdlog::info("base={} loaded in {:.2f}s", d.base_model,
                 std::chrono::duration<double>(Clock::now() - t).count());
    next_bases[d.base_model] = *loaded;
  }
  std::map<std::string, std::shared_ptr<Deployment>> next;
  std::vector<DeploymentStatus> statuses;
  for (const DeploymentSpec& spec : desired) {
    auto d = std::make_shared<Deployment>();
    d->spec = spec;
    d->policy = spec.filter;
    d->policy.pii_prompt = options_.pii_prompt;
    d->policy.pii_completion = options_.pii_completion;
    d->policy.blocklist = options_.blocklist;
    d->policy.classifier_fail_open =
        spec.classifier_fail_open.value_or(options_.classifier_fail_open);
    // The built-in filter, the policy's own blocklists, the external classifier.
    std::vector<std::shared_ptr<const ContentFilter>> filters{filter_};
    if (!spec.filter.blocklists.empty() && !spec.filter.disabled) {
      BuiltinFilterOptions lists;
      lists.pii = false;
      lists.profanity = false;
      lists.blocklists = spec.filter.blocklists;
      auto compiled = BuiltinFilter::Create(lists);
      if (compiled.ok()) {
        filters.push_back(std::shared_ptr<const ContentFilter>(*std::move(compiled)));
      } else {
        d->error = absl::StrCat("content_filter.", compiled.status().message());
      }
    }
    if (!spec.classifier_endpoint.empty()) {
      if (options_.remote_filter) {
        filters.push_back(options_.remote_filter(spec.classifier_endpoint, spec.id));
      } else {
        d->error = "the policy names a classifier endpoint but this replica has no remote filters";
      }
    }
    d->filter = filter_;
    if (filters.size() > 1) d->filter = std::make_shared<CombinedFilter>(std::move(filters));
    if (!d->error.empty()) {
      // refused above
    } else if (auto e = base_errors.find(spec.base_model); e != base_errors.end()) {
      d->error = absl::StrCat("base model ", spec.base_model, ": ", e->second);
    } else {
      d->base = next_bases[spec.base_model];
      d->ready = true;
      if (!spec.adapter_artifact.empty()) {
        // Checks the contract and warms the cache; not pinned (it may be
        // evicted and comes back on the next request).
        auto adapter = d->base->adapters->Acquire(spec.adapter_artifact);
        if (!adapter.ok()) {
          d->ready = false;
          d->error = std::string(adapter.status().message());
        } else {
          for (const std::string& w : (*adapter)->warnings) spdlog::warn("deployment={} {}", spec.id, w);
          if ((*adapter)->contract) d->defaults = (*adapter)->contract->generation;
        }
      }
      d->fingerprint = absl::StrCat(
          "fp_", Sha256Hex(absl::StrCat(spec.base_model, "\n", d->base->identity.tokenizer_sha256,
                                        "\n", spec.adapter_artifact))
                     .substr(0, 12));
    }
    if (!d->ready) spdlog::error("deployment={} not ready: {}", spec.id, d->error);
    statuses.push_back(DeploymentStatus{spec.id, d->ready, d->error});
    next[spec.id] = std::move(d);
  }
  std::map<std::string, std::shared_ptr<Deployment>> old;
  {
    std::lock_guard<std::mutex> lock(mu_);
    old.swap(deployments_);
    deployments_ = next;
    bases_ = next_bases;
    bases_loaded_ = base_errors.empty();
  }
  // Hot unload: adapters no deployment names any more leave their cache
  // (requests still running keep theirs until they finish).
  std::set<std::pair<std::string, std::string>> still;
  for (const auto& [id, d] : next) still.insert({d->spec.base_model, d->spec.adapter_artifact});
  for (const auto& [id, d] : old) {
    if (d->base && !d->spec.adapter_artifact.empty() &&
        !still.count({d->spec.base_model, d->spec.adapter_artifact})) {
      d->base->adapters->Unload(d->spec.adapter_artifact);
    }
  }
  return statuses;
}

bool Replica::BasesLoaded() const {
  std::lock_guard<std::mutex> lock(mu_);
  return bases_loaded_;
}

absl::StatusOr<DeploymentInfo> Replica::Lookup(const std::string& deployment) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = deployments_.find(deployment);
  if (it == deployments_.end()) {
    return absl::NotFoundError(absl::StrCat("deployment ", deployment, " not found"));
  }
  const Deployment& d = *it->second;
  return DeploymentInfo{d.spec.id, d.spec.tenant, d.spec.model, d.ready, d.error};
}

std::vector<Replica::BaseStats> Replica::Stats() const {
  std::map<std::string, std::shared_ptr<Base>> bases;
  {
    std::lock_guard<std::mutex> lock(mu_);
    bases = bases_;
  }
  std::vector<BaseStats> out;
  for (const auto& [id, b] : bases) out.push_back(BaseStats{id, b->engine->stats(), b->adapters->stats()});
  return out;
}

absl::StatusOr<ChatStart> Replica::StartChat(const ChatRequest& request,
                                             std::shared_ptr<ChatSink> sink,
                                             FilterVerdict* prompt_verdict) {
  if (request.deployment.empty()) return errors::FieldError("deployment", "must not be empty");
  std::shared_ptr<Deployment> d;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = deployments_.find(request.deployment);
    if (it == deployments_.end()) {
      return absl::NotFoundError(absl::StrCat("deployment ", request.deployment, " not found"));
    }
    d = it->second;
  }
  if (!d->ready) {
    return absl::FailedPreconditionError(absl::StrCat("deployment ", d->spec.id, " is not ready: ",
                                                      d->error.empty() ? "loading" : d->error));
  }
  // Fields, in the order of the request message.
  if (request.messages.empty()) return errors::FieldError("messages", "must not be empty");
  const double temperature = request.temperature.value_or(d->defaults.temperature.value_or(1.0));
  if (!(temperature >= 0 && temperature <= 2)) {
    return errors::FieldError("temperature", absl::StrCat("must be in [0, 2], got ", temperature));
  }
  const double top_p = request.top_p.value_or(d->defaults.top_p.value_or(1.0));
  if (!(top_p > 0 && top_p <= 1)) {
    return errors::FieldError("top_p", absl::StrCat("must be in (0, 1], got ", top_p));
  }
  if (request.max_tokens && *request.max_tokens < 1) {
    return errors::FieldError(
        "max_tokens", absl::StrCat("must be at least 1, got ", *request.max_tokens));
  }
  if (request.stop.size() > 4) {
    return errors::FieldError(
        "stop", absl::StrCat("at most 4 stop strings, got ", request.stop.size()));
  }
  for (size_t i = 0; i < request.stop.size(); ++i) {
    if (request.stop[i].empty()) return errors::FieldError(absl::StrCat("stop[", i, "]"), "must not be empty");
  }
  if (request.n > 1) {
    return errors::FieldError(
        "n", absl::StrCat("one choice per request is supported, got ", request.n));
  }
  Base& base = *d->base;
  std::vector<text::ChatMessage> messages;
  std::string prompt_text;
  for (const ChatMessageIn& m : request.messages) {
    messages.push_back(text::ChatMessage{m.role, m.content, std::nullopt});
    absl::StrAppend(&prompt_text, prompt_text.empty() ? "" : "\n", m.content);
  }
  auto ids = base.tokenizer->EncodePrompt(messages);
  if (!ids.ok()) return ids.status();
  const int64_t prompt_tokens = static_cast<int64_t>(ids->size());
  const int64_t context = base.engine->context_size();
  if (prompt_tokens >= context) {
    return errors::FieldError("messages", absl::StrCat(
        "the prompt has ", prompt_tokens, " tokens; the model's context holds ", context,
        " tokens (prompt and completion together)"));
  }
  int64_t max_tokens = request.max_tokens.value_or(d->defaults.max_tokens.value_or(0));
  if (request.max_tokens && prompt_tokens + *request.max_tokens > context) {
    return errors::FieldError("max_tokens", absl::StrCat(
        *request.max_tokens, " completion tokens after a prompt of ", prompt_tokens,
        " tokens exceed the model's context of ", context, " tokens"));
  }
  max_tokens = std::min(max_tokens, context - prompt_tokens);
  // The prompt's filters, before any model call.
  auto detections = d->filter->Classify(prompt_text, TextSource::kPrompt);
  if (!detections.ok()) return detections.status();
  *prompt_verdict = ApplyPolicy(d->policy, TextSource::kPrompt, *detections);
  ChatStart start;
  start.prompt_verdict = *prompt_verdict;
  start.prompt_tokens = prompt_tokens;
  start.model = d->spec.model;
  start.system_fingerprint = d->fingerprint;
  if (prompt_verdict->blocked) {
    std::vector<std::string> why;
    for (const auto& c : prompt_verdict->categories) {
      if (c.filtered) why.push_back(absl::StrCat("category ", static_cast<int>(c.category)));
    }
    for (const auto& f : prompt_verdict->findings) {
      if (!f.filtered) continue;
      if (!f.list.empty()) {
        why.push_back(absl::StrCat("blocklist ", f.list, ": ", f.kind));
      } else if (!f.error.empty()) {
        why.push_back(absl::StrCat("classifier error (", f.error, ")"));
      } else {
        why.push_back(absl::StrCat(f.filter, " ", f.kind));
      }
    }
    return errors::WithReason(
        errors::FieldError("messages", absl::StrCat("the prompt was blocked by deployment ",
                                                    d->spec.id, "'s content filter (",
                                                    absl::StrJoin(why, ", "), ")")),
        "PROMPT_BLOCKED", {{"deployment", d->spec.id}});
  }
  EngineRequest er;
  if (!d->spec.adapter_artifact.empty()) {
    auto adapter = base.adapters->Acquire(d->spec.adapter_artifact);
    if (!adapter.ok()) return adapter.status();
    er.adapter = *std::move(adapter);
  }
  er.prompt.assign(ids->begin(), ids->end());
  er.sampling.temperature = temperature;
  er.sampling.top_p = top_p;
  er.sampling.max_tokens = max_tokens;
  er.sampling.seed = request.seed ? static_cast<uint64_t>(*request.seed) : std::random_device{}();
  er.sampling.stop_token_ids = base.identity.stop_token_ids;
  er.deadline = request.deadline;
  // The call keeps the tokenizer, never the base: the engine's last request
  // must not be what destroys the engine (from its own thread).
  auto call = std::make_shared<ChatCallImpl>(base.tokenizer, &base.tokenizer->tokenizer(), d->filter,
                                             d->policy, options_.holdback_bytes, request.stop,
                                             std::move(sink), prompt_tokens);
  er.on_token = [call](int64_t t) { call->OnToken(t); };
  er.on_done = [call](const Completion& c) { call->OnDone(c); };
  auto handle = base.engine->Submit(std::move(er));
  if (!handle.ok()) return handle.status();
  call->SetHandle(*handle);
  start.call = call;
  return start;
}

}  // namespace tunefleet::serving
