#include "services/trainer/protocol/worker_spec.h"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"

namespace tunefleet::trainer {
namespace {

using nlohmann::json;

absl::Status Bad(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("worker spec: ", field, ": ", what));
}

// Typed readers: a missing key keeps the default, a wrong type names the key.
class Reader {
 public:
  Reader(const json& j, std::string prefix) : j_(j), prefix_(std::move(prefix)) {}

  absl::Status Str(const char* key, std::string& out) {
    const json* v = Find(key);
    if (!v) return absl::OkStatus();
    if (!v->is_string()) return Bad(Name(key), "must be a string");
    out = v->get<std::string>();
    return absl::OkStatus();
  }
  absl::Status Int(const char* key, int64_t& out) {
    const json* v = Find(key);
    if (!v) return absl::OkStatus();
    if (!v->is_number_integer()) return Bad(Name(key), "must be an integer");
    out = v->get<int64_t>();
    return absl::OkStatus();
  }
  absl::Status Num(const char* key, double& out) {
    const json* v = Find(key);
    if (!v) return absl::OkStatus();
    // NaN and infinities are written as null by JSON writers.
    if (!v->is_number()) return Bad(Name(key), "must be a finite number");
    out = v->get<double>();
    return absl::OkStatus();
  }
  absl::Status Bool(const char* key, bool& out) {
    const json* v = Find(key);
    if (!v) return absl::OkStatus();
    if (!v->is_boolean()) return Bad(Name(key), "must be true or false");
    out = v->get<bool>();
    return absl::OkStatus();
  }
  absl::Status Strings(const char* key, std::vector<std::string>& out) {
    const json* v = Find(key);
    if (!v) return absl::OkStatus();
    if (!v->is_array()) return Bad(Name(key), "must be an array of strings");
    out.clear();
    for (const json& e : *v) {
      if (!e.is_string()) return Bad(Name(key), "must be an array of strings");
      out.push_back(e.get<std::string>());
    }
    return absl::OkStatus();
  }
  std::string Name(const char* key) const { return prefix_ + key; }
  bool Has(const char* key) const { return Find(key) != nullptr; }

 private:
  const json* Find(const char* key) const {
    auto it = j_.find(key);
    if (it == j_.end()) return nullptr;
    return &*it;
  }
  const json& j_;
  std::string prefix_;
};

template <typename E, size_t N>
absl::Status ParseEnum(Reader& r, const char* key, const std::pair<E, const char*> (&names)[N],
                       E& out) {
  if (!r.Has(key)) return absl::OkStatus();
  std::string s;
  TF_RETURN_IF_ERROR(r.Str(key, s));
  for (const auto& [value, name] : names) {
    if (s == name) {
      out = value;
      return absl::OkStatus();
    }
  }
  std::string allowed;
  for (const auto& [value, name] : names) absl::StrAppend(&allowed, allowed.empty() ? "" : "|", name);
  return Bad(r.Name(key), absl::StrCat("unknown value '", s, "' (", allowed, ")"));
}

constexpr std::pair<TrainingMethod, const char*> kMethods[] = {{TrainingMethod::kLora, "lora"},
                                                               {TrainingMethod::kFull, "full"}};
constexpr std::pair<TrainingTask, const char*> kTasks[] = {
    {TrainingTask::kChat, "chat"}, {TrainingTask::kClassification, "classification"}};
constexpr std::pair<LrScheduler, const char*> kSchedulers[] = {{LrScheduler::kCosine, "cosine"},
                                                               {LrScheduler::kLinear, "linear"},
                                                               {LrScheduler::kConstant, "constant"}};

constexpr std::pair<TrainingObjective, const char*> kObjectives[] = {
    {TrainingObjective::kSupervised, "supervised"}, {TrainingObjective::kDpo, "dpo"}};

bool Finite(double x) { return std::isfinite(x); }

}  // namespace

absl::string_view MethodName(TrainingMethod m) { return m == TrainingMethod::kLora ? "lora" : "full"; }
absl::string_view TaskName(TrainingTask t) {
  return t == TrainingTask::kChat ? "chat" : "classification";
}
absl::string_view SchedulerName(LrScheduler s) {
  switch (s) {
    case LrScheduler::kLinear:
      return "linear";
    case LrScheduler::kConstant:
      return "constant";
    default:
      return "cosine";
  }
}

absl::string_view ObjectiveName(TrainingObjective o) {
  return o == TrainingObjective::kDpo ? "dpo" : "supervised";
}

