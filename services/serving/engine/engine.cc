#include "services/serving/engine/engine.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/base/random.h"
#include "common/model/sampling.h"
#include "common/model/torch_status.h"

namespace tunefleet::serving {

using Clock = std::chrono::steady_clock;

namespace {
double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }
// Out of memory: RESOURCE_EXHAUSTED from the model library, or (libtorch
// 1.x's CPU allocator throws a plain c10::Error) its message.
bool IsOutOfMemory(const absl::Status& s) {
  if (s.code() == absl::StatusCode::kResourceExhausted) return true;
  return s.code() == absl::StatusCode::kInternal &&
         (absl::StrContains(s.message(), "can't allocate memory") ||
          absl::StrContains(s.message(), "out of memory") ||
          absl::StrContains(s.message(), "not enough memory"));
}
int64_t PowerOfTwoAtLeast(int64_t n) {
  int64_t p = 1;
  while (p < n) p *= 2;
  return p;
}
}  // namespace

// One request's state, llama.cpp's "slot": its tokens (prompt, then the
// generated ones), how many of them the cache holds, and its Sequence (the
// sampling parameters, penalties' counts, stop rules, text, logprobs).
struct Engine::Request {
  EngineRequest req;
  std::shared_ptr<RequestHandle> handle;
  std::vector<int64_t> tokens;  // prompt + generated
  int64_t cached = 0;           // tokens[0, cached) are in the row's cache
  int64_t prompt_tokens = 0;
  std::optional<model::Sequence> seq;
  std::vector<float> scratch;  // penalized logits
  SplitMix64 rng{0};
  Clock::time_point submitted, started, first_token;
  bool has_started = false, has_first = false;
};

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(model::Decoder decoder,
                                                       EngineOptions options) {
  const model::ModelConfig& c = decoder.config();
  int64_t context = c.max_position_embeddings;
  if (options.max_context > 0) context = std::min(context, options.max_context);
  if (context < 2) return absl::InvalidArgumentError("Engine: the context must hold 2 tokens");
  if (options.max_batch < 1) return absl::InvalidArgumentError("Engine: max_batch must be >= 1");
  const int64_t elem = at::elementSize(decoder.options().dtype);
  const int64_t per_row = 2 * c.num_hidden_layers * context * c.kv_size() * elem;
  const int64_t rows = std::min(options.max_batch, options.kv_cache_bytes / std::max<int64_t>(per_row, 1));
  if (rows < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("Engine: kv_cache_bytes ", options.kv_cache_bytes, " cannot hold one row of ",
                     context, " tokens (", per_row, " bytes)"));
  }
  std::unique_ptr<Engine> e(new Engine(std::move(decoder), options, context, rows));
  e->kv_bytes_per_row_ = per_row;
  {
    std::lock_guard<std::mutex> lock(e->mu_);
    e->stats_.max_rows = rows;
    e->stats_.kv_bytes_per_row = per_row;
  }
  e->thread_ = std::thread([p = e.get()] { p->Loop(); });
  return e;
}

Engine::Engine(model::Decoder decoder, EngineOptions options, int64_t context, int64_t max_rows)
    : decoder_(std::move(decoder)),
      options_(options),
      context_(context),
      max_rows_(max_rows),
      budget_(std::max<int64_t>(1, options.step_token_budget)),
      row_cap_(max_rows) {
  stats_.step_token_budget = budget_;
  stats_.row_cap = row_cap_;
}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

