// A directory as an uncompressed POSIX ustar archive, produced piece by piece
// so a download holds one piece in memory however large the model is. Used
// by ModelService.GetModelContent to stream a fine-tuned model's PEFT (or
// merged) directory. No gRPC.
#pragma once

#include <cstdint>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/base/sha256.h"

namespace tunefleet::scheduler {

class TarStream {
 public:
  // Lists `dir` recursively (directories and regular files, in sorted
  // order; anything else, a symlink included, is refused) as entries under
  // `root_name/`. NOT_FOUND if `dir` is not a directory.
  static absl::StatusOr<std::unique_ptr<TarStream>> Open(const std::string& dir,
                                                         const std::string& root_name);

  // The next piece of the archive, at most `max_bytes` (>= 512); empty once
  // the archive is complete. DATA_LOSS if a file changed size meanwhile.
  absl::StatusOr<std::string> Next(size_t max_bytes);
  bool done() const { return done_; }
  // Lowercase hex sha256 of the whole archive; only once done().
  const std::string& sha256() const { return sha256_; }
  // The archive's size, known before the first byte.
  int64_t total_bytes() const { return total_bytes_; }

 private:
  struct Entry {
    std::string source;  // absolute path on disk
    std::string name;    // path inside the archive
    bool directory = false;
    int64_t size = 0;
    int64_t mtime = 0;
    uint32_t mode = 0;
  };
  TarStream() = default;

  std::vector<Entry> entries_;
  size_t next_entry_ = 0;
  // Bytes of the current entry still to emit: its header (already built,
  // in `pending_`), then data from `file_`, then padding.
  std::string pending_;
  std::ifstream file_;
  int64_t file_left_ = 0;
  int64_t padding_ = 0;
  bool trailer_written_ = false;
  bool done_ = false;
  int64_t total_bytes_ = 0;
  Sha256 hash_;
  std::string sha256_;
};

// The 512-byte ustar header of one entry (exposed for tests). Names longer
// than 100 bytes are split into prefix and name at a '/'; sizes of 8 GiB or
// more use the base-256 form GNU tar and Python's tarfile read.
absl::StatusOr<std::string> UstarHeader(const std::string& name, bool directory, int64_t size,
                                        int64_t mtime, uint32_t mode);

}  // namespace tunefleet::scheduler