absl::Status ValidateWorkerSpec(const WorkerSpec& s) {
  const WorkerHyperparameters& h = s.hyper;
  if (s.world_size < 1) return Bad("world_size", "must be >= 1");
  if (s.rank < 0 || s.rank >= s.world_size) return Bad("rank", "must be in [0, world_size)");
  if (s.world_size > 1 && (s.master_port <= 0 || s.master_port > 65535))
    return Bad("master_port", "must be in [1, 65535] when world_size > 1");
  if (s.world_size > 1 && s.master_addr.empty()) return Bad("master_addr", "must be set");
  if (s.base_model_dir.empty()) return Bad("base_model_dir", "must be set");
  if (s.train_shards.empty()) return Bad("train_shards", "must name at least one shard file");
  if (s.output_dir.empty()) return Bad("output_dir", "must be set");
  if (s.checkpoint_root.empty()) return Bad("checkpoint_root", "must be set");
  if (s.task == TrainingTask::kClassification && s.num_labels < 2)
    return Bad("num_labels", "must be >= 2 for classification");
  if (!s.label_names.empty()) {
    if (s.task != TrainingTask::kClassification)
      return Bad("label_names", "only for the classification task");
    if (static_cast<int64_t>(s.label_names.size()) != s.num_labels)
      return Bad("label_names", absl::StrCat("has ", s.label_names.size(), " names for num_labels ",
                                             s.num_labels));
    for (size_t i = 0; i < s.label_names.size(); ++i) {
      if (s.label_names[i].empty()) return Bad("label_names", absl::StrCat("[", i, "] is empty"));
      for (size_t k = 0; k < i; ++k) {
        if (s.label_names[k] == s.label_names[i])
          return Bad("label_names", absl::StrCat("'", s.label_names[i], "' appears twice"));
      }
    }
  }
  if (s.device.empty()) return Bad("device", "must be set");
  if (!Finite(s.collective_timeout_s) || s.collective_timeout_s <= 0)
    return Bad("collective_timeout_s", "must be a finite number > 0");
  if (!Finite(s.progress_interval_s) || s.progress_interval_s < 0)
    return Bad("progress_interval_s", "must be a finite number >= 0");
  if (h.epochs < 1) return Bad("hyperparameters.epochs", "must be >= 1");
  if (h.batch_size < 1) return Bad("hyperparameters.batch_size", "must be >= 1");
  if (h.batch_size % s.world_size != 0)
    return Bad("hyperparameters.batch_size", "must be a multiple of world_size");
  if (h.micro_batch_size < 0) return Bad("hyperparameters.micro_batch_size", "must be >= 0");
  if (h.micro_batch_size > 0 && (h.batch_size / s.world_size) % h.micro_batch_size != 0)
    return Bad("hyperparameters.micro_batch_size",
               "must divide the per-rank batch (batch_size / world_size)");
  if (!Finite(h.learning_rate) || h.learning_rate <= 0)
    return Bad("hyperparameters.learning_rate", "must be a finite number > 0");
  if (!Finite(h.weight_decay) || h.weight_decay < 0)
    return Bad("hyperparameters.weight_decay", "must be a finite number >= 0");
  if (!Finite(h.warmup_ratio) || h.warmup_ratio < 0 || h.warmup_ratio >= 1)
    return Bad("hyperparameters.warmup_ratio", "must be in [0, 1)");
  if (!Finite(h.max_grad_norm) || h.max_grad_norm < 0)
    return Bad("hyperparameters.max_grad_norm", "must be a finite number >= 0");
  if (s.method == TrainingMethod::kLora) {
    if (h.lora_rank < 1) return Bad("hyperparameters.lora_rank", "must be >= 1");
    if (!Finite(h.lora_alpha) || h.lora_alpha <= 0)
      return Bad("hyperparameters.lora_alpha", "must be a finite number > 0");
    if (!Finite(h.lora_dropout) || h.lora_dropout < 0 || h.lora_dropout >= 1)
      return Bad("hyperparameters.lora_dropout", "must be in [0, 1)");
  }
  if (h.max_sequence_length < 2) return Bad("hyperparameters.max_sequence_length", "must be >= 2");
  if (h.eval_interval_steps < 0) return Bad("hyperparameters.eval_interval_steps", "must be >= 0");
  if (h.checkpoint_interval_steps < 0)
    return Bad("hyperparameters.checkpoint_interval_steps", "must be >= 0");
  if (h.keep_checkpoints < 1) return Bad("hyperparameters.keep_checkpoints", "must be >= 1");
  if (h.max_steps < 0) return Bad("hyperparameters.max_steps", "must be >= 0");
  if (h.early_stopping_patience < 0)
    return Bad("hyperparameters.early_stopping_patience", "must be >= 0");
  if (s.objective == TrainingObjective::kDpo) {
    if (!Finite(s.dpo_beta) || s.dpo_beta <= 0) return Bad("dpo_beta", "must be a finite number > 0");
    if (s.task != TrainingTask::kChat) return Bad("objective", "dpo needs the chat task");
  }
  return absl::OkStatus();
}

