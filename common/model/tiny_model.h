// Writes a small, seeded, Hugging Face-format Phi-3 directory for tests,
// demos and benchmarks; the same loader reads it and a real Phi-3-mini.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace tunefleet::model {

struct TinyModelOptions {
  uint64_t seed = 0;
  int64_t num_layers = 2;
  int64_t hidden_size = 64;
  int64_t num_heads = 4;
  int64_t num_kv_heads = 4;
  int64_t intermediate_size = 128;
  // Phi-3's embedding size: the 32000-token Llama-2 vocabulary, its added
  // chat tokens (32000-32010) and padding to a multiple of 64.
  int64_t vocab_size = 32064;
  int64_t max_position_embeddings = 4096;
  // With long_context, a 128k-style longrope config: positions past
  // original_max_position_embeddings use the long factors.
  bool long_context = false;
  int64_t original_max_position_embeddings = 4096;
  std::string dtype = "float32";  // or "bfloat16", "float16"
  // Multiplies lm_head.weight. At the initializer's std 0.02 a tiny model's
  // logits stay near +-1, so training that does not touch lm_head (LoRA)
  // can never make it confident; a demo model that must visibly learn uses
  // a larger scale (e.g. 40). 1 leaves the bytes as they always were.
  double lm_head_scale = 1.0;
  uint64_t max_shard_bytes = 5'000'000'000ull;
};

// Writes config.json, model.safetensors (or shards) and
// generation_config.json into `dir` (created if needed). The bytes depend
// only on the options: the same seed gives the same files on any machine.
// Tokenizer files are not written here (the text library has them).
absl::Status WriteTinyPhi3(const std::string& dir, const TinyModelOptions& options);

}  // namespace tunefleet::model
