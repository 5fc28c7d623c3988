#include "common/model/file_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace tunefleet::model {
namespace {

absl::Status ErrnoError(absl::string_view op, const std::string& path) {
  int e = errno;
  std::string msg = absl::StrCat(path, ": ", op, ": ", std::strerror(e));
  if (e == ENOENT) return absl::NotFoundError(msg);
  if (e == EACCES || e == EPERM) return absl::PermissionDeniedError(msg);
  if (e == ENOSPC || e == EDQUOT) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

}  // namespace

absl::Status WriteAll(int fd, const void* data, size_t size, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("write", path);
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status WriteFileAtomically(const std::string& path,
                                 const std::function<absl::Status(int fd)>& write) {
  std::filesystem::path target(path);
  std::string dir = target.has_parent_path() ? target.parent_path().string() : std::string(".");
  std::string tmpl = absl::StrCat(path, ".tmp.XXXXXX");
  int fd = ::mkstemp(tmpl.data());
  if (fd < 0) return ErrnoError("create temporary file", tmpl);
  absl::Status s = write(fd);
  if (s.ok() && ::fsync(fd) != 0) s = ErrnoError("fsync", tmpl);
  if (::close(fd) != 0 && s.ok()) s = ErrnoError("close", tmpl);
  // mkstemp creates 0600; model files are meant to be shared like any other.
  if (s.ok() && ::chmod(tmpl.c_str(), 0644) != 0) s = ErrnoError("chmod", tmpl);
  if (s.ok() && ::rename(tmpl.c_str(), path.c_str()) != 0) s = ErrnoError("rename", path);
  if (!s.ok()) {
    ::unlink(tmpl.c_str());
    return s;
  }
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return absl::OkStatus();
}

absl::Status WriteStringAtomically(const std::string& path, const std::string& contents) {
  return WriteFileAtomically(
      path, [&](int fd) { return WriteAll(fd, contents.data(), contents.size(), path); });
}

absl::StatusOr<std::string> ReadFileToString(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read failed"));
  return ss.str();
}

}  // namespace tunefleet::model
