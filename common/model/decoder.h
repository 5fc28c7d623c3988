// The decoder-only transformer of Phi-3, Llama and Mistral (RMSNorm, rotary
// embeddings, grouped-query attention, SiLU-gated MLP) over weights from a
// Hugging Face directory, with a training forward and a KV-cache forward.
//
// Thread-safety: a Decoder is immutable after Load except for MergeAdapter /
// UnmergeAdapter; concurrent forwards (each with its own KvCache) are safe.
// Copies are cheap and share the weights (merging into one replaces its
// tensors and leaves the other copies alone).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/lora.h"
#include "common/model/model_config.h"
#include "common/model/safetensors.h"

namespace tunefleet::model {

namespace internal {
struct LayerCheckpoint;
struct LayerClosure;
// Packed or padded rows as runs of tokens that attend causally within
// themselves only: the runs' lengths, row after row, covering all B*T
// tokens, and which runs are padding (no attention computed, zeros out).
// Attention then runs per run (cost: the sum of L^2, no [T,T] mask)
// instead of over whole rows with a mask.
//
// The real runs are then batched: sorted by length and cut into groups of
// similar length (GroupRuns), each group one attention call over its runs
// padded to the group's longest, so that a micro-batch of many short
// examples costs a few attention calls rather than one per example.
struct AttentionSegments {
  std::vector<int64_t> lengths;
  std::vector<uint8_t> padding;
  // Set by GroupRuns: per group, how many runs and their padded length;
  // `gather` [sum runs*length] the flat token (b*T+t) of each group slot
  // (a slot past its run's end repeats the run's first token: causality
  // keeps it out of every real query); `scatter` [B*T] where each token's
  // output lies in the groups' outputs laid end to end, plus one zero row
  // at the end for the padding runs' tokens.
  std::vector<int64_t> group_runs, group_length;
  at::Tensor gather, scatter;
};
// Cuts the real runs of `segments` into groups (see AttentionSegments) so
// that the modelled cost, sum over groups of `group_cost_pairs` plus
// runs*length^2 query-key pairs, is least; fills the group fields.
void GroupRuns(AttentionSegments& segments, int64_t group_cost_pairs);
}  // namespace internal

struct DecoderOptions {
  // Compute and weight dtype (fp32 on CPU; bf16 on CUDA). Weights stored in
  // this dtype on the CPU are used in place, straight from the mapping.
  at::ScalarType dtype = at::kFloat;
  at::Device device = at::kCPU;
  // ExtendRows computes only the real tokens where it can (RaggedExtend);
  // false: it always pads (benchmarks measure both).
  bool ragged_extend = true;
  // Mixed precision: every forward (and a checkpointed layer's recomputation)
  // runs under autocast to this dtype on the decoder's device (bf16, or fp16
  // on CUDA; the CPU's autocast takes bf16 only), whatever `dtype` the
  // weights are stored in. Training on GPUs: fp32 or bf16 weights, bf16
  // products. Undefined: off.
  at::ScalarType autocast_dtype = at::ScalarType::Undefined;
};

// Options for serving a decoder from an operator's words: `device` "cpu",
// "cuda" or "cuda:N"; `dtype` "auto" (bfloat16 on CUDA, float32 on the CPU),
// "float32", "bfloat16" or "float16" (CUDA only). INVALID_ARGUMENT naming
// the flag for a value it does not take; FAILED_PRECONDITION for a CUDA
// device where this libtorch or machine has none (or not that many).
absl::StatusOr<DecoderOptions> DecoderOptionsFor(const std::string& device, const std::string& dtype);

// Which LoRA adapter a forward applies: none, one for every row, or one per
// row of the batch (nullptr rows use the base), so that requests for
// different adapters of one base share a batch. Implicit from a pointer or a
// vector for brevity at call sites.
struct AdapterChoice {
  AdapterChoice() = default;
  AdapterChoice(const LoraAdapter* all) : all(all) {}  // NOLINT(runtime/explicit)
  AdapterChoice(std::vector<const LoraAdapter*> rows)
      : rows(std::move(rows)) {}  // NOLINT(runtime/explicit)
  const LoraAdapter* all = nullptr;
  std::vector<const LoraAdapter*> rows;
};

struct ForwardOptions {
  // [B,T], 1 for tokens and 0 for padding (left or right); undefined: all tokens.
  at::Tensor attention_mask;
  // [B,T]; undefined: the count of real tokens before each one.
  at::Tensor position_ids;
  // [B,T] for packed sequences: tokens attend only within equal ids; unless
  // position_ids are given, positions restart at each change of id.
  at::Tensor sequence_ids;
  AdapterChoice adapter;
  // Applies LoRA dropout.
  bool training = false;
  // Keeps no activations inside the decoder layers: each layer runs without
  // autograd and is recomputed in backward (less memory, about a third more
  // compute). Only when grad mode is on. The layer's RNG state is saved and
  // replayed, so LoRA dropout draws the same masks and the gradients equal
  // those of a plain forward. The decoder and the adapters must outlive the
  // backward.
  bool gradient_checkpointing = false;
};

// Keys and values of past tokens, per row of a batch; rows may hold different
// lengths. Made by Decoder::NewCache; used by one forward at a time.
class KvCache {
 public:
  KvCache() = default;
  int64_t batch_size() const { return lengths_.size(); }
  int64_t capacity() const { return capacity_; }
  // Tokens cached in each row.
  const std::vector<int64_t>& lengths() const { return lengths_; }
  // Empties one row for a new sequence (continuous batching: a finished
  // request's row takes the next prompt while the others keep decoding).
  void ResetRow(int64_t row) { lengths_.at(static_cast<size_t>(row)) = 0; }
  // Copies row `from_row` of `from` (its cached tokens only) into row
  // `to_row` of this cache, so that a batch can move to a cache of another
  // size without computing its rows again. Both caches come from the same
  // Decoder; `from`'s row must fit this capacity.
  absl::Status CopyRow(const KvCache& from, int64_t from_row, int64_t to_row);

