#include "common/store/memory_artifact_store.h"

#include <algorithm>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/base/sha256.h"
#include "common/base/status_macros.h"

namespace tunefleet::store {

class MemoryArtifactStore::Writer final : public ArtifactWriter {
 public:
  Writer(MemoryArtifactStore* store, std::string name) : store_(store), name_(std::move(name)) {}

  absl::Status Append(absl::string_view data) override {
    if (done_) return Ended();
    data_.append(data.data(), data.size());
    sha_.Update(data);
    return absl::OkStatus();
  }

  absl::StatusOr<ArtifactInfo> Commit() override {
    if (done_) return Ended();
    done_ = true;
    return store_->Commit(name_, std::move(data_), sha_.HexDigest());
  }

  void Abort() override {
    done_ = true;
    data_.clear();
  }

 private:
  absl::Status Ended() const {
    return absl::FailedPreconditionError(
        absl::StrCat("writer for artifact ", name_, " was already committed or aborted"));
  }

  MemoryArtifactStore* store_;
  const std::string name_;
  std::string data_;
  Sha256 sha_;
  bool done_ = false;
};

class MemoryArtifactStore::Reader final : public ArtifactReader {
 public:
  Reader(std::shared_ptr<const Blob> blob, size_t offset)
      : blob_(std::move(blob)), offset_(offset) {}

  absl::StatusOr<std::string> Read(size_t max_bytes) override {
    size_t n = std::min(max_bytes, blob_->data.size() - offset_);
    std::string out = blob_->data.substr(offset_, n);
    offset_ += n;
    return out;
  }

  int64_t size() const override { return static_cast<int64_t>(blob_->data.size()); }

 private:
  std::shared_ptr<const Blob> blob_;
  size_t offset_;
};

absl::StatusOr<std::unique_ptr<ArtifactWriter>> MemoryArtifactStore::OpenWriter(
    absl::string_view name) {
  TF_RETURN_IF_ERROR(ValidateArtifactName(name));
  {
    // Fail early, as the directory store does when it makes the folders.
    absl::MutexLock lock(&mu_);
    TF_RETURN_IF_ERROR(CheckTreeConflict(std::string(name)));
  }
  return std::make_unique<Writer>(this, std::string(name));
}

absl::Status MemoryArtifactStore::CheckTreeConflict(const std::string& name) const {
  for (size_t slash = name.find('/'); slash != std::string::npos;
       slash = name.find('/', slash + 1)) {
    if (blobs_.count(name.substr(0, slash)) > 0) {
      return absl::FailedPreconditionError(absl::StrCat("cannot store artifact ", name, ": ",
                                                        name.substr(0, slash),
                                                        " is an artifact, not a folder"));
    }
  }
  std::string folder = name + "/";
  auto it = blobs_.lower_bound(folder);
  if (it != blobs_.end() && absl::StartsWith(it->first, folder)) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot store artifact ", name, ": it is a folder of other artifacts"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ArtifactInfo> MemoryArtifactStore::Commit(const std::string& name, std::string data,
                                                         std::string sha256) {
  auto blob = std::make_shared<Blob>();
  blob->data = std::move(data);
  blob->sha256 = std::move(sha256);
  ArtifactInfo info{static_cast<int64_t>(blob->data.size()), blob->sha256};
  absl::MutexLock lock(&mu_);
  TF_RETURN_IF_ERROR(CheckTreeConflict(name));
  blobs_[name] = std::move(blob);
  return info;
}

absl::StatusOr<std::unique_ptr<ArtifactReader>> MemoryArtifactStore::OpenReader(
    absl::string_view name, int64_t offset) {
  TF_RETURN_IF_ERROR(ValidateArtifactName(name));
  std::shared_ptr<const Blob> blob;
  {
    absl::MutexLock lock(&mu_);
    auto it = blobs_.find(name);
    if (it == blobs_.end()) {
      return absl::NotFoundError(absl::StrCat("artifact ", name, " not found"));
    }
    blob = it->second;
  }
  if (offset < 0 || static_cast<uint64_t>(offset) > blob->data.size()) {
    return absl::OutOfRangeError(absl::StrCat("offset ", offset, " is outside artifact ", name,
                                              " of ", blob->data.size(), " bytes"));
  }
  return std::make_unique<Reader>(std::move(blob), static_cast<size_t>(offset));
}

absl::StatusOr<ArtifactInfo> MemoryArtifactStore::Stat(absl::string_view name) {
  TF_RETURN_IF_ERROR(ValidateArtifactName(name));
  absl::MutexLock lock(&mu_);
  auto it = blobs_.find(name);
  if (it == blobs_.end()) {
    return absl::NotFoundError(absl::StrCat("artifact ", name, " not found"));
  }
  return ArtifactInfo{static_cast<int64_t>(it->second->data.size()), it->second->sha256};
}

absl::StatusOr<bool> MemoryArtifactStore::Exists(absl::string_view name) {
  TF_RETURN_IF_ERROR(ValidateArtifactName(name));
  absl::MutexLock lock(&mu_);
  return blobs_.find(name) != blobs_.end();
}

absl::Status MemoryArtifactStore::Delete(absl::string_view name) {
  TF_RETURN_IF_ERROR(ValidateArtifactName(name));
  absl::MutexLock lock(&mu_);
  auto it = blobs_.find(name);
  if (it == blobs_.end()) {
    return absl::NotFoundError(absl::StrCat("artifact ", name, " not found"));
  }
  blobs_.erase(it);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> MemoryArtifactStore::List(absl::string_view prefix) {
  TF_RETURN_IF_ERROR(ValidateArtifactPrefix(prefix));
  std::vector<std::string> names;
  absl::MutexLock lock(&mu_);
  for (auto it = blobs_.lower_bound(prefix);
       it != blobs_.end() && absl::StartsWith(it->first, prefix); ++it) {
    names.push_back(it->first);
  }
  return names;
}

}  // namespace tunefleet::store
