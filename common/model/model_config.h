// config.json of a Hugging Face decoder (Phi-3, Llama, Mistral), parsed and
// validated. Torch-free: the scheduler and the fuzzer use it too.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tunefleet::model {

enum class ModelFamily { kPhi3, kLlama, kMistral };

struct RopeScaling {
  enum class Type {
    kNone,
    kLinear,    // positions divided by `factor`
    kLongRope,  // Phi-3 128k ("longrope", formerly "su"): per-dimension factors
    kLlama3,    // Llama-3.1 wavelength-dependent scaling
  };
  Type type = Type::kNone;
  double factor = 1.0;
  // longrope: one factor per rotary frequency (rotary_dim / 2 each).
  std::vector<double> short_factor;
  std::vector<double> long_factor;
  // longrope: the cos/sin multiplier; derived from the context extension
  // when the config does not give `attention_factor`.
  double attention_factor = 1.0;
  // llama3
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 0;
};

struct ModelConfig {
  std::string model_type;  // "phi3", "llama", "mistral"
  ModelFamily family = ModelFamily::kLlama;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;    // hidden_size / num_attention_heads unless given
  int64_t rotary_dim = 0;  // head_dim * partial_rotary_factor
  int64_t max_position_embeddings = 0;
  // Phi-3: the pre-extension context; positions beyond it use long factors.
  int64_t original_max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  std::optional<int64_t> sliding_window;  // each query sees this many keys, itself included
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  bool mlp_bias = false;
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;
  std::optional<int64_t> pad_token_id;
  std::string torch_dtype;  // as written, e.g. "bfloat16"; may be empty
  // The document as read, so that a saved model keeps fields we do not model.
  std::string raw_json;

  // Phi-3 stores q/k/v and gate/up as fused matrices.
  bool fused_projections() const { return family == ModelFamily::kPhi3; }
  int64_t q_size() const { return num_attention_heads * head_dim; }
  int64_t kv_size() const { return num_key_value_heads * head_dim; }
  // Parameters of the decoder (embeddings and head included).
  int64_t NumParameters() const;
};

// Parses config.json text; `source` names it in errors ("…/config.json: missing
// field 'hidden_size'"). InvalidArgument for a missing or ill-typed field, an
// unsupported model_type, rope_scaling or activation, or inconsistent sizes.
absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text,
                                             absl::string_view source = "config.json");

// Reads and parses `path` (a config.json file, or a directory holding one).
// The eos_token_id(s) of a generation_config.json beside it are added to
// eos_token_ids.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path);

}  // namespace tunefleet::model
