#include "services/scheduler/memory_estimate.h"

#include <algorithm>
#include <utility>

namespace tunefleet::scheduler {

namespace {

int64_t HeadDim(const ModelShape& s) {
  if (s.head_dim > 0) return s.head_dim;
  return s.num_heads > 0 ? s.hidden_size / s.num_heads : s.hidden_size;
}

// (in, out) of one projection; (0, 0) for a name the family does not have.
std::pair<int64_t, int64_t> ModuleDims(const ModelShape& s, const std::string& name) {
  const int64_t h = s.hidden_size, d = HeadDim(s), q = s.num_heads * d, kv = s.num_kv_heads * d,
                I = s.intermediate_size;
  if (name == "q_proj") return {h, q};
  if (name == "k_proj" || name == "v_proj") return {h, kv};
  if (name == "o_proj") return {q, h};
  if (name == "gate_proj" || name == "up_proj") return {h, I};
  if (name == "down_proj") return {I, h};
  if (name == "qkv_proj") return {h, q + 2 * kv};
  if (name == "gate_up_proj") return {h, 2 * I};
  return {0, 0};
}

}  // namespace

int64_t CountParameters(const ModelShape& s) {
  const int64_t h = s.hidden_size, d = HeadDim(s), q = s.num_heads * d, kv = s.num_kv_heads * d,
                I = s.intermediate_size;
  const int64_t layer = h * q + 2 * h * kv + q * h + 3 * h * I + 2 * h;
  return s.num_layers * layer + h + s.vocab_size * h * (s.tied_embeddings ? 1 : 2);
}

int64_t CountLoraParameters(const ModelShape& s, int64_t rank,
                            const std::vector<std::string>& targets) {
  std::vector<std::string> names = targets;
  if (names.empty()) {
    names = s.fused_projections
                ? std::vector<std::string>{"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
                : std::vector<std::string>{"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                           "gate_proj", "up_proj", "down_proj"};
  }
  int64_t per_layer = 0;
  for (const std::string& n : names) {
    auto [in, out] = ModuleDims(s, n);
    per_layer += rank * (in + out);
  }
  return s.num_layers * per_layer;
}

v1::MemoryEstimate EstimateMemory(const MemoryEstimateInput& in) {
  const ModelShape& s = in.shape;
  const int64_t h = s.hidden_size, d = HeadDim(s), q = s.num_heads * d, kv = s.num_kv_heads * d,
                I = s.intermediate_size, V = s.vocab_size, L = s.num_layers;
  const int64_t S = std::max<int64_t>(0, in.sequence_length);
  const int64_t wb = in.weight_bytes, ab = in.weight_bytes;
  const int64_t P = CountParameters(s);
  const int64_t T = in.full ? P : CountLoraParameters(s, in.lora_rank, in.lora_targets);

  int64_t weights = P * wb;
  if (!in.full) weights += T * 4;
  if (in.full && in.dpo) weights += P * wb;
  const int64_t head = std::max<int64_t>(0, in.num_labels) * h;  // fp32 label head
  weights += head * 4;
  const int64_t gradients = (in.full ? P * wb : T * 4) + head * 4;
  const int64_t optimizer = (T + head) * 8;
  const int64_t A = 4 * h + 2 * q + 2 * kv + 2 * s.num_heads * S + 4 * I;
  const int64_t logits = in.num_labels > 0 ? 0 : 2 * V;
  const int64_t per_token = in.gradient_checkpointing ? L * h + A + logits : L * A + logits;
  const int64_t tokens = std::max<int64_t>(1, in.micro_batch_size) * S * (in.dpo ? 2 : 1);
  const int64_t activations = tokens * per_token * ab;

  v1::MemoryEstimate out;
  out.set_weights_bytes(weights);
  out.set_gradients_bytes(gradients);
  out.set_optimizer_state_bytes(optimizer);
  out.set_activations_bytes(activations);
  out.set_total_bytes(weights + gradients + optimizer + activations);
  return out;
}

}  // namespace tunefleet::scheduler
