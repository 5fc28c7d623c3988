// What the trainer agent tells one worker process to do: a JSON file the
// agent writes and `tunefleet-train-worker --spec <file>` reads. Every value
// is resolved ("auto" is decided by the scheduler before this point), paths
// are local and absolute. Neither gRPC nor libtorch: both sides link it.
#pragma once

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tunefleet::trainer {

enum class TrainingMethod { kLora, kFull };
enum class TrainingTask { kChat, kClassification };
enum class LrScheduler { kCosine, kLinear, kConstant };
// What the loss is: supervised (causal LM on the trained tokens, or the
// classification head) or DPO on preference pairs.
enum class TrainingObjective { kSupervised, kDpo };

absl::string_view MethodName(TrainingMethod m);      // "lora" | "full"
absl::string_view TaskName(TrainingTask t);          // "chat" | "classification"
absl::string_view SchedulerName(LrScheduler s);      // "cosine" | "linear" | "constant"
absl::string_view ObjectiveName(TrainingObjective o);  // "supervised" | "dpo"

struct WorkerHyperparameters {
  int64_t epochs = 1;
  // Examples (chat: packed sequences when packing) per optimizer step across
  // all ranks; split into micro-batches of `micro_batch_size` per rank and
  // accumulated. micro_batch_size 0: the whole per-rank batch at once.
  int64_t batch_size = 8;
  int64_t micro_batch_size = 0;
  double learning_rate = 1e-4;
  double weight_decay = 0.0;
  LrScheduler lr_scheduler = LrScheduler::kCosine;
  double warmup_ratio = 0.0;  // of total steps, in [0, 1)
  double max_grad_norm = 1.0;  // 0: no clipping
  int64_t lora_rank = 8;
  double lora_alpha = 16.0;
  double lora_dropout = 0.0;
  std::vector<std::string> lora_target_modules;  // empty: every projection
  int64_t max_sequence_length = 2048;
  int64_t seed = 0;
  bool packing = true;
  int64_t eval_interval_steps = 0;        // 0: only at epoch ends and the end
  int64_t checkpoint_interval_steps = 0;  // 0: only at epoch ends
  int64_t keep_checkpoints = 2;           // last K kept under checkpoint_root
  int64_t max_steps = 0;                  // 0: epochs decide
  // Recompute each decoder layer's activations in backward instead of
  // keeping them (less memory, about a third more compute).
  bool gradient_checkpointing = false;
  // Stop after this many evaluations without a better validation loss
  // (0: never stop early).
  int64_t early_stopping_patience = 0;
};

struct WorkerSpec {
  std::string job_id;
  std::string assignment_id;
  int64_t rank = 0;
  int64_t world_size = 1;
  std::string master_addr = "127.0.0.1";
  int64_t master_port = 0;
  // Hugging Face directory of the base model (config, weights, tokenizer).
  std::string base_model_dir;
  // The base model's id (the folder name under --models_dir), written into
  // the result's contract; empty: the last component of base_model_dir.
  std::string base_model_id;
  // A PEFT adapter to continue from (a job started from a fine-tuned model).
  std::string init_adapter_dir;
  // Local shard files (shard_file.h) of this rank's part.
  std::vector<std::string> train_shards;
  std::vector<std::string> valid_shards;
  // Where the result (PEFT dir + tunefleet_contract.json) is published.
  std::string output_dir;
  // Checkpoints are step-NNNNNNNN directories under it.
  std::string checkpoint_root;
  // A checkpoint directory to resume from, or empty.
  std::string resume_from;
  TrainingMethod method = TrainingMethod::kLora;
  TrainingTask task = TrainingTask::kChat;
  TrainingObjective objective = TrainingObjective::kSupervised;
  // DPO: the preference loss's beta (> 0).
  double dpo_beta = 0.1;
  // Classification: number of classes (labels 0..num_labels-1 in the shards).
  int64_t num_labels = 0;
  // Classification: the class names in label order (the training file's
  // distinct labels sorted by bytes); written into the result's contract.
  // Empty (an older agent): the classes are named "0", "1", ...; otherwise
  // exactly num_labels distinct names.
  std::vector<std::string> label_names;
  // LoRA: also publish the base with the adapter folded in, a complete
  // Hugging Face directory (config, weights, tokenizer files), as
  // <output_dir>/merged/. Full fine-tuning's result is that already.
  bool write_merged = false;
  WorkerHyperparameters hyper;
  std::string device = "cpu";  // "cpu" | "cuda" | "cuda:N"
  double collective_timeout_s = 300;
  // Seconds between progress events (0: every step).
  double progress_interval_s = 2.0;
};

// Checks values a worker cannot run with; errors are INVALID_ARGUMENT naming
// the field ("hyperparameters.learning_rate: must be a finite number > 0").
absl::Status ValidateWorkerSpec(const WorkerSpec& spec);

std::string WorkerSpecToJson(const WorkerSpec& spec);
// Unknown keys are ignored (newer agents); missing keys take the defaults;
// wrong types and bad enum names are INVALID_ARGUMENT naming the key.
// The result is validated.
absl::StatusOr<WorkerSpec> ParseWorkerSpec(absl::string_view json);

absl::Status WriteWorkerSpecFile(const WorkerSpec& spec, const std::string& path);
absl::StatusOr<WorkerSpec> ReadWorkerSpecFile(const std::string& path);

}  // namespace tunefleet::trainer
