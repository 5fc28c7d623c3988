// What the scheduler needs of the dataset service, as an interface so that
// the core stays free of gRPC (the gRPC implementation is
// grpc_dataset_client.h; tests may use either).
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tunefleet/v1/files.pb.h"

namespace tunefleet::scheduler {

struct DatasetFile {
  std::string id;
  v1::FilePurpose purpose = v1::FILE_PURPOSE_UNSPECIFIED;
  v1::FileStatus status = v1::FILE_STATUS_UNSPECIFIED;
  v1::DataFormat format = v1::DATA_FORMAT_UNSPECIFIED;
  std::string status_details;
  int64_t examples = 0;
  int64_t trained_tokens = 0;  // per epoch; 0 when not counted
  int64_t bytes = 0;  // the file's size
  int64_t labels = 0;  // classification data: distinct labels (0: none counted)
  int64_t longest_example = 0;  // tokens of the longest example (0: not counted)
};

// A file's tokens as a base model's tokenizer and chat template count them.
struct TokenCounts {
  int64_t trained_tokens = 0;   // per epoch
  int64_t longest_example = 0;  // tokens
};

// Thread-safe. Each call acts for `tenant`: another tenant's file is NOT_FOUND.
class DatasetClient {
 public:
  virtual ~DatasetClient() = default;
  virtual absl::StatusOr<DatasetFile> GetFile(const std::string& tenant,
                                              const std::string& file_id) = 0;
  // Counts `file_id`'s tokens with `base_model`'s tokenizer (a pass over the
  // file; for files uploaded without a base model, whose statistics have
  // none), giving up after `timeout`.
  virtual absl::StatusOr<TokenCounts> CountTokens(const std::string& tenant,
                                                  const std::string& file_id,
                                                  const std::string& base_model,
                                                  absl::Duration timeout) = 0;
  // (training part, validation part)
  virtual absl::StatusOr<std::pair<DatasetFile, DatasetFile>> SplitFile(
      const std::string& tenant, const std::string& file_id, double validation_ratio,
      int64_t seed) = 0;
  virtual absl::Status HoldFile(const std::string& tenant, const std::string& file_id,
                                const std::string& holder) = 0;
  virtual absl::Status ReleaseFile(const std::string& file_id, const std::string& holder) = 0;
};

}  // namespace tunefleet::scheduler
