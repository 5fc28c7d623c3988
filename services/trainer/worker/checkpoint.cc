#include "services/trainer/worker/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/base/status_macros.h"
#include "common/model/file_util.h"
#include "services/trainer/worker/file_hash.h"

namespace tunefleet::trainer {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr char kState[] = "trainer_state.json";
constexpr char kOptimizer[] = "optimizer.safetensors";
constexpr char kWeights[] = "weights.safetensors";
constexpr char kAdapter[] = "adapter";
constexpr char kManifest[] = "manifest.json";

void FsyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

json OptNum(const std::optional<double>& v) { return v ? json(*v) : json(nullptr); }
std::optional<double> ReadOpt(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number()) return std::nullopt;
  return it->get<double>();
}

// Every regular file under `dir`, relative, sorted.
std::vector<std::string> ListFiles(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    if (it->is_regular_file()) out.push_back(fs::relative(it->path(), dir).string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

void Prune(const std::string& root, int64_t keep, const std::string& protect) {
  std::vector<std::string> steps;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    std::string name = e.path().filename().string();
    if (e.is_directory() && absl::StartsWith(name, "step-") && name.find('.') == std::string::npos)
      steps.push_back(name);
  }
  std::sort(steps.begin(), steps.end());
  const int64_t excess = static_cast<int64_t>(steps.size()) - keep;
  for (int64_t i = 0; i < excess; ++i) {
    if (steps[i] == protect) continue;
    fs::remove_all(fs::path(root) / steps[i], ec);
  }
}

}  // namespace

std::string CheckpointDirName(int64_t step) { return absl::StrFormat("step-%08d", step); }

absl::StatusOr<std::string> WriteCheckpoint(const std::string& root, const TrainerState& state,
                                            const model::LoraAdapter* adapter,
                                            const model::NamedTensors& weights,
                                            const model::NamedTensors& optimizer,
                                            const std::string& base_model_id, int64_t keep) {
  const std::string name = CheckpointDirName(state.step);
  const std::string final_dir = (fs::path(root) / name).string();
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) return absl::InternalError(absl::StrCat("checkpoint_root ", root, ": ", ec.message()));
  if (fs::exists(fs::path(final_dir) / kManifest)) {
    Prune(root, keep, name);
    return final_dir;
  }
  const std::string tmp = absl::StrCat(final_dir, ".tmp-", ::getpid());
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) return absl::InternalError(absl::StrCat("checkpoint ", tmp, ": ", ec.message()));
  if (adapter) {
    TF_RETURN_IF_ERROR(adapter->Save((fs::path(tmp) / kAdapter).string(), base_model_id));
  }
  if (!adapter || !weights.empty()) {  // LoRA: the classification head, if any
    TF_RETURN_IF_ERROR(model::WriteSafetensors((fs::path(tmp) / kWeights).string(), weights));
  }
  TF_RETURN_IF_ERROR(model::WriteSafetensors((fs::path(tmp) / kOptimizer).string(), optimizer));
  json s = {{"step", state.step},
            {"total_steps", state.total_steps},
            {"steps_per_epoch", state.steps_per_epoch},
            {"epoch", state.epoch},
            {"step_in_epoch", state.step_in_epoch},
            {"trained_tokens", state.trained_tokens},
            {"base_valid_loss", OptNum(state.base_valid_loss)},
            {"base_valid_accuracy", OptNum(state.base_valid_accuracy)},
            {"train_loss", OptNum(state.train_loss)},
            {"best_valid_loss", OptNum(state.best_valid_loss)},
            {"best_step", state.best_step},
            {"evals_since_best", state.evals_since_best},
            {"fingerprint", state.fingerprint},
            {"rng", "reseeded each step from (seed, step)"}};
  TF_RETURN_IF_ERROR(
      model::WriteStringAtomically((fs::path(tmp) / kState).string(), s.dump(2) + "\n"));
  json files = json::object();
  for (const std::string& f : ListFiles(tmp)) {
    TF_ASSIGN_OR_RETURN(std::string h, FileFnv64Hex((fs::path(tmp) / f).string()));
    files[f] = h;
  }
  TF_RETURN_IF_ERROR(model::WriteStringAtomically((fs::path(tmp) / kManifest).string(),
                                                  json{{"fnv1a64", files}}.dump(2) + "\n"));
  if (adapter) FsyncDir((fs::path(tmp) / kAdapter).string());
  FsyncDir(tmp);
  fs::remove_all(final_dir, ec);  // an incomplete one (no manifest) of a crashed run
  fs::rename(tmp, final_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("checkpoint ", final_dir, ": ", ec.message()));
  FsyncDir(root);
  Prune(root, keep, name);
  return final_dir;
}

