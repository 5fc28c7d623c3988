// Small file helpers shared by the model library's readers and writers.
#pragma once

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tunefleet::model {

// Writes `path` atomically: a temporary file in the same directory receives
// the bytes from `write` (called with a file descriptor), is fsynced and
// renamed over `path`, and the directory is fsynced. On failure the temporary
// file is removed and `path` is untouched.
absl::Status WriteFileAtomically(const std::string& path,
                                 const std::function<absl::Status(int fd)>& write);
absl::Status WriteStringAtomically(const std::string& path, const std::string& contents);

// Writes all of `data` to `fd`, retrying short writes.
absl::Status WriteAll(int fd, const void* data, size_t size, const std::string& path);

absl::StatusOr<std::string> ReadFileToString(const std::string& path);

}  // namespace tunefleet::model
