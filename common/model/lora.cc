#include "common/model/lora.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/base/status_macros.h"
#include "common/model/file_util.h"
#include "common/model/random.h"
#include "common/model/torch_status.h"

namespace tunefleet::model {
namespace {

namespace fs = std::filesystem;

constexpr char kPeftPrefix[] = "base_model.model.";
constexpr Proj kAllProj[] = {Proj::kQkv,    Proj::kQ,    Proj::kK,  Proj::kV,   Proj::kO,
                             Proj::kGateUp, Proj::kGate, Proj::kUp, Proj::kDown};

std::string ModulePath(int64_t layer, Proj p) {
  return absl::StrCat("model.layers.", layer, ".", ProjParent(p), ".", ProjName(p));
}

// Resolves PEFT's target_modules against the model's projections.
absl::StatusOr<std::vector<Proj>> ResolveTargets(const ModelConfig& base,
                                                 const std::vector<std::string>& names) {
  std::vector<Proj> model = ModelProjections(base);
  if (names.empty() || (names.size() == 1 && names[0] == "all-linear")) return model;
  std::vector<Proj> out;
  for (const std::string& name : names) {
    bool found = false;
    for (Proj p : model) {
      if (ProjName(p) == name) {
        out.push_back(p);
        found = true;
      }
    }
    if (!found) {
      std::string have;
      for (Proj p : model) absl::StrAppend(&have, have.empty() ? "" : ", ", ProjName(p));
      return absl::InvalidArgumentError(absl::StrCat("LoRA target module '", name,
                                                     "' is not a projection of ", base.model_type,
                                                     " (", have, ")"));
    }
  }
  return out;
}

}  // namespace

absl::string_view ProjName(Proj p) {
  switch (p) {
    case Proj::kQkv:
      return "qkv_proj";
    case Proj::kQ:
      return "q_proj";
    case Proj::kK:
      return "k_proj";
    case Proj::kV:
      return "v_proj";
    case Proj::kO:
      return "o_proj";
    case Proj::kGateUp:
      return "gate_up_proj";
    case Proj::kGate:
      return "gate_proj";
    case Proj::kUp:
      return "up_proj";
    case Proj::kDown:
      return "down_proj";
  }
  return "?";
}

absl::string_view ProjParent(Proj p) {
  switch (p) {
    case Proj::kGateUp:
    case Proj::kGate:
    case Proj::kUp:
    case Proj::kDown:
      return "mlp";
    default:
      return "self_attn";
  }
}

std::vector<Proj> ModelProjections(const ModelConfig& c) {
  if (c.fused_projections()) return {Proj::kQkv, Proj::kO, Proj::kGateUp, Proj::kDown};
  return {Proj::kQ, Proj::kK, Proj::kV, Proj::kO, Proj::kGate, Proj::kUp, Proj::kDown};
}

std::pair<int64_t, int64_t> ProjShape(const ModelConfig& c, Proj p) {
  const int64_t h = c.hidden_size, i = c.intermediate_size;
  switch (p) {
    case Proj::kQkv:
      return {c.q_size() + 2 * c.kv_size(), h};
    case Proj::kQ:
      return {c.q_size(), h};
    case Proj::kK:
    case Proj::kV:
      return {c.kv_size(), h};
    case Proj::kO:
      return {h, c.q_size()};
    case Proj::kGateUp:
      return {2 * i, h};
    case Proj::kGate:
    case Proj::kUp:
      return {i, h};
    case Proj::kDown:
      return {h, i};
  }
  return {0, 0};
}

double LoraConfig::scaling() const {
  return use_rslora ? alpha / std::sqrt(static_cast<double>(rank))
                    : alpha / static_cast<double>(rank);
}

absl::StatusOr<LoraAdapter> LoraAdapter::Create(const ModelConfig& base, LoraConfig config,
                                                uint64_t seed, at::Device device) {
  if (config.rank <= 0) return absl::InvalidArgumentError("LoRA rank must be positive");
  if (!(config.alpha > 0)) return absl::InvalidArgumentError("LoRA alpha must be positive");
  if (!(config.dropout >= 0 && config.dropout < 1))
    return absl::InvalidArgumentError("LoRA dropout must be in [0, 1)");
  TF_ASSIGN_OR_RETURN(std::vector<Proj> targets, ResolveTargets(base, config.target_modules));
  config.target_modules.clear();
  for (Proj p : targets) config.target_modules.emplace_back(ProjName(p));
  return internal::CatchTorch("LoraAdapter::Create", [&]() -> absl::StatusOr<LoraAdapter> {
    LoraAdapter adapter;
    adapter.config_ = config;
    adapter.modules_.resize(static_cast<size_t>(base.num_hidden_layers));
    SplitMix64 rng(seed);
    for (int64_t i = 0; i < base.num_hidden_layers; ++i) {
      for (Proj p : targets) {
        auto [out, in] = ProjShape(base, p);
        std::vector<float> a(static_cast<size_t>(config.rank * in));
        // kaiming_uniform_(a=sqrt(5)) as PEFT does: bound 1/sqrt(fan_in).
        const double bound = 1.0 / std::sqrt(static_cast<double>(in));
        for (float& x : a) x = rng.Symmetric(bound);
        Module& m = adapter.modules_[i][static_cast<int>(p)];
        m.a = at::tensor(a, at::kFloat).view({config.rank, in}).to(device).set_requires_grad(true);
        m.b = at::zeros({out, config.rank}, at::TensorOptions().dtype(at::kFloat).device(device))
                  .set_requires_grad(true);
      }
    }
    return adapter;
  });
}

std::vector<at::Tensor> LoraAdapter::Parameters() const {
  std::vector<at::Tensor> out;
  for (const auto& layer : modules_) {
    for (const Module& m : layer) {
      if (!m.defined()) continue;
      out.push_back(m.a);
      out.push_back(m.b);
    }
  }
  return out;
}

int64_t LoraAdapter::NumParameters() const {
  int64_t n = 0;
  for (const at::Tensor& t : Parameters()) n += t.numel();
  return n;
}

NamedTensors LoraAdapter::PeftTensors() const {
  NamedTensors out;
  for (size_t i = 0; i < modules_.size(); ++i) {
    for (Proj p : kAllProj) {
      const Module& m = modules_[i][static_cast<int>(p)];
      if (!m.defined()) continue;
      const std::string path = absl::StrCat(kPeftPrefix, ModulePath(static_cast<int64_t>(i), p));
      out.emplace_back(path + ".lora_A.weight", m.a.detach());
      out.emplace_back(path + ".lora_B.weight", m.b.detach());
    }
  }
  return out;
}

absl::Status LoraAdapter::Save(const std::string& dir,
                               absl::string_view base_model_name_or_path) const {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    return absl::InternalError(absl::StrCat(dir, ": cannot create directory: ", ec.message()));
  nlohmann::ordered_json j;
  j["peft_type"] = "LORA";
  j["task_type"] = "CAUSAL_LM";
  j["base_model_name_or_path"] = std::string(base_model_name_or_path);
  j["r"] = config_.rank;
  j["lora_alpha"] = config_.alpha;
  j["lora_dropout"] = config_.dropout;
  j["target_modules"] = config_.target_modules;
  j["bias"] = "none";
  j["fan_in_fan_out"] = false;
  j["inference_mode"] = true;
  j["init_lora_weights"] = true;
  j["modules_to_save"] = nullptr;
  j["layers_to_transform"] = nullptr;
  j["layers_pattern"] = nullptr;
  j["rank_pattern"] = nlohmann::ordered_json::object();
  j["alpha_pattern"] = nlohmann::ordered_json::object();
  j["use_rslora"] = config_.use_rslora;
  j["use_dora"] = false;
  j["revision"] = nullptr;
  TF_RETURN_IF_ERROR(WriteSafetensors((fs::path(dir) / "adapter_model.safetensors").string(),
                                      PeftTensors(), {{"format", "pt"}}));
  return WriteStringAtomically((fs::path(dir) / "adapter_config.json").string(), j.dump(2) + "\n");
}

absl::StatusOr<LoraAdapter> LoraAdapter::Load(const std::string& dir, const ModelConfig& base,
                                              at::Device device) {
  const std::string config_path = (fs::path(dir) / "adapter_config.json").string();
  const std::string weights_path = (fs::path(dir) / "adapter_model.safetensors").string();
  TF_ASSIGN_OR_RETURN(std::string text, ReadFileToString(config_path));
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(config_path, ": not a JSON object"));
  }
  auto bad = [&](absl::string_view field, absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(config_path, ": field '", field, "' ", what));
  };
  auto is_empty = [&](const char* f) {
    auto it = j.find(f);
    return it == j.end() || it->is_null() || (it->is_object() && it->empty()) ||
           (it->is_array() && it->empty());
  };
  if (j.value("peft_type", std::string("LORA")) != "LORA") return bad("peft_type", "is not LORA");
  LoraConfig config;
  if (!j.contains("r") || !j["r"].is_number_integer() || j["r"].get<int64_t>() <= 0) {
    return bad("r", "is missing or not a positive integer");
  }
  config.rank = j["r"].get<int64_t>();
  if (!j.contains("lora_alpha") || !j["lora_alpha"].is_number())
    return bad("lora_alpha", "is missing or not a number");
  config.alpha = j["lora_alpha"].get<double>();
  if (j.contains("lora_dropout") && j["lora_dropout"].is_number())
    config.dropout = j["lora_dropout"].get<double>();
  if (j.contains("use_rslora") && j["use_rslora"].is_boolean())
    config.use_rslora = j["use_rslora"].get<bool>();
  if (j.contains("use_dora") && j["use_dora"].is_boolean() && j["use_dora"].get<bool>()) {
    return bad("use_dora", "is true; DoRA adapters are not supported");
  }
  if (j.contains("bias") && j["bias"].is_string() && j["bias"].get<std::string>() != "none") {
    return bad("bias", "is not \"none\"; adapters with trained biases are not supported");
  }
  if (j.contains("fan_in_fan_out") && j["fan_in_fan_out"].is_boolean() &&
      j["fan_in_fan_out"].get<bool>()) {
    return bad("fan_in_fan_out", "is true; not supported");
  }
  if (!is_empty("rank_pattern"))
    return bad("rank_pattern", "is set; per-module ranks are not supported");
  if (!is_empty("alpha_pattern"))
    return bad("alpha_pattern", "is set; per-module alphas are not supported");
  if (!is_empty("modules_to_save"))
    return bad("modules_to_save", "is set; fully trained modules are not supported");

  TF_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(weights_path));
  return internal::CatchTorch(weights_path, [&]() -> absl::StatusOr<LoraAdapter> {
    LoraAdapter adapter;
    adapter.modules_.resize(static_cast<size_t>(base.num_hidden_layers));
    std::set<std::string> targets;
    for (const TensorInfo& info : file->header().tensors) {
      auto bad_tensor = [&](absl::string_view what) {
        return absl::InvalidArgumentError(
            absl::StrCat(weights_path, ": tensor '", info.name, "': ", what));
      };
      absl::string_view name = info.name;
      if (!absl::ConsumePrefix(&name, kPeftPrefix))
        return bad_tensor("does not start with base_model.model.");
      // model.layers.<i>.<parent>.<proj>.lora_<A|B>[.<adapter>].weight
      std::vector<absl::string_view> parts = absl::StrSplit(name, '.');
      int64_t layer = -1;
      if (parts.size() < 7 || parts[0] != "model" || parts[1] != "layers" ||
          !absl::SimpleAtoi(parts[2], &layer) || parts.back() != "weight" ||
          (parts.size() != 7 && parts.size() != 8)) {
        return bad_tensor("is not a LoRA weight of a decoder layer projection");
      }
      if (layer < 0 || layer >= base.num_hidden_layers) {
        return bad_tensor(
            absl::StrCat("layer ", layer, " is outside the model's ", base.num_hidden_layers));
      }
      const Proj* proj = nullptr;
      for (const Proj& p : kAllProj) {
        if (ProjParent(p) == parts[3] && ProjName(p) == parts[4]) proj = &p;
      }
      std::vector<Proj> model = ModelProjections(base);
      if (proj == nullptr || std::find(model.begin(), model.end(), *proj) == model.end()) {
        return bad_tensor(absl::StrCat("names no projection of a ", base.model_type, " model"));
      }
      const bool is_a = parts[5] == "lora_A";
      if (!is_a && parts[5] != "lora_B") return bad_tensor("is neither lora_A nor lora_B");
      auto [out, in] = ProjShape(base, *proj);
      std::vector<int64_t> want =
          is_a ? std::vector<int64_t>{config.rank, in} : std::vector<int64_t>{out, config.rank};
      if (info.shape != want) {
        return bad_tensor(absl::StrCat("has shape [", absl::StrJoin(info.shape, ", "),
                                       "], expected [", absl::StrJoin(want, ", "),
                                       "] (r=", config.rank, ")"));
      }
      TF_ASSIGN_OR_RETURN(at::Tensor t, file->Get(info.name));
      if (!at::isFloatingType(t.scalar_type())) return bad_tensor("is not floating point");
      Module& m = adapter.modules_[layer][static_cast<int>(*proj)];
      (is_a ? m.a : m.b) = t.to(device, at::kFloat).clone().set_requires_grad(true);
      targets.emplace(ProjName(*proj));
    }
    for (size_t i = 0; i < adapter.modules_.size(); ++i) {
      for (Proj p : kAllProj) {
        const Module& m = adapter.modules_[i][static_cast<int>(p)];
        if (m.a.defined() != m.b.defined()) {
          return absl::InvalidArgumentError(absl::StrCat(weights_path, ": module '", kPeftPrefix,
                                                         ModulePath(static_cast<int64_t>(i), p),
                                                         "' has only one of lora_A and lora_B"));
        }
      }
    }
    if (targets.empty())
      return absl::InvalidArgumentError(absl::StrCat(weights_path, ": holds no LoRA weights"));
    for (Proj p : ModelProjections(base)) {
      if (targets.count(std::string(ProjName(p)))) config.target_modules.emplace_back(ProjName(p));
    }
    adapter.config_ = config;
    return adapter;
  });
}

}  // namespace tunefleet::model