absl::StatusOr<std::shared_ptr<RequestHandle>> Engine::Submit(EngineRequest request) {
  const model::ModelConfig& c = decoder_.config();
  const int64_t n = static_cast<int64_t>(request.prompt.size());
  if (n == 0) return absl::InvalidArgumentError("prompt is empty");
  for (int64_t t : request.prompt) {
    if (t < 0 || t >= c.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt has token id ", t, " outside [0, ", c.vocab_size, ")"));
    }
  }
  if (n >= context_) {
    return absl::InvalidArgumentError(absl::StrCat("prompt of ", n,
                                                   " tokens leaves no room in the context of ",
                                                   context_, " tokens"));
  }
  const SamplingParams& s = request.sampling;
  if (!(s.temperature >= 0)) return absl::InvalidArgumentError("temperature must be >= 0");
  if (!(s.top_p > 0 && s.top_p <= 1)) return absl::InvalidArgumentError("top_p must be in (0, 1]");
  if (!(s.frequency_penalty >= -2 && s.frequency_penalty <= 2))
    return absl::InvalidArgumentError("frequency_penalty must be in [-2, 2]");
  if (!(s.presence_penalty >= -2 && s.presence_penalty <= 2))
    return absl::InvalidArgumentError("presence_penalty must be in [-2, 2]");
  if (s.top_logprobs < 0 || s.top_logprobs > 20)
    return absl::InvalidArgumentError("top_logprobs must be in [0, 20]");
  if (!s.stop_strings.empty() && !request.detokenize)
    return absl::InvalidArgumentError("stop strings need a detokenize function");
  if (request.adapter && request.adapter->lora.num_layers() != c.num_hidden_layers) {
    return absl::InvalidArgumentError("the adapter was made for another base");
  }

  auto r = std::make_unique<Request>();
  r->prompt_tokens = n;
  r->tokens = request.prompt;
  model::SamplingParams params = s;
  params.max_new_tokens =
      s.max_new_tokens > 0 ? std::min(s.max_new_tokens, context_ - n) : context_ - n;
  if (params.stop_token_ids.empty()) params.stop_token_ids = c.eos_token_ids;
  r->seq.emplace(std::move(params), request.detokenize);
  r->rng = SplitMix64(s.seed);
  r->submitted = Clock::now();
  r->handle = std::make_shared<RequestHandle>();
  r->req = std::move(request);
  std::shared_ptr<RequestHandle> handle = r->handle;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return absl::UnavailableError("the engine is shutting down");
    if (static_cast<int64_t>(queue_.size()) >= options_.max_queue) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the replica's queue is full (", options_.max_queue, " requests wait for a slot)"));
    }
    queue_.push_back(std::move(r));
  }
  wake_.notify_one();
  return handle;
}

absl::StatusOr<Completion> Engine::Generate(EngineRequest request) {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  Completion out;
  request.on_done = [&](const Completion& c) {
    std::lock_guard<std::mutex> lock(mu);
    out = c;
    done = true;
    cv.notify_all();
  };
  auto h = Submit(std::move(request));
  if (!h.ok()) return h.status();
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
  if (!out.status.ok()) return out.status;
  return out;
}

EngineStats Engine::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void Engine::FinishQueued(Request& r, EngineFinish finish, absl::Status status) {
  Completion c;
  c.status = std::move(status);
  c.finish = finish;
  c.prompt_tokens = r.prompt_tokens;
  // A request that leaves early still flushes its text (Cancel ends the
  // sequence; natural ends already did).
  r.seq->Cancel();
  c.stop_token_id = r.seq->stop_token_id();
  c.stop_string = r.seq->stop_string();
  c.tokens = r.seq->tokens();
  c.text = r.seq->text();
  c.logprobs = r.seq->logprobs();
  for (size_t i = 0; i < c.tokens.size(); ++i) c.text_ends.push_back(r.seq->text_end(i));
  const Clock::time_point now = Clock::now();
  c.total_seconds = Seconds(now - r.submitted);
  c.queue_seconds = Seconds((r.has_started ? r.started : now) - r.submitted);
  if (r.has_first) c.ttft_seconds = Seconds(r.first_token - r.submitted);
  r.req.adapter.reset();  // unpin
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.completed;
  }
  if (r.req.on_done) r.req.on_done(c);
}

void Engine::Finish(size_t row, EngineFinish finish, absl::Status status) {
  std::unique_ptr<Request> r = std::move(rows_[row]);
  cache_.ResetRow(static_cast<int64_t>(row));
  int64_t running = 0;
  for (auto& x : rows_) running += x ? 1 : 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.running = running;  // before on_done, so that a waiter sees the slot free
  }
  FinishQueued(*r, finish, std::move(status));
}

int64_t Engine::HeldBytes() const {
  int64_t rows = cache_.batch_size();
  for (const model::KvCache& c : kept_) rows += c.batch_size();
  return rows * kv_bytes_per_row_;
}

