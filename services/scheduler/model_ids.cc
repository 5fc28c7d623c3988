#include "services/scheduler/model_ids.h"

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace tunefleet::scheduler {

namespace {
constexpr char kCheckpointPrefix[] = "ckpt-step-";
}  // namespace

std::optional<FineTunedId> ParseFineTunedId(const std::string& id) {
  if (!absl::StartsWith(id, "ft:")) return std::nullopt;
  std::vector<std::string> parts = absl::StrSplit(id, ':');
  if (parts.size() != 4 && parts.size() != 5) return std::nullopt;
  FineTunedId out;
  out.base = parts[1];
  out.suffix = parts[2];
  out.job = parts[3];
  if (out.base.empty() || out.job.empty()) return std::nullopt;
  if (parts.size() == 5) {
    if (!absl::StartsWith(parts[4], kCheckpointPrefix)) return std::nullopt;
    int64_t step = 0;
    std::string digits = parts[4].substr(sizeof(kCheckpointPrefix) - 1);
    if (digits.empty() || !absl::SimpleAtoi(digits, &step) || step < 0) return std::nullopt;
    out.checkpoint_step = step;
  }
  return out;
}

std::string FineTunedModelId(const std::string& base, const std::string& suffix,
                             const std::string& job) {
  return absl::StrCat("ft:", base, ":", suffix, ":", job);
}

std::string CheckpointModelId(const std::string& base, const std::string& suffix,
                              const std::string& job, int64_t step) {
  return absl::StrCat(FineTunedModelId(base, suffix, job), ":", kCheckpointPrefix, step);
}

std::string CheckpointAdapterArtifact(const std::string& checkpoint_artifact) {
  return absl::StrCat(checkpoint_artifact, "/adapter");
}

absl::StatusOr<AdapterConfig> ReadAdapterConfig(const std::string& dir) {
  const std::string path = absl::StrCat(dir, "/adapter_config.json");
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, " does not exist"));
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    return absl::DataLossError(absl::StrCat(path, " is not a JSON object"));
  AdapterConfig a;
  try {
    a.rank = j.at("r").get<int64_t>();
    a.alpha = j.value("lora_alpha", static_cast<double>(a.rank));
    if (j.contains("target_modules") && j["target_modules"].is_array())
      a.target_modules = j["target_modules"].get<std::vector<std::string>>();
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(absl::StrCat(path, ": ", e.what()));
  }
  if (a.rank <= 0) return absl::DataLossError(absl::StrCat(path, ": r must be positive"));
  return a;
}

void ContinueFromAdapter(const AdapterConfig& adapter, v1::AdapterType type,
                         v1::Hyperparameters* given, std::vector<errors::FieldViolation>* bad) {
  if (type != v1::ADAPTER_TYPE_UNSPECIFIED && type != v1::ADAPTER_TYPE_LORA) {
    bad->push_back({"adapter", "a job continued from a fine-tuned model trains its LoRA adapter "
                               "further: adapter must be lora (or unset)"});
  }
  if (given->has_lora_rank() && given->lora_rank() != adapter.rank) {
    bad->push_back({"hyperparameters.lora_rank",
                    absl::StrCat("the adapter continued from has rank ", adapter.rank,
                                 "; leave it unset or give ", adapter.rank)});
  }
  if (given->has_lora_alpha() && given->lora_alpha() != adapter.alpha) {
    bad->push_back({"hyperparameters.lora_alpha",
                    absl::StrCat("the adapter continued from has alpha ", adapter.alpha,
                                 "; leave it unset or give ", adapter.alpha)});
  }
  if (given->lora_target_modules_size() > 0) {
    std::set<std::string> want(given->lora_target_modules().begin(),
                               given->lora_target_modules().end());
    std::set<std::string> have(adapter.target_modules.begin(), adapter.target_modules.end());
    if (want != have) {
      bad->push_back({"hyperparameters.lora_target_modules",
                      absl::StrCat("the adapter continued from targets [",
                                   absl::StrJoin(adapter.target_modules, ", "),
                                   "]; leave it unset or give those")});
    }
  }
  given->set_lora_rank(static_cast<int32_t>(adapter.rank));
  given->set_lora_alpha(adapter.alpha);
  given->clear_lora_target_modules();
  for (const auto& m : adapter.target_modules) given->add_lora_target_modules(m);
}

}  // namespace tunefleet::scheduler
