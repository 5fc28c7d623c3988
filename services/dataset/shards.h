// Tokenized shards for trainer workers: a file is tokenized once per
// (file content, tokenizer, max length) into a shard set in the artifact
// store, then streamed to each rank's worker in whole examples, resumable at
// an example offset with a running checksum.
//
// Layout under shards/<shard_set_id>/:
//   tokens.bin  int32 little-endian token ids of every example, concatenated
//   mask.bin    one byte per token: 1 where the token carries loss
//   index.bin   int64 little-endian start offsets (in tokens), examples + 1
//   manifest.json  counts and the sha256 of the three files
// The manifest is written last: a shard set without one is incomplete and is
// rebuilt.
//
// A preference file (DPO) becomes pairs: each line gives two examples, the
// prompt (input.messages) with the preferred output, then the prompt with the
// non-preferred output, both rendered with the base's chat template and
// loss-masked on that final assistant message only. Pair k is examples 2k
// (chosen) and 2k+1 (rejected); the manifest says "pairs": true, rank parts
// and streamed chunks never split a pair.
//
// A classification file ({"text","label"}) becomes one example a line: the
// text rendered by the base's chat template as a single user message (no
// assistant turn, no generation prompt), so the classifier reads its input
// the way the chat model was trained to. Only the last token carries loss
// (the head reads that token's final hidden state); a longer example keeps
// its END (the last max_sequence_length tokens). The example's label is the
// index of its label in the sorted (byte order) list of the file's distinct
// labels, which the manifest carries as "label_names" in index order;
// labels.bin holds them (int32 per example) and streamed chunks carry them
// (ShardBatch.labels; the running checksum then covers each label's 4 bytes
// after the example's mask). A validation file has its own label list: the
// trainer agent maps its labels to the training file's by name (a name the
// training file lacks fails the job, INVALID_ARGUMENT naming the label).
// A classification set cached by an older version (no label names) is
// rebuilt on the next PrepareShardSet, and the agent refetches its parts.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/store/artifact_store.h"
#include "services/dataset/jsonl_validator.h"

namespace tunefleet::dataset {

struct TokenizedExample {
  std::vector<int32_t> ids;
  std::vector<uint8_t> loss_mask;  // same length as ids
};
using ExampleTokenizer = std::function<absl::StatusOr<TokenizedExample>(const Example&)>;

// What the trainer sees of a classification line: its text as one user
// message, with only the last token marked (the head reads it); the label is
// not rendered. Shards and token statistics both count it this way.
absl::StatusOr<TokenizedExample> TokenizeClassification(const ExampleTokenizer& tokenizer,
                                                        const Example& ex);

struct ShardManifest {
  std::string shard_set_id;
  int64_t examples = 0;
  int64_t tokens = 0;
  int64_t trained_tokens = 0;
  int64_t truncated_examples = 0;
  bool pairs = false;  // preference pairs: example 2k chosen, 2k+1 rejected
  // Classification: the sorted distinct labels; an example's label indexes
  // them. Empty for other formats.
  std::vector<std::string> label_names;
  std::string sha256;  // over tokens.bin, mask.bin and index.bin digests
};

// The id of the shard set for these inputs (stable across runs).
std::string ShardSetId(const std::string& file_sha256, const std::string& tokenizer_id,
                       int32_t max_sequence_length);

// Returns the cached manifest, or tokenizes `content` (a validated JSONL
// file) and stores the shard set. Examples longer than max_sequence_length
// are truncated to it (the validation report lists them). `format`: the
// file's (chat and classification give one example a line, preference a
// pair); unset: sniffed from the first line, as validation does. Thread-safe for distinct ids; concurrent builds of one id both
// succeed (last commit wins, the content is identical).
absl::StatusOr<ShardManifest> PrepareShardSet(store::ArtifactStore& store,
                                              store::ArtifactReader& content,
                                              const std::string& shard_set_id,
                                              const ExampleTokenizer& tokenizer,
                                              int32_t max_sequence_length,
                                              std::optional<DataFormat> format = std::nullopt);

absl::StatusOr<ShardManifest> ReadManifest(store::ArtifactStore& store,
                                           const std::string& shard_set_id);

// Rank r of W owns the contiguous examples [r*n/W, (r+1)*n/W); with
// `pairs`, the same over pairs (so a pair is never split between ranks).
struct RankRange {
  int64_t begin = 0, end = 0;
};
absl::StatusOr<RankRange> RankExamples(int64_t examples, int32_t rank, int32_t world_size,
                                       bool pairs = false);

// One chunk of whole examples of a rank's part.
struct ShardBatch {
  int64_t first_example = 0;  // index within the rank's part
  std::vector<int32_t> token_ids;
  std::string loss_mask;
  std::vector<int32_t> example_lengths;
  std::string running_sha256;  // over the part from its example 0 to here
  bool last = false;
  bool pairs = false;  // the set's; a pairs batch holds whole pairs
  std::vector<int32_t> labels;  // classification: one per example; else empty
};

// Reads a rank's part from `example_offset` on, in batches of about
// `batch_tokens` tokens. Not thread-safe.
class ShardStreamer {
 public:
  static absl::StatusOr<std::unique_ptr<ShardStreamer>> Open(store::ArtifactStore& store,
                                                             const std::string& shard_set_id,
                                                             int32_t rank, int32_t world_size,
                                                             int64_t example_offset,
                                                             int64_t batch_tokens = 1 << 18);
  // The next batch; after the batch with `last`, OUT_OF_RANGE.
  absl::StatusOr<ShardBatch> Next();

 private:
  ShardStreamer() = default;
  class Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace tunefleet::dataset
