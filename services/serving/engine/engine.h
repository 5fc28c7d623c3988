// The serving engine: one base model in memory, one engine thread running
// continuous batching over it. Requests join between steps (their prompts
// prefilled in chunks, mixed with the other rows' decode steps under a token
// budget) and leave when they finish, are cancelled or pass their deadline;
// each row may use its own LoRA adapter (or none) in the same forward, the
// way llama.cpp's server gives each slot its own state.
//
// The KV cache holds one row per running request. It grows by doubling as
// requests arrive (up to max_batch rows within kv_cache_bytes) and shrinks
// when few remain; on a resize the running rows are prefilled again from
// their tokens (recompute, as vLLM does on preemption), so that a lone
// request never pays for idle rows. A cache left by a resize is kept (all
// the caches together within kv_cache_bytes) and taken again when the batch
// comes back to its size, so that a steady load allocates each size once:
// a fresh cache costs its first touch (0.3-0.9 s for 214 MB on the 2-core
// build VM), a kept one nothing. Requests beyond the rows wait in a queue;
// past max_queue, Submit is RESOURCE_EXHAUSTED. A step that runs out of
// memory shrinks the batch instead of failing it: the step's token budget is
// halved (smaller prefill chunks) and, when every row feeds one token, half
// the rows go back to the queue (prefilled again later) and half as many are
// admitted; both grow back after 64 good steps. Only a lone row that cannot
// take one token fails (RESOURCE_EXHAUSTED).
//
// Thread-safety: Submit, Cancel and stats may be called from any thread.
// Callbacks run on the engine thread and must not block.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/model/decoder.h"
#include "common/model/sequence.h"
#include "services/serving/engine/adapter_cache.h"

namespace tunefleet::serving {

struct EngineOptions {
  // Upper bound on the rows decoded together.
  int64_t max_batch = 32;
  // Memory for keys and values; the rows are limited to what fits, and
  // caches kept for reuse count against it too.
  int64_t kv_cache_bytes = int64_t{4} << 30;
  // Tokens per row (prompt + completion); 0: the model's max_position_embeddings.
  int64_t max_context = 0;
  // Tokens one step may compute: bounds how much a long prefill delays the
  // other rows' next token. Where the decoder runs ragged steps
  // (Decoder::RaggedExtend: fp32 on a CPU with AVX2) these are the real
  // tokens; elsewhere rows x the longest chunk, padding included.
  int64_t step_token_budget = 2048;
  // Requests waiting for a row before Submit refuses new ones.
  int64_t max_queue = 1024;
  // Intra-op threads of the engine thread; 0: libtorch's default.
  int threads = 0;
};

// A request's sampling and stop rules: the model library's (temperature,
// top_p, top_k, seed, penalties, logprobs, stop tokens and strings). Here
// max_new_tokens <= 0 means up to the context, and empty stop_token_ids the
// model's eos ids. Each row's tokens go through its own model::Sequence, the
// same code Generate runs (sampling.h chooses, Sequence::Accept decides the
// end), so the engine and Generate agree token for token.
using SamplingParams = model::SamplingParams;

enum class EngineFinish { kStop, kLength, kCancelled, kDeadline, kError };

struct Completion {
  absl::Status status;  // OK unless kError, kCancelled or kDeadline
  EngineFinish finish = EngineFinish::kLength;  // kStop: a stop token or stop string
  std::vector<int64_t> tokens;  // generated, without stop token
  int64_t prompt_tokens = 0;
  int64_t stop_token_id = -1;
  std::string stop_string;  // the stop string that ended it
  // With a detokenize function: the text (cut before a stop string).
  std::string text;
  // Parallel to tokens when sampling.logprobs; text_ends[i]: where token
  // i's text ends in `text`'s coordinates (model::Sequence::text_end).
  std::vector<model::TokenLogprob> logprobs;
  std::vector<size_t> text_ends;
  double queue_seconds = 0;  // submit -> first step in a row
  double ttft_seconds = 0;   // submit -> first token (0 if none)
  double total_seconds = 0;
};

struct EngineRequest {
  std::vector<int64_t> prompt;
  SamplingParams sampling;
  // Pinned for as long as the request runs; null: the base.
  std::shared_ptr<const ServedAdapter> adapter;
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
  // Turns a short run of tokens into text (model::IncrementalDetokenizer);
  // needed for stop strings and for on_text. May be empty.
  model::IncrementalDetokenizer::DecodeFn detokenize;
  // Each chosen token (engine thread).
  std::function<void(int64_t token)> on_token;
  // After each chosen token, with detokenize: the text the sequence has
  // released since the last call (whole characters, never part of a stop
  // string; may be empty) and the sequence itself (its tokens, logprobs,
  // text ends). The rest of the text comes with on_done (Completion::text).
  std::function<void(const std::string& text, const model::Sequence& seq)> on_text;
  // Exactly once, at the end: on the engine thread (or in ~Engine).
  std::function<void(const Completion&)> on_done;
};

// A submitted request. Cancel is idempotent and thread-safe; the request
// leaves the batch before the next step and its on_done reports kCancelled.
class RequestHandle {
 public:
  void Cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }

 private:
  std::atomic<bool> cancelled_{false};
};

