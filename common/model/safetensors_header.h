// Parsing and validation of a safetensors header from bytes in memory.
// Torch-free, so that it can be fuzzed and used by code without libtorch.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tunefleet::model {

// Element types as the safetensors format names them.
enum class DType { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };

// "F32", "BF16", ... .
absl::string_view DTypeName(DType dtype);
// The inverse of DTypeName; an error for names we do not read (e.g. F8_E4M3).
absl::StatusOr<DType> ParseDTypeName(absl::string_view name);
int64_t DTypeSize(DType dtype);

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  // Byte range relative to the start of the data section (after the header).
  uint64_t begin = 0;
  uint64_t end = 0;
  int64_t numel() const;
};

struct SafetensorsHeader {
  // Sorted by `begin`; contiguous, covering the whole data section.
  std::vector<TensorInfo> tensors;
  std::map<std::string, std::string> metadata;
  // Offset of the data section in the file: 8 + header length.
  uint64_t data_offset = 0;
  // Index of a tensor in `tensors`, or -1.
  int64_t Find(absl::string_view name) const;
};

// The largest header we accept (the format's reference reader uses 100 MB).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

// Parses the header of a safetensors file of `file_size` bytes whose first
// bytes are `prefix` (at least 8 + header length of them; the whole file is
// fine). Every inconsistency — a truncated header, a header length beyond the
// file, malformed JSON, an unknown dtype, offsets past the end, overlapping or
// with gaps, a shape whose byte size differs from its range — is an
// InvalidArgument naming `file_name` and the tensor.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::string_view prefix,
                                                         uint64_t file_size,
                                                         absl::string_view file_name);

// The serialized header (8-byte little-endian length + JSON padded with spaces
// to a multiple of 8 bytes) for tensors laid out back to back in the given
// order; fills in each tensor's begin/end. Deterministic for the same input.
std::string SerializeSafetensorsHeader(std::vector<TensorInfo>& tensors,
                                       const std::map<std::string, std::string>& metadata);

}  // namespace tunefleet::model
