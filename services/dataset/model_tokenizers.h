// TokenizerProvider over a directory of Hugging Face model directories
// (<models_dir>/<base_model>/ with tokenizer.json, tokenizer_config.json and
// config.json): the model's real tokenizer and chat template count tokens
// and build shards exactly as training will see them.
#pragma once

#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "services/dataset/tokenizer_provider.h"

namespace tunefleet::dataset {

// Thread-safe; each model is loaded once, on first use.
class ModelDirTokenizerProvider final : public TokenizerProvider {
 public:
  explicit ModelDirTokenizerProvider(std::string models_dir) : models_dir_(std::move(models_dir)) {}
  absl::StatusOr<ModelTokenizer> Get(const std::string& base_model) override;

 private:
  struct Loaded;
  const std::string models_dir_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<const Loaded>> loaded_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tunefleet::dataset