std::string WorkerSpecToJson(const WorkerSpec& s) {
  const WorkerHyperparameters& h = s.hyper;
  json hj = {{"epochs", h.epochs},
             {"batch_size", h.batch_size},
             {"micro_batch_size", h.micro_batch_size},
             {"learning_rate", h.learning_rate},
             {"weight_decay", h.weight_decay},
             {"lr_scheduler", SchedulerName(h.lr_scheduler)},
             {"warmup_ratio", h.warmup_ratio},
             {"max_grad_norm", h.max_grad_norm},
             {"lora_rank", h.lora_rank},
             {"lora_alpha", h.lora_alpha},
             {"lora_dropout", h.lora_dropout},
             {"lora_target_modules", h.lora_target_modules},
             {"max_sequence_length", h.max_sequence_length},
             {"seed", h.seed},
             {"packing", h.packing},
             {"eval_interval_steps", h.eval_interval_steps},
             {"checkpoint_interval_steps", h.checkpoint_interval_steps},
             {"keep_checkpoints", h.keep_checkpoints},
             {"max_steps", h.max_steps},
             {"gradient_checkpointing", h.gradient_checkpointing},
             {"early_stopping_patience", h.early_stopping_patience}};
  json j = {{"job_id", s.job_id},
            {"assignment_id", s.assignment_id},
            {"rank", s.rank},
            {"world_size", s.world_size},
            {"master_addr", s.master_addr},
            {"master_port", s.master_port},
            {"base_model_dir", s.base_model_dir},
            {"base_model_id", s.base_model_id},
            {"init_adapter_dir", s.init_adapter_dir},
            {"train_shards", s.train_shards},
            {"valid_shards", s.valid_shards},
            {"output_dir", s.output_dir},
            {"checkpoint_root", s.checkpoint_root},
            {"resume_from", s.resume_from},
            {"method", MethodName(s.method)},
            {"task", TaskName(s.task)},
            {"objective", ObjectiveName(s.objective)},
            {"dpo_beta", s.dpo_beta},
            {"num_labels", s.num_labels},
            {"label_names", s.label_names},
            {"write_merged", s.write_merged},
            {"hyperparameters", std::move(hj)},
            {"device", s.device},
            {"collective_timeout_s", s.collective_timeout_s},
            {"progress_interval_s", s.progress_interval_s}};
  return j.dump(2);
}