absl::StatusOr<model::KvCache> Engine::TakeCache(int64_t rows) {
  for (auto it = kept_.begin(); it != kept_.end(); ++it) {
    if (it->batch_size() != rows) continue;
    model::KvCache cache = std::move(*it);
    kept_.erase(it);
    // Its rows' old keys and values stay in memory, as a finished request's
    // do in a reused row: lengths 0 keep them out of every attention.
    for (int64_t r = 0; r < rows; ++r) cache.ResetRow(r);
    return cache;
  }
  // A new one: within the budget with the kept ones (the oldest go first).
  const int64_t need = rows * kv_bytes_per_row_;
  while (!kept_.empty() && HeldBytes() + need > options_.kv_cache_bytes) kept_.erase(kept_.begin());
  absl::StatusOr<model::KvCache> cache = decoder_.NewCache(rows, context_);
  if (!cache.ok() && !kept_.empty() && IsOutOfMemory(cache.status())) {
    kept_.clear();  // what is kept must not cost a live cache
    cache = decoder_.NewCache(rows, context_);
  }
  if (cache.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.cache_allocations;
  }
  return cache;
}

absl::Status Engine::Resize(int64_t rows) {
  // Running requests move to the first rows with their cached tokens copied
  // into the new cache; only when the two caches cannot be held together
  // are they computed again (prefilled from the start).
  std::vector<std::unique_ptr<Request>> running;
  std::vector<int64_t> from;
  for (size_t i = 0; i < rows_.size(); ++i) {
    if (!rows_[i]) continue;
    running.push_back(std::move(rows_[i]));
    from.push_back(static_cast<int64_t>(i));
  }
  rows_.clear();
  model::KvCache old = std::move(cache_);
  cache_ = model::KvCache();
  auto cache = TakeCache(rows);
  int64_t recomputed = 0;
  if (!cache.ok() && old.batch_size() > 0 && IsOutOfMemory(cache.status())) {
    old = model::KvCache();
    cache = TakeCache(rows);
  }
  if (!cache.ok()) {
    for (auto& r : running) FinishQueued(*r, EngineFinish::kError, cache.status());
    return cache.status();
  }
  cache_ = *std::move(cache);
  rows_.resize(static_cast<size_t>(rows));
  for (size_t i = 0; i < running.size(); ++i) {
    const int64_t to = static_cast<int64_t>(i);
    if (old.batch_size() == 0 || !cache_.CopyRow(old, from[i], to).ok()) {
      cache_.ResetRow(to);
      running[i]->cached = 0;
      ++recomputed;
    }
    rows_[i] = std::move(running[i]);
  }
  // The old cache is kept only while everything fits the budget.
  if (old.batch_size() > 0) kept_.push_back(std::move(old));
  while (!kept_.empty() && HeldBytes() > options_.kv_cache_bytes) kept_.erase(kept_.begin());
  std::lock_guard<std::mutex> lock(mu_);
  stats_.cache_rows = rows;
  stats_.kv_bytes_held = HeldBytes();
  stats_.rows_recomputed += recomputed;
  ++stats_.resizes;
  return absl::OkStatus();
}