struct EngineStats {
  int64_t steps = 0;
  int64_t running = 0;     // requests in rows
  int64_t queued = 0;      // waiting for a row
  int64_t cache_rows = 0;  // rows of the current KV cache
  int64_t max_rows = 0;    // the most rows the budget allows
  int64_t resizes = 0;     // changes of cache_rows
  // Of the resizes, those that allocated a cache (the others took a kept
  // one), and the bytes held by the current and the kept caches.
  int64_t cache_allocations = 0;
  // Running rows whose cached tokens were computed again at a resize rather
  // than copied to the new cache (only when the old and the new cache could
  // not be held together: while copying, both are).
  int64_t rows_recomputed = 0;
  int64_t kv_bytes_held = 0;
  int64_t completed = 0;
  int64_t tokens_generated = 0;
  int64_t prompt_tokens = 0;
  int64_t kv_bytes_per_row = 0;
  // Out-of-memory steps survived by shrinking: the step's token budget
  // halved, or half the rows put back in the queue.
  int64_t oom_shrinks = 0;
  int64_t step_token_budget = 0;  // now (after shrinks; grows back)
  int64_t row_cap = 0;            // rows admitted now (after shrinks; grows back)
  // Engine-thread time, cumulative: in the model's forward (Extend, logits
  // on the host), choosing tokens and running the callbacks, and resizing
  // the KV cache. Their sum against the wall time tells the engine's own
  // overhead.
  double forward_seconds = 0;
  double sample_seconds = 0;
  double resize_seconds = 0;
};

// A classification request without an engine: one forward of `ids` (the
// text rendered as the trainer did) through `decoder` with the
// classification adapter, no KV cache, its head on the last token's final
// hidden state, softmax over the labels. Thread-safe (the decoder's forwards
// are), on the caller's thread: beside the engine thread (whose decoder it
// may share), or on it (a completion's filter), never queued behind it. INVALID_ARGUMENT for no tokens, a token
// outside the vocabulary or an adapter without a head; RESOURCE_EXHAUSTED
// out of memory.
absl::StatusOr<std::vector<double>> ClassifyTokens(const model::Decoder& decoder,
                                                   const ServedAdapter& adapter,
                                                   const std::vector<int64_t>& ids);

class Engine {
 public:
  // Starts the engine thread. INVALID_ARGUMENT for options that leave no row.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(model::Decoder decoder,
                                                        EngineOptions options = {});
  // Stops the thread; requests still queued or running end with UNAVAILABLE.
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request. INVALID_ARGUMENT for an empty prompt, a token id
  // outside the vocabulary, a prompt that leaves no room in the context
  // (with both sizes), bad sampling values (temperature, top_p, penalties
  // outside [-2, 2], top_logprobs outside [0, 20]) or stop strings without
  // detokenize; RESOURCE_EXHAUSTED when the
  // queue is full; UNAVAILABLE after shutdown began.
  absl::StatusOr<std::shared_ptr<RequestHandle>> Submit(EngineRequest request);

  // Submit and wait; for tests, benchmarks and simple callers.
  absl::StatusOr<Completion> Generate(EngineRequest request);

  const model::Decoder& decoder() const { return decoder_; }
  // Tokens per row, prompt and completion together.
  int64_t context_size() const { return context_; }
  EngineStats stats() const;

 private:
  struct Request;
  Engine(model::Decoder decoder, EngineOptions options, int64_t context, int64_t max_rows);
  void Loop();
  // Engine thread only:
  void Finish(size_t row, EngineFinish finish, absl::Status status);
  void FinishQueued(Request& r, EngineFinish finish, absl::Status status);
  // Moves the running rows to the first rows of a cache of `rows` rows (a
  // kept one, else a new one) and keeps the current cache for reuse.
  absl::Status Resize(int64_t rows);
  // The cache of `rows` rows for Resize: a kept one or a new one, freeing
  // kept ones (oldest first) to stay within kv_cache_bytes, or all of them
  // when the allocation fails.
  absl::StatusOr<model::KvCache> TakeCache(int64_t rows);
  int64_t HeldBytes() const;
  absl::Status Step();
  absl::Status CountStep(int64_t generated, int64_t prompt_fed);
  // After a step that ran out of memory: halves the step's token budget
  // (while the step fed more than one token a row) or puts the later half
  // of the rows back at the front of the queue and admits half as many;
  // false when there is nothing left to shrink (one row, one token).
  bool ShrinkAfterOom();

  const model::Decoder decoder_;
  const EngineOptions options_;
  const int64_t context_;
  const int64_t max_rows_;
  int64_t kv_bytes_per_row_ = 0;

  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::unique_ptr<Request>> queue_;  // guarded by mu_
  bool stopping_ = false;                        // guarded by mu_
  EngineStats stats_;                            // guarded by mu_

  // Engine thread only.
  std::vector<std::unique_ptr<Request>> rows_;  // size = cache rows; null = free
  model::KvCache cache_;
  std::vector<model::KvCache> kept_;  // earlier caches, oldest first, for reuse
  int64_t budget_ = 0;      // the step token budget now
  int64_t row_cap_ = 0;     // the rows admitted now
  int64_t last_chunk_ = 0;  // the most tokens a row fed in the last step
  int64_t last_step_tokens_ = 0;  // tokens the last step computed (padded ones too)
  int64_t steps_since_oom_ = 0;
  double forward_seconds_ = 0, sample_seconds_ = 0, resize_seconds_ = 0;  // EngineStats

  std::thread thread_;
};

}  // namespace tunefleet::serving
