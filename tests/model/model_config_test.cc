#include "common/model/model_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <string>

#include "tests/testing/status_matchers.h"

namespace tunefleet::model {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::tunefleet::testing::StatusIs;

// microsoft/Phi-3-mini-4k-instruct's config.json.
constexpr char kPhi3Mini4k[] = R"({
  "_name_or_path": "Phi-3-mini-4k-instruct", "architectures": ["Phi3ForCausalLM"],
  "attention_dropout": 0.0, "auto_map": {"AutoConfig": "configuration_phi3.Phi3Config"},
  "bos_token_id": 1, "embd_pdrop": 0.0, "eos_token_id": 32000, "hidden_act": "silu",
  "hidden_size": 3072, "initializer_range": 0.02, "intermediate_size": 8192,
  "max_position_embeddings": 4096, "model_type": "phi3", "num_attention_heads": 32,
  "num_hidden_layers": 32, "num_key_value_heads": 32, "original_max_position_embeddings": 4096,
  "pad_token_id": 32000, "resid_pdrop": 0.0, "rms_norm_eps": 1e-05, "rope_scaling": null,
  "rope_theta": 10000.0, "sliding_window": 2047, "tie_word_embeddings": false,
  "torch_dtype": "bfloat16", "transformers_version": "4.40.2", "use_cache": true,
  "attention_bias": false, "vocab_size": 32064})";

nlohmann::json Phi3() { return nlohmann::json::parse(kPhi3Mini4k); }

TEST(ModelConfigTest, Phi3Mini4k) {
  TF_ASSERT_OK_AND_ASSIGN(ModelConfig c, ParseModelConfig(kPhi3Mini4k));
  EXPECT_EQ(c.family, ModelFamily::kPhi3);
  EXPECT_TRUE(c.fused_projections());
  EXPECT_EQ(c.vocab_size, 32064);
  EXPECT_EQ(c.head_dim, 96);
  EXPECT_EQ(c.rotary_dim, 96);
  EXPECT_EQ(c.num_key_value_heads, 32);
  EXPECT_EQ(c.sliding_window, 2047);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kNone);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{32000});
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  // 3.82B parameters, as published.
  EXPECT_NEAR(static_cast<double>(c.NumParameters()) / 1e9, 3.82, 0.01);
}

TEST(ModelConfigTest, Phi3Mini128kLongRope) {
  nlohmann::json j = Phi3();
  j["max_position_embeddings"] = 131072;
  std::vector<double> s(48, 1.0), l(48, 2.0);
  j["rope_scaling"] = {{"type", "su"}, {"short_factor", s}, {"long_factor", l}};
  TF_ASSERT_OK_AND_ASSIGN(ModelConfig c, ParseModelConfig(j.dump()));
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kLongRope);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 4096);
  EXPECT_NEAR(c.rope_scaling.attention_factor, std::sqrt(1 + std::log(32.0) / std::log(4096.0)),
              1e-12);
  j["rope_scaling"]["type"] = "longrope";
  j["rope_scaling"]["long_factor"] = std::vector<double>(47, 2.0);
  EXPECT_THAT(ParseModelConfig(j.dump(), "m/config.json"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("m/config.json: rope_scaling"), HasSubstr("48"))));
}

TEST(ModelConfigTest, Llama31WithGqaAndLlama3Scaling) {
  constexpr char kLlama[] = R"({"architectures": ["LlamaForCausalLM"], "attention_bias": false,
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
    "hidden_size": 4096, "intermediate_size": 14336, "max_position_embeddings": 131072,
    "mlp_bias": false, "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "tie_word_embeddings": false, "torch_dtype": "bfloat16", "vocab_size": 128256})";
  TF_ASSERT_OK_AND_ASSIGN(ModelConfig c, ParseModelConfig(kLlama));
  EXPECT_EQ(c.family, ModelFamily::kLlama);
  EXPECT_FALSE(c.fused_projections());
  EXPECT_EQ(c.kv_size(), 1024);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
  EXPECT_FALSE(c.sliding_window.has_value());
  EXPECT_NEAR(static_cast<double>(c.NumParameters()) / 1e9, 8.03, 0.01);
}

TEST(ModelConfigTest, MistralDefaults) {
  TF_ASSERT_OK_AND_ASSIGN(
      ModelConfig c,
      ParseModelConfig(R"({"model_type": "mistral", "vocab_size": 32000, "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "sliding_window": null, "head_dim": 128})"));
  EXPECT_EQ(c.family, ModelFamily::kMistral);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_FALSE(c.sliding_window.has_value());
}

struct BadConfig {
  const char* name;
  std::function<void(nlohmann::json&)> edit;
  const char* message;
};

class BadConfigTest : public ::testing::TestWithParam<BadConfig> {};

TEST_P(BadConfigTest, NamesTheProblem) {
  nlohmann::json j = Phi3();
  GetParam().edit(j);
  EXPECT_THAT(ParseModelConfig(j.dump(), "dir/config.json"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("dir/config.json"), HasSubstr(GetParam().message))));
}

INSTANTIATE_TEST_SUITE_P(
    Cases, BadConfigTest,
    ::testing::Values(
        BadConfig{"MissingHidden", [](nlohmann::json& j) { j.erase("hidden_size"); },
                  "field 'hidden_size' is missing"},
        BadConfig{"MissingVocab", [](nlohmann::json& j) { j.erase("vocab_size"); },
                  "field 'vocab_size' is missing"},
        BadConfig{"MissingType", [](nlohmann::json& j) { j.erase("model_type"); },
                  "field 'model_type' is missing"},
        BadConfig{"StringLayers", [](nlohmann::json& j) { j["num_hidden_layers"] = "32"; },
                  "'num_hidden_layers' is not an integer"},
        BadConfig{"ZeroHeads", [](nlohmann::json& j) { j["num_attention_heads"] = 0; },
                  "'num_attention_heads'"},
        BadConfig{"KvNotDividing", [](nlohmann::json& j) { j["num_key_value_heads"] = 5; },
                  "'num_key_value_heads'"},
        BadConfig{"Qwen", [](nlohmann::json& j) { j["model_type"] = "qwen2"; }, "'qwen2'"},
        BadConfig{"Gelu", [](nlohmann::json& j) { j["hidden_act"] = "gelu"; }, "'hidden_act'"},
        BadConfig{"Dynamic",
                  [](nlohmann::json& j) {
                    j["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}};
                  },
                  "unsupported type 'dynamic'"},
        BadConfig{"NegativeTheta", [](nlohmann::json& j) { j["rope_theta"] = -1; }, "'rope_theta'"},
        BadConfig{"EosString", [](nlohmann::json& j) { j["eos_token_id"] = "x"; },
                  "'eos_token_id'"}),
    [](const ::testing::TestParamInfo<BadConfig>& info) { return std::string(info.param.name); });

TEST(ModelConfigTest, NotJson) {
  EXPECT_THAT(ParseModelConfig("{", "c.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("c.json")));
  EXPECT_THAT(ParseModelConfig("[]", "c.json"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(LoadModelConfig("/nonexistent/dir"), StatusIs(absl::StatusCode::kNotFound));
}

}  // namespace
}  // namespace tunefleet::model
