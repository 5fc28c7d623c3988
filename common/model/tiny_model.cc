#include "common/model/tiny_model.h"

#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "common/model/file_util.h"
#include "common/model/random.h"
#include "common/model/safetensors.h"
#include "common/model/torch_status.h"

namespace tunefleet::model {

absl::Status WriteTinyPhi3(const std::string& dir, const TinyModelOptions& o) {
  namespace fs = std::filesystem;
  if (o.num_layers <= 0 || o.hidden_size <= 0 || o.num_heads <= 0 || o.num_kv_heads <= 0 ||
      o.intermediate_size <= 0 || o.vocab_size <= 0 || o.hidden_size % o.num_heads != 0 ||
      o.num_heads % o.num_kv_heads != 0 || (o.hidden_size / o.num_heads) % 2 != 0) {
    return absl::InvalidArgumentError(
        "tiny model: sizes must be positive, hidden a multiple of heads with an even head size, "
        "heads a multiple "
        "of kv heads");
  }
  at::ScalarType dtype;
  if (o.dtype == "float32") {
    dtype = at::kFloat;
  } else if (o.dtype == "bfloat16") {
    dtype = at::kBFloat16;
  } else if (o.dtype == "float16") {
    dtype = at::kHalf;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("tiny model: unknown dtype '", o.dtype, "'"));
  }
  const int64_t head_dim = o.hidden_size / o.num_heads;
  const int64_t max_pos =
      o.long_context
          ? std::max<int64_t>(o.max_position_embeddings, 32 * o.original_max_position_embeddings)
          : o.max_position_embeddings;

  nlohmann::ordered_json config;
  config["_name_or_path"] = "tunefleet/tiny-phi3";
  config["architectures"] = {"Phi3ForCausalLM"};
  config["attention_bias"] = false;
  config["attention_dropout"] = 0.0;
  config["bos_token_id"] = 1;
  config["embd_pdrop"] = 0.0;
  config["eos_token_id"] = 32000;
  config["hidden_act"] = "silu";
  config["hidden_size"] = o.hidden_size;
  config["initializer_range"] = 0.02;
  config["intermediate_size"] = o.intermediate_size;
  config["max_position_embeddings"] = max_pos;
  config["model_type"] = "phi3";
  config["num_attention_heads"] = o.num_heads;
  config["num_hidden_layers"] = o.num_layers;
  config["num_key_value_heads"] = o.num_kv_heads;
  config["original_max_position_embeddings"] =
      o.long_context ? o.original_max_position_embeddings : max_pos;
  config["pad_token_id"] = 32000;
  config["resid_pdrop"] = 0.0;
  config["rms_norm_eps"] = 1e-05;
  if (o.long_context) {
    // Shaped like Phi-3-mini-128k's: short factors near 1, long ones rising
    // with the wavelength.
    std::vector<double> s, l;
    const int64_t half = head_dim / 2;
    for (int64_t i = 0; i < half; ++i) {
      const double x = static_cast<double>(i) / static_cast<double>(std::max<int64_t>(half - 1, 1));
      s.push_back(1.0 + 0.05 * x);
      l.push_back(1.0 + 40.0 * x * x);
    }
    config["rope_scaling"] = {{"long_factor", l}, {"short_factor", s}, {"type", "longrope"}};
  } else {
    config["rope_scaling"] = nullptr;
  }
  config["rope_theta"] = 10000.0;
  config["sliding_window"] = o.long_context ? max_pos : std::min<int64_t>(2047, max_pos);
  config["tie_word_embeddings"] = false;
  config["torch_dtype"] = o.dtype;
  config["transformers_version"] = "4.40.2";
  config["use_cache"] = true;
  config["vocab_size"] = o.vocab_size;

  nlohmann::ordered_json generation;
  generation["_from_model_config"] = true;
  generation["bos_token_id"] = 1;
  generation["eos_token_id"] = {32000, 32001, 32007};  // <|endoftext|>, <|assistant|>, <|end|>
  generation["pad_token_id"] = 32000;
  generation["transformers_version"] = "4.40.2";

  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    return absl::InternalError(absl::StrCat(dir, ": cannot create directory: ", ec.message()));

  TF_RETURN_IF_ERROR(internal::CatchTorch("tiny model", [&]() -> absl::Status {
    SplitMix64 rng(o.seed);
    const double bound = 0.02 * std::sqrt(3.0);  // uniform with std 0.02
    NamedTensors tensors;
    auto random = [&](std::string name, std::vector<int64_t> shape, double scale = 1.0) {
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      at::Tensor t = at::empty(shape, at::kFloat);
      float* p = t.data_ptr<float>();
      for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(rng.Symmetric(bound) * scale);
      tensors.emplace_back(std::move(name), t.to(dtype));
    };
    auto ones = [&](std::string name, int64_t n) {
      tensors.emplace_back(std::move(name), at::ones({n}, dtype));
    };
    const int64_t h = o.hidden_size, qkv = (o.num_heads + 2 * o.num_kv_heads) * head_dim;
    random("model.embed_tokens.weight", {o.vocab_size, h});
    for (int64_t i = 0; i < o.num_layers; ++i) {
      const std::string p = absl::StrCat("model.layers.", i, ".");
      ones(p + "input_layernorm.weight", h);
      random(p + "self_attn.qkv_proj.weight", {qkv, h});
      random(p + "self_attn.o_proj.weight", {h, o.num_heads * head_dim});
      random(p + "mlp.gate_up_proj.weight", {2 * o.intermediate_size, h});
      random(p + "mlp.down_proj.weight", {h, o.intermediate_size});
      ones(p + "post_attention_layernorm.weight", h);
    }
    ones("model.norm.weight", h);
    random("lm_head.weight", {o.vocab_size, h}, o.lm_head_scale);
    return WriteSafetensorsDir(dir, tensors, o.max_shard_bytes);
  }));
  TF_RETURN_IF_ERROR(
      WriteStringAtomically((fs::path(dir) / "config.json").string(), config.dump(2) + "\n"));
  return WriteStringAtomically((fs::path(dir) / "generation_config.json").string(),
                               generation.dump(2) + "\n");
}

}  // namespace tunefleet::model
