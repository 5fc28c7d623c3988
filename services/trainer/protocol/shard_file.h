// The local shard file: a trainer agent writes one per shard set and rank
// (from the dataset service's StreamShard chunks) and the worker reads it.
// Little-endian binary:
//   header (64 bytes): magic "TFSHARD\0", version u32, flags u32,
//     num_examples u64, num_tokens u64, trained_tokens u64,
//     vocab_size u32 (the tokenizer's, ids are below it), max_token_id i32,
//     body checksum u64 (FNV-1a 64 over the body), reserved u64
//   body, per example: length u32, label i32 (-1: none), token ids i32[length],
//     loss mask u8[length] (1: trained)
// Classification examples carry their class (an index into the job's label
// names, >= 0) as the label; no flag marks them (version 1 suffices).
// Flags (version 2; version 1 files have none and are still read):
//   bit 0 "pairs": preference pairs (DPO). Examples 2k and 2k+1 are pair k:
//     the prompt with the preferred completion (label 1, "chosen") then with
//     the non-preferred one (label 0, "rejected"), each loss-masked on its
//     completion only. num_examples is even; a reader checks the labels.
// A file without flags is written as version 1, so older workers read it;
// one with flags is version 2, which older workers refuse rather than
// misread. Unknown flag bits are refused.
// Written to "<path>.tmp-<pid>", fsynced and renamed, so a file under its
// name is complete; a truncated or corrupted one is INVALID_ARGUMENT naming
// the file. Neither gRPC nor libtorch.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace tunefleet::trainer {

inline constexpr uint32_t kShardFileVersion = 2;  // the newest this code reads
inline constexpr uint32_t kShardFlagPairs = 1u << 0;
inline constexpr int32_t kChosenLabel = 1;
inline constexpr int32_t kRejectedLabel = 0;

struct ShardFileInfo {
  bool pairs = false;  // kShardFlagPairs
  uint64_t num_examples = 0;
  uint64_t num_tokens = 0;
  uint64_t trained_tokens = 0;
  uint32_t vocab_size = 0;
  int32_t max_token_id = -1;
};

// Streams examples into a new shard file. Not thread-safe.
class ShardFileWriter {
 public:
  // `vocab_size`: the vocabulary of the tokenizer that produced the ids.
  static absl::StatusOr<std::unique_ptr<ShardFileWriter>> Create(const std::string& path,
                                                                 int64_t vocab_size);
  ~ShardFileWriter();  // an unfinished file is removed
  ShardFileWriter(const ShardFileWriter&) = delete;
  ShardFileWriter& operator=(const ShardFileWriter&) = delete;

  // Marks the file as preference pairs (before the first example; the
  // dataset service's chunks say so). Labels then follow from the position:
  // even examples chosen, odd rejected.
  absl::Status SetPairs(bool pairs);
  // One example; `loss_mask` has one byte per token; `label` -1 for none
  // (in a pairs file: the position's label; another one is an error).
  absl::Status AddExample(absl::Span<const int32_t> token_ids, absl::Span<const uint8_t> loss_mask,
                          int32_t label = -1);
  // A StreamShard chunk: concatenated ids and mask split by example_lengths;
  // `labels` one per example (classification) or empty (-1 each).
  absl::Status AddChunk(absl::Span<const int32_t> token_ids, absl::string_view loss_mask,
                        absl::Span<const int32_t> example_lengths,
                        absl::Span<const int32_t> labels = {});
  // Writes the header, fsyncs and renames into place (a pairs file with an
  // odd number of examples is INVALID_ARGUMENT).
  absl::Status Finish();
  const ShardFileInfo& info() const { return info_; }

 private:
  ShardFileWriter(std::string path, std::string tmp, std::FILE* f, uint32_t vocab_size);
  absl::Status WriteBytes(const void* data, size_t n);

  std::string path_, tmp_;
  std::FILE* f_;
  ShardFileInfo info_;
  uint64_t checksum_;
  bool finished_ = false;
};

// A whole shard file in memory (read once, checked against its checksum).
class ShardFile {
 public:
  struct Example {
    absl::Span<const int32_t> token_ids;
    absl::Span<const uint8_t> loss_mask;
    int32_t label = -1;
  };

  static absl::StatusOr<ShardFile> Read(const std::string& path);

  const ShardFileInfo& info() const { return info_; }
  const std::string& path() const { return path_; }
  int64_t size() const { return static_cast<int64_t>(lengths_.size()); }
  Example example(int64_t i) const;
  int64_t length(int64_t i) const { return lengths_[static_cast<size_t>(i)]; }

 private:
  std::string path_;
  ShardFileInfo info_;
  std::vector<int32_t> tokens_;
  std::vector<uint8_t> mask_;
  std::vector<int32_t> labels_;
  std::vector<uint32_t> lengths_;
  std::vector<uint64_t> offsets_;
};

}  // namespace tunefleet::trainer
