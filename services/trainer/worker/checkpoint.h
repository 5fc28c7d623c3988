// Training checkpoints: `<root>/step-NNNNNNNN/` with the trainable weights
// (a PEFT adapter directory for LoRA, weights.safetensors for full
// fine-tuning; a LoRA classification run adds weights.safetensors holding
// its head, "score.weight"), optimizer.safetensors, trainer_state.json (step, data
// position, token counts, base metrics) and manifest.json (FNV-1a 64 of each
// file, written last). A directory is built under a temporary name and
// renamed, so a checkpoint under its name is complete; a damaged one is an
// INVALID_ARGUMENT naming the file.
//
// The data position needs no more than the step: the example order of an
// epoch is a function of (seed, epoch), and every step reseeds the dropout
// RNG from (seed, step), so a resumed run draws what an uninterrupted one does.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "common/model/lora.h"
#include "common/model/safetensors.h"

namespace tunefleet::trainer {

struct TrainerState {
  int64_t step = 0;  // optimizer steps done
  int64_t total_steps = 0;
  int64_t steps_per_epoch = 0;
  int64_t epoch = 0;          // of the next step
  int64_t step_in_epoch = 0;  // of the next step
  int64_t trained_tokens = 0;
  std::optional<double> base_valid_loss;
  std::optional<double> base_valid_accuracy;
  std::optional<double> train_loss;  // of the last step
  // Early stopping: the best validation loss so far, the step it was
  // measured at, and the evaluations since without a better one.
  std::optional<double> best_valid_loss;
  int64_t best_step = 0;
  int64_t evals_since_best = 0;
  // What the run trains on and with; a resume under another spec is refused.
  std::string fingerprint;
};

struct Checkpoint {
  std::string dir;
  TrainerState state;
  model::NamedTensors optimizer;
  std::optional<model::LoraAdapter> adapter;  // LoRA
  model::NamedTensors weights;                // full fine-tuning
};

// Writes step-<state.step> under `root` (kept if it exists already), then
// removes all but the newest `keep` step directories. Returns its path.
absl::StatusOr<std::string> WriteCheckpoint(const std::string& root, const TrainerState& state,
                                            const model::LoraAdapter* adapter,
                                            const model::NamedTensors& weights,
                                            const model::NamedTensors& optimizer,
                                            const std::string& base_model_id, int64_t keep);

// Reads and verifies a checkpoint directory; LoRA when it holds adapter/.
absl::StatusOr<Checkpoint> ReadCheckpoint(const std::string& dir, const model::ModelConfig& base);

// "step-00000012".
std::string CheckpointDirName(int64_t step);

// The best weights so far (early stopping): `<root>/best/` holds the
// trainable weights (adapter/ or weights.safetensors) and best.json with
// their step, replaced atomically on each improvement.
absl::Status WriteBestWeights(const std::string& root, int64_t step,
                              const model::LoraAdapter* adapter,
                              const model::NamedTensors& weights,
                              const std::string& base_model_id);
struct BestWeights {
  int64_t step = 0;
  std::optional<model::LoraAdapter> adapter;
  model::NamedTensors weights;
};
// NOT_FOUND when there is none.
absl::StatusOr<BestWeights> ReadBestWeights(const std::string& root,
                                            const model::ModelConfig& base, at::Device device);

}  // namespace tunefleet::trainer
