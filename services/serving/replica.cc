#include "services/serving/replica.h"

#include <algorithm>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/base/sha256.h"
#include "common/errors/error_details.h"
#include "common/model/allocator.h"
#include "common/model/sequence.h"
#include "common/text/tokenizer.h"
#include "services/serving/chat_request.h"

namespace tunefleet::serving {

using Clock = std::chrono::steady_clock;

struct Replica::Base {
  std::string id;
  // A copy of the engine's decoder (the same weights, shared) for
  // classification forwards, which need no engine.
  std::shared_ptr<const model::Decoder> decoder;
  std::shared_ptr<const text::ChatTokenizer> tokenizer;
  std::unique_ptr<AdapterCache> adapters;
  std::unique_ptr<Engine> engine;
  BaseIdentity identity;
  std::string weights_id;  // WeightsIdentity of its safetensors files
  ~Base() {
    engine.reset();  // ends running requests before the tokenizer goes
  }
};

struct Replica::Usage {
  std::atomic<int64_t> requests{0}, prompt_tokens{0}, completion_tokens{0};
  void Add(int64_t prompt, int64_t completion) {
    requests.fetch_add(1, std::memory_order_relaxed);
    prompt_tokens.fetch_add(prompt, std::memory_order_relaxed);
    completion_tokens.fetch_add(completion, std::memory_order_relaxed);
  }
};

// What a classification needs of a deployment, without its Base (a filter
// may run on an engine thread, which must never hold the last reference to
// a Base).
struct Replica::ClassifierEntry {
  std::string id, tenant, error;
  bool ready = false;
  std::string task;  // "classification" or "" (chat)
  std::shared_ptr<const model::Decoder> decoder;
  std::shared_ptr<const text::ChatTokenizer> tokenizer;
  std::shared_ptr<const ServedAdapter> adapter;  // pinned while the deployment exists
  int64_t context = 0;
  std::shared_ptr<Usage> usage;
};

struct Replica::ClassifierRegistry {
  std::mutex mu;
  std::map<std::string, std::shared_ptr<const ClassifierEntry>> entries;  // guarded by mu