void Engine::Loop() {
  if (options_.threads > 0) at::set_num_threads(options_.threads);
  for (;;) {
    std::vector<std::unique_ptr<Request>> dropped;  // cancelled or expired while queued
    std::vector<std::unique_ptr<Request>> admitted;
    int64_t running = 0;
    for (auto& r : rows_) running += r ? 1 : 0;
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [&] { return stopping_ || running > 0 || !queue_.empty(); });
      if (stopping_) break;
      const Clock::time_point now = Clock::now();
      for (auto it = queue_.begin(); it != queue_.end();) {
        if ((*it)->handle->cancelled() || now >= (*it)->req.deadline) {
          dropped.push_back(std::move(*it));
          it = queue_.erase(it);
        } else {
          ++it;
        }
      }
      while (!queue_.empty() &&
             running + static_cast<int64_t>(admitted.size()) < std::min(max_rows_, row_cap_)) {
        admitted.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      stats_.queued = static_cast<int64_t>(queue_.size());
    }
    for (auto& r : dropped) {
      const bool cancelled = r->handle->cancelled();
      FinishQueued(*r, cancelled ? EngineFinish::kCancelled : EngineFinish::kDeadline,
                   cancelled ? absl::CancelledError("the request was cancelled")
                             : absl::DeadlineExceededError("the deadline passed while queued"));
    }
    // Rows: grow (doubling) to fit the newcomers, or shrink when few run.
    const int64_t want = running + static_cast<int64_t>(admitted.size());
    const int64_t rows = static_cast<int64_t>(rows_.size());
    int64_t target = rows;
    if (want > rows) {
      target = std::min(max_rows_, std::max(PowerOfTwoAtLeast(want), rows * 2));
    } else if (want > 0 && want * 4 <= rows) {
      target = PowerOfTwoAtLeast(want);
    }
    if (want == 0) continue;
    const Clock::time_point resize_start = Clock::now();
    const bool resized = target != rows && Resize(target).ok();
    if (target != rows) resize_seconds_ += Seconds(Clock::now() - resize_start);
    if (target != rows && !resized) {
      for (auto& r : admitted) {
        FinishQueued(*r, EngineFinish::kError,
                     absl::ResourceExhaustedError("the KV cache could not be allocated"));
      }
      continue;
    }
    const Clock::time_point now = Clock::now();
    for (auto& r : admitted) {
      r->started = now;
      r->has_started = true;
      for (size_t i = 0; i < rows_.size(); ++i) {
        if (!rows_[i]) {
          cache_.ResetRow(static_cast<int64_t>(i));
          r->cached = 0;
          rows_[i] = std::move(r);
          break;
        }
      }
    }
    absl::Status s = Step();
    if (IsOutOfMemory(s) && ShrinkAfterOom()) {
      continue;  // the same rows (or fewer) again, in a smaller step
    }
    if (s.ok() && ++steps_since_oom_ >= 64 &&
        (budget_ < options_.step_token_budget || row_cap_ < max_rows_)) {
      // Grows back: the memory may have been taken by something passing.
      budget_ = std::min(std::max<int64_t>(1, options_.step_token_budget), budget_ * 2);
      row_cap_ = std::min(max_rows_, row_cap_ * 2);
      steps_since_oom_ = 0;
      std::lock_guard<std::mutex> lock(mu_);
      stats_.step_token_budget = budget_;
      stats_.row_cap = row_cap_;
    }
    if (!s.ok()) {
      // A failed forward (out of memory with nothing left to shrink, ...)
      // ends the rows of this step, not the replica.
      for (size_t i = 0; i < rows_.size(); ++i) {
        if (rows_[i]) Finish(i, EngineFinish::kError, s);
      }
      CountStep(0, 0).IgnoreError();
    }
  }
  // Shutdown: everyone still here ends with UNAVAILABLE.
  std::deque<std::unique_ptr<Request>> queued;
  {
    std::lock_guard<std::mutex> lock(mu_);
    queued.swap(queue_);
  }
  for (size_t i = 0; i < rows_.size(); ++i) {
    if (rows_[i]) Finish(i, EngineFinish::kError, absl::UnavailableError("the replica is shutting down"));
  }
  for (auto& r : queued) {
    FinishQueued(*r, EngineFinish::kError, absl::UnavailableError("the replica is shutting down"));
  }
}

