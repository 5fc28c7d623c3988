// Reading safetensors files by memory-mapping them (tensors are zero-copy views
// that keep the mapping alive), reading model directories whose weights are
// sharded behind model.safetensors.index.json, and writing both atomically.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/model/safetensors_header.h"

namespace tunefleet::model {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// One mapped safetensors file. Thread-safe after Open (read-only).
class SafetensorsFile {
 public:
  // Maps `path` and validates its header (see ParseSafetensorsHeader).
  static absl::StatusOr<std::shared_ptr<const SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const SafetensorsHeader& header() const { return header_; }
  uint64_t file_size() const { return size_; }

  // A CPU tensor over the mapped bytes, without a copy when the data is
  // aligned for its dtype (always so for files we write). The mapping is
  // private: writing to the tensor never changes the file. NotFound names the
  // file and the tensor.
  absl::StatusOr<at::Tensor> Get(absl::string_view name) const;
  // Every tensor, in file order.
  absl::StatusOr<NamedTensors> GetAll() const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  SafetensorsHeader header_;
  void* base_ = nullptr;
  uint64_t size_ = 0;
  // Owns the mapping; tensors hold a copy so they outlive this object.
  std::shared_ptr<void> mapping_;
};

// The weights of a model directory: `model.safetensors`, or the shards listed
// in `model.safetensors.index.json`. Thread-safe after Open.
class SafetensorsDir {
 public:
  static absl::StatusOr<SafetensorsDir> Open(const std::string& dir);

  bool Contains(absl::string_view name) const { return index_.count(std::string(name)) > 0; }
  absl::StatusOr<at::Tensor> Get(absl::string_view name) const;
  std::vector<std::string> names() const;
  // The file holding `name` (for error messages); the directory if none does.
  std::string PathOf(absl::string_view name) const;
  uint64_t total_file_bytes() const;
  const std::vector<std::shared_ptr<const SafetensorsFile>>& files() const { return files_; }

 private:
  std::string dir_;
  std::vector<std::shared_ptr<const SafetensorsFile>> files_;
  std::map<std::string, size_t> index_;  // tensor name -> files_ index
};

// Writes `tensors` (any device, dtype among DType's) to `path` atomically,
// in the given order; names must be unique. `metadata` becomes __metadata__.
absl::Status WriteSafetensors(const std::string& path, const NamedTensors& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// Writes `dir`/model.safetensors, or — when the tensors exceed
// `max_shard_bytes` — model-0000i-of-0000n.safetensors plus the index, the
// way Hugging Face's save_pretrained lays them out. Removes a stale layout of
// the other kind.
absl::Status WriteSafetensorsDir(const std::string& dir, const NamedTensors& tensors,
                                 uint64_t max_shard_bytes = 5'000'000'000ull,
                                 const std::map<std::string, std::string>& metadata = {
                                     {"format", "pt"}});

}  // namespace tunefleet::model
