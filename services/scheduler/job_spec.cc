#include "services/scheduler/job_spec.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>

#include <spdlog/spdlog.h>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/base/status_macros.h"
#include "common/errors/error_details.h"
#include "common/model/model_config.h"

namespace tunefleet::scheduler {
namespace fs = std::filesystem;

namespace {

// config.json as the model library reads it (ParseModelConfig: the same
// rules the trainer and the replicas load the model with), so a base model
// the scheduler offers is one they can load.
absl::StatusOr<BaseModel> ReadModel(const fs::path& dir) {
  const fs::path file = dir / "config.json";
  std::ifstream in(file, std::ios::binary);
  if (!in) return absl::NotFoundError("no config.json");
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(file.string(), ": read failed"));
  TF_ASSIGN_OR_RETURN(model::ModelConfig c, model::ParseModelConfig(text.str(), "config.json"));
  BaseModel m;
  m.id = dir.filename().string();
  m.family = c.model_type;
  m.max_sequence_length = static_cast<int32_t>(
      std::min<int64_t>(c.max_position_embeddings, std::numeric_limits<int32_t>::max()));
  m.parameters = c.NumParameters();
  m.config = std::move(c);
  return m;
}

}  // namespace

void BaseModelCatalog::Rescan() {
  models_.clear();
  scanned_ = true;
  std::map<std::string, std::string> rejected;
  std::error_code ec;
  if (dir_.empty()) return;
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    if (!entry.is_directory()) continue;
    auto m = ReadModel(entry.path());
    if (m.ok()) {
      models_.push_back(std::move(*m));
    } else if (!absl::IsNotFound(m.status())) {  // a folder without config.json is no model
      rejected[entry.path().filename().string()] = std::string(m.status().message());
    }
  }
  std::sort(models_.begin(), models_.end(),
            [](const BaseModel& a, const BaseModel& b) { return a.id < b.id; });
  // Said once per folder and reason (List rescans on every call).
  for (const auto& [id, why] : rejected) {
    auto was = rejected_.find(id);
    if (was == rejected_.end() || was->second != why)
      spdlog::error("base model={} is not usable and is not offered: {}", id, why);
  }
  rejected_ = std::move(rejected);
}

absl::StatusOr<BaseModel> BaseModelCatalog::Get(const std::string& id) {
  absl::MutexLock lock(&mu_);
  for (int pass = 0; pass < 2; ++pass) {
    if (pass == 1 || !scanned_) Rescan();
    for (const BaseModel& m : models_)
      if (m.id == id) return m;
  }
  auto bad = rejected_.find(id);
  if (bad != rejected_.end()) {
    return absl::FailedPreconditionError(
        absl::StrCat("model '", id, "' is not usable: its ", bad->second));
  }
  return absl::NotFoundError(absl::StrCat("model '", id, "' not found"));
}

std::vector<BaseModel> BaseModelCatalog::List() {
  absl::MutexLock lock(&mu_);
  Rescan();
  return models_;
}

