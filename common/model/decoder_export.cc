// Decoder: export to a Hugging Face directory (safetensors shards and
// config.json), optionally with a LoRA adapter merged in.
#include "common/model/decoder.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/base/status_macros.h"
#include "common/model/decoder_internal.h"
#include "common/model/file_util.h"
#include "common/model/torch_compat.h"
#include "common/model/torch_status.h"

namespace tunefleet::model {
namespace {

namespace fs = std::filesystem;

std::string DtypeConfigName(at::ScalarType t) {
  switch (t) {
    case at::kBFloat16:
      return "bfloat16";
    case at::kHalf:
      return "float16";
    default:
      return "float32";
  }
}

}  // namespace

using internal::LayerPrefix;
using internal::ProjBiasName;
using internal::ProjWeightName;

absl::StatusOr<NamedTensors> Decoder::HfTensors(const LoraAdapter* merge,
                                                at::ScalarType dtype) const {
  if (merge != nullptr && merge->num_layers() != config_.num_hidden_layers) {
    return absl::InvalidArgumentError("HfTensors: adapter does not match the model's layer count");
  }
  return internal::CatchTorch("Decoder::HfTensors", [&]() -> absl::StatusOr<NamedTensors> {
    at::NoGradGuard no_grad;
    NamedTensors out;
    auto add = [&](std::string name, const at::Tensor& t) {
      out.emplace_back(std::move(name), t.to(dtype));
    };
    add("model.embed_tokens.weight", embed_);
    for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
      const Layer& layer = layers_[i];
      add(LayerPrefix(i) + "input_layernorm.weight", layer.input_norm);
      for (Proj p : ModelProjections(config_)) {
        const Linear& lin = layer.proj[static_cast<int>(p)];
        at::Tensor w = lin.weight;
        if (merge != nullptr && merge->module(i, p).defined()) {
          const LoraAdapter::Module& m = merge->module(i, p);
          w = w.to(at::kFloat) +
              at::matmul(m.b.to(w.device(), at::kFloat), m.a.to(w.device(), at::kFloat)) *
                  merge->scaling();
        }
        add(ProjWeightName(i, p), w);
        if (lin.bias.defined()) add(ProjBiasName(i, p), lin.bias);
      }
      add(LayerPrefix(i) + "post_attention_layernorm.weight", layer.post_attention_norm);
    }
    add("model.norm.weight", norm_);
    if (!config_.tie_word_embeddings) add("lm_head.weight", lm_head_);
    return out;
  });
}

absl::Status SaveHfModel(const Decoder& decoder, const std::string& dir, const LoraAdapter* merge,
                         const SaveOptions& options) {
  const ModelConfig& c = decoder.config();
  nlohmann::ordered_json config = nlohmann::ordered_json::parse(c.raw_json, nullptr, false);
  if (config.is_discarded() || !config.is_object()) {
    return absl::FailedPreconditionError("SaveHfModel: the decoder's config has no JSON to write");
  }
  config["torch_dtype"] = DtypeConfigName(options.dtype);
  TF_ASSIGN_OR_RETURN(NamedTensors tensors, decoder.HfTensors(merge, options.dtype));
  TF_RETURN_IF_ERROR(WriteSafetensorsDir(dir, tensors, options.max_shard_bytes));
  TF_RETURN_IF_ERROR(
      WriteStringAtomically((fs::path(dir) / "config.json").string(), config.dump(2) + "\n"));
  if (!options.copy_files_from.empty()) {
    for (const char* name : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                             "tokenizer.model", "added_tokens.json", "generation_config.json"}) {
      fs::path src = fs::path(options.copy_files_from) / name;
      std::error_code ec;
      if (!fs::exists(src, ec)) continue;
      TF_ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(src.string()));
      TF_RETURN_IF_ERROR(WriteStringAtomically((fs::path(dir) / name).string(), bytes));
    }
  }
  return absl::OkStatus();
}

}  // namespace tunefleet::model
