// Where token statistics and shards get a base model's tokenizer: the seam
// between the dataset core and the model directories. No gRPC.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "services/dataset/shards.h"

namespace tunefleet::dataset {

// A base model's tokenizer and chat template applied to examples.
struct ModelTokenizer {
  // Identifies the tokenizer's exact content (shard sets are cached by it).
  std::string id;
  ExampleTokenizer tokenize;
};

// Thread-safe.
class TokenizerProvider {
 public:
  virtual ~TokenizerProvider() = default;
  // INVALID_ARGUMENT naming `base_model` when it is unknown.
  virtual absl::StatusOr<ModelTokenizer> Get(const std::string& base_model) = 0;
};

}  // namespace tunefleet::dataset
