#include "common/model/safetensors_header.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tunefleet::model {
namespace {

struct DTypeEntry {
  DType dtype;
  absl::string_view name;
  int64_t size;
};
constexpr DTypeEntry kDTypes[] = {
    {DType::kF64, "F64", 8},   {DType::kF32, "F32", 4}, {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2}, {DType::kI64, "I64", 8}, {DType::kI32, "I32", 4},
    {DType::kI16, "I16", 2},   {DType::kI8, "I8", 1},   {DType::kU8, "U8", 1},
    {DType::kBool, "BOOL", 1},
};

absl::Status Invalid(absl::string_view file, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(file, ": ", what));
}

absl::Status InvalidTensor(absl::string_view file, absl::string_view tensor,
                           absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(file, ": tensor '", tensor, "': ", what));
}

uint64_t ReadLe64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

bool GetU64(const nlohmann::json& j, uint64_t* out) {
  if (j.is_number_unsigned()) {
    *out = j.get<uint64_t>();
    return true;
  }
  if (j.is_number_integer() && j.get<int64_t>() >= 0) {
    *out = static_cast<uint64_t>(j.get<int64_t>());
    return true;
  }
  return false;
}

}  // namespace

absl::string_view DTypeName(DType dtype) {
  for (const auto& e : kDTypes)
    if (e.dtype == dtype) return e.name;
  return "?";
}

absl::StatusOr<DType> ParseDTypeName(absl::string_view name) {
  for (const auto& e : kDTypes)
    if (e.name == name) return e.dtype;
  return absl::InvalidArgumentError(absl::StrCat("unsupported dtype '", name, "'"));
}

