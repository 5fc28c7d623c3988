// Fine-tuned model ids and what continuing training from one needs. Pure
// apart from reading one adapter_config.json.
//
// Id shapes (documented in docs/api.md):
//   ft:<base>:<suffix>:<job>                  the result of job <job>
//   ft:<base>:<suffix>:<job>:ckpt-step-<N>    its checkpoint at step N
// <base> is always the root base model (a folder of --models_dir), also for
// a job continued from a fine-tuned model; <suffix> may be empty.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/errors/error_details.h"
#include "tunefleet/v1/jobs.pb.h"

namespace tunefleet::scheduler {

struct FineTunedId {
  std::string base;
  std::string suffix;
  std::string job;
  int64_t checkpoint_step = -1;  // >= 0: a checkpoint model
};

// Nullopt when `id` has neither shape.
std::optional<FineTunedId> ParseFineTunedId(const std::string& id);
std::string FineTunedModelId(const std::string& base, const std::string& suffix,
                             const std::string& job);
std::string CheckpointModelId(const std::string& base, const std::string& suffix,
                              const std::string& job, int64_t step);
// A LoRA checkpoint directory keeps its PEFT adapter in "adapter/".
std::string CheckpointAdapterArtifact(const std::string& checkpoint_artifact);

// What adapter_config.json says about a PEFT LoRA adapter.
struct AdapterConfig {
  int64_t rank = 0;
  double alpha = 0;
  std::vector<std::string> target_modules;
};
// NOT_FOUND when the file is missing, DATA_LOSS when it is unreadable.
absl::StatusOr<AdapterConfig> ReadAdapterConfig(const std::string& dir);

// A job that continues training `adapter`: the adapter type must be lora (or
// left unset), and lora_rank, lora_alpha and lora_target_modules must equal
// the adapter's or be left unset (auto), in which case they are taken from
// it. Each mismatch is appended to `bad` (field "adapter" or
// "hyperparameters.<name>"); `given` receives the adapter's values.
void ContinueFromAdapter(const AdapterConfig& adapter, v1::AdapterType type,
                         v1::Hyperparameters* given, std::vector<errors::FieldViolation>* bad);

}  // namespace tunefleet::scheduler