namespace {

struct BoundRow {
  const char* name;
  std::optional<double> min, max;
  bool min_exclusive, max_exclusive;
  std::optional<double> default_value;
  const char* auto_rule;
};

constexpr double kMaxSteps = 1e9;
constexpr double kMaxLearningRate = 0.1;
constexpr std::nullopt_t kOpen = std::nullopt;

// The single table of ranges and auto values (max_sequence_length's upper
// bound and default are the model's; filled in BoundsOf).
const std::vector<BoundRow>& Table() {
  static const std::vector<BoundRow>* rows = new std::vector<BoundRow>{
      {"epochs", 1, 50, false, false, kOpen,
       "3; ceil(100 / n) (at most 25) when n*3 < 100; max(1, 25000 / n) when n*3 > 25000"},
      {"batch_size", 1, 1024, false, false, kOpen,
       "the next power of two >= 0.2% of n in [1, 256], rounded up to a multiple of gpus"},
      {"learning_rate_multiplier", 0, 100, true, false, 1.0,
       "1.0 (learning_rate / base rate when learning_rate is given)"},
      {"lora_rank", 1, 256, false, false, 8, "8 (LoRA only)"},
      {"lora_alpha", 0, 1024, true, false, 16, "16 (LoRA only)"},
      {"lora_dropout", 0, 1, false, true, 0.05, "0.05 (LoRA only)"},
      {"warmup_ratio", 0, 1, false, true, 0.03, "0.03"},
      {"max_sequence_length", 16, kOpen, false, false, kOpen,
       "min(the model's max_position_embeddings, 4096)"},
      {"seed", kOpen, kOpen, false, false, kOpen, "derived from the job id"},
      {"lora_target_modules", kOpen, kOpen, false, false, kOpen,
       "every attention and MLP projection of the family"},
      {"learning_rate", 0, kMaxLearningRate, true, false, kOpen,
       "learning_rate_multiplier x the base rate (LoRA 2e-4, full 1e-5)"},
      {"micro_batch_size", 1, 1024, false, false, kOpen,
       "the largest divisor of batch_size / gpus that is <= 8 (must divide batch_size / gpus)"},
      {"checkpoint_interval_steps", 0, kMaxSteps, false, false, kOpen,
       "max(1, ceil(total_steps / 10))"},
      {"eval_interval_steps", 0, kMaxSteps, false, false, kOpen,
       "as checkpoint_interval_steps with validation data, else 0"},
      {"weight_decay", 0, 1, false, false, kOpen, "0.0 for LoRA, 0.01 for full fine-tuning"},
      {"lr_scheduler", 1, 3, false, false, 1, "cosine (LrScheduler: 1 cosine, 2 linear, 3 constant)"},
      {"max_steps", 0, kMaxSteps, false, false, 0, "0 (epochs decide)"},
      {"packing", 0, 1, false, false, kOpen,
       "true for supervised chat, false for classification and DPO"},
      {"gradient_checkpointing", 0, 1, false, false, 0, "false"},
      {"keep_checkpoints", 1, 100, false, false, 2, "2"},
      {"early_stopping_patience", 0, 1000, false, false, 0,
       "0 (never); > 0 needs validation data"},
  };
  return *rows;
}

std::string Num(double v) {
  if (v == static_cast<double>(static_cast<int64_t>(v)) && v > -1e15 && v < 1e15)
    return absl::StrCat(static_cast<int64_t>(v));
  return absl::StrCat(v);
}

std::string RangeText(const v1::HyperparameterBounds& b) {
  std::string lo = b.has_min() ? Num(b.min()) : "-inf", hi = b.has_max() ? Num(b.max()) : "inf";
  return absl::StrCat("must be in ", b.min_exclusive() ? "(" : "[", lo, ", ", hi,
                      b.max_exclusive() ? ")" : "]");
}

bool InRange(const v1::HyperparameterBounds& b, double v) {
  if (!std::isfinite(v)) return false;
  if (b.has_min() && (b.min_exclusive() ? !(v > b.min()) : !(v >= b.min()))) return false;
  if (b.has_max() && (b.max_exclusive() ? !(v < b.max()) : !(v <= b.max()))) return false;
  return true;
}

}  // namespace

v1::HyperparameterBounds BoundsOf(const std::string& name, const BaseModel& model) {
  v1::HyperparameterBounds b;
  for (const BoundRow& r : Table()) {
    if (name != r.name) continue;
    b.set_name(r.name);
    if (r.min) b.set_min(*r.min);
    if (r.max) b.set_max(*r.max);
    b.set_min_exclusive(r.min_exclusive);
    b.set_max_exclusive(r.max_exclusive);
    if (r.default_value) b.set_default_value(*r.default_value);
    b.set_auto_rule(r.auto_rule);
    if (name == "max_sequence_length") {
      b.set_max(model.max_sequence_length);
      b.set_default_value(std::min<int32_t>(model.max_sequence_length, 4096));
    }
    break;
  }
  return b;
}

