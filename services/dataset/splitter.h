// Automatic train/validation split: deterministic for a seed, stratified by
// label for classification data; both parts become files of their own.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "services/dataset/file_registry.h"

namespace tunefleet::dataset {

// For examples in `groups` (one group key per example; all equal for chat
// data), marks which go to validation: round(n * ratio) of each group,
// chosen by a seeded shuffle, at least one example overall and never all.
// The same inputs give the same choice on every platform.
std::vector<bool> ChooseValidation(const std::vector<std::string>& groups, double ratio,
                                   uint64_t seed);

struct SplitResult {
  FileRecord training;
  FileRecord validation;
};

// Splits `file_id` (which must be valid: FAILED_PRECONDITION names its
// first error otherwise). `ratio` must be in (0, 0.5].
// The two files carry the source's labels and description. `request_id`
// (optional) makes the call idempotent: a retry returns the same two files.
absl::StatusOr<SplitResult> SplitFile(FileRegistry& registry, const std::string& tenant,
                                      const std::string& file_id, double ratio, int64_t seed,
                                      const std::string& request_id = "");

}  // namespace tunefleet::dataset
