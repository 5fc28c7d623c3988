#include "services/serving/engine/adapter_cache.h"

#include <chrono>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "common/model/allocator.h"
#include "common/model/safetensors.h"

namespace tunefleet::serving {

namespace {

// Rejects names that would leave the artifacts directory.
absl::Status CheckArtifactName(const std::string& name) {
  if (name.empty()) return absl::InvalidArgumentError("adapter artifact name is empty");
  if (name.front() == '/' || name.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("adapter artifact \"", name, "\" must be relative to the artifacts directory"));
  }
  for (const auto& part : std::filesystem::path(name)) {
    if (part == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat("adapter artifact \"", name, "\" must not contain \"..\""));
    }
  }
  return absl::OkStatus();
}

}  // namespace

AdapterCache::AdapterCache(const model::ModelConfig& base_config, at::Device device,
                           AdapterCacheOptions options)
    : base_config_(base_config), device_(device), options_(std::move(options)) {}

absl::StatusOr<std::shared_ptr<const ServedAdapter>> AdapterCache::Load(
    const std::string& artifact) const {
  if (absl::Status s = CheckArtifactName(artifact); !s.ok()) return s;
  const std::string dir = options_.artifacts_dir + "/" + artifact;
  std::error_code ec;
  if (!std::filesystem::exists(dir + "/adapter_config.json", ec)) {
    return absl::NotFoundError(
        absl::StrCat("adapter artifact \"", artifact, "\": no adapter_config.json in ", dir));
  }
  auto adapter = std::make_shared<ServedAdapter>();
  adapter->artifact = artifact;
  auto contract = ReadContract(dir);
  if (!contract.ok()) return contract.status();
  if (contract->has_value()) {
    if (absl::Status s = CheckContract(**contract, options_.base, artifact); !s.ok()) return s;
    adapter->contract = **contract;
  } else {
    adapter->warnings.push_back(absl::StrCat("adapter ", artifact, " has no ", kContractFileName,
                                             ": served without a contract check"));
  }
  const auto start = std::chrono::steady_clock::now();
  auto lora = model::LoraAdapter::Load(dir, base_config_, device_);
  if (!lora.ok()) return lora.status();
  adapter->lora = *std::move(lora);
  adapter->load_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (const at::Tensor& t : adapter->lora.Parameters()) {
    adapter->bytes += static_cast<int64_t>(t.numel() * t.element_size());
  }
  if (adapter->contract && adapter->contract->classification()) {
    // The head the trainer wrote beside the adapter (score.safetensors).
    const ServeContract& c = *adapter->contract;
    const std::string path = dir + "/" + c.head_file;
    auto file = model::SafetensorsFile::Open(path);
    if (!file.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "classification adapter ", artifact, ": its head ", c.head_file,
          " cannot be read: ", file.status().message()));
    }
    auto head = (*file)->Get(c.head_tensor);
    if (!head.ok()) {
      return absl::FailedPreconditionError(absl::StrCat("classification adapter ", artifact, ": ",
                                                        c.head_file, " has no tensor ",
                                                        c.head_tensor));
    }
    const int64_t labels = static_cast<int64_t>(c.label_names.size());
    if (head->dim() != 2 || head->size(0) != labels || head->size(1) != base_config_.hidden_size) {
      return absl::FailedPreconditionError(absl::StrCat(
          "classification adapter ", artifact, ": head ", c.head_tensor, " has shape [",
          head->dim() > 0 ? head->size(0) : 0, ", ", head->dim() > 1 ? head->size(1) : 0,
          "], expected [", labels, " labels, ", base_config_.hidden_size, " hidden]"));
    }
    adapter->head = head->to(device_, at::kFloat).contiguous();
    adapter->labels = c.label_names;
    adapter->bytes += static_cast<int64_t>(adapter->head.numel() * adapter->head.element_size());
  }
  return std::shared_ptr<const ServedAdapter>(std::move(adapter));
}

absl::StatusOr<std::shared_ptr<const ServedAdapter>> AdapterCache::Acquire(
    const std::string& artifact) {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    auto it = entries_.find(artifact);
    if (it == entries_.end()) break;
    if (!it->second.loading) {
      lru_.splice(lru_.begin(), lru_, it->second.lru);
      ++stats_.hits;
      std::shared_ptr<const ServedAdapter> pinned = it->second.adapter;
      EvictLocked();  // others may have been released since the last load
      return pinned;
    }
    loaded_.wait(lock);  // another caller is loading it; then look again
  }
  Entry& e = entries_[artifact];
  e.loading = true;
  lru_.push_front(artifact);
  e.lru = lru_.begin();
  lock.unlock();
  auto loaded = Load(artifact);
  // The load may have run parallel regions on this (request or reconciler)
  // thread: the engine's thread alone keeps a team of workers (allocator.h).
  model::ReleaseThreadTeam();
  lock.lock();
  auto it = entries_.find(artifact);
  if (!loaded.ok()) {
    lru_.erase(it->second.lru);
    entries_.erase(it);
    ++stats_.failed_loads;
  } else {
    it->second.loading = false;
    it->second.adapter = *loaded;
    ++stats_.loads;
    EvictLocked();
  }
  loaded_.notify_all();
  return loaded;
}

void AdapterCache::EvictLocked() {
  int64_t bytes = 0;
  for (const auto& [name, e] : entries_) {
    if (e.adapter) bytes += e.adapter->bytes;
  }
  // Least recently used first; a pinned one (held beyond this map) stays.
  for (auto it = lru_.end(); bytes > options_.budget_bytes && it != lru_.begin();) {
    --it;
    auto e = entries_.find(*it);
    if (e->second.loading || e->second.adapter.use_count() > 1) continue;
    bytes -= e->second.adapter->bytes;
    entries_.erase(e);
    it = lru_.erase(it);
    ++stats_.evictions;
  }
}

bool AdapterCache::Unload(const std::string& artifact) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(artifact);
  if (it == entries_.end() || it->second.loading) return false;
  lru_.erase(it->second.lru);
  entries_.erase(it);
  return true;
}

bool AdapterCache::IsResident(const std::string& artifact) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(artifact);
  return it != entries_.end() && !it->second.loading;
}

AdapterCacheStats AdapterCache::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  AdapterCacheStats s = stats_;
  for (const auto& [name, e] : entries_) {
    if (!e.adapter) continue;
    ++s.resident;
    s.resident_bytes += e.adapter->bytes;
    if (e.adapter.use_count() > 1) ++s.pinned;
  }
  return s;
}

}  // namespace tunefleet::serving
