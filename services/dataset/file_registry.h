// Uploaded files: blobs in the ArtifactStore, metadata in SQLite, per-tenant
// storage quotas. A file becomes visible only when its upload completes;
// leftovers of an upload cut off by a crash are removed at the next Open.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/base/clock.h"
#include "common/base/scope.h"
#include "common/base/sha256.h"
#include "common/errors/labels.h"
#include "common/store/directory_artifact_store.h"
#include "common/store/sqlite.h"

namespace tunefleet::dataset {

// Mirrors tunefleet.v1.FilePurpose / FileStatus / DataFormat values, so that
// the core does not depend on the generated protos.
enum class Purpose { kUnspecified = 0, kFineTune = 1, kValidation = 2 };
enum class FileStatus { kUploaded = 1, kProcessing = 2, kProcessed = 3, kError = 4 };

struct FileRecord {
  std::string id;  // "file-…"
  std::string tenant;
  std::string filename;
  Purpose purpose = Purpose::kFineTune;
  int format = 0;  // tunefleet.v1.DataFormat
  int64_t bytes = 0;
  std::string sha256;
  FileStatus status = FileStatus::kUploaded;
  std::string status_details;
  absl::Time created_at;
  // The automatic validation's report (a serialized tunefleet.v1.
  // ValidationReport, opaque here); empty until processed.
  std::string validation;
  errors::Labels labels;
  std::string description;
  // The idempotency key the upload carried (empty: none).
  std::string request_id;
};

struct UploadRequest {
  std::string filename;
  Purpose purpose = Purpose::kUnspecified;
  int format = 0;
  int64_t expected_bytes = 0;     // 0: unknown
  std::string expected_sha256;    // empty: unchecked
  errors::Labels labels;
  std::string description;
  // Idempotency: a second upload with the same key and the same bytes
  // commits to the first file; other bytes are ALREADY_EXISTS.
  std::string request_id;
};

struct FileRegistryOptions {
  int64_t max_file_bytes = int64_t{1} << 30;        // 1 GiB
  int64_t tenant_quota_bytes = int64_t{10} << 30;   // 10 GiB
  Clock* clock = Clock::Real();
};

class FileRegistry;

// One upload in progress. Not thread-safe (one stream feeds it). Destroying
// it without Commit() discards everything written.
class Upload {
 public:
  ~Upload();
  // INVALID_ARGUMENT past max_file_bytes, RESOURCE_EXHAUSTED past the quota.
  absl::Status Append(absl::string_view data);
  // Stores the file durably and makes it visible.
  absl::StatusOr<FileRecord> Commit();
  int64_t bytes() const { return bytes_; }

 private:
  friend class FileRegistry;
  Upload(FileRegistry* registry, FileRecord record, UploadRequest request,
         std::unique_ptr<store::ArtifactWriter> writer)
      : registry_(registry), record_(std::move(record)), request_(std::move(request)),
        writer_(std::move(writer)) {}
  // A retry whose request_id already names a committed file: the bytes are
  // only hashed (nothing is stored or counted against the quota) and Commit
  // answers the first file, or REQUEST_ID_REUSED when the content differs.
  Upload(FileRegistry* registry, FileRecord record, UploadRequest request, FileRecord first)
      : registry_(registry), record_(std::move(record)), request_(std::move(request)),
        first_(std::move(first)), hash_(std::make_unique<Sha256>()) {}
  absl::StatusOr<FileRecord> CommitRetry();
  FileRegistry* registry_;
  FileRecord record_;
  UploadRequest request_;
  std::unique_ptr<store::ArtifactWriter> writer_;
  std::optional<FileRecord> first_;
  std::unique_ptr<Sha256> hash_;
  int64_t bytes_ = 0;
  bool done_ = false;
};

struct FilePage {
  std::vector<FileRecord> files;
  std::string next_page_token;
};

// Thread-safe.
class FileRegistry {
 public:
  // Over the storage main composes: any Database (its schema is migrated
  // here) and any ArtifactStore for the blobs (a directory, memory, later an
  // object store). Blobs without a row (a crash between the two) are removed.
  static absl::StatusOr<std::unique_ptr<FileRegistry>> Open(
      std::unique_ptr<store::Database> db, std::unique_ptr<store::ArtifactStore> blobs,
      FileRegistryOptions options);
  // The usual composition on one machine: `dir` holds files.db and the blobs
  // (under "blobs/").
  static absl::StatusOr<std::unique_ptr<FileRegistry>> Open(const std::string& dir,
                                                            FileRegistryOptions options);

  absl::StatusOr<std::unique_ptr<Upload>> BeginUpload(const std::string& tenant,
                                                      UploadRequest request);
  // NOT_FOUND for a missing file and for a file outside `scope` alike.
  absl::StatusOr<FileRecord> Get(const Scope& scope, const std::string& id);
  // Newest first; only files carrying every label of `labels`.
  absl::StatusOr<FilePage> List(const std::string& tenant, int page_size,
                                const std::string& page_token, Purpose purpose,
                                const errors::Labels& labels = {});
  // The file an upload with this idempotency key created, if any.
  absl::StatusOr<std::optional<FileRecord>> FindByRequestId(const std::string& tenant,
                                                            const std::string& request_id);
  // FAILED_PRECONDITION naming the holders while the file is held.
  absl::Status Delete(const std::string& tenant, const std::string& id);
  // Holds keep a file from deletion while an unfinished job uses it.
  absl::Status Hold(const std::string& tenant, const std::string& id, const std::string& holder);
  absl::Status Release(const std::string& id, const std::string& holder);
  absl::StatusOr<std::unique_ptr<store::ArtifactReader>> OpenContent(const Scope& scope,
                                                                     const std::string& id,
                                                                     int64_t offset);
  // Records the outcome of the automatic validation; `detected_format`
  // (a tunefleet.v1.DataFormat, 0: none) fills the format of a file uploaded
  // without one (a declared format is never changed).
  absl::Status SetStatus(const std::string& id, FileStatus status, const std::string& details,
                         const std::string& validation, int detected_format = 0);
  // Files whose automatic validation has not finished (e.g. cut off by a
  // restart), oldest first.
  absl::StatusOr<std::vector<FileRecord>> PendingValidation();

  // Bytes stored by a tenant (committed files only).
  absl::StatusOr<int64_t> UsedBytes(const std::string& tenant);

  const FileRegistryOptions& options() const { return options_; }
  // The store holding the files, also used for derived artifacts (shards).
  store::ArtifactStore& artifacts() { return *blobs_; }

 private:
  friend class Upload;
  FileRegistry(FileRegistryOptions options, std::unique_ptr<store::Database> db,
               std::unique_ptr<store::ArtifactStore> blobs)
      : options_(options), db_(std::move(db)), blobs_(std::move(blobs)) {}
  absl::Status RemoveOrphanBlobs();
  absl::Status Reserve(const std::string& tenant, int64_t bytes) ABSL_LOCKS_EXCLUDED(mu_);
  void Unreserve(const std::string& tenant, int64_t bytes) ABSL_LOCKS_EXCLUDED(mu_);
  void UnreserveLocked(const std::string& tenant, int64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const FileRegistryOptions options_;
  std::unique_ptr<store::Database> db_;
  std::unique_ptr<store::ArtifactStore> blobs_;
  absl::Mutex mu_;
  // Bytes of uploads in progress, per tenant, counted against the quota.
  absl::flat_hash_map<std::string, int64_t> reserved_ ABSL_GUARDED_BY(mu_);
};

// Blob name of a file.
std::string BlobName(const std::string& file_id);

}  // namespace tunefleet::dataset