 private:
  friend class Decoder;
  std::vector<at::Tensor> k_, v_;  // per layer [B, capacity, kv_heads, head_dim]
  std::vector<int64_t> lengths_;
  int64_t capacity_ = 0;
};

class Decoder {
 public:
  // Reads config.json and the safetensors weights of a Hugging Face model
  // directory. Errors name the file and tensor (missing, mis-shaped, ...).
  static absl::StatusOr<Decoder> Load(const std::string& dir, const DecoderOptions& options = {});
  // The same from an open weight source and a parsed config.
  static absl::StatusOr<Decoder> FromWeights(const ModelConfig& config,
                                             const SafetensorsDir& weights,
                                             const DecoderOptions& options = {});

  const ModelConfig& config() const { return config_; }
  const DecoderOptions& options() const { return options_; }

  // Logits [B,T,vocab] (fp32) for a whole batch, with a causal mask plus
  // padding and packing masks; differentiable (LoRA parameters receive
  // gradients; base weights never require them).
  absl::StatusOr<at::Tensor> Forward(const at::Tensor& input_ids,
                                     const ForwardOptions& options = {}) const;

  struct LossOutput {
    at::Tensor loss;      // mean cross-entropy over the counted tokens; differentiable
    int64_t tokens = 0;   // labels that counted (not -100)
    int64_t correct = 0;  // of those, how many the argmax predicted
  };
  // Next-token loss of a forward, as CausalLmLoss(Forward(...), labels) but
  // computing logits only where labels count: with the vocabulary head the
  // largest activation of a step, training on assistant turns only saves
  // most of it. labels [B,T] (-100: ignored); logits at t predict labels[t+1].
  absl::StatusOr<LossOutput> Loss(const at::Tensor& input_ids, const at::Tensor& labels,
                                  const ForwardOptions& options = {}) const;

  struct SequenceLogProbs {
    at::Tensor sum;               // [B] fp32: each row's summed log-probs; differentiable
    std::vector<int64_t> tokens;  // per row: labels that counted
  };
  // Per row, the sum of log p(labels[t+1] | tokens up to t) over the labels
  // that count (-100: ignored), computing logits only there, as Loss does.
  // A sequence's log-likelihood of its completion (DPO's log pi(y|x)).
  absl::StatusOr<SequenceLogProbs> SequenceLogProb(const at::Tensor& input_ids,
                                                   const at::Tensor& labels,
                                                   const ForwardOptions& options = {}) const;

  // An empty cache for `batch` rows of up to `capacity` tokens each.
  absl::StatusOr<KvCache> NewCache(int64_t batch, int64_t capacity) const;

