// Training memory per rank, estimated before a run from the model's shapes
// (config.json), the adapter, the micro-batch and the precision the worker
// trains in. Pure arithmetic, torch-free: the scheduler estimates with it at
// admission (and places jobs only on GPUs that hold them), the worker reports
// it beside the peak it really used.
//
// Notation: h hidden_size, L layers, nh attention heads, q = nh*d and
// kv = nkv*d (d head_dim), I intermediate_size, V vocab_size, S the
// sequence length, m micro_batch_size, P = ModelConfig::NumParameters(),
// T the trained parameters: the LoRA parameters (LoRA) or P (full).
//
//   LoRA parameters = sum over layers and target modules of rank * (in + out)
//                     (q_proj h->q, k_proj/v_proj h->kv, o_proj q->h,
//                     gate_proj/up_proj h->I, down_proj I->h; Phi-3's fused
//                     qkv_proj h->q+2kv and gate_up_proj h->2I). Empty
//                     targets: every projection of the family (fused for
//                     phi3). Unknown names count nothing.
//
// Two precisions, as the worker runs them (services/trainer/worker):
//   kFp32 (CPU)          every weight and activation in fp32.
//   kBf16Autocast (GPU)  frozen weights (LoRA's base, full DPO's reference)
//                        in bf16; trained weights, their gradients and
//                        AdamW's moments in fp32; the products autocast runs
//                        in bf16. Full fine-tuning also holds autocast's bf16
//                        copies of the trained matrices during a step (every
//                        matrix but an untied input embedding, which is read
//                        by lookup: P - V*h, or P when tied). Attention runs
//                        through PyTorch's fused kernels, which keep no S x S
//                        scores (one fp32 log-sum-exp per head and token).
//
//   weights         = frozen P*fb (LoRA: + T*4 for the fp32 adapter)
//                     or P*4 (+ P*2 - V*h*2 untied: the bf16 copies) (full)
//                     (+ P*fb for full DPO: the frozen reference copy; LoRA
//                     DPO's reference is the base with the adapter off)
//                     fb: 4 (fp32) or 2 (bf16)
//   gradients       = T*4
//   optimizer_state = T*8  (two fp32 moments per trained parameter)
//   activations     = tokens * per_token, tokens = m * S * (DPO ? 2 : 1)
//     per layer and token, kept for backward, in elements:
//       A = 4*h + 2*q + 2*kv + 4*I (+ 2*nh*S in fp32: the score and
//       probability rows over S keys, without fused attention)
//       (residual and norm output twice; q, k, v; the attention output;
//       gate, up, act(gate), product)
//     layers = L*A (every layer kept), or L*h + A with gradient checkpointing
//       (each layer's input kept, one layer recomputed at a time)
//     per_token = layers * ab (+ nh*4 per layer: log-sum-exp, fused
//       attention) + h*ab (ab: 4 fp32, 2 bf16)
//       (the fused vocabulary head, common/model/lm_head_loss.cc, keeps the
//       [tokens, h] Jacobian of the labels' log-probabilities toward the
//       hidden states; the [rows, V] logits exist one chunk at a time)
//     activations = tokens * per_token + workspace, workspace = the head's
//       chunk: 2 * min(C, tokens) * V * 4 bytes, C = max(16, 16 MiB / (4*V))
//   With the data's longest example E known (E = min(E, S); unknown: S):
//   attention's scores span at most E keys (2*nh*E for 2*nh*S), and a
//   micro-batch holds at most m * E tokens (tokens = m * E * (DPO ? 2 : 1)),
//   packed or not: the worker packs a micro-batch's m examples into one row
//   (services/trainer/worker/data.h), padded rows are as long as the
//   longest of them.
//   total           = weights + gradients + optimizer_state + activations
//
// Classification (K labels, K > 0): an fp32 label head [K, h] on the last
// token replaces the vocabulary head: K*h joins T (weights K*h*4, gradients
// K*h*4, optimizer K*h*8) and neither the h*ab per token nor the workspace
// is counted. The decoder's own lm_head stays in P (loaded).
//
// Activations are the worst case of the data: every row of the micro-batch
// as long as it can be and, for the scores (fp32, without fused attention),
// every example as long as the longest (short examples keep less).
// Framework workspace, the CUDA context and allocator fragmentation are not
// counted.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "common/model/model_config.h"

namespace tunefleet::model {

enum class TrainingPrecision { kFp32, kBf16Autocast };

// "float32" | "bfloat16"
absl::string_view PrecisionName(TrainingPrecision p);

// The LoRA parameters above (targets empty: the family's every projection).
int64_t CountLoraParameters(const ModelConfig& c, int64_t rank,
                            const std::vector<std::string>& targets);

struct TrainingMemoryInput {
  bool full = false;  // full fine-tuning (else LoRA)
  int64_t lora_rank = 8;
  std::vector<std::string> lora_targets;
  TrainingPrecision precision = TrainingPrecision::kFp32;
  int64_t micro_batch_size = 1;
  int64_t sequence_length = 0;
  bool gradient_checkpointing = false;
  bool dpo = false;
  // Classification: the number of labels (0: a chat job, vocabulary logits).
  int64_t num_labels = 0;
  // The data's longest example in tokens (0: unknown, taken as S).
  int64_t longest_example = 0;
};

struct TrainingMemory {
  int64_t weights = 0;
  int64_t gradients = 0;
  int64_t optimizer_state = 0;
  int64_t activations = 0;
  int64_t total() const { return weights + gradients + optimizer_state + activations; }
};

TrainingMemory EstimateTrainingMemory(const ModelConfig& c, const TrainingMemoryInput& in);

}  // namespace tunefleet::model
