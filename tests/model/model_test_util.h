// Shared helpers of the model tests: tolerances, threads and tiny models.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <stdlib.h>

#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/model/safetensors.h"
#include "common/model/tiny_model.h"
#include "tests/testing/temp_dir.h"

namespace tunefleet::model::testing {

// The project's temporary directory for tests (tests/testing).
using ScopedTempDir = ::tunefleet::testing::TempDir;

inline double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

inline void UseFewThreads() { at::set_num_threads(2); }

// A tiny Phi-3 (fused projections, 4 heads of 16).
inline TinyModelOptions TinyPhi3Options(uint64_t seed = 1) {
  TinyModelOptions o;
  o.seed = seed;
  o.num_layers = 2;
  o.hidden_size = 64;
  o.num_heads = 4;
  o.num_kv_heads = 4;
  o.intermediate_size = 96;
  return o;
}

// A tiny Mistral (separate projections, grouped-query attention 4/2, a
// sliding window of 5) with random weights: the Llama-family code paths.
inline void WriteTinyMistral(const std::string& dir, uint64_t seed) {
  const int64_t h = 32, heads = 4, kv = 2, hd = 8, inter = 48, vocab = 300, layers = 2;
  nlohmann::json config = {{"model_type", "mistral"},
                           {"architectures", {"MistralForCausalLM"}},
                           {"hidden_size", h},
                           {"intermediate_size", inter},
                           {"num_hidden_layers", layers},
                           {"num_attention_heads", heads},
                           {"num_key_value_heads", kv},
                           {"vocab_size", vocab},
                           {"max_position_embeddings", 128},
                           {"rms_norm_eps", 1e-5},
                           {"rope_theta", 500000.0},
                           {"sliding_window", 5},
                           {"bos_token_id", 1},
                           {"eos_token_id", 2},
                           {"hidden_act", "silu"},
                           {"tie_word_embeddings", false},
                           {"torch_dtype", "float32"}};
  std::filesystem::create_directories(dir);
  FILE* f = std::fopen((dir + "/config.json").c_str(), "w");
  std::string text = config.dump(2);
  std::fwrite(text.data(), 1, text.size(), f);
  std::fclose(f);
  at::manual_seed(static_cast<int64_t>(seed));
  NamedTensors t;
  auto rnd = [&](std::string name, std::vector<int64_t> shape) {
    t.emplace_back(name, at::randn(shape) * 0.1);
  };
  rnd("model.embed_tokens.weight", {vocab, h});
  for (int64_t i = 0; i < layers; ++i) {
    std::string p = absl::StrCat("model.layers.", i, ".");
    t.emplace_back(p + "input_layernorm.weight", at::ones({h}) + at::randn({h}) * 0.1);
    rnd(p + "self_attn.q_proj.weight", {heads * hd, h});
    rnd(p + "self_attn.k_proj.weight", {kv * hd, h});
    rnd(p + "self_attn.v_proj.weight", {kv * hd, h});
    rnd(p + "self_attn.o_proj.weight", {h, heads * hd});
    rnd(p + "mlp.gate_proj.weight", {inter, h});
    rnd(p + "mlp.up_proj.weight", {inter, h});
    rnd(p + "mlp.down_proj.weight", {h, inter});
    t.emplace_back(p + "post_attention_layernorm.weight", at::ones({h}));
  }
  t.emplace_back("model.norm.weight", at::ones({h}));
  rnd("lm_head.weight", {vocab, h});
  if (!WriteSafetensorsDir(dir, t).ok())
    throw std::runtime_error("writing the tiny mistral failed");
}

}  // namespace tunefleet::model::testing
