// LoRA adapters for the decoder, stored apart from the base weights so that
// many adapters can share one base in memory; saved and loaded in Hugging Face
// PEFT's format (adapter_config.json + adapter_model.safetensors).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/model/model_config.h"
#include "common/model/safetensors.h"

namespace tunefleet::model {

// The linear projections of a decoder layer, by their Hugging Face names.
// Phi-3 has the fused ones (qkv_proj, gate_up_proj); Llama/Mistral the others.
enum class Proj { kQkv, kQ, kK, kV, kO, kGateUp, kGate, kUp, kDown };
inline constexpr int kNumProj = 9;
// "qkv_proj", "q_proj", ...
absl::string_view ProjName(Proj p);
// "self_attn" or "mlp".
absl::string_view ProjParent(Proj p);
// The projections a model of this config has, in layer order.
std::vector<Proj> ModelProjections(const ModelConfig& config);
// [out_features, in_features] of a projection.
std::pair<int64_t, int64_t> ProjShape(const ModelConfig& config, Proj p);

struct LoraConfig {
  int64_t rank = 8;
  double alpha = 16.0;
  double dropout = 0.0;
  // Module names as PEFT takes them ("qkv_proj", "o_proj", ...); empty means
  // every attention and MLP projection of the model.
  std::vector<std::string> target_modules;
  // Scaling alpha/sqrt(rank) instead of alpha/rank.
  bool use_rslora = false;
  double scaling() const;
};

class LoraAdapter {
 public:
  struct Module {
    at::Tensor a;  // lora_A: [rank, in_features]
    at::Tensor b;  // lora_B: [out_features, rank]
    bool defined() const { return a.defined(); }
  };

  LoraAdapter() = default;

  // Fresh adapter as PEFT initializes one: A Kaiming-uniform (a=sqrt(5)) from
  // `seed`, B zero, so that it starts as the identity on the base. fp32
  // parameters with requires_grad, on `device`.
  static absl::StatusOr<LoraAdapter> Create(const ModelConfig& base, LoraConfig config,
                                            uint64_t seed, at::Device device = at::kCPU);
  // Reads a PEFT adapter directory written by us or by PEFT and checks every
  // tensor against `base`'s shapes. Parameters are fp32 on `device`.
  static absl::StatusOr<LoraAdapter> Load(const std::string& dir, const ModelConfig& base,
                                          at::Device device = at::kCPU);
  // Writes adapter_config.json and adapter_model.safetensors into `dir`.
  absl::Status Save(const std::string& dir, absl::string_view base_model_name_or_path) const;

  const LoraConfig& config() const { return config_; }
  double scaling() const { return config_.scaling(); }
  int64_t num_layers() const { return static_cast<int64_t>(modules_.size()); }
  // Undefined when the module is not adapted.
  const Module& module(int64_t layer, Proj p) const { return modules_[layer][static_cast<int>(p)]; }
  // Every A and B, in a stable order (for an optimizer).
  std::vector<at::Tensor> Parameters() const;
  int64_t NumParameters() const;
  // The tensors under PEFT's names, e.g.
  // base_model.model.model.layers.0.self_attn.qkv_proj.lora_A.weight.
  NamedTensors PeftTensors() const;

 private:
  LoraConfig config_;
  std::vector<std::array<Module, kNumProj>> modules_;
};

}  // namespace tunefleet::model
