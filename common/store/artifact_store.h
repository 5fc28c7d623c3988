// Blob storage for uploaded files, shards, checkpoints, adapters and base
// models, behind one interface: DirectoryArtifactStore (the default, a local
// directory or PersistentVolume) and MemoryArtifactStore (tests), which pass
// the same contract tests. An object-store backend can come later.
//
// Names are relative paths: segments of [A-Za-z0-9._-]+ (not "." or "..")
// joined by single '/', at most kMaxArtifactNameLength bytes and
// kMaxArtifactNameDepth segments in all, kMaxArtifactSegmentLength per
// segment. Because stores keep a folder tree, a name cannot be both an
// artifact and a folder of others: with "a/b" stored, writing "a" fails with
// kFailedPrecondition, and the reverse. Callers build names from ids they
// have checked (ids.h), e.g. "files/file-…", "ckpt/ftjob-…/ckpt-…/…".
//
// Semantics every implementation keeps:
// - A write becomes visible only at Commit(), all at once, and (for a store
//   that persists) durably; committing over an existing name replaces it
//   atomically (readers see the old or the new blob, never a mix), and the
//   last Commit() wins.
// - A reader reads the blob as it was when it was opened, even when the name
//   is overwritten or deleted meanwhile.
// - Every method is thread-safe. Writers and readers are used by one thread
//   at a time and must not outlive their store.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tunefleet::store {

inline constexpr size_t kMaxArtifactNameLength = 1024;
inline constexpr size_t kMaxArtifactSegmentLength = 255;  // NAME_MAX
// Segments in a name: a directory store holds one descriptor per level while
// it resolves a name.
inline constexpr size_t kMaxArtifactNameDepth = 32;

// OK, or kInvalidArgument naming the bad name and saying what is wrong.
absl::Status ValidateArtifactName(absl::string_view name);

struct ArtifactInfo {
  int64_t size = 0;
  std::string sha256;  // lowercase hex of the content
};

// A streaming upload. The destructor aborts a writer that was not committed;
// so does a failed Append() or Commit(), after which every call fails with
// kFailedPrecondition.
class ArtifactWriter {
 public:
  virtual ~ArtifactWriter() = default;
  virtual absl::Status Append(absl::string_view data) = 0;
  // Makes the content visible under the name; size and sha256 are those of
  // everything appended (hashed on the way, not read back).
  virtual absl::StatusOr<ArtifactInfo> Commit() = 0;
  // Drops what was written. A no-op after Commit() or Abort().
  virtual void Abort() = 0;
};

// A streaming download of one blob, from an offset.
class ArtifactReader {
 public:
  virtual ~ArtifactReader() = default;
  // Up to `max_bytes` more bytes; an empty string at the end of the blob.
  virtual absl::StatusOr<std::string> Read(size_t max_bytes) = 0;
  // The size of the whole blob (not of what is left).
  virtual int64_t size() const = 0;
};

class ArtifactStore {
 public:
  virtual ~ArtifactStore() = default;

  // Errors common to all calls: kInvalidArgument for a bad name; kNotFound
  // when a name read, stat'ed or deleted is not there.
  virtual absl::StatusOr<std::unique_ptr<ArtifactWriter>> OpenWriter(absl::string_view name) = 0;
  // `offset` in [0, size]; beyond the end is kOutOfRange.
  virtual absl::StatusOr<std::unique_ptr<ArtifactReader>> OpenReader(absl::string_view name,
                                                                     int64_t offset = 0) = 0;
  // Size and sha256 of a stored blob.
  virtual absl::StatusOr<ArtifactInfo> Stat(absl::string_view name) = 0;
  virtual absl::StatusOr<bool> Exists(absl::string_view name) = 0;
  virtual absl::Status Delete(absl::string_view name) = 0;
  // Every name that starts with `prefix` (a plain string prefix: "shards/"
  // lists a folder, "ckpt-1" matches "ckpt-1/a" and "ckpt-12"), sorted.
  // kInvalidArgument when no valid name could start with `prefix`.
  virtual absl::StatusOr<std::vector<std::string>> List(absl::string_view prefix) = 0;

  // Whole-blob helpers over the streaming calls.
  virtual absl::StatusOr<ArtifactInfo> Put(absl::string_view name, absl::string_view data);
  virtual absl::StatusOr<std::string> Get(absl::string_view name);
};

// For List(): OK when some valid name could start with `prefix`.
absl::Status ValidateArtifactPrefix(absl::string_view prefix);

}  // namespace tunefleet::store
