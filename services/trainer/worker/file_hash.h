// SHA-256 of files for the train-to-serve contract and FNV-1a 64 checksums of
// checkpoint files. Self-contained (no OpenSSL) so that the worker builds on
// a bare GPU node (TUNEFLEET_TORCH_ONLY).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tunefleet::trainer {

// Lowercase hex SHA-256.
std::string Sha256Hex(absl::string_view data);
absl::StatusOr<std::string> FileSha256Hex(const std::string& path);
// FNV-1a 64 of a file's bytes, as 16 hex digits.
absl::StatusOr<std::string> FileFnv64Hex(const std::string& path);

}  // namespace tunefleet::trainer
