// Decoder: loading Hugging Face weights and the RoPE variants (default,
// linear, Phi-3 longrope, Llama 3), and the weight names shared with export.
#include "common/model/decoder.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/base/status_macros.h"
#include "common/model/decoder_internal.h"
#include "common/model/file_util.h"
#include "common/model/torch_compat.h"
#include "common/model/torch_status.h"

namespace tunefleet::model {
namespace internal {

std::string ShapeString(at::IntArrayRef shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

std::string LayerPrefix(int64_t i) { return absl::StrCat("model.layers.", i, "."); }

std::string ProjWeightName(int64_t layer, Proj p) {
  return absl::StrCat(LayerPrefix(layer), ProjParent(p), ".", ProjName(p), ".weight");
}

std::string ProjBiasName(int64_t layer, Proj p) {
  return absl::StrCat(LayerPrefix(layer), ProjParent(p), ".", ProjName(p), ".bias");
}

bool ProjHasBias(const ModelConfig& c, Proj p) {
  switch (p) {
    case Proj::kQ:
    case Proj::kK:
    case Proj::kV:
    case Proj::kO:
      return c.attention_bias;
    case Proj::kGate:
    case Proj::kUp:
    case Proj::kDown:
      return c.mlp_bias;
    default:
      return false;
  }
}

at::Tensor CausalKeep(const at::Tensor& q_pos, int64_t span, std::optional<int64_t> window) {
  at::Tensor key_idx = at::arange(span, q_pos.options()).view({1, 1, span});
  at::Tensor q = q_pos.unsqueeze(-1);  // [B,T,1]
  at::Tensor keep = key_idx <= q;
  if (window) keep = keep.logical_and(q - key_idx < *window);
  return keep.unsqueeze(1);  // [B,1,T,span]
}

}  // namespace internal

namespace {

// Base inverse frequencies the way transformers computes them (in fp32).
at::Tensor BaseInvFreq(const ModelConfig& c) {
  at::Tensor exponent =
      at::arange(0, c.rotary_dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(c.rotary_dim);
  return at::pow(at::scalar_tensor(c.rope_theta, at::kFloat),
                 exponent);  // base**(2i/d); inverted by callers
}

}  // namespace

using internal::LayerPrefix;
using internal::ProjBiasName;
using internal::ProjHasBias;
using internal::ProjWeightName;
using internal::ShapeString;

absl::StatusOr<DecoderOptions> DecoderOptionsFor(const std::string& device, const std::string& dtype) {
  DecoderOptions o;
  if (device == "cpu") {
    o.device = at::kCPU;
  } else if (device == "cuda" || absl::StartsWith(device, "cuda:")) {
    int index = 0;
    if (device != "cuda" && (!absl::SimpleAtoi(device.substr(5), &index) || index < 0))
      return absl::InvalidArgumentError(absl::StrCat("device: \"", device, "\" is not cuda:N"));
    if (!at::hasCUDA()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "device ", device, ": no CUDA here (this libtorch is built without it, or the machine "
          "has no GPU)"));
    }
    const int64_t count = at::getNumGPUs();
    if (index >= count) {
      return absl::FailedPreconditionError(
          absl::StrCat("device ", device, ": this machine has ", count, " CUDA devices"));
    }
    o.device = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index));
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("device: \"", device, "\" is not cpu, cuda or cuda:N"));
  }
  if (dtype == "auto") {
    o.dtype = o.device.is_cuda() ? at::kBFloat16 : at::kFloat;
  } else if (dtype == "float32") {
    o.dtype = at::kFloat;
  } else if (dtype == "bfloat16") {
    o.dtype = at::kBFloat16;
  } else if (dtype == "float16" && o.device.is_cuda()) {
    o.dtype = at::kHalf;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "dtype: \"", dtype, "\" is not auto, float32, bfloat16",
        o.device.is_cuda() ? " or float16" : " (float16 runs on CUDA only)"));
  }
  return o;
}

absl::StatusOr<Decoder> Decoder::Load(const std::string& dir, const DecoderOptions& options) {
  TF_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir));
  TF_ASSIGN_OR_RETURN(SafetensorsDir weights, SafetensorsDir::Open(dir));
  return FromWeights(config, weights, options);
}