absl::Status Engine::Step() {
  const Clock::time_point now = Clock::now();
  const int64_t B = static_cast<int64_t>(rows_.size());
  // Leave: cancelled and expired requests.
  for (size_t i = 0; i < rows_.size(); ++i) {
    Request* r = rows_[i].get();
    if (!r) continue;
    if (r->handle->cancelled()) {
      Finish(i, EngineFinish::kCancelled, absl::CancelledError("the request was cancelled"));
    } else if (now >= r->req.deadline) {
      Finish(i, EngineFinish::kDeadline, absl::DeadlineExceededError("the request's deadline passed"));
    }
  }
  // The chunk: every row feeds its pending tokens (1 when decoding) within
  // the step's token budget. Where the decoder runs ragged steps (only the
  // real tokens computed), every running row feeds one token and the rows
  // still reading their prompts share what is left of the budget, the
  // earliest admitted first; elsewhere the rows are padded to the longest
  // chunk, so the budget bounds rows x chunk (and every row needs room in
  // the cache for the padded width).
  const bool ragged = decoder_.RaggedExtend();
  std::vector<int64_t> chunk(static_cast<size_t>(B), 0);
  std::vector<int64_t> pending(static_cast<size_t>(B), 0);
  int64_t longest = 0;
  for (size_t i = 0; i < rows_.size(); ++i) {
    if (!rows_[i]) continue;
    pending[i] = static_cast<int64_t>(rows_[i]->tokens.size()) - rows_[i]->cached;
    longest = std::max(longest, pending[i]);
  }
  if (longest == 0) return CountStep(0, 0);
  int64_t step_tokens = 0;
  if (ragged) {
    std::vector<size_t> prefilling;
    for (size_t i = 0; i < rows_.size(); ++i) {
      chunk[i] = std::min<int64_t>(pending[i], 1);
      step_tokens += chunk[i];
      if (pending[i] > 1) prefilling.push_back(i);
    }
    std::stable_sort(prefilling.begin(), prefilling.end(), [&](size_t a, size_t b) {
      return rows_[a]->started < rows_[b]->started;
    });
    for (size_t i : prefilling) {
      const int64_t room = context_ - cache_.lengths()[i];
      const int64_t more = std::min({pending[i], room, chunk[i] + budget_ - step_tokens}) - chunk[i];
      if (more <= 0) continue;
      chunk[i] += more;
      step_tokens += more;
    }
    last_chunk_ = *std::max_element(chunk.begin(), chunk.end());
  } else {
    int64_t T = std::max<int64_t>(1, budget_ / B);
    for (size_t i = 0; i < rows_.size(); ++i) T = std::min(T, context_ - cache_.lengths()[i]);
    T = std::max<int64_t>(1, std::min(T, longest));
    for (size_t i = 0; i < rows_.size(); ++i) chunk[i] = std::min(pending[i], T);
    last_chunk_ = T;
    step_tokens = B * T;
  }
  last_step_tokens_ = step_tokens;
  std::vector<int64_t> ids;
  ids.reserve(static_cast<size_t>(step_tokens));
  std::vector<const model::LoraAdapter*> adapters(static_cast<size_t>(B), nullptr);
  bool any_adapter = false;
  int64_t prompt_fed = 0;
  for (size_t i = 0; i < rows_.size(); ++i) {
    Request* r = rows_[i].get();
    if (!r) continue;
    ids.insert(ids.end(), r->tokens.begin() + r->cached, r->tokens.begin() + r->cached + chunk[i]);
    if (r->cached < r->prompt_tokens) prompt_fed += std::min(chunk[i], r->prompt_tokens - r->cached);
    if (r->req.adapter) {
      adapters[i] = &r->req.adapter->lora;
      any_adapter = true;
    }
  }
  model::AdapterChoice choice;
  if (any_adapter) choice = model::AdapterChoice(adapters);
  auto logits = decoder_.ExtendRows(cache_, ids, chunk, choice);
  if (!logits.ok()) return logits.status();
  // Greedy rows without penalties or logprobs take the argmax of their
  // logits, which ChooseToken would find with a scan per row: one argmax
  // over the batch instead (vectorized, on the logits' device; ties go to
  // the lower id either way). Only when another row samples do the whole
  // logits come to the host (on a GPU that copy is B x vocab floats a step).
  auto plain_greedy = [](const model::SamplingParams& p) {
    return p.temperature <= 0 && p.frequency_penalty == 0 && p.presence_penalty == 0 && !p.logprobs;
  };
  int64_t greedy_rows = 0, sampled_rows = 0;
  for (size_t i = 0; i < rows_.size(); ++i) {
    const Request* r = rows_[i].get();
    if (!r || r->cached + chunk[i] < static_cast<int64_t>(r->tokens.size())) continue;
    ++(plain_greedy(r->seq->params()) ? greedy_rows : sampled_rows);
  }
  const bool use_argmax = greedy_rows >= 2 || (greedy_rows == 1 && !logits->is_cpu());
  at::Tensor argmax, cpu;
  if (use_argmax) argmax = logits->argmax(-1).to(at::kCPU).contiguous();
  if (sampled_rows > 0 || !use_argmax) cpu = logits->to(at::kCPU).contiguous();
  const float* data = cpu.defined() ? cpu.data_ptr<float>() : nullptr;
  const int64_t vocab = decoder_.config().vocab_size;
  const Clock::time_point after = Clock::now();
  forward_seconds_ += Seconds(after - now);
  int64_t generated = 0;
  for (size_t i = 0; i < rows_.size(); ++i) {
    Request* r = rows_[i].get();
    if (!r) continue;
    r->cached += chunk[i];
    if (r->cached < static_cast<int64_t>(r->tokens.size())) continue;  // prefill goes on
    model::Sequence& seq = *r->seq;
    model::TokenChoice choice;
    if (argmax.defined() && plain_greedy(seq.params())) {
      choice.token = argmax.data_ptr<int64_t>()[i];
    } else {
      const double u = seq.params().temperature > 0 ? r->rng.Uniform() : 0.0;
      choice = model::ChooseToken(seq, data + static_cast<int64_t>(i) * vocab, vocab, u, &r->scratch);
    }
    if (!r->has_first) {
      r->has_first = true;
      r->first_token = after;
    }
    const int64_t tok = choice.token;
    const std::optional<model::FinishReason> finish = seq.Accept(tok, std::move(choice.logprob));
    if (finish == model::FinishReason::kStopToken) {  // not part of the output
      Finish(i, EngineFinish::kStop, absl::OkStatus());
      continue;
    }
    r->tokens.push_back(tok);
    ++generated;
    if (r->req.on_token) r->req.on_token(tok);
    if (r->req.on_text && r->req.detokenize) r->req.on_text(seq.TakeNewText(), seq);
    if (finish) {
      Finish(i, *finish == model::FinishReason::kLength ? EngineFinish::kLength : EngineFinish::kStop,
             absl::OkStatus());
    }
  }
  sample_seconds_ += Seconds(Clock::now() - after);
  return CountStep(generated, prompt_fed);
}