absl::StatusOr<Checkpoint> ReadCheckpoint(const std::string& dir, const model::ModelConfig& base) {
  auto corrupt = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint ", dir, ": ", what));
  };
  if (!fs::is_directory(dir)) return absl::NotFoundError(absl::StrCat("checkpoint ", dir, ": no such directory"));
  absl::StatusOr<std::string> manifest_text = model::ReadFileToString((fs::path(dir) / kManifest).string());
  if (!manifest_text.ok()) return corrupt("no manifest.json (incomplete checkpoint)");
  json manifest = json::parse(*manifest_text, nullptr, false);
  if (manifest.is_discarded() || !manifest.contains("fnv1a64") || !manifest["fnv1a64"].is_object())
    return corrupt("manifest.json is corrupt");
  for (auto it = manifest["fnv1a64"].begin(); it != manifest["fnv1a64"].end(); ++it) {
    absl::StatusOr<std::string> h = FileFnv64Hex((fs::path(dir) / it.key()).string());
    if (!h.ok()) return corrupt(absl::StrCat(it.key(), " is missing"));
    if (!it.value().is_string() || *h != it.value().get<std::string>())
      return corrupt(absl::StrCat(it.key(), " is corrupt (checksum mismatch)"));
  }
  Checkpoint c;
  c.dir = dir;
  TF_ASSIGN_OR_RETURN(std::string state_text, model::ReadFileToString((fs::path(dir) / kState).string()));
  json s = json::parse(state_text, nullptr, false);
  if (s.is_discarded() || !s.is_object()) return corrupt("trainer_state.json is corrupt");
  try {
    c.state.step = s.at("step").get<int64_t>();
    c.state.total_steps = s.at("total_steps").get<int64_t>();
    c.state.steps_per_epoch = s.at("steps_per_epoch").get<int64_t>();
    c.state.epoch = s.at("epoch").get<int64_t>();
    c.state.step_in_epoch = s.at("step_in_epoch").get<int64_t>();
    c.state.trained_tokens = s.at("trained_tokens").get<int64_t>();
    c.state.fingerprint = s.at("fingerprint").get<std::string>();
  } catch (const json::exception& e) {
    return corrupt(absl::StrCat("trainer_state.json: ", e.what()));
  }
  c.state.base_valid_loss = ReadOpt(s, "base_valid_loss");
  c.state.base_valid_accuracy = ReadOpt(s, "base_valid_accuracy");
  c.state.train_loss = ReadOpt(s, "train_loss");
  c.state.best_valid_loss = ReadOpt(s, "best_valid_loss");
  c.state.best_step = s.value("best_step", int64_t{0});
  c.state.evals_since_best = s.value("evals_since_best", int64_t{0});
  auto read_all = [&](const char* file) -> absl::StatusOr<model::NamedTensors> {
    absl::StatusOr<std::shared_ptr<const model::SafetensorsFile>> f =
        model::SafetensorsFile::Open((fs::path(dir) / file).string());
    if (!f.ok()) return corrupt(std::string(f.status().message()));
    absl::StatusOr<model::NamedTensors> all = (*f)->GetAll();
    if (!all.ok()) return corrupt(std::string(all.status().message()));
    // Own the bytes: the mapping is private, but copies keep the optimizer
    // independent of the file's lifetime.
    for (auto& [n, t] : *all) t = t.clone();
    return all;
  };
  TF_ASSIGN_OR_RETURN(c.optimizer, read_all(kOptimizer));
  if (fs::is_directory(fs::path(dir) / kAdapter)) {
    absl::StatusOr<model::LoraAdapter> a = model::LoraAdapter::Load((fs::path(dir) / kAdapter).string(), base);
    if (!a.ok()) return corrupt(std::string(a.status().message()));
    c.adapter = *std::move(a);
  }
  if (!c.adapter || fs::exists(fs::path(dir) / kWeights)) {
    TF_ASSIGN_OR_RETURN(c.weights, read_all(kWeights));
  }
  return c;
}

absl::Status WriteBestWeights(const std::string& root, int64_t step,
                              const model::LoraAdapter* adapter,
                              const model::NamedTensors& weights,
                              const std::string& base_model_id) {
  const fs::path final_dir = fs::path(root) / "best";
  const std::string tmp = absl::StrCat(final_dir.string(), ".tmp-", ::getpid());
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) return absl::InternalError(absl::StrCat("best weights ", tmp, ": ", ec.message()));
  if (adapter) {
    TF_RETURN_IF_ERROR(adapter->Save((fs::path(tmp) / kAdapter).string(), base_model_id));
  }
  if (!adapter || !weights.empty()) {  // LoRA: the classification head, if any
    TF_RETURN_IF_ERROR(model::WriteSafetensors((fs::path(tmp) / kWeights).string(), weights));
  }
  TF_RETURN_IF_ERROR(model::WriteStringAtomically((fs::path(tmp) / "best.json").string(),
                                                  json{{"step", step}}.dump() + "\n"));
  if (adapter) FsyncDir((fs::path(tmp) / kAdapter).string());
  FsyncDir(tmp);
  fs::remove_all(final_dir, ec);
  fs::rename(tmp, final_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("best weights ", final_dir.string(), ": ", ec.message()));
  FsyncDir(root);
  return absl::OkStatus();
}

absl::StatusOr<BestWeights> ReadBestWeights(const std::string& root,
                                            const model::ModelConfig& base, at::Device device) {
  const fs::path dir = fs::path(root) / "best";
  absl::StatusOr<std::string> text = model::ReadFileToString((dir / "best.json").string());
  if (!text.ok()) return absl::NotFoundError(absl::StrCat("no best weights under ", root));
  json j = json::parse(*text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("step") || !j["step"].is_number_integer())
    return absl::InvalidArgumentError(absl::StrCat((dir / "best.json").string(), " is corrupt"));
  BestWeights b;
  b.step = j["step"].get<int64_t>();
  if (fs::is_directory(dir / kAdapter)) {
    TF_ASSIGN_OR_RETURN(model::LoraAdapter a,
                        model::LoraAdapter::Load((dir / kAdapter).string(), base, device));
    b.adapter = std::move(a);
  }
  if (!b.adapter || fs::exists(dir / kWeights)) {
    TF_ASSIGN_OR_RETURN(std::shared_ptr<const model::SafetensorsFile> f,
                        model::SafetensorsFile::Open((dir / kWeights).string()));
    TF_ASSIGN_OR_RETURN(b.weights, f->GetAll());
    for (auto& [name, t] : b.weights) t = t.clone();  // not tied to the mapping
  }
  return b;
}

}  // namespace tunefleet::trainer
