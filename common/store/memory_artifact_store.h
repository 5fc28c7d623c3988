// An ArtifactStore held in memory, for tests that do not care about disk
// (and as the reference the directory store's behaviour is checked against:
// both pass the same contract tests). Thread-safe; nothing survives the
// object.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/store/artifact_store.h"

namespace tunefleet::store {

class MemoryArtifactStore final : public ArtifactStore {
 public:
  MemoryArtifactStore() = default;

  absl::StatusOr<std::unique_ptr<ArtifactWriter>> OpenWriter(absl::string_view name) override;
  absl::StatusOr<std::unique_ptr<ArtifactReader>> OpenReader(absl::string_view name,
                                                             int64_t offset) override;
  absl::StatusOr<ArtifactInfo> Stat(absl::string_view name) override;
  absl::StatusOr<bool> Exists(absl::string_view name) override;
  absl::Status Delete(absl::string_view name) override;
  absl::StatusOr<std::vector<std::string>> List(absl::string_view prefix) override;

 private:
  // Immutable once stored, so readers share it without copying or locking.
  struct Blob {
    std::string data;
    std::string sha256;
  };
  class Writer;
  class Reader;

  absl::StatusOr<ArtifactInfo> Commit(const std::string& name, std::string data,
                                      std::string sha256);
  // The folder-tree rule of the directory store: `name` may not be an
  // ancestor folder of a stored name, nor have a stored name as an ancestor.
  absl::Status CheckTreeConflict(const std::string& name) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<const Blob>, std::less<>> blobs_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tunefleet::store