absl::StatusOr<Decoder> Decoder::FromWeights(const ModelConfig& config,
                                             const SafetensorsDir& weights,
                                             const DecoderOptions& options) {
  if (options.autocast_dtype != at::ScalarType::Undefined) {
    const bool cuda = options.device.is_cuda();
    if (!(options.device.is_cpu() || cuda) ||
        !(options.autocast_dtype == at::kBFloat16 || (cuda && options.autocast_dtype == at::kHalf))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "autocast to ", c10::toString(options.autocast_dtype), " on ", options.device.str(),
          ": autocast takes bfloat16 on the CPU, bfloat16 or float16 on CUDA"));
    }
  }
  return internal::CatchTorch("loading decoder", [&]() -> absl::StatusOr<Decoder> {
    Decoder d;
    d.config_ = config;
    d.options_ = options;
    const ModelConfig& c = d.config_;
    auto get = [&](const std::string& name,
                   std::vector<int64_t> shape) -> absl::StatusOr<at::Tensor> {
      if (!weights.Contains(name)) {
        return absl::InvalidArgumentError(
            absl::StrCat(weights.PathOf(name), ": missing tensor '", name, "'"));
      }
      TF_ASSIGN_OR_RETURN(at::Tensor t, weights.Get(name));
      if (t.sizes() != at::IntArrayRef(shape)) {
        return absl::InvalidArgumentError(absl::StrCat(weights.PathOf(name), ": tensor '", name,
                                                       "' has shape ", ShapeString(t.sizes()),
                                                       ", expected ", ShapeString(shape)));
      }
      if (!at::isFloatingType(t.scalar_type())) {
        return absl::InvalidArgumentError(absl::StrCat(weights.PathOf(name), ": tensor '", name,
                                                       "' is not floating point (",
                                                       c10::toString(t.scalar_type()), ")"));
      }
      return t.to(options.device, options.dtype);
    };
    const int64_t h = c.hidden_size;
    TF_ASSIGN_OR_RETURN(d.embed_, get("model.embed_tokens.weight", {c.vocab_size, h}));
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      Layer layer;
      TF_ASSIGN_OR_RETURN(layer.input_norm, get(LayerPrefix(i) + "input_layernorm.weight", {h}));
      TF_ASSIGN_OR_RETURN(layer.post_attention_norm,
                          get(LayerPrefix(i) + "post_attention_layernorm.weight", {h}));
      for (Proj p : ModelProjections(c)) {
        auto [out, in] = ProjShape(c, p);
        Linear& lin = layer.proj[static_cast<int>(p)];
        TF_ASSIGN_OR_RETURN(lin.weight, get(ProjWeightName(i, p), {out, in}));
        if (ProjHasBias(c, p)) {
          TF_ASSIGN_OR_RETURN(lin.bias, get(ProjBiasName(i, p), {out}));
        }
      }
      d.layers_.push_back(std::move(layer));
    }
    TF_ASSIGN_OR_RETURN(d.norm_, get("model.norm.weight", {h}));
    if (c.tie_word_embeddings && !weights.Contains("lm_head.weight")) {
      d.lm_head_ = d.embed_;
    } else {
      TF_ASSIGN_OR_RETURN(d.lm_head_, get("lm_head.weight", {c.vocab_size, h}));
    }

    at::Tensor base = BaseInvFreq(c);
    const RopeScaling& rs = c.rope_scaling;
    switch (rs.type) {
      case RopeScaling::Type::kNone:
        d.inv_freq_short_ = base.reciprocal();
        break;
      case RopeScaling::Type::kLinear:
        d.inv_freq_short_ = base.reciprocal() / rs.factor;
        break;
      case RopeScaling::Type::kLongRope: {
        at::Tensor s = at::tensor(rs.short_factor, at::kDouble).to(at::kFloat);
        at::Tensor l = at::tensor(rs.long_factor, at::kDouble).to(at::kFloat);
        d.inv_freq_short_ = (s * base).reciprocal();
        d.inv_freq_long_ = (l * base).reciprocal();
        d.rope_mscale_ = rs.attention_factor;
        break;
      }
      case RopeScaling::Type::kLlama3: {
        at::Tensor inv = base.reciprocal();
        const double old_ctx = static_cast<double>(rs.original_max_position_embeddings);
        const double low_wavelen = old_ctx / rs.low_freq_factor;
        const double high_wavelen = old_ctx / rs.high_freq_factor;
        at::Tensor wavelen = 2 * 3.14159265358979323846 / inv;
        at::Tensor scaled = at::where(wavelen > low_wavelen, inv / rs.factor, inv);
        at::Tensor smooth =
            (old_ctx / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
        at::Tensor smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled;
        at::Tensor medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
        d.inv_freq_short_ = at::where(medium, smoothed, scaled);
        break;
      }
    }
    d.inv_freq_short_ = d.inv_freq_short_.to(options.device);
    if (d.inv_freq_long_.defined()) d.inv_freq_long_ = d.inv_freq_long_.to(options.device);
    return d;
  });
}

}  // namespace tunefleet::model
