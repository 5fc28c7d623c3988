#include "common/model/memory_estimate.h"

#include <algorithm>
#include <utility>

namespace tunefleet::model {
namespace {

// (in, out) of one projection; (0, 0) for a name the family does not have.
std::pair<int64_t, int64_t> ModuleDims(const ModelConfig& c, const std::string& name) {
  const int64_t h = c.hidden_size, q = c.q_size(), kv = c.kv_size(), I = c.intermediate_size;
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

absl::string_view PrecisionName(TrainingPrecision p) {
  return p == TrainingPrecision::kBf16Autocast ? "bfloat16" : "float32";
}

int64_t CountLoraParameters(const ModelConfig& c, int64_t rank,
                            const std::vector<std::string>& targets) {
  std::vector<std::string> names = targets;
  if (names.empty()) {
    names = c.fused_projections()
                ? std::vector<std::string>{"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
                : std::vector<std::string>{"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                           "gate_proj", "up_proj", "down_proj"};
  }
  int64_t per_layer = 0;
  for (const std::string& n : names) {
    auto [in, out] = ModuleDims(c, n);
    per_layer += rank * (in + out);
  }
  return c.num_hidden_layers * per_layer;
}

TrainingMemory EstimateTrainingMemory(const ModelConfig& c, const TrainingMemoryInput& in) {
  const int64_t h = c.hidden_size, q = c.q_size(), kv = c.kv_size(), I = c.intermediate_size,
                V = c.vocab_size, L = c.num_hidden_layers, nh = c.num_attention_heads;
  const bool bf16 = in.precision == TrainingPrecision::kBf16Autocast;
  const int64_t S = std::max<int64_t>(0, in.sequence_length);
  const int64_t E = in.longest_example > 0 ? std::min(S, in.longest_example) : S;
  const int64_t fb = bf16 ? 2 : 4;  // a frozen weight
  const int64_t ab = bf16 ? 2 : 4;  // an activation element
  const int64_t P = c.NumParameters();
  const int64_t head = std::max<int64_t>(0, in.num_labels) * h;  // fp32 label head
  const int64_t T = (in.full ? P : CountLoraParameters(c, in.lora_rank, in.lora_targets)) + head;

  TrainingMemory m;
  if (in.full) {
    m.weights = P * 4;
    if (bf16) m.weights += (P - (c.tie_word_embeddings ? 0 : V * h)) * 2;
    if (in.dpo) m.weights += P * fb;
  } else {
    m.weights = P * fb + (T - head) * 4;
  }
  m.weights += head * 4;
  m.gradients = T * 4;
  m.optimizer_state = T * 8;

  const int64_t A = 4 * h + 2 * q + 2 * kv + 4 * I;
  const int64_t layers = in.gradient_checkpointing ? L * h + A : L * A;
  const int64_t kept_layers = in.gradient_checkpointing ? 1 : L;  // attention state
  int64_t per_token = layers * ab;
  per_token += bf16 ? kept_layers * nh * 4 : kept_layers * 2 * nh * E * 4;
  const int64_t tokens =
      std::max<int64_t>(1, in.micro_batch_size) * E * (in.dpo ? 2 : 1);
  int64_t workspace = 0;
  if (in.num_labels <= 0) {
    // The fused vocabulary head (lm_head_loss.cc): the Jacobian toward the
    // hidden states kept per token, the logits one chunk of rows at a time.
    per_token += h * ab;
    const int64_t chunk_rows = std::max<int64_t>(16, (int64_t{16} << 20) / (4 * std::max<int64_t>(V, 1)));
    workspace = 2 * std::min(chunk_rows, tokens) * V * 4;
  }
  m.activations = tokens * per_token + workspace;
  return m;
}

}  // namespace tunefleet::model