  // Appends a chunk of tokens to each row of `cache`: input_ids [B,T], of
  // which the first chunk_lengths[b] are real in row b (the rest padding; an
  // empty vector means all T). Works for a prefill, a decode step (T=1) and
  // anything between. Returns fp32 logits [B,vocab] for each row's last real
  // token (rows with none: garbage), or [B,T,vocab] with `all_logits`.
  // No gradients.
  absl::StatusOr<at::Tensor> Extend(KvCache& cache, const at::Tensor& input_ids,
                                    const std::vector<int64_t>& chunk_lengths = {},
                                    const AdapterChoice& adapter = {},
                                    bool all_logits = false) const;

  // Appends each row's new tokens, given back to back without padding:
  // `ids` holds chunk_lengths[0] tokens of row 0, then row 1's, ... (0: the
  // row sits out). Returns fp32 logits [B,vocab] after each row's last new
  // token (rows with none: not computed, their values undefined). Where
  // RaggedExtend() holds, only the real tokens are computed (a step mixing
  // one prompt's chunk with many one-token decodes costs their sum, not
  // rows x the longest chunk) and a row needs room for its own chunk only;
  // elsewhere the rows are padded to the longest chunk and run through
  // Extend (each row needs room for that).
  absl::StatusOr<at::Tensor> ExtendRows(KvCache& cache, const std::vector<int64_t>& ids,
                                        const std::vector<int64_t>& chunk_lengths,
                                        const AdapterChoice& adapter = {}) const;
  // Whether ExtendRows computes only the real tokens: fp32 on the CPU with
  // the AVX2 attention kernel (decode_attention.h).
  bool RaggedExtend() const;

  // Adds (or subtracts) scaling·B·A into the adapted base weights, so that a
  // forward without the adapter equals one with it. Not thread-safe; tensors
  // taken from Parameters() before the call no longer belong to the model.
  absl::Status MergeAdapter(const LoraAdapter& adapter);
  absl::Status UnmergeAdapter(const LoraAdapter& adapter);

  // The weights under their Hugging Face names, with `merge` folded in when
  // given (this decoder is not changed), in `dtype`.
  absl::StatusOr<NamedTensors> HfTensors(const LoraAdapter* merge = nullptr,
                                         at::ScalarType dtype = at::kFloat) const;

  // The base weights themselves (not copies), for full fine-tuning: set
  // requires_grad on them and hand them to an optimizer. Updating them in
  // place never writes to the mapped files.
  std::vector<at::Tensor> Parameters() const;

  // Total bytes of the weights (what one decode step reads at batch size 1,
  // less the embedding table).
  int64_t WeightBytes() const;

  // The final normalized hidden states [B,T,hidden] of Forward (before the
  // vocabulary head): what a sequence-classification head reads.
  absl::StatusOr<at::Tensor> ForwardHidden(const at::Tensor& input_ids,
                                           const ForwardOptions& options) const;

 private:
  struct Linear {
    at::Tensor weight;  // [out, in]
    at::Tensor bias;    // optional
  };
  struct Layer {
    at::Tensor input_norm;
    at::Tensor post_attention_norm;
    std::array<Linear, kNumProj> proj;  // by Proj; the model's own ones set
  };

