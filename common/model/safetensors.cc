#include "common/model/safetensors.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/base/status_macros.h"
#include "common/model/file_util.h"
#include "common/model/torch_status.h"

namespace tunefleet::model {
namespace {

namespace fs = std::filesystem;

constexpr char kSingleFile[] = "model.safetensors";
constexpr char kIndexFile[] = "model.safetensors.index.json";

at::ScalarType ToScalarType(DType d) {
  switch (d) {
    case DType::kF64:
      return at::kDouble;
    case DType::kF32:
      return at::kFloat;
    case DType::kF16:
      return at::kHalf;
    case DType::kBF16:
      return at::kBFloat16;
    case DType::kI64:
      return at::kLong;
    case DType::kI32:
      return at::kInt;
    case DType::kI16:
      return at::kShort;
    case DType::kI8:
      return at::kChar;
    case DType::kU8:
      return at::kByte;
    case DType::kBool:
      return at::kBool;
  }
  return at::kFloat;
}

absl::StatusOr<DType> FromScalarType(at::ScalarType t) {
  switch (t) {
    case at::kDouble:
      return DType::kF64;
    case at::kFloat:
      return DType::kF32;
    case at::kHalf:
      return DType::kF16;
    case at::kBFloat16:
      return DType::kBF16;
    case at::kLong:
      return DType::kI64;
    case at::kInt:
      return DType::kI32;
    case at::kShort:
      return DType::kI16;
    case at::kChar:
      return DType::kI8;
    case at::kByte:
      return DType::kU8;
    case at::kBool:
      return DType::kBool;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("dtype ", c10::toString(t), " cannot be stored in safetensors"));
  }
}

absl::Status ErrnoError(absl::string_view op, const std::string& path) {
  int e = errno;
  std::string msg = absl::StrCat(path, ": ", op, ": ", std::strerror(e));
  if (e == ENOENT) return absl::NotFoundError(msg);
  if (e == EACCES || e == EPERM) return absl::PermissionDeniedError(msg);
  return absl::InternalError(msg);
}

std::string ShardName(size_t i, size_t n) {
  return absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, n);
}

bool IsShardName(const std::string& name) {
  unsigned a = 0, b = 0;
  char tail[32] = {0};
  return std::sscanf(name.c_str(), "model-%5u-of-%5u.%31s", &a, &b, tail) == 3 &&
         std::string(tail) == "safetensors";
}

}  // namespace

SafetensorsFile::~SafetensorsFile() = default;

absl::StatusOr<std::shared_ptr<const SafetensorsFile>> SafetensorsFile::Open(
    const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("open", path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    absl::Status s = ErrnoError("stat", path);
    ::close(fd);
    return s;
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->size_ = size;
  if (size < 8) {
    ::close(fd);
    return ParseSafetensorsHeader(absl::string_view(), size, path).status();
  }
  // Private and writable: an in-place update of a tensor (a LoRA merge, full
  // fine-tuning) copies the touched pages instead of faulting; the file never
  // changes. MAP_NORESERVE: untouched pages cost no commit charge.
  void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
  ::close(fd);
  if (base == MAP_FAILED) return ErrnoError("mmap", path);
  file->base_ = base;
  file->mapping_ = std::shared_ptr<void>(base, [size](void* p) { ::munmap(p, size); });
  TF_ASSIGN_OR_RETURN(
      file->header_,
      ParseSafetensorsHeader(absl::string_view(static_cast<const char*>(base), size), size, path));
  return std::shared_ptr<const SafetensorsFile>(std::move(file));
}

absl::StatusOr<at::Tensor> SafetensorsFile::Get(absl::string_view name) const {
  int64_t i = header_.Find(name);
  if (i < 0) return absl::NotFoundError(absl::StrCat(path_, ": no tensor '", name, "'"));
  const TensorInfo& info = header_.tensors[static_cast<size_t>(i)];
  return internal::CatchTorch(
      absl::StrCat(path_, ": tensor '", name, "'"), [&]() -> absl::StatusOr<at::Tensor> {
        char* data = static_cast<char*>(base_) + header_.data_offset + info.begin;
        auto options = at::TensorOptions().dtype(ToScalarType(info.dtype)).device(at::kCPU);
        if (reinterpret_cast<uintptr_t>(data) % static_cast<uintptr_t>(DTypeSize(info.dtype)) !=
            0) {
          // Misaligned (another writer's padding): copy rather than hand kernels
          // a pointer they may not expect.
          return at::from_blob(data, info.shape, options).clone();
        }
        std::shared_ptr<void> keep = mapping_;
        return at::from_blob(
            data, info.shape, [keep](void*) {}, options);
      });
}

absl::StatusOr<NamedTensors> SafetensorsFile::GetAll() const {
  NamedTensors out;
  for (const TensorInfo& info : header_.tensors) {
    TF_ASSIGN_OR_RETURN(at::Tensor t, Get(info.name));
    out.emplace_back(info.name, std::move(t));
  }
  return out;
}

absl::StatusOr<SafetensorsDir> SafetensorsDir::Open(const std::string& dir) {
  SafetensorsDir out;
  out.dir_ = dir;
  const fs::path single = fs::path(dir) / kSingleFile;
  const fs::path index = fs::path(dir) / kIndexFile;
  std::error_code ec;
  if (fs::exists(single, ec)) {
    TF_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(single.string()));
    for (const TensorInfo& t : file->header().tensors) out.index_[t.name] = 0;
    out.files_.push_back(std::move(file));
    return out;
  }
  if (!fs::exists(index, ec)) {
    return absl::NotFoundError(absl::StrCat(dir, ": no ", kSingleFile, " or ", kIndexFile));
  }
  const std::string index_path = index.string();
  TF_ASSIGN_OR_RETURN(std::string text, ReadFileToString(index_path));
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": not a JSON object"));
  }
  auto wm = j.find("weight_map");
  if (wm == j.end() || !wm->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": missing object 'weight_map'"));
  }
  std::map<std::string, size_t> file_index;
  for (const auto& [tensor, shard] : wm->items()) {
    if (!shard.is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": tensor '", tensor, "' maps to a non-string"));
    }
    const std::string& shard_name = shard.get_ref<const std::string&>();
    if (shard_name.empty() || shard_name.find('/') != std::string::npos || shard_name == "." ||
        shard_name == "..") {
      return absl::InvalidArgumentError(absl::StrCat(
          index_path, ": tensor '", tensor, "' maps to an invalid file name '", shard_name, "'"));
    }
    auto it = file_index.find(shard_name);
    if (it == file_index.end()) {
      TF_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open((fs::path(dir) / shard_name).string()));
      it = file_index.emplace(shard_name, out.files_.size()).first;
      out.files_.push_back(std::move(file));
    }
    if (out.files_[it->second]->header().Find(tensor) < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          index_path, ": tensor '", tensor, "' is not in ", out.files_[it->second]->path()));
    }
    out.index_[tensor] = it->second;
  }
  return out;
}