std::vector<v1::HyperparameterBounds> AllBounds(const BaseModel& model) {
  std::vector<v1::HyperparameterBounds> out;
  for (const BoundRow& r : Table()) out.push_back(BoundsOf(r.name, model));
  return out;
}

v1::ModelCapabilities CapabilitiesOf(const BaseModel& model) {
  v1::ModelCapabilities c;
  c.add_methods("supervised");
  c.add_methods("dpo");
  c.add_adapters(v1::ADAPTER_TYPE_LORA);
  c.add_adapters(v1::ADAPTER_TYPE_FULL);
  c.add_tasks(v1::TRAINING_TASK_CHAT);
  c.add_tasks(v1::TRAINING_TASK_CLASSIFICATION);
  c.set_min_gpus(kMinGpus);
  c.set_max_sequence_length(model.max_sequence_length);
  for (auto& b : AllBounds(model)) *c.add_hyperparameters() = std::move(b);
  return c;
}

absl::StatusOr<ResolvedJob> ResolveHyperparameters(const v1::Hyperparameters& given,
                                                   v1::AdapterType adapter, int gpus,
                                                   int64_t examples, bool has_validation,
                                                   const BaseModel& model,
                                                   const std::string& job_id) {
  JobShape shape;
  shape.adapter = adapter;
  shape.gpus = gpus;
  shape.examples = examples;
  shape.has_validation = has_validation;
  return ResolveHyperparameters(given, shape, model, job_id);
}