bool Engine::ShrinkAfterOom() {
  steps_since_oom_ = 0;
  const bool freed = !kept_.empty();
  kept_.clear();  // kept caches are the first memory to give back
  std::vector<size_t> running;
  for (size_t i = 0; i < rows_.size(); ++i) {
    if (rows_[i]) running.push_back(i);
  }
  if (last_chunk_ > 1) {
    // Smaller chunks first: the rows keep their places and their caches.
    budget_ = std::max<int64_t>(1, std::min(budget_, last_step_tokens_) / 2);
  } else if (running.size() > 1) {
    // Every row fed one token: fewer rows. The later half waits in front of
    // the queue and is prefilled again from its tokens when it comes back.
    const size_t keep = running.size() / 2;
    std::vector<std::unique_ptr<Request>> back;
    for (size_t j = keep; j < running.size(); ++j) {
      back.push_back(std::move(rows_[running[j]]));
      back.back()->cached = 0;
    }
    row_cap_ = static_cast<int64_t>(keep);
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto it = back.rbegin(); it != back.rend(); ++it) queue_.push_front(std::move(*it));
      stats_.queued = static_cast<int64_t>(queue_.size());
    }
    // A smaller cache too (the padded rows are computed as well).
    if (!Resize(PowerOfTwoAtLeast(static_cast<int64_t>(keep))).ok()) return true;  // rows ended there
    kept_.clear();  // not the larger cache either, while memory is short
  } else {
    return freed;  // one row, one token: once more only if kept caches were freed
  }
  std::lock_guard<std::mutex> lock(mu_);
  stats_.kv_bytes_held = HeldBytes();
  ++stats_.oom_shrinks;
  stats_.step_token_budget = budget_;
  stats_.row_cap = row_cap_;
  return true;
}

absl::Status Engine::CountStep(int64_t generated, int64_t prompt_fed) {
  int64_t running = 0;
  for (auto& r : rows_) running += r ? 1 : 0;
  std::lock_guard<std::mutex> lock(mu_);
  if (generated + prompt_fed > 0) ++stats_.steps;
  stats_.tokens_generated += generated;
  stats_.prompt_tokens += prompt_fed;
  stats_.running = running;
  stats_.forward_seconds = forward_seconds_;
  stats_.sample_seconds = sample_seconds_;
  stats_.resize_seconds = resize_seconds_;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<double>> ClassifyTokens(const model::Decoder& decoder,
                                                   const ServedAdapter& adapter,
                                                   const std::vector<int64_t>& ids) {
  if (ids.empty()) return absl::InvalidArgumentError("classify: the text rendered to no tokens");
  if (!adapter.classification()) {
    return absl::InvalidArgumentError(
        absl::StrCat("adapter ", adapter.artifact, " has no classification head"));
  }
  const int64_t vocab = decoder.config().vocab_size;
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("classify: token id ", id, " is outside the vocabulary of ", vocab));
    }
  }
  return model::internal::CatchTorch("classify", [&]() -> absl::StatusOr<std::vector<double>> {
    at::NoGradGuard no_grad;
    at::Tensor input = at::tensor(ids, at::kLong).unsqueeze(0).to(adapter.head.device());
    model::ForwardOptions fo;
    fo.adapter = model::AdapterChoice(&adapter.lora);
    auto hidden = decoder.ForwardHidden(input, fo);  // [1, T, hidden]
    if (!hidden.ok()) return hidden.status();
    at::Tensor last = (*hidden)[0][-1].to(at::kFloat);
    at::Tensor p = at::softmax(at::matmul(adapter.head, last), 0).to(at::kCPU, at::kDouble).contiguous();
    return std::vector<double>(p.data_ptr<double>(), p.data_ptr<double>() + p.numel());
  });
}

}  // namespace tunefleet::serving