absl::StatusOr<at::Tensor> SafetensorsDir::Get(absl::string_view name) const {
  auto it = index_.find(std::string(name));
  if (it == index_.end())
    return absl::NotFoundError(absl::StrCat(dir_, ": missing tensor '", name, "'"));
  return files_[it->second]->Get(name);
}

std::vector<std::string> SafetensorsDir::names() const {
  std::vector<std::string> out;
  for (const auto& [name, unused] : index_) out.push_back(name);
  return out;
}

std::string SafetensorsDir::PathOf(absl::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? dir_ : files_[it->second]->path();
}

uint64_t SafetensorsDir::total_file_bytes() const {
  uint64_t n = 0;
  for (const auto& f : files_) n += f->file_size();
  return n;
}

absl::Status WriteSafetensors(const std::string& path, const NamedTensors& tensors,
                              const std::map<std::string, std::string>& metadata) {
  return internal::CatchTorch(path, [&]() -> absl::Status {
    std::vector<TensorInfo> infos;
    std::vector<at::Tensor> data;
    std::set<std::string> seen;
    for (const auto& [name, t] : tensors) {
      if (name == "__metadata__" || !seen.insert(name).second) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": duplicate or reserved tensor name '", name, "'"));
      }
      if (!t.defined())
        return absl::InvalidArgumentError(absl::StrCat(path, ": tensor '", name, "' is undefined"));
      TensorInfo info;
      info.name = name;
      auto dtype = FromScalarType(t.scalar_type());
      if (!dtype.ok())
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": tensor '", name, "': ", dtype.status().message()));
      info.dtype = *dtype;
      info.shape = t.sizes().vec();
      infos.push_back(std::move(info));
      data.push_back(t.detach().to(at::kCPU).contiguous());
    }
    const std::string header = SerializeSafetensorsHeader(infos, metadata);
    return WriteFileAtomically(path, [&](int fd) -> absl::Status {
      TF_RETURN_IF_ERROR(WriteAll(fd, header.data(), header.size(), path));
      for (const at::Tensor& t : data) {
        TF_RETURN_IF_ERROR(WriteAll(fd, t.data_ptr(), t.numel() * t.element_size(), path));
      }
      return absl::OkStatus();
    });
  });
}

absl::Status WriteSafetensorsDir(const std::string& dir, const NamedTensors& tensors,
                                 uint64_t max_shard_bytes,
                                 const std::map<std::string, std::string>& metadata) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    return absl::InternalError(absl::StrCat(dir, ": cannot create directory: ", ec.message()));
  std::vector<NamedTensors> shards(1);
  uint64_t in_shard = 0, total = 0;
  for (const auto& nt : tensors) {
    const uint64_t bytes = static_cast<uint64_t>(nt.second.numel()) * nt.second.element_size();
    if (!shards.back().empty() && in_shard + bytes > max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(nt);
    in_shard += bytes;
    total += bytes;
  }
  // Drop the layout we are not writing, so that readers never mix the two.
  std::vector<fs::path> stale;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (IsShardName(name) || (shards.size() == 1 ? name == kIndexFile : name == kSingleFile)) {
      stale.push_back(entry.path());
    }
  }
  if (shards.size() == 1) {
    TF_RETURN_IF_ERROR(
        WriteSafetensors((fs::path(dir) / kSingleFile).string(), shards[0], metadata));
  } else {
    nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
    for (size_t i = 0; i < shards.size(); ++i) {
      const std::string name = ShardName(i, shards.size());
      TF_RETURN_IF_ERROR(WriteSafetensors((fs::path(dir) / name).string(), shards[i], metadata));
      for (const auto& nt : shards[i]) weight_map[nt.first] = name;
    }
    nlohmann::ordered_json index;
    index["metadata"] = {{"total_size", total}};
    index["weight_map"] = std::move(weight_map);
    TF_RETURN_IF_ERROR(
        WriteStringAtomically((fs::path(dir) / kIndexFile).string(), index.dump(2) + "\n"));
  }
  for (const auto& p : stale) {
    // Shards that we just rewrote under the same name are not stale.
    bool rewritten = false;
    for (size_t i = 0; i < shards.size() && shards.size() > 1; ++i)
      rewritten |= p.filename() == ShardName(i, shards.size());
    if (!rewritten) fs::remove(p, ec);
  }
  return absl::OkStatus();
}

}  // namespace tunefleet::model
