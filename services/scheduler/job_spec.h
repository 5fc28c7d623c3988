// What CreateJob decides before a job is queued: the base model catalog (the
// folders under --models_dir) and the documented rule that turns "auto"
// hyperparameters into values. Pure apart from reading config.json files.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/model/memory_estimate.h"
#include "common/model/model_config.h"
#include "tunefleet/v1/files.pb.h"
#include "tunefleet/v1/jobs.pb.h"
#include "tunefleet/v1/models.pb.h"

namespace tunefleet::scheduler {

struct BaseModel {
  std::string id;  // folder name under models_dir
  std::string family;  // config.json model_type
  int64_t parameters = 0;  // estimated from the shapes in config.json
  int32_t max_sequence_length = 0;  // max_position_embeddings
  // hidden_size, num_hidden_layers, num_attention_heads (32 when absent),
  // num_key_value_heads (= heads when absent), head_dim, intermediate_size
  // (4 * hidden when absent), vocab_size, tie_word_embeddings; phi3 fuses.
  model::ModelConfig config;
};

// Base models: every folder of `models_dir` whose config.json the model
// library accepts (common/model/model_config.h). A folder whose config.json
// it rejects is not offered: the reason is logged once and Get says it.
// Rescanned when an unknown id is asked for. Thread-safe.
class BaseModelCatalog {
 public:
  explicit BaseModelCatalog(std::string models_dir) : dir_(std::move(models_dir)) {}
  // NOT_FOUND naming the id; FAILED_PRECONDITION with the reason for a
  // folder whose config.json is rejected.
  absl::StatusOr<BaseModel> Get(const std::string& id);
  std::vector<BaseModel> List();

 private:
  void Rescan() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  const std::string dir_;
  absl::Mutex mu_;
  std::vector<BaseModel> models_ ABSL_GUARDED_BY(mu_);
  // Folders whose config.json the library rejects: folder name -> why.
  std::map<std::string, std::string> rejected_ ABSL_GUARDED_BY(mu_);
  bool scanned_ ABSL_GUARDED_BY(mu_) = false;
};

// The auto rule (n = examples in the training file, after any split; W = gpus).
// A request may set any field; what it leaves unset is chosen here, and the
// job reports every value (never "auto"):
//   epochs            3; raised to ceil(100 / n) (at most 25) when n*3 < 100,
//                     lowered to max(1, 25000 / n) when n*3 > 25000
//   batch_size        the next power of two >= 0.2% of n, in [1, 256], then
//                     rounded up to a multiple of W (every rank gets a share)
//   learning_rate     given, or learning_rate_multiplier (auto 1.0) x the
//                     base rate (LoRA 2e-4, full 1e-5); not both. The job
//                     reports both (multiplier = rate / base rate)
//   lora_rank 8, lora_alpha 16, lora_dropout 0.05 (LoRA only)
//   warmup_ratio      0.03
//   weight_decay      0.0 for LoRA, 0.01 for full fine-tuning
//   lr_scheduler      cosine
//   max_sequence_length  min(the model's max_position_embeddings, 4096)
//   micro_batch_size  the largest divisor of batch_size / W that is <= 8
//                     (a given one must divide batch_size / W)
//   seed              derived from the job id
//   max_steps         0 (epochs decide)
//   total_steps       epochs x ceil(n / batch_size), capped at max_steps
//   packing           true for supervised chat, false for classification and
//                     DPO (packing=true is refused for those)
//   gradient_checkpointing  false
//   keep_checkpoints  2
//   early_stopping_patience 0 (> 0 needs validation data)
//   checkpoint_interval_steps  max(1, ceil(total_steps / 10)) (so a lost node
//                     loses at most a tenth of the run); eval_interval_steps
//                     the same when there is validation data, else 0 (> 0
//                     is refused without validation data)
inline constexpr double kLoraBaseLearningRate = 2e-4;
inline constexpr double kFullBaseLearningRate = 1e-5;
inline constexpr double kLoraWeightDecay = 0.0;
inline constexpr double kFullWeightDecay = 0.01;
inline constexpr double kDefaultDpoBeta = 0.1;
inline constexpr int kMinGpus = 1;

// One field's accepted range and auto value; the single table both
// ResolveHyperparameters and the models API (ModelCapabilities) read.
v1::HyperparameterBounds BoundsOf(const std::string& name, const BaseModel& model);
// Every Hyperparameters field, in field order.
std::vector<v1::HyperparameterBounds> AllBounds(const BaseModel& model);
// What a base model supports (methods, adapters, tasks, GPUs, bounds).
v1::ModelCapabilities CapabilitiesOf(const BaseModel& model);

struct JobShape {
  v1::AdapterType adapter = v1::ADAPTER_TYPE_LORA;
  v1::TrainingTask task = v1::TRAINING_TASK_CHAT;
  bool dpo = false;
  int gpus = 1;
  int64_t examples = 0;
  bool has_validation = false;
};

struct ResolvedJob {
  v1::Hyperparameters hyperparameters;
  int64_t total_steps = 0;
};

// Checks each given value's range (INVALID_ARGUMENT naming every bad field as
// "hyperparameters.<name>: ...") and fills the rest by the rule above.
absl::StatusOr<ResolvedJob> ResolveHyperparameters(const v1::Hyperparameters& given,
                                                   const JobShape& shape,
                                                   const BaseModel& model,
                                                   const std::string& job_id);
// Supervised chat, the shape the older callers knew.
absl::StatusOr<ResolvedJob> ResolveHyperparameters(const v1::Hyperparameters& given,
                                                   v1::AdapterType adapter, int gpus,
                                                   int64_t examples, bool has_validation,
                                                   const BaseModel& model,
                                                   const std::string& job_id);

// The method with its values resolved (unset: supervised; dpo beta auto
// 0.1, in (0, 10]). DPO needs the chat task. INVALID_ARGUMENT naming
// "method.dpo.beta" or "task".
absl::StatusOr<v1::Method> ResolveMethod(const v1::Method& given, v1::TrainingTask task);
// The data format a method and task train on: preference for DPO, chat or
// classification for supervised.
v1::DataFormat NeededFormat(const v1::Method& method, v1::TrainingTask task);
// "supervised" or "dpo".
std::string MethodName(const v1::Method& method);

// Job.memory_estimate for resolved values and the precision of the worker
// that runs the job (common/model/memory_estimate.h: fp32 on CPU slots, bf16
// autocast on GPUs); `num_labels` > 0 for a classification job (its label
// head).
v1::MemoryEstimate EstimateJobMemory(const BaseModel& model, v1::AdapterType adapter,
                                     const v1::Method& method, const v1::Hyperparameters& resolved,
                                     int64_t num_labels, model::TrainingPrecision precision,
                                     int64_t longest_example = 0);

}  // namespace tunefleet::scheduler
