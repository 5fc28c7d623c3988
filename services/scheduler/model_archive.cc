#include "services/scheduler/model_archive.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tunefleet::scheduler {
namespace fs = std::filesystem;

namespace {

constexpr int64_t kBlock = 512;

// Writes `value` as zero-padded octal into field[0, width-1) plus a NUL.
bool Octal(char* field, size_t width, int64_t value) {
  std::string digits = absl::StrFormat("%0*o", static_cast<int>(width - 1),
                                       static_cast<unsigned long long>(value));
  if (digits.size() > width - 1) return false;
  std::memcpy(field, digits.data(), digits.size());
  field[width - 1] = '\0';
  return true;
}

}  // namespace

absl::StatusOr<std::string> UstarHeader(const std::string& name, bool directory, int64_t size,
                                        int64_t mtime, uint32_t mode) {
  std::string h(kBlock, '\0');
  char* b = h.data();
  // name (100) and prefix (155): split a long path at a '/'.
  std::string prefix, base = name;
  if (base.size() > 100) {
    // The last '/' that leaves a prefix of at most 155 bytes (a directory's
    // trailing '/' stays in its name).
    size_t cut = name.rfind('/', std::min<size_t>(155, name.size() - 2));
    if (cut == std::string::npos || cut == 0 || name.size() - cut - 1 > 100) {
      return absl::InvalidArgumentError(
          absl::StrCat("path '", name, "' is too long for a ustar archive"));
    }
    prefix = name.substr(0, cut);
    base = name.substr(cut + 1);
  }
  std::memcpy(b, base.data(), base.size());
  Octal(b + 100, 8, mode & 07777);
  Octal(b + 108, 8, 0);  // uid
  Octal(b + 116, 8, 0);  // gid
  if (!Octal(b + 124, 12, directory ? 0 : size)) {
    // Base-256: the high bit of the first byte set, the size big-endian.
    b[124] = static_cast<char>(0x80);
    for (int i = 11; i >= 1; --i) {
      b[124 + i] = static_cast<char>(size & 0xff);
      size >>= 8;
    }
  }
  Octal(b + 136, 12, std::max<int64_t>(0, mtime));
  b[156] = directory ? '5' : '0';
  std::memcpy(b + 257, "ustar", 6);  // magic with its NUL
  std::memcpy(b + 263, "00", 2);     // version
  std::memcpy(b + 265, "tunefleet", 9);
  std::memcpy(b + 297, "tunefleet", 9);
  std::memcpy(b + 345, prefix.data(), prefix.size());
  // The checksum is computed with its own field as spaces.
  std::memset(b + 148, ' ', 8);
  unsigned sum = 0;
  for (char c : h) sum += static_cast<unsigned char>(c);
  std::string chk = absl::StrFormat("%06o", sum);
  std::memcpy(b + 148, chk.data(), 6);
  b[154] = '\0';
  b[155] = ' ';
  return h;
}

absl::StatusOr<std::unique_ptr<TarStream>> TarStream::Open(const std::string& dir,
                                                           const std::string& root_name) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat("model directory ", dir, " does not exist"));
  }
  auto stream = std::unique_ptr<TarStream>(new TarStream());
  auto stat_of = [](const fs::path& p, Entry* e) -> absl::Status {
    struct stat st;
    if (lstat(p.c_str(), &st) != 0) {
      return absl::DataLossError(absl::StrCat("cannot stat ", p.string()));
    }
    e->mtime = st.st_mtime;
    e->mode = st.st_mode & 0777;
    return absl::OkStatus();
  };
  Entry root;
  root.source = dir;
  root.name = root_name + "/";
  root.directory = true;
  if (absl::Status s = stat_of(dir, &root); !s.ok()) return s;
  stream->entries_.push_back(root);
  std::vector<Entry> found;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    Entry e;
    e.source = it->path().string();
    std::string rel = fs::relative(it->path(), dir).generic_string();
    if (it->is_symlink()) {
      return absl::FailedPreconditionError(
          absl::StrCat("model directory ", dir, " holds a symbolic link, ", rel));
    }
    if (it->is_directory()) {
      e.directory = true;
      e.name = absl::StrCat(root_name, "/", rel, "/");
    } else if (it->is_regular_file()) {
      e.name = absl::StrCat(root_name, "/", rel);
      e.size = static_cast<int64_t>(it->file_size());
    } else {
      return absl::FailedPreconditionError(
          absl::StrCat("model directory ", dir, " holds ", rel, ", not a regular file"));
    }
    if (absl::Status s = stat_of(it->path(), &e); !s.ok()) return s;
    found.push_back(std::move(e));
  }
  if (ec) return absl::DataLossError(absl::StrCat("cannot list ", dir, ": ", ec.message()));
  std::sort(found.begin(), found.end(),
            [](const Entry& a, const Entry& b) { return a.name < b.name; });
  for (Entry& e : found) stream->entries_.push_back(std::move(e));
  stream->total_bytes_ = 2 * kBlock;
  for (const Entry& e : stream->entries_) {
    stream->total_bytes_ += kBlock + (e.size + kBlock - 1) / kBlock * kBlock;
  }
  return stream;
}

absl::StatusOr<std::string> TarStream::Next(size_t max_bytes) {
  std::string out;
  if (done_) return out;
  max_bytes = std::max<size_t>(max_bytes, kBlock);
  while (out.size() < max_bytes) {
    size_t room = max_bytes - out.size();
    if (!pending_.empty()) {
      size_t n = std::min(room, pending_.size());
      out.append(pending_, 0, n);
      pending_.erase(0, n);
    } else if (file_left_ > 0) {
      size_t n = static_cast<size_t>(std::min<int64_t>(file_left_, static_cast<int64_t>(room)));
      size_t at = out.size();
      out.resize(at + n);
      file_.read(out.data() + at, static_cast<std::streamsize>(n));
      if (static_cast<size_t>(file_.gcount()) != n) {
        return absl::DataLossError(absl::StrCat(entries_[next_entry_ - 1].source,
                                                " became shorter while it was archived"));
      }
      file_left_ -= static_cast<int64_t>(n);
      if (file_left_ == 0) file_.close();
    } else if (padding_ > 0) {
      size_t n = static_cast<size_t>(std::min<int64_t>(padding_, static_cast<int64_t>(room)));
      out.append(n, '\0');
      padding_ -= static_cast<int64_t>(n);
    } else if (next_entry_ < entries_.size()) {
      const Entry& e = entries_[next_entry_++];
      absl::StatusOr<std::string> header = UstarHeader(e.name, e.directory, e.size, e.mtime, e.mode);
      if (!header.ok()) return header.status();
      pending_ = *std::move(header);
      if (!e.directory && e.size > 0) {
        file_.open(e.source, std::ios::binary);
        if (!file_) return absl::DataLossError(absl::StrCat("cannot read ", e.source));
        file_left_ = e.size;
        padding_ = (kBlock - e.size % kBlock) % kBlock;
      }
    } else if (!trailer_written_) {
      pending_.assign(2 * kBlock, '\0');
      trailer_written_ = true;
    } else {
      break;
    }
  }
  hash_.Update(out);
  if (trailer_written_ && pending_.empty()) {
    done_ = true;
    sha256_ = hash_.HexDigest();
  }
  return out;
}

}  // namespace tunefleet::scheduler