absl::StatusOr<ResolvedJob> ResolveHyperparameters(const v1::Hyperparameters& given,
                                                   const JobShape& shape,
                                                   const BaseModel& model,
                                                   const std::string& job_id) {
  std::vector<errors::FieldViolation> bad;
  auto check = [&](bool ok, const char* field, const std::string& why) {
    if (!ok) bad.push_back({absl::StrCat("hyperparameters.", field), why});
  };
  // A given value against the table's range.
  auto range = [&](bool has, const char* field, double v, const std::string& suffix = "") {
    if (!has) return;
    v1::HyperparameterBounds b = BoundsOf(field, model);
    check(InRange(b, v), field, RangeText(b) + suffix);
  };
  const bool lora = shape.adapter != v1::ADAPTER_TYPE_FULL;
  const bool chat = shape.task != v1::TRAINING_TASK_CLASSIFICATION;
  range(given.has_epochs(), "epochs", given.epochs());
  range(given.has_batch_size(), "batch_size", given.batch_size());
  range(given.has_learning_rate_multiplier(), "learning_rate_multiplier",
        given.learning_rate_multiplier());
  range(given.has_learning_rate(), "learning_rate", given.learning_rate());
  if (given.has_learning_rate() && given.has_learning_rate_multiplier()) {
    check(false, "learning_rate", "give learning_rate or learning_rate_multiplier, not both");
    check(false, "learning_rate_multiplier",
          "give learning_rate or learning_rate_multiplier, not both");
  }
  if (given.has_lora_rank()) check(lora, "lora_rank", "applies only to adapter lora");
  range(given.has_lora_rank(), "lora_rank", given.lora_rank());
  if (given.has_lora_alpha()) check(lora, "lora_alpha", "applies only to adapter lora");
  range(given.has_lora_alpha(), "lora_alpha", given.lora_alpha());
  if (given.has_lora_dropout()) check(lora, "lora_dropout", "applies only to adapter lora");
  range(given.has_lora_dropout(), "lora_dropout", given.lora_dropout());
  if (given.lora_target_modules_size() > 0)
    check(lora, "lora_target_modules", "applies only to adapter lora");
  range(given.has_warmup_ratio(), "warmup_ratio", given.warmup_ratio());
  range(given.has_max_sequence_length(), "max_sequence_length", given.max_sequence_length(),
        absl::StrCat(" for ", model.id));
  range(given.has_micro_batch_size(), "micro_batch_size", given.micro_batch_size());
  range(given.has_checkpoint_interval_steps(), "checkpoint_interval_steps",
        static_cast<double>(given.checkpoint_interval_steps()));
  range(given.has_eval_interval_steps(), "eval_interval_steps",
        static_cast<double>(given.eval_interval_steps()));
  if (given.has_eval_interval_steps() && given.eval_interval_steps() > 0)
    check(shape.has_validation, "eval_interval_steps",
          "needs validation data (validation_file or validation_split)");
  range(given.has_weight_decay(), "weight_decay", given.weight_decay());
  if (given.lr_scheduler() != v1::LR_SCHEDULER_UNSPECIFIED)
    check(v1::LrScheduler_IsValid(given.lr_scheduler()), "lr_scheduler",
          "must be cosine, linear or constant");
  range(given.has_max_steps(), "max_steps", static_cast<double>(given.max_steps()));
  if (given.has_packing() && given.packing()) {
    check(chat, "packing", "applies only to the chat task");
    check(!shape.dpo, "packing", "applies only to the supervised method (DPO pairs are not packed)");
  }
  range(given.has_keep_checkpoints(), "keep_checkpoints", given.keep_checkpoints());
  range(given.has_early_stopping_patience(), "early_stopping_patience",
        given.early_stopping_patience());
  if (given.has_early_stopping_patience() && given.early_stopping_patience() > 0)
    check(shape.has_validation, "early_stopping_patience",
          "needs validation data (validation_file or validation_split)");

  ResolvedJob r;
  v1::Hyperparameters& h = r.hyperparameters;
  h = given;
  const int64_t n = std::max<int64_t>(1, shape.examples);
  const int w = std::max(1, shape.gpus);
  if (!h.has_epochs()) {
    int64_t e = 3;
    if (n * 3 < 100) e = std::min<int64_t>(25, (100 + n - 1) / n);
    if (n * 3 > 25000) e = std::max<int64_t>(1, 25000 / n);
    h.set_epochs(static_cast<int32_t>(e));
  }
  if (!h.has_batch_size()) {
    int64_t target = (n * 2 + 999) / 1000;
    int64_t b = 1;
    while (b < target && b < 256) b *= 2;
    h.set_batch_size(static_cast<int32_t>(b));
  }
  if (h.batch_size() >= 1 && h.batch_size() % w != 0)
    h.set_batch_size((h.batch_size() / w + 1) * w);
  const int64_t per_rank = std::max<int64_t>(1, h.batch_size() / w);
  if (given.has_micro_batch_size() && given.micro_batch_size() >= 1) {
    check(per_rank % given.micro_batch_size() == 0, "micro_batch_size",
          absl::StrCat("must divide batch_size / gpus = ", per_rank));
  }
  if (!bad.empty()) return errors::InvalidFields(bad);

  const double base = lora ? kLoraBaseLearningRate : kFullBaseLearningRate;
  if (h.has_learning_rate()) {
    h.set_learning_rate_multiplier(h.learning_rate() / base);
  } else {
    if (!h.has_learning_rate_multiplier()) h.set_learning_rate_multiplier(1.0);
    h.set_learning_rate(h.learning_rate_multiplier() * base);
  }
  if (lora) {
    if (!h.has_lora_rank()) h.set_lora_rank(8);
    if (!h.has_lora_alpha()) h.set_lora_alpha(16);
    if (!h.has_lora_dropout()) h.set_lora_dropout(0.05);
  }
  if (!h.has_warmup_ratio()) h.set_warmup_ratio(0.03);
  if (!h.has_weight_decay()) h.set_weight_decay(lora ? kLoraWeightDecay : kFullWeightDecay);
  if (h.lr_scheduler() == v1::LR_SCHEDULER_UNSPECIFIED) h.set_lr_scheduler(v1::LR_SCHEDULER_COSINE);
  if (!h.has_max_sequence_length())
    h.set_max_sequence_length(std::min<int32_t>(model.max_sequence_length, 4096));
  if (!h.has_seed()) h.set_seed(static_cast<int64_t>(absl::Hash<std::string>()(job_id) & 0x7fffffff));
  if (!h.has_micro_batch_size()) {
    int64_t micro = 1;
    for (int64_t d = std::min<int64_t>(8, per_rank); d >= 1; --d) {
      if (per_rank % d == 0) {
        micro = d;
        break;
      }
    }
    h.set_micro_batch_size(static_cast<int32_t>(micro));
  }
  if (!h.has_max_steps()) h.set_max_steps(0);
  if (!h.has_packing()) h.set_packing(chat && !shape.dpo);
  if (!h.has_gradient_checkpointing()) h.set_gradient_checkpointing(false);
  if (!h.has_keep_checkpoints()) h.set_keep_checkpoints(2);
  if (!h.has_early_stopping_patience()) h.set_early_stopping_patience(0);
  int64_t steps_per_epoch = (n + h.batch_size() - 1) / h.batch_size();
  r.total_steps = steps_per_epoch * h.epochs();
  if (h.max_steps() > 0) r.total_steps = std::min(r.total_steps, h.max_steps());
  int64_t interval = std::max<int64_t>(1, (r.total_steps + 9) / 10);
  if (!h.has_checkpoint_interval_steps()) h.set_checkpoint_interval_steps(interval);
  if (!h.has_eval_interval_steps()) h.set_eval_interval_steps(shape.has_validation ? interval : 0);
  return r;
}

