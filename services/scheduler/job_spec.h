// What CreateJob decides before a job is queued: the base model catalog (the
// folders under --models_dir) and the documented rule that turns "auto"
// hyperparameters into values. Pure apart from reading config.json files.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "tunefleet/v1/jobs.pb.h"
#include "tunefleet/v1/models.pb.h"

namespace tunefleet::scheduler {

struct BaseModel {
  std::string id;  // folder name under models_dir
  std::string family;  // config.json model_type
  int64_t parameters = 0;  // estimated from the shapes in config.json
  int32_t max_sequence_length = 0;  // max_position_embeddings
};

// Base models: every folder of `models_dir` with a readable config.json.
// Rescanned when an unknown id is asked for. Thread-safe.
class BaseModelCatalog {
 public:
  explicit BaseModelCatalog(std::string models_dir) : dir_(std::move(models_dir)) {}
  // NOT_FOUND naming the id.
  absl::StatusOr<BaseModel> Get(const std::string& id);
  std::vector<BaseModel> List();

 private:
  void Rescan() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  const std::string dir_;
  absl::Mutex mu_;
  std::vector<BaseModel> models_ ABSL_GUARDED_BY(mu_);
  bool scanned_ ABSL_GUARDED_BY(mu_) = false;
};

// The auto rule (n = examples in the training file, after any split; W = gpus):
//   epochs            3; raised to ceil(100 / n) (at most 25) when n*3 < 100,
//                     lowered to max(1, 25000 / n) when n*3 > 25000
//   batch_size        the next power of two >= 0.2% of n, in [1, 256], then
//                     rounded up to a multiple of W (every rank gets a share)
//   learning_rate     multiplier (auto 1.0) x the base rate: LoRA 2e-4, full 1e-5
//   lora_rank 8, lora_alpha 16, lora_dropout 0.05 (LoRA only)
//   warmup_ratio      0.03
//   max_sequence_length  min(the model's max_position_embeddings, 4096)
//   micro_batch_size  the largest divisor of batch_size / W that is <= 8
//   seed              derived from the job id
//   total_steps       epochs x ceil(n / batch_size)
//   checkpoint_interval_steps  max(1, ceil(total_steps / 10)) (so a lost node
//                     loses at most a tenth of the run); eval_interval_steps
//                     the same when there is validation data, else 0
inline constexpr double kLoraBaseLearningRate = 2e-4;
inline constexpr double kFullBaseLearningRate = 1e-5;

struct ResolvedJob {
  v1::Hyperparameters hyperparameters;
  int64_t total_steps = 0;
};

// Checks each given value's range (INVALID_ARGUMENT naming every bad field as
// "hyperparameters.<name>: ...") and fills the rest by the rule above.
absl::StatusOr<ResolvedJob> ResolveHyperparameters(const v1::Hyperparameters& given,
                                                   v1::AdapterType adapter, int gpus,
                                                   int64_t examples, bool has_validation,
                                                   const BaseModel& model,
                                                   const std::string& job_id);

}  // namespace tunefleet::scheduler
