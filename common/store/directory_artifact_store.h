// The default ArtifactStore: one file per artifact under a root directory (a
// local disk, or a PersistentVolume on Kubernetes), names mapping to relative
// paths.
//
// Writes are atomic and durable: a writer streams into a temporary file in
// the hidden staging folder under the root (same filesystem), and Commit()
// fsyncs it, renames it over the name and fsyncs the folder. A writer that
// dies mid-write leaves only its temporary file, which no read or List sees
// and which the next Open() removes. Every temporary file is flock()ed by its
// writer, so Open() never removes the file of a writer still alive (in this
// process or another), and the kernel drops the lock of a killed one.
//
// Paths are resolved one segment at a time from the root with O_NOFOLLOW:
// besides the name rules, a symbolic link planted anywhere under the root is
// refused (kFailedPrecondition), never followed out of it.
//
// Stat() returns the sha256 recorded at Commit() in an extended attribute of
// the file (user.tunefleet.sha256, with the size it was taken at); where the
// filesystem has no user xattrs, or the file came from elsewhere, it hashes
// the file on demand (O(size)) and tries to record the result.
//
// Thread-safe. Two stores may share a root (a restart, a second instance);
// changes to the folder tree are serialised only within one store object.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/store/artifact_store.h"

namespace tunefleet::store {

class DirectoryArtifactStore final : public ArtifactStore {
 public:
  struct Options {
    // fsync files and folders at Commit() and Delete(). Turn off only for a
    // cache whose loss in a crash costs a download, never data.
    bool sync = true;
  };

  // The staging folder under the root. Its '~' is outside the name
  // alphabet, so no artifact name can reach it.
  static constexpr char kStagingFolder[] = ".staging~";

  // Creates `root` (and its parents) if missing, then removes the temporary
  // files that killed writers left in the staging folder.
  static absl::StatusOr<std::unique_ptr<DirectoryArtifactStore>> Open(const std::string& root,
                                                                      const Options& options);
  static absl::StatusOr<std::unique_ptr<DirectoryArtifactStore>> Open(const std::string& root) {
    return Open(root, Options());
  }
  ~DirectoryArtifactStore() override;

  absl::StatusOr<std::unique_ptr<ArtifactWriter>> OpenWriter(absl::string_view name) override;
  absl::StatusOr<std::unique_ptr<ArtifactReader>> OpenReader(absl::string_view name,
                                                             int64_t offset) override;
  absl::StatusOr<ArtifactInfo> Stat(absl::string_view name) override;
  absl::StatusOr<bool> Exists(absl::string_view name) override;
  absl::Status Delete(absl::string_view name) override;
  absl::StatusOr<std::vector<std::string>> List(absl::string_view prefix) override;

  const std::string& root() const { return root_; }

 private:
  class Writer;
  class Reader;

  DirectoryArtifactStore(std::string root, Options options, int root_fd, int staging_fd)
      : root_(std::move(root)), options_(options), root_fd_(root_fd), staging_fd_(staging_fd) {}
  // Removes unlocked temporary files; returns how many.
  absl::StatusOr<int> CleanStaging();
  // Renames the staging file `temp` to `name`, making its folders.
  absl::Status Install(const std::string& temp, const std::string& name);
  // Opens the regular file `name` for reading.
  absl::StatusOr<int> OpenFile(absl::string_view name);

  const std::string root_;
  const Options options_;
  const int root_fd_;
  const int staging_fd_;
  // Held while folders are made and a file renamed into them, or a file is
  // deleted and its emptied folders removed, so that one never removes a
  // folder the other is about to fill.
  absl::Mutex tree_mu_;
};

}  // namespace tunefleet::store
