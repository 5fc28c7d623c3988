#include "services/scheduler/job_spec.h"

#include <algorithm>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/errors/error_details.h"

namespace tunefleet::scheduler {
namespace fs = std::filesystem;

namespace {

absl::StatusOr<BaseModel> ReadModel(const fs::path& dir) {
  std::ifstream in(dir / "config.json");
  if (!in) return absl::NotFoundError("no config.json");
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return absl::InvalidArgumentError("config.json is not a JSON object");
  BaseModel m;
  m.id = dir.filename().string();
  m.family = j.value("model_type", std::string("llama"));
  m.max_sequence_length = static_cast<int32_t>(j.value("max_position_embeddings", int64_t{2048}));
  int64_t h = j.value("hidden_size", int64_t{0});
  int64_t layers = j.value("num_hidden_layers", int64_t{0});
  int64_t inter = j.value("intermediate_size", int64_t{4 * h});
  int64_t vocab = j.value("vocab_size", int64_t{0});
  bool tied = j.value("tie_word_embeddings", false);
  m.parameters = layers * (4 * h * h + 3 * h * inter) + vocab * h * (tied ? 1 : 2);
  return m;
}

}  // namespace

void BaseModelCatalog::Rescan() {
  models_.clear();
  scanned_ = true;
  std::error_code ec;
  if (dir_.empty()) return;
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    if (!entry.is_directory()) continue;
    auto m = ReadModel(entry.path());
    if (m.ok()) models_.push_back(std::move(*m));
  }
  std::sort(models_.begin(), models_.end(),
            [](const BaseModel& a, const BaseModel& b) { return a.id < b.id; });
}

absl::StatusOr<BaseModel> BaseModelCatalog::Get(const std::string& id) {
  absl::MutexLock lock(&mu_);
  for (int pass = 0; pass < 2; ++pass) {
    if (pass == 1 || !scanned_) Rescan();
    for (const BaseModel& m : models_)
      if (m.id == id) return m;
  }
  return absl::NotFoundError(absl::StrCat("model '", id, "' not found"));
}

std::vector<BaseModel> BaseModelCatalog::List() {
  absl::MutexLock lock(&mu_);
  Rescan();
  return models_;
}

absl::StatusOr<ResolvedJob> ResolveHyperparameters(const v1::Hyperparameters& given,
                                                   v1::AdapterType adapter, int gpus,
                                                   int64_t examples, bool has_validation,
                                                   const BaseModel& model,
                                                   const std::string& job_id) {
  std::vector<errors::FieldViolation> bad;
  auto check = [&](bool ok, const char* field, const std::string& why) {
    if (!ok) bad.push_back({absl::StrCat("hyperparameters.", field), why});
  };
  const bool lora = adapter != v1::ADAPTER_TYPE_FULL;
  if (given.has_epochs()) check(given.epochs() >= 1 && given.epochs() <= 50, "epochs", "must be in [1, 50]");
  if (given.has_batch_size())
    check(given.batch_size() >= 1 && given.batch_size() <= 1024, "batch_size", "must be in [1, 1024]");
  if (given.has_learning_rate_multiplier())
    check(given.learning_rate_multiplier() > 0 && given.learning_rate_multiplier() <= 100,
          "learning_rate_multiplier", "must be in (0, 100]");
  if (given.has_lora_rank()) {
    check(lora, "lora_rank", "applies only to adapter lora");
    check(given.lora_rank() >= 1 && given.lora_rank() <= 256, "lora_rank", "must be in [1, 256]");
  }
  if (given.has_lora_alpha()) {
    check(lora, "lora_alpha", "applies only to adapter lora");
    check(given.lora_alpha() > 0 && given.lora_alpha() <= 1024, "lora_alpha", "must be in (0, 1024]");
  }
  if (given.has_lora_dropout()) {
    check(lora, "lora_dropout", "applies only to adapter lora");
    check(given.lora_dropout() >= 0 && given.lora_dropout() < 1, "lora_dropout", "must be in [0, 1)");
  }
  if (given.has_warmup_ratio())
    check(given.warmup_ratio() >= 0 && given.warmup_ratio() < 1, "warmup_ratio", "must be in [0, 1)");
  if (given.has_max_sequence_length())
    check(given.max_sequence_length() >= 16 &&
              given.max_sequence_length() <= model.max_sequence_length,
          "max_sequence_length",
          absl::StrCat("must be in [16, ", model.max_sequence_length, "] for ", model.id));
  check(!given.has_learning_rate(), "learning_rate",
        "is chosen by the scheduler; set learning_rate_multiplier");
  check(!given.has_micro_batch_size(), "micro_batch_size", "is chosen by the scheduler");
  check(!given.has_checkpoint_interval_steps(), "checkpoint_interval_steps",
        "is chosen by the scheduler");
  check(!given.has_eval_interval_steps(), "eval_interval_steps", "is chosen by the scheduler");
  if (!bad.empty()) return errors::InvalidFields(bad);

  ResolvedJob r;
  v1::Hyperparameters& h = r.hyperparameters;
  h = given;
  const int64_t n = std::max<int64_t>(1, examples);
  const int w = std::max(1, gpus);
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
  if (h.batch_size() % w != 0) h.set_batch_size((h.batch_size() / w + 1) * w);
  if (!h.has_learning_rate_multiplier()) h.set_learning_rate_multiplier(1.0);
  h.set_learning_rate(h.learning_rate_multiplier() *
                      (lora ? kLoraBaseLearningRate : kFullBaseLearningRate));
  if (lora) {
    if (!h.has_lora_rank()) h.set_lora_rank(8);
    if (!h.has_lora_alpha()) h.set_lora_alpha(16);
    if (!h.has_lora_dropout()) h.set_lora_dropout(0.05);
  }
  if (!h.has_warmup_ratio()) h.set_warmup_ratio(0.03);
  if (!h.has_max_sequence_length())
    h.set_max_sequence_length(std::min<int32_t>(model.max_sequence_length, 4096));
  if (!h.has_seed()) h.set_seed(static_cast<int64_t>(absl::Hash<std::string>()(job_id) & 0x7fffffff));
  int64_t per_rank = h.batch_size() / w;
  int64_t micro = 1;
  for (int64_t d = std::min<int64_t>(8, per_rank); d >= 1; --d) {
    if (per_rank % d == 0) {
      micro = d;
      break;
    }
  }
  h.set_micro_batch_size(static_cast<int32_t>(micro));
  int64_t steps_per_epoch = (n + h.batch_size() - 1) / h.batch_size();
  r.total_steps = steps_per_epoch * h.epochs();
  int64_t interval = std::max<int64_t>(1, (r.total_steps + 9) / 10);
  h.set_checkpoint_interval_steps(interval);
  h.set_eval_interval_steps(has_validation ? interval : 0);
  return r;
}

}  // namespace tunefleet::scheduler