  Decoder() = default;
  // Rows grouped by adapter, resolved once per forward.
  struct AdapterGroups {
    const LoraAdapter* all = nullptr;
    std::vector<std::pair<const LoraAdapter*, at::Tensor>> groups;  // adapter, row indices
    // Set when several adapters share the batch: every adapter row at once,
    // one batched matmul pair per projection instead of one pair per
    // adapter (inference only; training keeps the groups, so that dropout
    // draws stay in the order checkpoint replay expects).
    std::vector<const LoraAdapter*> gather_adapters;  // per adapter row
    at::Tensor gather_rows;                           // [n] their row indices
    at::Tensor gather_scale;                          // [n, 1, 1] their scaling
    // Ragged steps (ExtendRows): a row's chunk of several tokens is one span
    // of consecutive rows of x with one adapter, applied to its slice (no
    // per-token copies of the adapter's matrices).
    struct Span {
      const LoraAdapter* adapter;
      int64_t offset, length;
    };
    std::vector<Span> spans;
  };
  // The adapters of a ragged step: single-token rows as ResolveAdapters
  // does for rows, chunks of several tokens as spans.
  absl::StatusOr<AdapterGroups> ResolveRaggedAdapters(const AdapterChoice& choice,
                                                      const std::vector<int64_t>& chunks,
                                                      int64_t tokens) const;
  // One batched pair of matmuls for the gathered rows; undefined when the
  // rows' modules differ in rank or dtype, or one of them lacks `p`.
  at::Tensor GatheredLoraDelta(int64_t index, Proj p, const at::Tensor& x,
                               const AdapterGroups& adapters) const;
  absl::StatusOr<AdapterGroups> ResolveAdapters(const AdapterChoice& choice, int64_t batch) const;
  at::Tensor Project(const Layer& layer, int64_t index, Proj p, const at::Tensor& x,
                     const AdapterGroups& adapters, bool training) const;
  // `fused`: one pass (fused_ops.h) where it applies; see LayerInputs::fused.
  at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, bool fused) const;
  // cos/sin [B,1,T,rotary_dim] for positions [B,T]; `max_position` (known on
  // the host, so no device sync) picks longrope's short or long factors.
  std::pair<at::Tensor, at::Tensor> Rotary(const at::Tensor& positions, int64_t max_position) const;
  absl::Status CheckIds(const at::Tensor& ids, absl::string_view what) const;
  // Runs the layers; `cache` (with per-row write offsets) when extending;
  // `checkpoint`: recompute each layer in backward (not with a cache).
  // `segments`, when not empty, replaces `keep` (see LayerInputs).
  at::Tensor Body(const at::Tensor& input_ids, const at::Tensor& positions, int64_t max_position,
                  const at::Tensor& keep, const AdapterGroups& adapters, bool training,
                  KvCache* cache, bool checkpoint, internal::AttentionSegments segments = {},
                  const at::Tensor& cache_rows = at::Tensor()) const;
  // What every layer of one forward shares.
  struct LayerInputs {
    at::Tensor cos, sin;  // rotary [B,1,T,R]
    at::Tensor keep;      // attention mask or undefined (causal)
    internal::AttentionSegments segments;  // when not empty, replaces `keep`
    at::Tensor rows, cols;  // cache write positions [B,T] when extending
    int64_t span = 0;       // keys per row when extending
    // A ragged extend (ExtendRows): one token per row of h, each the next
    // token of cache row cache_rows[b] ([B] int64 on the CPU; T = 1).
    at::Tensor cache_rows;
    // The fused inference passes (fused_ops.h) may run: with a KV cache
    // (generation, serving). Forwards without one (training, evaluation, a
    // DPO reference, a checkpointed layer's first pass) keep libtorch's
    // operators, so a forward without autograd computes exactly what the
    // same forward under autograd does.
    bool fused = false;
  };
  // One decoder layer: h [B,T,hidden] -> h.
  at::Tensor DecoderLayer(int64_t i, at::Tensor h, const LayerInputs& in,
                          const AdapterGroups& adapters, bool training, KvCache* cache) const;
  // DecoderLayer under gradient checkpointing (decoder_checkpoint.cc).
  at::Tensor CheckpointedLayer(int64_t i, const at::Tensor& h, const LayerInputs& in,
                               const AdapterGroups& adapters, bool training) const;
  friend struct internal::LayerCheckpoint;
  friend struct internal::LayerClosure;
  absl::Status ApplyAdapter(const LoraAdapter& adapter, double sign);
  ModelConfig config_;
  DecoderOptions options_;
  at::Tensor embed_;  // [vocab, hidden]
  std::vector<Layer> layers_;
  at::Tensor norm_;
  at::Tensor lm_head_;         // [vocab, hidden]; the embedding when tied
  at::Tensor inv_freq_short_;  // [rotary_dim/2], fp32
  at::Tensor inv_freq_long_;   // longrope only
  double rope_mscale_ = 1.0;
};

// Mean cross-entropy of next-token prediction: logits [B,T,V] at position t
// predict labels[b, t+1]; labels of -100 are ignored (prompt, padding).
absl::StatusOr<at::Tensor> CausalLmLoss(const at::Tensor& logits, const at::Tensor& labels);

struct SaveOptions {
  at::ScalarType dtype = at::kFloat;
  uint64_t max_shard_bytes = 5'000'000'000ull;
  // Tokenizer and generation files are copied from here when given.
  std::string copy_files_from;
};

// Writes a complete Hugging Face model directory (config.json, weights,
// copied tokenizer files) with `merge` folded into the weights when given.
absl::Status SaveHfModel(const Decoder& decoder, const std::string& dir,
                         const LoraAdapter* merge = nullptr, const SaveOptions& options = {});

}  // namespace tunefleet::model