int64_t DTypeSize(DType dtype) {
  for (const auto& e : kDTypes)
    if (e.dtype == dtype) return e.size;
  return 0;
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t SafetensorsHeader::Find(absl::string_view name) const {
  for (size_t i = 0; i < tensors.size(); ++i)
    if (tensors[i].name == name) return static_cast<int64_t>(i);
  return -1;
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::string_view prefix,
                                                         uint64_t file_size,
                                                         absl::string_view file_name) {
  if (file_size < 8 || prefix.size() < 8) {
    return Invalid(file_name, absl::StrCat("truncated: ", file_size,
                                           " bytes, too short for the 8-byte header length"));
  }
  const uint64_t n = ReadLe64(prefix.data());
  if (n > file_size - 8) {
    return Invalid(file_name,
                   absl::StrCat("header length ", n, " exceeds the file size ", file_size));
  }
  if (n > kMaxSafetensorsHeaderBytes) {
    return Invalid(file_name, absl::StrCat("header length ", n, " exceeds the limit of ",
                                           kMaxSafetensorsHeaderBytes, " bytes"));
  }
  if (prefix.size() < 8 + n) {
    return Invalid(file_name, "truncated header");
  }
  absl::string_view text = prefix.substr(8, n);
  if (text.empty() || text[0] != '{') {
    return Invalid(file_name, "header is not a JSON object");
  }
  nlohmann::json j = nlohmann::json::parse(text.begin(), text.end(), nullptr,
                                           /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return Invalid(file_name, "header is not valid JSON");
  }

  SafetensorsHeader header;
  header.data_offset = 8 + n;
  const uint64_t data_size = file_size - header.data_offset;
  for (const auto& [key, value] : j.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) return Invalid(file_name, "__metadata__ is not an object");
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string()) {
          return Invalid(file_name, absl::StrCat("__metadata__ value '", mk, "' is not a string"));
        }
        header.metadata[mk] = mv.get<std::string>();
      }
      continue;
    }
    if (!value.is_object()) return InvalidTensor(file_name, key, "entry is not an object");
    TensorInfo info;
    info.name = key;
    auto dt = value.find("dtype");
    if (dt == value.end() || !dt->is_string()) {
      return InvalidTensor(file_name, key, "missing or non-string 'dtype'");
    }
    auto dtype = ParseDTypeName(dt->get_ref<const std::string&>());
    if (!dtype.ok()) return InvalidTensor(file_name, key, dtype.status().message());
    info.dtype = *dtype;

    auto shape = value.find("shape");
    if (shape == value.end() || !shape->is_array()) {
      return InvalidTensor(file_name, key, "missing or non-array 'shape'");
    }
    uint64_t numel = 1;
    for (const auto& d : *shape) {
      uint64_t dim = 0;
      if (!GetU64(d, &dim) || dim > static_cast<uint64_t>(INT64_MAX)) {
        return InvalidTensor(file_name, key,
                             "shape has a dimension that is not a non-negative integer");
      }
      if (__builtin_mul_overflow(numel, dim, &numel)) {
        return InvalidTensor(file_name, key, "shape overflows");
      }
      info.shape.push_back(static_cast<int64_t>(dim));
    }
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(DTypeSize(info.dtype)), &nbytes) ||
        nbytes > static_cast<uint64_t>(INT64_MAX)) {
      return InvalidTensor(file_name, key, "shape overflows");
    }

    auto offsets = value.find("data_offsets");
    if (offsets == value.end() || !offsets->is_array() || offsets->size() != 2 ||
        !GetU64((*offsets)[0], &info.begin) || !GetU64((*offsets)[1], &info.end)) {
      return InvalidTensor(file_name, key, "'data_offsets' is not a pair of non-negative integers");
    }
    if (info.end < info.begin) {
      return InvalidTensor(
          file_name, key,
          absl::StrCat("data_offsets [", info.begin, ", ", info.end, "] are misordered"));
    }
    if (info.end > data_size) {
      return InvalidTensor(file_name, key,
                           absl::StrCat("data_offsets [", info.begin, ", ", info.end,
                                        "] run past the end of the data (", data_size, " bytes)"));
    }
    if (info.end - info.begin != nbytes) {
      return InvalidTensor(
          file_name, key,
          absl::StrCat("shape [", absl::StrJoin(info.shape, ", "), "] of ", DTypeName(info.dtype),
                       " needs ", nbytes, " bytes but data_offsets span ", info.end - info.begin));
    }
    header.tensors.push_back(std::move(info));
  }

  std::stable_sort(header.tensors.begin(), header.tensors.end(),
                   [](const TensorInfo& a, const TensorInfo& b) {
                     return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
                   });
  uint64_t expected = 0;
  for (size_t i = 0; i < header.tensors.size(); ++i) {
    const TensorInfo& t = header.tensors[i];
    if (t.begin < expected) {
      return InvalidTensor(file_name, t.name,
                           absl::StrCat("data_offsets [", t.begin, ", ", t.end,
                                        "] overlap tensor '", header.tensors[i - 1].name, "'"));
    }
    if (t.begin > expected) {
      return InvalidTensor(
          file_name, t.name,
          absl::StrCat("data_offsets start at ", t.begin, " leaving a gap after byte ", expected));
    }
    expected = t.end;
  }
  if (expected != data_size) {
    return Invalid(file_name, absl::StrCat("data section has ", data_size,
                                           " bytes but the tensors cover ", expected));
  }
  return header;
}

std::string SerializeSafetensorsHeader(std::vector<TensorInfo>& tensors,
                                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    j["__metadata__"] = std::move(m);
  }
  uint64_t offset = 0;
  for (TensorInfo& t : tensors) {
    t.begin = offset;
    t.end = offset + static_cast<uint64_t>(t.numel()) * static_cast<uint64_t>(DTypeSize(t.dtype));
    offset = t.end;
    nlohmann::ordered_json e = nlohmann::ordered_json::object();
    e["dtype"] = std::string(DTypeName(t.dtype));
    e["shape"] = t.shape;
    e["data_offsets"] = {t.begin, t.end};
    j[t.name] = std::move(e);
  }
  std::string text = j.dump();
  // Pad so that the data section starts 8-byte aligned, as the reference
  // writer does; tensors then map straight onto aligned memory.
  while ((text.size() % 8) != 0) text.push_back(' ');
  std::string out(8, '\0');
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  out += text;
  return out;
}

}  // namespace tunefleet::model