absl::StatusOr<v1::Method> ResolveMethod(const v1::Method& given, v1::TrainingTask task) {
  v1::Method m;
  if (given.kind_case() != v1::Method::kDpo) {
    m.mutable_supervised();
    return m;
  }
  std::vector<errors::FieldViolation> bad;
  const v1::DpoMethod& d = given.dpo();
  if (d.has_beta() && !(std::isfinite(d.beta()) && d.beta() > 0 && d.beta() <= 10))
    bad.push_back({"method.dpo.beta", "must be in (0, 10]"});
  if (task == v1::TRAINING_TASK_CLASSIFICATION)
    bad.push_back({"task", "method dpo needs the chat task"});
  if (!bad.empty()) return errors::InvalidFields(bad);
  m.mutable_dpo()->set_beta(d.has_beta() ? d.beta() : kDefaultDpoBeta);
  return m;
}

v1::DataFormat NeededFormat(const v1::Method& method, v1::TrainingTask task) {
  if (method.kind_case() == v1::Method::kDpo) return v1::DATA_FORMAT_PREFERENCE;
  return task == v1::TRAINING_TASK_CLASSIFICATION ? v1::DATA_FORMAT_CLASSIFICATION
                                                  : v1::DATA_FORMAT_CHAT;
}

std::string MethodName(const v1::Method& method) {
  return method.kind_case() == v1::Method::kDpo ? "dpo" : "supervised";
}

v1::MemoryEstimate EstimateJobMemory(const BaseModel& model, v1::AdapterType adapter,
                                     const v1::Method& method, const v1::Hyperparameters& h,
                                     int64_t num_labels, model::TrainingPrecision precision,
                                     int64_t longest_example) {
  model::TrainingMemoryInput in;
  in.full = adapter == v1::ADAPTER_TYPE_FULL;
  in.lora_rank = h.lora_rank();
  in.lora_targets.assign(h.lora_target_modules().begin(), h.lora_target_modules().end());
  in.precision = precision;
  in.micro_batch_size = h.micro_batch_size();
  in.sequence_length = h.max_sequence_length();
  in.gradient_checkpointing = h.gradient_checkpointing();
  in.dpo = method.kind_case() == v1::Method::kDpo;
  in.num_labels = num_labels;
  in.longest_example = longest_example;
  const model::TrainingMemory m = model::EstimateTrainingMemory(model.config, in);
  v1::MemoryEstimate out;
  out.set_weights_bytes(m.weights);
  out.set_gradients_bytes(m.gradients);
  out.set_optimizer_state_bytes(m.optimizer_state);
  out.set_activations_bytes(m.activations);
  out.set_total_bytes(m.total());
  out.set_dtype(std::string(model::PrecisionName(precision)));
  return out;
}

}  // namespace tunefleet::scheduler
