// Accelerator memory per rank, estimated before a job runs from the base
// model's shapes (config.json), the adapter, the optimizer and the
// micro-batch. Pure arithmetic: no I/O, no gRPC.
//
// Notation: h hidden_size, L layers, nh attention heads, nkv key/value heads,
// d head_dim (config's head_dim, else h / nh), q = nh*d, kv = nkv*d,
// I intermediate_size, V vocab_size, S max_sequence_length, m micro_batch_size,
// wb bytes per model weight (4: fp32, what the workers run today; 2: bf16),
// ab bytes per activation element (the same dtype as the weights).
// The decoder is taken as Llama-shaped (q, k, v, o projections; a gated MLP
// of three h x I matrices; two norms per layer); biases are ignored.
//
//   P (parameters)  = L * (h*q + 2*h*kv + q*h + 3*h*I + 2*h) + h
//                     + V*h * (tied embeddings ? 1 : 2)
//   LoRA parameters = sum over layers and target modules of rank * (in + out)
//                     (q_proj h->q, k_proj/v_proj h->kv, o_proj q->h,
//                     gate_proj/up_proj h->I, down_proj I->h; Phi-3's fused
//                     qkv_proj h->q+2kv and gate_up_proj h->2I). Empty
//                     targets: every projection of the family (fused for
//                     phi3). Unknown names count nothing.
//   trained T       = LoRA parameters (LoRA) or P (full)
//
//   weights         = P*wb  (+ T*4 for the fp32 LoRA adapter)
//                     (+ P*wb for full DPO: the frozen reference copy; LoRA
//                     DPO's reference is the base with the adapter off)
//   gradients       = T*4 (LoRA adapters are fp32) or P*wb (full)
//   optimizer_state = T*8  (AdamW: two fp32 moments per trained parameter)
//   activations     = tokens * per_token * ab, tokens = m * S * (DPO ? 2 : 1)
//     per layer and token, kept for backward:
//       A = 4*h + 2*q + 2*kv + 2*nh*S + 4*I
//       (residual and norm output twice; q, k, v; the score and probability
//       rows over S keys; the attention output; gate, up, act(gate), product)
//     per_token = L*A + 2*V               without gradient checkpointing
//     per_token = L*h + A + 2*V           with it (each layer's input is kept;
//                                         one layer is recomputed at a time)
//     (2*V: the logits and their log-softmax)
//   total           = weights + gradients + optimizer_state + activations
//
// Classification (K labels, K > 0): the worker trains an fp32 label head
// [K, h] on the last token instead of the vocabulary logits, so the head
// adds K*h to T (with LoRA and full alike: weights += K*h*4, gradients
// K*h*4, optimizer K*h*8) and per_token drops its 2*V (the K logits per
// sequence are negligible). The decoder's own lm_head stays in P (loaded).
//
// Activations assume every sequence of the micro-batch is S tokens long
// (packing fills them; unpacked short examples use less). Framework
// workspace, allocator fragmentation and fp32 master weights for bf16 full
// fine-tuning are not counted: for full-length sequences read it as a lower
// bound.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tunefleet/v1/jobs.pb.h"

namespace tunefleet::scheduler {

struct ModelShape {
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t intermediate_size = 0;
  int64_t vocab_size = 0;
  bool tied_embeddings = false;
  // Phi-3: qkv_proj and gate_up_proj are single modules.
  bool fused_projections = false;
};

// P above.
int64_t CountParameters(const ModelShape& s);
// The LoRA parameters above (targets empty: the family's every projection).
int64_t CountLoraParameters(const ModelShape& s, int64_t rank,
                            const std::vector<std::string>& targets);

struct MemoryEstimateInput {
  ModelShape shape;
  bool full = false;  // adapter full (else LoRA)
  int64_t lora_rank = 8;
  std::vector<std::string> lora_targets;
  int64_t weight_bytes = 4;
  int64_t micro_batch_size = 1;
  int64_t sequence_length = 0;
  bool gradient_checkpointing = false;
  bool dpo = false;
  // Classification: the number of labels (0: a chat job, vocabulary logits).
  int64_t num_labels = 0;
};

// The formula above; measured_peak_bytes stays 0.
v1::MemoryEstimate EstimateMemory(const MemoryEstimateInput& in);

}  // namespace tunefleet::scheduler