absl::StatusOr<WorkerSpec> ParseWorkerSpec(absl::string_view text) {
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    return absl::InvalidArgumentError("worker spec: not a JSON object");
  WorkerSpec s;
  Reader r(j, "");
  TF_RETURN_IF_ERROR(r.Str("job_id", s.job_id));
  TF_RETURN_IF_ERROR(r.Str("assignment_id", s.assignment_id));
  TF_RETURN_IF_ERROR(r.Int("rank", s.rank));
  TF_RETURN_IF_ERROR(r.Int("world_size", s.world_size));
  TF_RETURN_IF_ERROR(r.Str("master_addr", s.master_addr));
  TF_RETURN_IF_ERROR(r.Int("master_port", s.master_port));
  TF_RETURN_IF_ERROR(r.Str("base_model_dir", s.base_model_dir));
  TF_RETURN_IF_ERROR(r.Str("base_model_id", s.base_model_id));
  TF_RETURN_IF_ERROR(r.Str("init_adapter_dir", s.init_adapter_dir));
  TF_RETURN_IF_ERROR(r.Strings("train_shards", s.train_shards));
  TF_RETURN_IF_ERROR(r.Strings("valid_shards", s.valid_shards));
  TF_RETURN_IF_ERROR(r.Str("output_dir", s.output_dir));
  TF_RETURN_IF_ERROR(r.Str("checkpoint_root", s.checkpoint_root));
  TF_RETURN_IF_ERROR(r.Str("resume_from", s.resume_from));
  TF_RETURN_IF_ERROR(ParseEnum(r, "method", kMethods, s.method));
  TF_RETURN_IF_ERROR(ParseEnum(r, "task", kTasks, s.task));
  TF_RETURN_IF_ERROR(ParseEnum(r, "objective", kObjectives, s.objective));
  TF_RETURN_IF_ERROR(r.Num("dpo_beta", s.dpo_beta));
  TF_RETURN_IF_ERROR(r.Int("num_labels", s.num_labels));
  TF_RETURN_IF_ERROR(r.Strings("label_names", s.label_names));
  TF_RETURN_IF_ERROR(r.Bool("write_merged", s.write_merged));
  TF_RETURN_IF_ERROR(r.Str("device", s.device));
  TF_RETURN_IF_ERROR(r.Num("collective_timeout_s", s.collective_timeout_s));
  TF_RETURN_IF_ERROR(r.Num("progress_interval_s", s.progress_interval_s));
  auto hit = j.find("hyperparameters");
  if (hit != j.end()) {
    if (!hit->is_object()) return Bad("hyperparameters", "must be an object");
    WorkerHyperparameters& h = s.hyper;
    Reader hr(*hit, "hyperparameters.");
    TF_RETURN_IF_ERROR(hr.Int("epochs", h.epochs));
    TF_RETURN_IF_ERROR(hr.Int("batch_size", h.batch_size));
    TF_RETURN_IF_ERROR(hr.Int("micro_batch_size", h.micro_batch_size));
    TF_RETURN_IF_ERROR(hr.Num("learning_rate", h.learning_rate));
    TF_RETURN_IF_ERROR(hr.Num("weight_decay", h.weight_decay));
    TF_RETURN_IF_ERROR(ParseEnum(hr, "lr_scheduler", kSchedulers, h.lr_scheduler));
    TF_RETURN_IF_ERROR(hr.Num("warmup_ratio", h.warmup_ratio));
    TF_RETURN_IF_ERROR(hr.Num("max_grad_norm", h.max_grad_norm));
    TF_RETURN_IF_ERROR(hr.Int("lora_rank", h.lora_rank));
    TF_RETURN_IF_ERROR(hr.Num("lora_alpha", h.lora_alpha));
    TF_RETURN_IF_ERROR(hr.Num("lora_dropout", h.lora_dropout));
    TF_RETURN_IF_ERROR(hr.Strings("lora_target_modules", h.lora_target_modules));
    TF_RETURN_IF_ERROR(hr.Int("max_sequence_length", h.max_sequence_length));
    TF_RETURN_IF_ERROR(hr.Int("seed", h.seed));
    TF_RETURN_IF_ERROR(hr.Bool("packing", h.packing));
    TF_RETURN_IF_ERROR(hr.Int("eval_interval_steps", h.eval_interval_steps));
    TF_RETURN_IF_ERROR(hr.Int("checkpoint_interval_steps", h.checkpoint_interval_steps));
    TF_RETURN_IF_ERROR(hr.Int("keep_checkpoints", h.keep_checkpoints));
    TF_RETURN_IF_ERROR(hr.Int("max_steps", h.max_steps));
    TF_RETURN_IF_ERROR(hr.Bool("gradient_checkpointing", h.gradient_checkpointing));
    TF_RETURN_IF_ERROR(hr.Int("early_stopping_patience", h.early_stopping_patience));
  }
  TF_RETURN_IF_ERROR(ValidateWorkerSpec(s));
  return s;
}

absl::Status WriteWorkerSpecFile(const WorkerSpec& spec, const std::string& path) {
  std::string tmp = absl::StrCat(path, ".tmp");
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << WorkerSpecToJson(spec) << "\n";
    out.flush();
    if (!out) return absl::InternalError(absl::StrCat("cannot write worker spec ", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    return absl::InternalError(absl::StrCat("cannot rename worker spec to ", path));
  return absl::OkStatus();
}

absl::StatusOr<WorkerSpec> ReadWorkerSpecFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("worker spec ", path, ": cannot open"));
  std::stringstream ss;
  ss << in.rdbuf();
  absl::StatusOr<WorkerSpec> spec = ParseWorkerSpec(ss.str());
  if (!spec.ok()) {
    return absl::Status(spec.status().code(),
                        absl::StrCat(path, ": ", spec.status().message()));
  }
  return spec;
}

}  // namespace tunefleet::trainer
