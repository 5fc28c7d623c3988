#include "common/model/model_config.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace tunefleet::model {
namespace {

using Json = nlohmann::json;

class Reader {
 public:
  Reader(const Json& j, absl::string_view source) : j_(j), source_(source) {}

  absl::Status Error(absl::string_view field, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": field '", field, "' ", what));
  }

  bool Has(const char* field) const {
    auto it = j_.find(field);
    return it != j_.end() && !it->is_null();
  }

  absl::StatusOr<int64_t> Int(const char* field, std::optional<int64_t> dflt = std::nullopt,
                              int64_t min = 1) const {
    auto it = j_.find(field);
    if (it == j_.end() || it->is_null()) {
      if (dflt) return *dflt;
      return Error(field, "is missing");
    }
    if (!it->is_number_integer()) return Error(field, "is not an integer");
    if (it->is_number_unsigned() && it->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
      return Error(field, "is out of range");
    }
    int64_t v = it->get<int64_t>();
    if (v < min) return Error(field, absl::StrCat("must be at least ", min, ", got ", v));
    return v;
  }

  absl::StatusOr<double> Double(const char* field, double dflt, bool positive = true) const {
    auto it = j_.find(field);
    if (it == j_.end() || it->is_null()) return dflt;
    if (!it->is_number()) return Error(field, "is not a number");
    double v = it->get<double>();
    if (!std::isfinite(v) || (positive && v <= 0)) return Error(field, "must be a positive number");
    return v;
  }

  absl::StatusOr<bool> Bool(const char* field, bool dflt) const {
    auto it = j_.find(field);
    if (it == j_.end() || it->is_null()) return dflt;
    if (!it->is_boolean()) return Error(field, "is not a boolean");
    return it->get<bool>();
  }

  absl::StatusOr<std::string> String(const char* field, std::optional<std::string> dflt) const {
    auto it = j_.find(field);
    if (it == j_.end() || it->is_null()) {
      if (dflt) return *dflt;
      return Error(field, "is missing");
    }
    if (!it->is_string()) return Error(field, "is not a string");
    return it->get<std::string>();
  }

  // An id or a list of ids (eos_token_id may be either).
  absl::StatusOr<std::vector<int64_t>> Ids(const char* field) const {
    std::vector<int64_t> out;
    auto it = j_.find(field);
    if (it == j_.end() || it->is_null()) return out;
    auto one = [&](const Json& v) -> absl::Status {
      if (!v.is_number_integer() || v.get<int64_t>() < 0) return Error(field, "holds a non-id");
      out.push_back(v.get<int64_t>());
      return absl::OkStatus();
    };
    if (it->is_array()) {
      for (const auto& v : *it) {
        absl::Status s = one(v);
        if (!s.ok()) return s;
      }
    } else {
      absl::Status s = one(*it);
      if (!s.ok()) return s;
    }
    return out;
  }

  absl::StatusOr<std::vector<double>> Doubles(const char* field) const {
    std::vector<double> out;
    auto it = j_.find(field);
    if (it == j_.end() || !it->is_array()) return Error(field, "is missing or not a list");
    for (const auto& v : *it) {
      if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() <= 0) {
        return Error(field, "holds a value that is not a positive number");
      }
      out.push_back(v.get<double>());
    }
    return out;
  }

 private:
  const Json& j_;
  absl::string_view source_;
};

#define TF_CFG_ASSIGN(lhs, expr)                    \
  do {                                              \
    auto tf_cfg_v_ = (expr);                        \
    if (!tf_cfg_v_.ok()) return tf_cfg_v_.status(); \
    lhs = *std::move(tf_cfg_v_);                    \
  } while (0)