  // `tenant`: the caller's, checked when set.
  absl::StatusOr<LabelScores> Classify(const std::string& deployment, absl::string_view text,
                                       const std::optional<std::string>& tenant) {
    std::shared_ptr<const ClassifierEntry> e;
    {
      std::lock_guard<std::mutex> lock(mu);
      auto it = entries.find(deployment);
      if (it != entries.end()) e = it->second;
    }
    if (!e || (tenant && e->tenant != *tenant)) {
      return absl::NotFoundError(absl::StrCat("deployment ", deployment,
                                              " is not served by this replica"));
    }
    if (!e->ready) {
      return absl::FailedPreconditionError(absl::StrCat(
          "deployment ", deployment, " is not ready: ", e->error.empty() ? "loading" : e->error));
    }
    if (e->task != "classification") {
      return absl::FailedPreconditionError(absl::StrCat(
          "deployment ", deployment, " is not a classification model (task ",
          e->task.empty() ? "chat" : e->task, ")"));
    }
    // As the dataset service renders a classification example
    // (services/dataset/shards.cc): the text as one user message through the
    // chat template, no generation prompt; too long: the end is kept (the
    // head reads the last token).
    const std::vector<text::ChatMessage> messages = {{"user", std::string(text), std::nullopt, {}, {}}};
    auto chat = e->tokenizer->Tokenize(messages);
    if (!chat.ok()) return chat.status();
    std::vector<int64_t> ids(chat->ids.begin(), chat->ids.end());
    if (static_cast<int64_t>(ids.size()) > e->context) ids.erase(ids.begin(), ids.end() - e->context);
    auto probs = ClassifyTokens(*e->decoder, *e->adapter, ids);
    if (!probs.ok()) return probs.status();
    e->usage->Add(static_cast<int64_t>(ids.size()), 0);
    LabelScores out;
    out.labels = e->adapter->labels;
    out.probabilities = *std::move(probs);
    out.prompt_tokens = static_cast<int64_t>(ids.size());
    return out;
  }
};

struct Replica::Deployment {
  DeploymentSpec spec;
  std::shared_ptr<Base> base;
  bool ready = false;
  std::string error;
  std::string task;  // "classification" for a classification adapter
  std::shared_ptr<const ServedAdapter> classifier;  // then: its adapter, pinned
  std::shared_ptr<Usage> usage;
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

// A token's text for its logprobs entry: decoded alone; a byte-fallback
// token ("<0xE6>") has that one byte.
ChatLogprob::Alternative TokenText(const text::Tokenizer& tokenizer, int64_t id, double logprob) {
  ChatLogprob::Alternative out;
  out.logprob = logprob;
  out.token = tokenizer.Decode({static_cast<int32_t>(id)});
  const std::string piece = tokenizer.IdToToken(static_cast<int32_t>(id));
  unsigned byte = 0;
  if (piece.size() == 6 && piece.compare(0, 3, "<0x") == 0 && piece[5] == '>' &&
      std::sscanf(piece.c_str() + 3, "%2x", &byte) == 1) {
    out.bytes = std::string(1, static_cast<char>(byte));
  } else {
    out.bytes = out.token;
  }
  return out;
}

// One chat's passage through the engine. The engine's model::Sequence turns
// tokens into text (whole characters) and applies the stop strings; here
// the text passes the content filter's hold-back window and is released,
// each token's logprobs with the text that completes it.
class ChatCallImpl final : public ChatCall, public std::enable_shared_from_this<ChatCallImpl> {
 public:
  ChatCallImpl(std::shared_ptr<const text::ChatTokenizer> tokenizer,
               std::shared_ptr<const ContentFilter> filter, FilterPolicy policy, size_t holdback,
               std::shared_ptr<ChatSink> sink, int64_t prompt_tokens, bool logprobs,
               std::function<void(int64_t prompt, int64_t completion)> count)
      : tokenizer_(std::move(tokenizer)),
        filter_(std::move(filter)),
        policy_(std::move(policy)),
        guard_(filter_.get(), &policy_, holdback),
        sink_(std::move(sink)),
        logprobs_(logprobs),
        count_(std::move(count)) {
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
  void OnText(const std::string& text, const model::Sequence& seq) {
    if (stopped_) return;
    if (logprobs_) Sync(seq.logprobs(), [&](size_t i) { return seq.text_end(i); });
    ToGuard(text);
  }

  void OnDone(const Completion& c) {
    result_.completion_tokens = static_cast<int64_t>(c.tokens.size());
    if (count_) count_(result_.prompt_tokens, result_.completion_tokens);
    result_.queue_seconds = c.queue_seconds;
    result_.ttft_seconds = c.ttft_seconds;
    result_.total_seconds = c.total_seconds;
    const bool natural = c.finish == EngineFinish::kStop || c.finish == EngineFinish::kLength;
    if (!stopped_ && natural) {
      result_.finish = c.finish == EngineFinish::kStop ? ChatFinish::kStop : ChatFinish::kLength;
      if (logprobs_) Sync(c.logprobs, [&](size_t i) { return c.text_ends[i]; });
      // What the sequence released at its end (the tail it held back).
      if (c.text.size() > fed_) ToGuard(c.text.substr(fed_));
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
  // New logprobs entries, and the text ends of those not yet released.
  template <typename EndFn>
  void Sync(const std::vector<model::TokenLogprob>& lps, EndFn end) {
    for (size_t i = lp_.size(); i < lps.size(); ++i) {
      lp_.push_back(lps[i]);
      ends_.push_back(model::Sequence::kTextPending);
    }
    for (size_t i = next_lp_; i < ends_.size(); ++i) ends_[i] = end(i);
  }

  void ToGuard(std::string text) {
    if (text.empty() || stopped_) return;
    fed_ += text.size();
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
    released_ += text.size();
    std::vector<ChatLogprob> lps;
    while (next_lp_ < lp_.size() && ends_[next_lp_] != model::Sequence::kTextPending &&
           ends_[next_lp_] <= released_) {
      const model::TokenLogprob& t = lp_[next_lp_++];
      const text::Tokenizer& tok = tokenizer_->tokenizer();
      ChatLogprob out;
      out.chosen = TokenText(tok, t.token, t.logprob);
      for (const auto& [id, lp] : t.top) out.top.push_back(TokenText(tok, id, lp));
      lps.push_back(out);
    }
    result_.text += text;
    result_.logprobs.insert(result_.logprobs.end(), lps.begin(), lps.end());
    sink_->OnDelta(std::move(text), std::move(lps));
  }

  void Stop(ChatFinish finish) {
    result_.finish = finish;
    std::lock_guard<std::mutex> lock(mu_);
    stopped_ = true;
    if (handle_) handle_->Cancel();
  }

  std::shared_ptr<const text::ChatTokenizer> tokenizer_;
  std::shared_ptr<const ContentFilter> filter_;
  FilterPolicy policy_;
  StreamGuard guard_;
  std::shared_ptr<ChatSink> sink_;
  const bool logprobs_;
  const std::function<void(int64_t, int64_t)> count_;
  ChatResult result_;
  size_t fed_ = 0;       // bytes of the sequence's text given to the guard
  size_t released_ = 0;  // bytes the guard released
  std::vector<model::TokenLogprob> lp_;
  std::vector<size_t> ends_;  // where each token's text ends (sequence text coordinates)
  size_t next_lp_ = 0;        // lp_[..next_lp_) are released
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
  r->build_id_ = r->options_.build_id.empty() ? BuildIdentity() : r->options_.build_id;
  r->classifiers_ = std::make_shared<ClassifierRegistry>();
  return r;
}

Replica::~Replica() {
  // Filters that outlive the replica (in a chat still finishing) find no
  // classifier any more.
  std::lock_guard<std::mutex> lock(classifiers_->mu);
  classifiers_->entries.clear();
}

absl::StatusOr<std::shared_ptr<Replica::Base>> Replica::LoadBase(const std::string& id) const {
  if (id.empty() || id.find('/') != std::string::npos || id == "." || id == "..") {
    return absl::InvalidArgumentError(
        absl::StrCat("base_model_artifact \"", id, "\" must be a folder name under the models directory"));
  }
  const std::string dir = absl::StrCat(options_.models_dir, "/", id);
  auto base = std::make_shared<Base>();
  base->id = id;
  // The engine's thread alone keeps a team of ATen workers (allocator.h).
  absl::Cleanup release_team = [] { model::ReleaseThreadTeam(); };
  auto decoder = model::Decoder::Load(dir, options_.decoder);
  if (!decoder.ok()) return decoder.status();
  auto tokenizer = text::ChatTokenizer::Load(dir);
  if (!tokenizer.ok()) return tokenizer.status();
  base->tokenizer = std::make_shared<const text::ChatTokenizer>(*std::move(tokenizer));
  auto tokenizer_json = ReadFile(dir + "/tokenizer.json");
  if (!tokenizer_json.ok()) return tokenizer_json.status();
  base->identity.model_id = id;
  base->weights_id = WeightsIdentity(dir, /*content=*/false);
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
  base->decoder = std::make_shared<const model::Decoder>(*decoder);
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
    {
      std::lock_guard<std::mutex> lock(mu_);
      std::shared_ptr<Usage>& u = usage_[spec.id];
      if (!u) u = std::make_shared<Usage>();
      d->usage = u;
    }
    d->policy = spec.filter;
    d->policy.pii_prompt = options_.pii_prompt;
    d->policy.pii_completion = options_.pii_completion;
    d->policy.blocklist = options_.blocklist;
    d->policy.classifier_fail_open =
        spec.classifier_fail_open.value_or(options_.classifier_fail_open);
    // The built-in filter, the policy's own blocklists, the external classifier.
    std::vector<std::shared_ptr<const ContentFilter>> filters;
    filters.reserve(4);
    filters.push_back(filter_);
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
    if (!spec.classifier_deployment.empty() && !spec.filter.disabled) {
      if (!spec.classifier_endpoint.empty()) {
        d->error = "content_filter: classifier_endpoint and classifier_deployment are exclusive";
      } else {
        // Resolved at each call: the classifier may load later (or move).
        std::shared_ptr<ClassifierRegistry> registry = classifiers_;
        filters.push_back(std::make_shared<DeploymentClassifierFilter>(
            spec.classifier_deployment, spec.classifier_labels,
            [registry, dep = spec.classifier_deployment, tenant = spec.tenant](absl::string_view text) {
              return registry->Classify(dep, text, tenant);
            }));
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
          if ((*adapter)->classification()) {
            d->task = "classification";
            d->classifier = *adapter;
          }
        }
      }
      // What produced the answer: the base's weights and tokenizer, the
      // adapter's weights (their sha256, computed once per file version)
      // and the build.
      std::string adapter_id;
      if (!spec.adapter_artifact.empty()) {
        const std::string dir = absl::StrCat(options_.artifacts_dir, "/", spec.adapter_artifact);
        const std::string stat_id = absl::StrCat(dir, "\n", WeightsIdentity(dir, /*content=*/false));
        auto known = adapter_ids_.find(stat_id);
        if (known == adapter_ids_.end()) {
          known = adapter_ids_.emplace(stat_id, WeightsIdentity(dir, /*content=*/true)).first;
        }
        adapter_id = known->second;
      }
      d->fingerprint = absl::StrCat(
          "fp_", Sha256Hex(absl::StrCat(spec.base_model, "\n", d->base->weights_id, "\n",
                                        d->base->identity.tokenizer_sha256, "\n", adapter_id, "\n",
                                        build_id_))
                     .substr(0, 12));
    }
    if (!d->ready) spdlog::error("deployment={} not ready: {}", spec.id, d->error);
    statuses.push_back(DeploymentStatus{spec.id, d->ready, d->error});
    next[spec.id] = std::move(d);
  }
  std::map<std::string, std::shared_ptr<const ClassifierEntry>> entries;
  for (const auto& [id, d] : next) {
    auto e = std::make_shared<ClassifierEntry>();
    e->id = id;
    e->tenant = d->spec.tenant;
    e->ready = d->ready;
    e->error = d->error;
    e->task = d->task;
    e->adapter = d->classifier;
    e->usage = d->usage;
    if (d->base) {
      e->decoder = d->base->decoder;
      e->tokenizer = d->base->tokenizer;
      e->context = d->base->engine->context_size();
    }
    entries[id] = std::move(e);
  }
  {
    std::lock_guard<std::mutex> lock(classifiers_->mu);
    classifiers_->entries.swap(entries);
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
  return DeploymentInfo{d.spec.id, d.spec.tenant, d.spec.model, d.ready, d.error, d.task};
}

std::vector<DeploymentStatus> Replica::Statuses() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<DeploymentStatus> out;
  for (const auto& [id, d] : deployments_) {
    DeploymentStatus st{id, d->ready, d->error, {}};
    st.usage.requests = d->usage->requests.load(std::memory_order_relaxed);
    st.usage.prompt_tokens = d->usage->prompt_tokens.load(std::memory_order_relaxed);
    st.usage.completion_tokens = d->usage->completion_tokens.load(std::memory_order_relaxed);
    out.push_back(std::move(st));
  }
  return out;
}

absl::StatusOr<LabelScores> Replica::Classify(const std::string& deployment,
                                              absl::string_view text,
                                              const std::string& tenant) const {
  if (deployment.empty()) return errors::FieldError("deployment", "must not be empty");
  return classifiers_->Classify(deployment, text,
                               tenant.empty() ? std::nullopt : std::optional<std::string>(tenant));
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
  if (!d->task.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "deployment ", d->spec.id, " serves a ", d->task, " model (task ", d->task,
        "), not chat: call ContentFilterService.Classify with it, or name it as a "
        "content filter policy's classifier_deployment"));
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
  if (absl::Status s = CheckChatSamplingFields(request); !s.ok()) return s;
  std::string max_field;
  const std::optional<int64_t> requested_max = RequestedMaxTokens(request, &max_field);
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
  auto messages = TemplateMessages(request, base.tokenizer->chat_template(), base.id);
  if (!messages.ok()) return messages.status();
  std::string prompt_text;
  for (const ChatMessageIn& m : request.messages) {
    absl::StrAppend(&prompt_text, prompt_text.empty() ? "" : "\n", m.content);
    for (const text::ToolCall& c : m.tool_calls)
      absl::StrAppend(&prompt_text, "\n", c.name, " ", c.arguments);
  }
  if (!request.user.empty()) spdlog::info("chat deployment={} user={}", d->spec.id, request.user);
  auto ids = base.tokenizer->EncodePrompt(*messages);
  if (!ids.ok()) return ids.status();
  const int64_t prompt_tokens = static_cast<int64_t>(ids->size());
  const int64_t context = base.engine->context_size();
  if (prompt_tokens >= context) {
    return errors::FieldError("messages", absl::StrCat(
        "the prompt has ", prompt_tokens, " tokens; the model's context holds ", context,
        " tokens (prompt and completion together)"));
  }
  int64_t max_tokens = requested_max.value_or(d->defaults.max_tokens.value_or(0));
  if (requested_max && prompt_tokens + *requested_max > context) {
    return errors::FieldError(max_field, absl::StrCat(
        *requested_max, " completion tokens after a prompt of ", prompt_tokens,
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
  er.sampling.max_new_tokens = max_tokens;  // 0: up to the context
  er.sampling.seed = request.seed ? static_cast<uint64_t>(*request.seed) : std::random_device{}();
  er.sampling.stop_token_ids = base.identity.stop_token_ids;
  er.sampling.stop_strings = request.stop;
  er.sampling.frequency_penalty = request.frequency_penalty.value_or(0);
  er.sampling.presence_penalty = request.presence_penalty.value_or(0);
  er.sampling.logprobs = request.logprobs;
  er.sampling.top_logprobs =
      static_cast<int>(request.logprobs ? request.top_logprobs.value_or(0) : 0);
  er.deadline = request.deadline;
  // The call keeps the tokenizer, never the base: the engine's last request
  // must not be what destroys the engine (from its own thread).
  std::shared_ptr<const text::ChatTokenizer> tokenizer = base.tokenizer;
  er.detokenize = [tokenizer](const std::vector<int64_t>& ids) {
    std::vector<int32_t> narrow(ids.begin(), ids.end());
    return tokenizer->tokenizer().Decode(narrow, /*skip_special_tokens=*/true);
  };
  auto call = std::make_shared<ChatCallImpl>(base.tokenizer, d->filter, d->policy,
                                             options_.holdback_bytes, std::move(sink),
                                             prompt_tokens, request.logprobs,
                                             [usage = d->usage](int64_t prompt, int64_t completion) {
                                               usage->Add(prompt, completion);
                                             });
  er.on_text = [call](const std::string& text, const model::Sequence& seq) {
    call->OnText(text, seq);
  };
  er.on_done = [call](const Completion& c) { call->OnDone(c); };
  auto handle = base.engine->Submit(std::move(er));
  if (!handle.ok()) return handle.status();
  call->SetHandle(*handle);
  start.call = call;
  return start;
}

}  // namespace tunefleet::serving
