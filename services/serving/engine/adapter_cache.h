// LoRA adapters of one base, loaded on first use from PEFT directories under
// an artifacts directory and kept in an LRU cache with a memory budget. An
// adapter is pinned while anyone holds its shared_ptr (a request in the
// batch does); only unpinned ones are evicted, so the budget may be exceeded
// while every resident adapter is in use. Before an adapter is served its
// train-to-serve contract is checked against the base (contract.h).
//
// Thread-safe. A load runs on the caller's thread outside the lock; callers
// of the same artifact meanwhile wait for that one load.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/decoder.h"
#include "common/model/lora.h"
#include "services/serving/engine/contract.h"

namespace tunefleet::serving {

struct AdapterCacheOptions {
  // Artifact names are paths relative to it.
  std::string artifacts_dir;
  // Bytes of resident adapter weights before unpinned ones are evicted.
  int64_t budget_bytes = int64_t{2} << 30;
  BaseIdentity base;
};

struct ServedAdapter {
  std::string artifact;
  model::LoraAdapter lora;
  int64_t bytes = 0;
  double load_seconds = 0;
  std::optional<ServeContract> contract;
  // Why it was served anyway (e.g. no contract file).
  std::vector<std::string> warnings;
  // A classification adapter (contract task "classification"): its head
  // [num_labels, hidden] (fp32, on the device) and the label names;
  // undefined / empty for a chat adapter.
  at::Tensor head;
  std::vector<std::string> labels;
  bool classification() const { return head.defined(); }
};

struct AdapterCacheStats {
  int64_t resident = 0;
  int64_t resident_bytes = 0;
  int64_t pinned = 0;
  int64_t loads = 0;
  int64_t hits = 0;
  int64_t evictions = 0;
  int64_t failed_loads = 0;
};

class AdapterCache {
 public:
  AdapterCache(const model::ModelConfig& base_config, at::Device device, AdapterCacheOptions options);

  // The adapter at `artifact`, loading it if needed. INVALID_ARGUMENT for a
  // name that leaves the artifacts directory; NOT_FOUND when the directory
  // or its adapter_config.json is missing; FAILED_PRECONDITION for a
  // contract mismatch (with the reason); the loader's error otherwise.
  // A failed load is not cached: the next call tries again.
  absl::StatusOr<std::shared_ptr<const ServedAdapter>> Acquire(const std::string& artifact);

  // Drops `artifact` from the cache (hot unload); requests holding it keep
  // it until they finish. Returns whether it was resident.
  bool Unload(const std::string& artifact);
  bool IsResident(const std::string& artifact) const;
  AdapterCacheStats stats() const;
  const AdapterCacheOptions& options() const { return options_; }

 private:
  struct Entry {
    std::shared_ptr<const ServedAdapter> adapter;  // null while loading
    std::list<std::string>::iterator lru;
    bool loading = false;
  };
  absl::StatusOr<std::shared_ptr<const ServedAdapter>> Load(const std::string& artifact) const;
  void EvictLocked();

  const model::ModelConfig base_config_;
  const at::Device device_;
  const AdapterCacheOptions options_;
  mutable std::mutex mu_;
  std::condition_variable loaded_;
  std::map<std::string, Entry> entries_;
  std::list<std::string> lru_;  // front: most recently used
  AdapterCacheStats stats_;
};

}  // namespace tunefleet::serving
