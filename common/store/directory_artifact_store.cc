#include "common/store/directory_artifact_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/base/ids.h"
#include "common/base/logging.h"
#include "common/base/sha256.h"
#include "common/base/status_macros.h"

namespace tunefleet::store {
namespace {

constexpr char kShaXattr[] = "user.tunefleet.sha256";

// Maps an errno to the most specific code; `what` says which call on what.
absl::Status PosixError(int err, absl::string_view what) {
  absl::StatusCode code = absl::StatusCode::kInternal;
  switch (err) {
    case ENOENT:
      code = absl::StatusCode::kNotFound;
      break;
    case EEXIST:
      code = absl::StatusCode::kAlreadyExists;
      break;
    case ENOSPC:
    case EDQUOT:
    case EMFILE:
    case ENFILE:
    case EFBIG:
      code = absl::StatusCode::kResourceExhausted;
      break;
    case ENOTDIR:
    case EISDIR:
    case ELOOP:
    case ENOTEMPTY:
      code = absl::StatusCode::kFailedPrecondition;
      break;
    default:
      break;
  }
  return absl::Status(code, absl::StrCat(what, ": ", std::strerror(err)));
}

absl::Status NotFound(absl::string_view name) {
  return absl::NotFoundError(absl::StrCat("artifact ", name, " not found"));
}

// Closes the descriptor it owns.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
      Reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  ~UniqueFd() { Reset(); }
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int Release() { return std::exchange(fd_, -1); }
  void Reset() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

bool IsSegment(absl::string_view s) {
  if (s.empty() || s == "." || s == ".." || s.size() > kMaxArtifactSegmentLength) {
    return false;
  }
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

// A new descriptor of the folder `fd` with its own read offset (a dup()
// would share it), so that concurrent listings do not disturb each other.
int ReopenFolder(int fd) { return openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC); }

absl::Status WriteAll(int fd, absl::string_view data, absl::string_view what) {
  while (!data.empty()) {
    ssize_t n = write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return PosixError(errno, what);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

absl::Status Fsync(int fd, absl::string_view what) {
  while (fsync(fd) != 0) {
    if (errno != EINTR) return PosixError(errno, absl::StrCat("fsync ", what));
  }
  return absl::OkStatus();
}

// The folders from the root down to the parent of a name's last segment,
// each opened without following symbolic links.
class Walk {
 public:
  // Opens the folders of `name` (all its segments but the last). With
  // `create`, missing folders are made; without, a missing one is
  // kNotFound naming `name`.
  static absl::StatusOr<Walk> Open(int root_fd, absl::string_view name, bool create);

  int parent() const { return dirs_.empty() ? root_fd_ : dirs_.back().get(); }
  const std::string& leaf() const { return segments_.back(); }
  // Folders by depth: 0 is the root, i is the folder of segment i-1.
  int dir(size_t depth) const { return depth == 0 ? root_fd_ : dirs_[depth - 1].get(); }
  size_t depth() const { return dirs_.size(); }
  const std::vector<std::string>& segments() const { return segments_; }
  // Depths of the folders this walk made.
  const std::vector<size_t>& created() const { return created_; }

 private:
  int root_fd_ = -1;
  std::vector<UniqueFd> dirs_;
  std::vector<std::string> segments_;
  std::vector<size_t> created_;
};

absl::StatusOr<Walk> Walk::Open(int root_fd, absl::string_view name, bool create) {
  Walk walk;
  walk.root_fd_ = root_fd;
  walk.segments_ = absl::StrSplit(name, '/');
  for (size_t i = 0; i + 1 < walk.segments_.size(); ++i) {
    const std::string& segment = walk.segments_[i];
    int parent = walk.parent();
    const std::string folder = absl::StrJoin(
        walk.segments_.begin(), walk.segments_.begin() + static_cast<long>(i) + 1, "/");
    while (true) {
      int fd = openat(parent, segment.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (fd >= 0) {
        walk.dirs_.emplace_back(fd);
        break;
      }
      int err = errno;
      if (err == EINTR) continue;
      if (err == ENOENT) {
        if (!create) return NotFound(name);
        if (mkdirat(parent, segment.c_str(), 0755) != 0 && errno != EEXIST) {
          return PosixError(errno, absl::StrCat("making folder ", folder, " for ", name));
        }
        walk.created_.push_back(i + 1);
        continue;  // open what was just made (or what a racer made)
      }
      if (err == ENOTDIR || err == ELOOP) {
        struct stat st;
        if (fstatat(parent, segment.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
            S_ISLNK(st.st_mode)) {
          return absl::FailedPreconditionError(
              absl::StrCat("artifact path ", name, " passes through ", folder,
                           ", a symbolic link, which the store does not follow"));
        }
        if (!create) return NotFound(name);
        return absl::FailedPreconditionError(absl::StrCat("cannot store artifact ", name, ": ",
                                                          folder, " is an artifact, not a folder"));
      }
      return PosixError(err, absl::StrCat("opening folder ", folder, " of ", name));
    }
  }
  return walk;
}

}  // namespace

// ---------------------------------------------------------------------------
// Writer

class DirectoryArtifactStore::Writer final : public ArtifactWriter {
 public:
  Writer(DirectoryArtifactStore* store, std::string name, std::string temp, UniqueFd fd)
      : store_(store), name_(std::move(name)), temp_(std::move(temp)), fd_(std::move(fd)) {}
  ~Writer() override { Abort(); }

  absl::Status Append(absl::string_view data) override {
    if (!fd_.valid()) return Ended();
    absl::Status status = WriteAll(fd_.get(), data, absl::StrCat("writing artifact ", name_));
    if (!status.ok()) {
      // Part of `data` may be in the file but not in the hash: the write
      // cannot be committed any more.
      Abort();
      return status;
    }
    sha_.Update(data);
    size_ += static_cast<int64_t>(data.size());
    return absl::OkStatus();
  }

  absl::StatusOr<ArtifactInfo> Commit() override {
    if (!fd_.valid()) return Ended();
    ArtifactInfo info{size_, sha_.HexDigest()};
    // Best effort: without user xattrs, Stat() hashes the file instead.
    std::string record = absl::StrCat(info.size, " ", info.sha256);
    fsetxattr(fd_.get(), kShaXattr, record.data(), record.size(), 0);
    absl::Status status;
    if (store_->options_.sync) status = Fsync(fd_.get(), absl::StrCat("artifact ", name_));
    if (status.ok()) status = store_->Install(temp_, name_);
    if (!status.ok()) {
      Abort();
      return status;
    }
    fd_.Reset();  // also drops the flock: the temporary name is gone
    return info;
  }

  void Abort() override {
    if (!fd_.valid()) return;
    // Unlink before closing, while the flock still keeps Open() away.
    if (unlinkat(store_->staging_fd_, temp_.c_str(), 0) != 0 && errno != ENOENT) {
      spdlog::warn("artifacts: could not remove {}/{}/{} of aborted artifact={}: {}", store_->root_,
                   kStagingFolder, temp_, name_, std::strerror(errno));
    }
    fd_.Reset();
  }

 private:
  absl::Status Ended() const {
    return absl::FailedPreconditionError(
        absl::StrCat("writer for artifact ", name_, " was already committed or aborted"));
  }

  DirectoryArtifactStore* store_;
  const std::string name_;
  const std::string temp_;  // file name in the staging folder
  UniqueFd fd_;             // valid until committed or aborted
  Sha256 sha_;
  int64_t size_ = 0;
};

// ---------------------------------------------------------------------------
// Reader

class DirectoryArtifactStore::Reader final : public ArtifactReader {
 public:
  Reader(std::string name, UniqueFd fd, int64_t size, int64_t offset)
      : name_(std::move(name)), fd_(std::move(fd)), size_(size), offset_(offset) {}

  absl::StatusOr<std::string> Read(size_t max_bytes) override {
    size_t want = std::min(max_bytes, static_cast<size_t>(size_ - offset_));
    std::string out(want, '\0');
    size_t got = 0;
    while (got < want) {
      ssize_t n = pread(fd_.get(), out.data() + got, want - got,
                        static_cast<off_t>(offset_) + static_cast<off_t>(got));
      if (n < 0) {
        if (errno == EINTR) continue;
        return PosixError(errno, absl::StrCat("reading artifact ", name_));
      }
      if (n == 0) {
        // Someone truncated the file under the store: its content is lost.
        return absl::DataLossError(
            absl::StrCat("artifact ", name_, " is shorter than its ", size_, " bytes"));
      }
      got += static_cast<size_t>(n);
    }
    offset_ += static_cast<int64_t>(got);
    return out;
  }

  int64_t size() const override { return size_; }

 private:
  const std::string name_;
  UniqueFd fd_;
  const int64_t size_;
  int64_t offset_;
};

// ---------------------------------------------------------------------------
// Store

absl::StatusOr<std::unique_ptr<DirectoryArtifactStore>> DirectoryArtifactStore::Open(
    const std::string& root, const Options& options) {
  std::error_code ec;
  std::filesystem::create_directories(root, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("making artifact root ", root, ": ", ec.message()));
  }
  UniqueFd root_fd(open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!root_fd.valid()) return PosixError(errno, absl::StrCat("opening artifact root ", root));
  if (mkdirat(root_fd.get(), kStagingFolder, 0700) != 0 && errno != EEXIST) {
    return PosixError(errno, absl::StrCat("making ", root, "/", kStagingFolder));
  }
  UniqueFd staging_fd(
      openat(root_fd.get(), kStagingFolder, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!staging_fd.valid()) {
    return PosixError(errno, absl::StrCat("opening ", root, "/", kStagingFolder));
  }
  std::unique_ptr<DirectoryArtifactStore> store(
      new DirectoryArtifactStore(root, options, root_fd.Release(), staging_fd.Release()));
  TF_ASSIGN_OR_RETURN(int removed, store->CleanStaging());
  if (removed > 0) {
    spdlog::info("artifacts: root={} removed {} temporary files of interrupted writes", root,
                 removed);
  }
  return store;
}

DirectoryArtifactStore::~DirectoryArtifactStore() {
  close(staging_fd_);
  close(root_fd_);
}

absl::StatusOr<int> DirectoryArtifactStore::CleanStaging() {
  int dup_fd = ReopenFolder(staging_fd_);
  if (dup_fd < 0) return PosixError(errno, "opening the staging folder");
  DIR* dir = fdopendir(dup_fd);
  if (dir == nullptr) {
    close(dup_fd);
    return PosixError(errno, "listing the staging folder");
  }
  int removed = 0;
  while (struct dirent* entry = readdir(dir)) {
    absl::string_view entry_name = entry->d_name;
    if (entry_name == "." || entry_name == "..") continue;
    // O_NONBLOCK: a stray FIFO must not hang Open().
    UniqueFd fd(openat(staging_fd_, entry->d_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
    // A live writer holds its file's lock; a dead one's lock died with it.
    if (fd.valid() && flock(fd.get(), LOCK_EX | LOCK_NB) != 0) continue;
    if (unlinkat(staging_fd_, entry->d_name, 0) == 0) {
      ++removed;
    } else if (errno != ENOENT) {
      spdlog::warn("artifacts: cannot remove {}/{}/{}: {}", root_, kStagingFolder, entry->d_name,
                   std::strerror(errno));
    }
  }
  closedir(dir);
  return removed;
}

absl::StatusOr<std::unique_ptr<ArtifactWriter>> DirectoryArtifactStore::OpenWriter(
    absl::string_view name) {
  TF_RETURN_IF_ERROR(ValidateArtifactName(name));
  while (true) {
    std::string temp = NewId("tmp");
    UniqueFd fd(openat(staging_fd_, temp.c_str(),
                       O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644));
    if (!fd.valid()) {
      if (errno == EEXIST || errno == EINTR) continue;
      return PosixError(errno, absl::StrCat("making a temporary file for artifact ", name));
    }
    if (flock(fd.get(), LOCK_EX) != 0) {
      return PosixError(errno, absl::StrCat("locking the temporary file of ", name));
    }
    // Another store's Open() may have removed the file between its creation
    // and our lock; then start over with a new one.
    struct stat st;
    if (fstat(fd.get(), &st) != 0) {
      return PosixError(errno, absl::StrCat("stat of the temporary file of ", name));
    }
    if (st.st_nlink == 0) continue;
    return std::make_unique<Writer>(this, std::string(name), std::move(temp), std::move(fd));
  }
}

absl::Status DirectoryArtifactStore::Install(const std::string& temp, const std::string& name) {
  absl::StatusOr<Walk> walk;
  {
    absl::MutexLock lock(&tree_mu_);
    walk = Walk::Open(root_fd_, name, /*create=*/true);
    if (!walk.ok()) return walk.status();
    if (renameat(staging_fd_, temp.c_str(), walk->parent(), walk->leaf().c_str()) != 0) {
      int err = errno;
      if (err == EISDIR || err == ENOTEMPTY || err == EEXIST) {
        return absl::FailedPreconditionError(
            absl::StrCat("cannot store artifact ", name, ": it is a folder of other artifacts"));
      }
      return PosixError(err, absl::StrCat("renaming the temporary file into ", name));
    }
  }
  if (!options_.sync) return absl::OkStatus();
  // The new name, and every folder made for it, must reach the disk.
  TF_RETURN_IF_ERROR(Fsync(walk->parent(), absl::StrCat("the folder of ", name)));
  for (size_t depth : walk->created()) {
    TF_RETURN_IF_ERROR(Fsync(walk->dir(depth - 1), absl::StrCat("a folder of ", name)));
  }
  return absl::OkStatus();
}

absl::StatusOr<int> DirectoryArtifactStore::OpenFile(absl::string_view name) {
  TF_RETURN_IF_ERROR(ValidateArtifactName(name));
  TF_ASSIGN_OR_RETURN(Walk walk, Walk::Open(root_fd_, name, /*create=*/false));
  UniqueFd fd(openat(walk.parent(), walk.leaf().c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ENOENT) return NotFound(name);
    if (errno == ELOOP) {
      return absl::FailedPreconditionError(
          absl::StrCat("artifact ", name, " is a symbolic link, which the store does not follow"));
    }
    return PosixError(errno, absl::StrCat("opening artifact ", name));
  }
  struct stat st;
  if (fstat(fd.get(), &st) != 0) return PosixError(errno, absl::StrCat("stat ", name));
  if (!S_ISREG(st.st_mode)) return NotFound(name);  // a folder, not an artifact
  return fd.Release();
}

absl::StatusOr<std::unique_ptr<ArtifactReader>> DirectoryArtifactStore::OpenReader(
    absl::string_view name, int64_t offset) {
  TF_ASSIGN_OR_RETURN(int raw_fd, OpenFile(name));
  UniqueFd fd(raw_fd);
  struct stat st;
  if (fstat(fd.get(), &st) != 0) return PosixError(errno, absl::StrCat("stat ", name));
  int64_t size = static_cast<int64_t>(st.st_size);
  if (offset < 0 || offset > size) {
    return absl::OutOfRangeError(
        absl::StrCat("offset ", offset, " is outside artifact ", name, " of ", size, " bytes"));
  }
  return std::make_unique<Reader>(std::string(name), std::move(fd), size, offset);
}

absl::StatusOr<ArtifactInfo> DirectoryArtifactStore::Stat(absl::string_view name) {
  TF_ASSIGN_OR_RETURN(int raw_fd, OpenFile(name));
  UniqueFd fd(raw_fd);
  struct stat st;
  if (fstat(fd.get(), &st) != 0) return PosixError(errno, absl::StrCat("stat ", name));
  ArtifactInfo info{static_cast<int64_t>(st.st_size), ""};

  char record[128];
  ssize_t n = fgetxattr(fd.get(), kShaXattr, record, sizeof(record));
  if (n > 0) {
    std::vector<absl::string_view> parts =
        absl::StrSplit(absl::string_view(record, static_cast<size_t>(n)), ' ');
    int64_t recorded_size = -1;
    // A size that differs means the file was changed behind the store.
    if (parts.size() == 2 && absl::SimpleAtoi(parts[0], &recorded_size) &&
        recorded_size == info.size && parts[1].size() == 64) {
      info.sha256 = std::string(parts[1]);
      return info;
    }
  }
  Sha256 sha;
  std::string buffer(size_t{1} << 20, '\0');
  off_t offset = 0;
  while (true) {
    ssize_t got = pread(fd.get(), buffer.data(), buffer.size(), offset);
    if (got < 0) {
      if (errno == EINTR) continue;
      return PosixError(errno, absl::StrCat("hashing artifact ", name));
    }
    if (got == 0) break;
    sha.Update(absl::string_view(buffer.data(), static_cast<size_t>(got)));
    offset += got;
  }
  info.size = static_cast<int64_t>(offset);
  info.sha256 = sha.HexDigest();
  std::string value = absl::StrCat(info.size, " ", info.sha256);
  fsetxattr(fd.get(), kShaXattr, value.data(), value.size(), 0);  // best effort
  return info;
}

absl::StatusOr<bool> DirectoryArtifactStore::Exists(absl::string_view name) {
  TF_RETURN_IF_ERROR(ValidateArtifactName(name));
  absl::StatusOr<Walk> walk = Walk::Open(root_fd_, name, /*create=*/false);
  if (absl::IsNotFound(walk.status())) return false;
  if (!walk.ok()) return walk.status();
  struct stat st;
  if (fstatat(walk->parent(), walk->leaf().c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return false;
    return PosixError(errno, absl::StrCat("stat ", name));
  }
  return S_ISREG(st.st_mode);
}

absl::Status DirectoryArtifactStore::Delete(absl::string_view name) {
  TF_RETURN_IF_ERROR(ValidateArtifactName(name));
  absl::MutexLock lock(&tree_mu_);
  TF_ASSIGN_OR_RETURN(Walk walk, Walk::Open(root_fd_, name, /*create=*/false));
  struct stat st;
  if (fstatat(walk.parent(), walk.leaf().c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 ||
      !S_ISREG(st.st_mode)) {
    return NotFound(name);
  }
  if (unlinkat(walk.parent(), walk.leaf().c_str(), 0) != 0) {
    if (errno == ENOENT) return NotFound(name);
    return PosixError(errno, absl::StrCat("deleting artifact ", name));
  }
  // Remove the folders the deletion emptied, deepest first, so that deleted
  // jobs and files leave no litter; stop at the first that still holds
  // something.
  size_t depth = walk.depth();
  while (depth > 0 &&
         unlinkat(walk.dir(depth - 1), walk.segments()[depth - 1].c_str(), AT_REMOVEDIR) == 0) {
    --depth;
  }
  if (options_.sync) {
    TF_RETURN_IF_ERROR(Fsync(walk.dir(depth), absl::StrCat("the folder of ", name)));
  }
  return absl::OkStatus();
}

namespace {

// Appends to `names` every regular file under the folder `fd`, as
// `prefix` + its relative path; at the top, only entries starting with
// `partial`. `depth` is the number of segments in `prefix`. Files whose
// names would break the name rules (too deep, too long) are not artifacts.
absl::Status ListFolder(int fd, const std::string& prefix, absl::string_view partial, size_t depth,
                        std::vector<std::string>* names) {
  int dup_fd = ReopenFolder(fd);
  if (dup_fd < 0) return PosixError(errno, absl::StrCat("listing ", prefix));
  DIR* dir = fdopendir(dup_fd);
  if (dir == nullptr) {
    close(dup_fd);
    return PosixError(errno, absl::StrCat("listing ", prefix));
  }
  absl::Status status;
  while (struct dirent* entry = readdir(dir)) {
    absl::string_view entry_name = entry->d_name;
    // Skips ".", "..", the staging folder, lost+found and anything else
    // that no artifact name could map to.
    if (!IsSegment(entry_name) || !absl::StartsWith(entry_name, partial)) continue;
    struct stat st;
    if (fstatat(fd, entry->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;  // raced
    std::string path = absl::StrCat(prefix, entry_name);
    if (path.size() > kMaxArtifactNameLength) continue;
    if (S_ISREG(st.st_mode)) {
      names->push_back(std::move(path));
    } else if (S_ISDIR(st.st_mode) && depth + 2 <= kMaxArtifactNameDepth) {
      UniqueFd child(openat(fd, entry->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!child.valid()) continue;  // removed meanwhile
      status = ListFolder(child.get(), path + "/", "", depth + 1, names);
      if (!status.ok()) break;
    }
  }
  closedir(dir);
  return status;
}

}  // namespace

absl::StatusOr<std::vector<std::string>> DirectoryArtifactStore::List(absl::string_view prefix) {
  TF_RETURN_IF_ERROR(ValidateArtifactPrefix(prefix));
  size_t slash = prefix.rfind('/');
  std::string folder = slash == absl::string_view::npos ? "" : std::string(prefix.substr(0, slash));
  absl::string_view partial = slash == absl::string_view::npos ? prefix : prefix.substr(slash + 1);
  std::vector<std::string> names;
  if (folder.empty()) {
    TF_RETURN_IF_ERROR(ListFolder(root_fd_, "", partial, 0, &names));
  } else {
    // Walk::Open opens all but the last segment: give it a leaf to stop at.
    absl::StatusOr<Walk> walk = Walk::Open(root_fd_, folder + "/x", /*create=*/false);
    if (absl::IsNotFound(walk.status())) return names;
    if (!walk.ok()) return walk.status();
    TF_RETURN_IF_ERROR(
        ListFolder(walk->parent(), folder + "/", partial, walk->segments().size() - 1, &names));
  }
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace tunefleet::store
