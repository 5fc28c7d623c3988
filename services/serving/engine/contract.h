// The train-to-serve contract: `tunefleet_contract.json`, written by the
// trainer beside a LoRA job's adapter_config.json, says which base, tokenizer
// and stop tokens the adapter was trained with, so that a replica refuses to
// serve it on a base it would quietly misbehave on.
//
//   {"base_model": "<base model id>",            (also read: "base_model_id")
//    "tokenizer_sha256": "<hex of tokenizer.json>",
//    "chat_template": "phi3",                     (optional)
//    "stop_token_ids": [32000, 32007],
//    "generation": {"temperature": 0.7, "top_p": 1.0, "max_tokens": 256},  (optional)
//    "task": "classification",                    (optional; else a chat model)
//    "label_names": ["safe", "violence"],         (classification)
//    "classification_head": {"file": "score.safetensors", "tensor": "score.weight"}}
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tunefleet::serving {

inline constexpr char kContractFileName[] = "tunefleet_contract.json";

// What a replica knows of the base it serves; empty fields are not checked.
struct BaseIdentity {
  std::string model_id;          // the folder name under --models_dir
  std::string tokenizer_sha256;  // hex sha256 of the base's tokenizer.json
  std::string chat_template;     // "phi3", "llama3", "chatml", "qwen3"
  std::vector<int64_t> stop_token_ids;
};

struct GenerationDefaults {
  std::optional<double> temperature;
  std::optional<double> top_p;
  std::optional<int64_t> max_tokens;
};

struct ServeContract {
  std::string base_model;
  std::string tokenizer_sha256;
  std::string chat_template;
  std::vector<int64_t> stop_token_ids;
  GenerationDefaults generation;
  // "classification": a sequence classifier (the adapter plus a head
  // [num_labels, hidden] on the last token's final hidden state); empty or
  // anything else: a chat model.
  std::string task;
  std::vector<std::string> label_names;
  std::string head_file = "score.safetensors";
  std::string head_tensor = "score.weight";
  bool classification() const { return task == "classification"; }
};

// Parses a contract; INVALID_ARGUMENT naming `source` and the field.
absl::StatusOr<ServeContract> ParseContract(const std::string& json, const std::string& source);

// Reads `<adapter_dir>/tunefleet_contract.json`: nullopt when the file does
// not exist (older adapters, adapters from elsewhere: served with a warning).
absl::StatusOr<std::optional<ServeContract>> ReadContract(const std::string& adapter_dir);

// FAILED_PRECONDITION naming `what` (the adapter) and the first field that
// differs between the contract and the served base.
absl::Status CheckContract(const ServeContract& contract, const BaseIdentity& base,
                           const std::string& what);

}  // namespace tunefleet::serving