absl::Status ParseRopeScaling(const Json& j, absl::string_view source, ModelConfig& c) {
  std::string rs_source = absl::StrCat(source, ": rope_scaling");
  Reader r(j, rs_source);
  std::string type;
  if (r.Has("rope_type")) {
    TF_CFG_ASSIGN(type, r.String("rope_type", std::nullopt));
  } else {
    TF_CFG_ASSIGN(type, r.String("type", std::nullopt));
  }
  RopeScaling& rs = c.rope_scaling;
  if (type == "default") {
    rs.type = RopeScaling::Type::kNone;
  } else if (type == "linear") {
    rs.type = RopeScaling::Type::kLinear;
    TF_CFG_ASSIGN(rs.factor, r.Double("factor", 0));
    if (rs.factor <= 0) return r.Error("factor", "is missing");
  } else if (type == "longrope" || type == "su") {
    rs.type = RopeScaling::Type::kLongRope;
    TF_CFG_ASSIGN(rs.short_factor, r.Doubles("short_factor"));
    TF_CFG_ASSIGN(rs.long_factor, r.Doubles("long_factor"));
    const size_t half = static_cast<size_t>(c.rotary_dim / 2);
    if (rs.short_factor.size() != half || rs.long_factor.size() != half) {
      return absl::InvalidArgumentError(
          absl::StrCat(rs_source, ": short_factor and long_factor must have rotary_dim/2 = ", half,
                       " entries, got ", rs.short_factor.size(), " and ", rs.long_factor.size()));
    }
    rs.original_max_position_embeddings = c.original_max_position_embeddings;
    if (c.original_max_position_embeddings < 2) {
      return r.Error("original_max_position_embeddings",
                     "must be at least 2 with longrope scaling");
    }
    const double scale = static_cast<double>(c.max_position_embeddings) /
                         static_cast<double>(c.original_max_position_embeddings);
    double dflt = scale <= 1.0
                      ? 1.0
                      : std::sqrt(1.0 + std::log(scale) / std::log(static_cast<double>(
                                                              c.original_max_position_embeddings)));
    TF_CFG_ASSIGN(rs.attention_factor, r.Double("attention_factor", dflt));
    rs.factor = scale;
  } else if (type == "llama3") {
    rs.type = RopeScaling::Type::kLlama3;
    TF_CFG_ASSIGN(rs.factor, r.Double("factor", 0));
    if (rs.factor <= 0) return r.Error("factor", "is missing");
    TF_CFG_ASSIGN(rs.low_freq_factor, r.Double("low_freq_factor", 1.0));
    TF_CFG_ASSIGN(rs.high_freq_factor, r.Double("high_freq_factor", 4.0));
    if (rs.high_freq_factor <= rs.low_freq_factor) {
      return r.Error("high_freq_factor", "must exceed low_freq_factor");
    }
    TF_CFG_ASSIGN(rs.original_max_position_embeddings, r.Int("original_max_position_embeddings"));
  } else {
    return absl::InvalidArgumentError(absl::StrCat(rs_source, ": unsupported type '", type,
                                                   "' (supported: linear, longrope, su, llama3)"));
  }
  return absl::OkStatus();
}

}  // namespace

int64_t ModelConfig::NumParameters() const {
  const int64_t h = hidden_size;
  const int64_t attn = h * (q_size() + 2 * kv_size()) + q_size() * h;
  const int64_t mlp = 3 * h * intermediate_size;
  const int64_t per_layer = attn + mlp + 2 * h;
  const int64_t emb = vocab_size * h;
  return emb * (tie_word_embeddings ? 1 : 2) + num_hidden_layers * per_layer + h;
}

absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text,
                                             absl::string_view source) {
  Json j = Json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON"));
  if (!j.is_object())
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  Reader r(j, source);
  ModelConfig c;
  c.raw_json = std::string(json_text);
  TF_CFG_ASSIGN(c.model_type, r.String("model_type", std::nullopt));
  if (c.model_type == "phi3") {
    c.family = ModelFamily::kPhi3;
  } else if (c.model_type == "llama") {
    c.family = ModelFamily::kLlama;
  } else if (c.model_type == "mistral") {
    c.family = ModelFamily::kMistral;
  } else {
    return r.Error("model_type",
                   absl::StrCat("is '", c.model_type, "', not one of phi3, llama, mistral"));
  }
  std::string act;
  TF_CFG_ASSIGN(act, r.String("hidden_act", "silu"));
  if (act != "silu")
    return r.Error("hidden_act", absl::StrCat("is '", act, "'; only silu is supported"));

  TF_CFG_ASSIGN(c.vocab_size, r.Int("vocab_size"));
  TF_CFG_ASSIGN(c.hidden_size, r.Int("hidden_size"));
  TF_CFG_ASSIGN(c.intermediate_size, r.Int("intermediate_size"));
  TF_CFG_ASSIGN(c.num_hidden_layers, r.Int("num_hidden_layers"));
  TF_CFG_ASSIGN(c.num_attention_heads, r.Int("num_attention_heads"));
  TF_CFG_ASSIGN(c.num_key_value_heads, r.Int("num_key_value_heads", c.num_attention_heads));
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return r.Error("num_key_value_heads",
                   absl::StrCat("(", c.num_key_value_heads, ") must divide num_attention_heads (",
                                c.num_attention_heads, ")"));
  }
  if (r.Has("head_dim")) {
    TF_CFG_ASSIGN(c.head_dim, r.Int("head_dim"));
  } else {
    if (c.hidden_size % c.num_attention_heads != 0) {
      return r.Error("hidden_size", absl::StrCat("(", c.hidden_size,
                                                 ") is not a multiple of num_attention_heads (",
                                                 c.num_attention_heads, ")"));
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  double partial = 1.0;
  TF_CFG_ASSIGN(partial, r.Double("partial_rotary_factor", 1.0));
  if (partial > 1.0) return r.Error("partial_rotary_factor", "must be at most 1");
  c.rotary_dim = static_cast<int64_t>(static_cast<double>(c.head_dim) * partial);
  if (c.rotary_dim % 2 != 0 || c.rotary_dim == 0) {
    return r.Error("head_dim",
                   absl::StrCat("gives an odd or zero rotary dimension ", c.rotary_dim));
  }
  const int64_t dflt_max_pos = c.family == ModelFamily::kPhi3 ? 4096 : 2048;
  TF_CFG_ASSIGN(c.max_position_embeddings, r.Int("max_position_embeddings", dflt_max_pos));
  TF_CFG_ASSIGN(c.original_max_position_embeddings,
                r.Int("original_max_position_embeddings", c.max_position_embeddings));
  TF_CFG_ASSIGN(c.rms_norm_eps,
                r.Double("rms_norm_eps", c.family == ModelFamily::kPhi3 ? 1e-5 : 1e-6));
  TF_CFG_ASSIGN(c.rope_theta, r.Double("rope_theta", 10000.0));
  if (r.Has("sliding_window")) {
    int64_t w = 0;
    TF_CFG_ASSIGN(w, r.Int("sliding_window"));
    c.sliding_window = w;
  }
  TF_CFG_ASSIGN(c.tie_word_embeddings, r.Bool("tie_word_embeddings", false));
  TF_CFG_ASSIGN(c.attention_bias, r.Bool("attention_bias", false));
  TF_CFG_ASSIGN(c.mlp_bias, r.Bool("mlp_bias", false));
  if (c.fused_projections() && (c.attention_bias || c.mlp_bias)) {
    return r.Error("attention_bias", "is not supported for phi3");
  }
  if (r.Has("bos_token_id")) {
    int64_t v = 0;
    TF_CFG_ASSIGN(v, r.Int("bos_token_id", std::nullopt, 0));
    c.bos_token_id = v;
  }
  if (r.Has("pad_token_id")) {
    int64_t v = 0;
    TF_CFG_ASSIGN(v, r.Int("pad_token_id", std::nullopt, 0));
    c.pad_token_id = v;
  }
  TF_CFG_ASSIGN(c.eos_token_ids, r.Ids("eos_token_id"));
  TF_CFG_ASSIGN(c.torch_dtype, r.String("torch_dtype", std::string()));

  auto rs = j.find("rope_scaling");
  if (rs != j.end() && !rs->is_null()) {
    if (!rs->is_object()) return r.Error("rope_scaling", "is not an object");
    absl::Status s = ParseRopeScaling(*rs, source, c);
    if (!s.ok()) return s;
  }
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path) {
  std::string file = path;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    file = (std::filesystem::path(path) / "config.json").string();
  std::ifstream in(file, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(file, ": cannot open"));
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(file, ": read failed"));
  auto config = ParseModelConfig(ss.str(), file);
  if (!config.ok()) return config;
  // generation_config.json names the tokens that end a turn, which config.json
  // often lacks (Phi-3: <|end|>, Llama-3.1: <|eot_id|>); stop on both sets.
  const std::filesystem::path gen =
      std::filesystem::path(file).parent_path() / "generation_config.json";
  if (std::filesystem::exists(gen, ec)) {
    std::ifstream gin(gen, std::ios::binary);
    std::stringstream gss;
    gss << gin.rdbuf();
    nlohmann::json g = nlohmann::json::parse(gss.str(), nullptr, /*allow_exceptions=*/false);
    if (g.is_discarded() || !g.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(gen.string(), ": not a JSON object"));
    }
    const std::string gen_source = gen.string();
    Reader r(g, gen_source);
    auto ids = r.Ids("eos_token_id");
    if (!ids.ok()) return ids.status();
    for (int64_t id : *ids) {
      if (std::find(config->eos_token_ids.begin(), config->eos_token_ids.end(), id) ==
          config->eos_token_ids.end()) {
        config->eos_token_ids.push_back(id);
      }
    }
  }
  return config;
}

}  // namespace tunefleet::model
