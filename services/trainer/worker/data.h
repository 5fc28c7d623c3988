// The worker's data: examples from local shard files, a seeded order per
// epoch, and micro-batches built from them, either packed (several examples
// per row, attention never crossing an example: the decoder's sequence_ids)
// or padded (one example per row, rows of a step sorted by length).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "services/trainer/protocol/shard_file.h"

namespace tunefleet::trainer {

struct Example {
  const int32_t* ids = nullptr;
  const uint8_t* mask = nullptr;
  int64_t length = 0;   // after truncation to max_sequence_length
  int32_t label = -1;
  int64_t trained = 0;  // loss-masked tokens after the first (those a label exists for)
};

class Dataset {
 public:
  // Reads and checks every shard: token ids below `model_vocab`, and the
  // shard's recorded tokenizer vocabulary equal to `tokenizer_vocab` when
  // known. Errors are INVALID_ARGUMENT naming the file (and `what`:
  // "train_shards[0]").
  static absl::StatusOr<Dataset> Load(const std::vector<std::string>& paths, absl::string_view what,
                                      int64_t max_sequence_length, int64_t model_vocab,
                                      std::optional<int64_t> tokenizer_vocab);
  int64_t size() const { return static_cast<int64_t>(examples_.size()); }
  const Example& at(int64_t i) const { return examples_[static_cast<size_t>(i)]; }
  int64_t total_tokens() const;
  int64_t total_trained() const;
  // Preference pairs (every file's flag; they must agree): example 2p is
  // pair p's chosen completion, 2p+1 its rejected one.
  bool pairs() const { return pairs_; }

  // Examples whose tokens this object holds itself (a step's batch gathered
  // from every rank's part); each mask as long as its ids, lengths already
  // within max_sequence_length.
  struct Owned {
    std::vector<int32_t> ids;
    std::vector<uint8_t> mask;
    int32_t label = -1;
  };
  static Dataset FromOwned(std::vector<Owned> examples, bool pairs);

  Dataset() = default;
  Dataset(Dataset&&) = default;
  Dataset& operator=(Dataset&&) = default;
  Dataset(const Dataset&) = delete;  // examples_ point into files_ or owned_
  Dataset& operator=(const Dataset&) = delete;

 private:
  bool pairs_ = false;
  std::vector<ShardFile> files_;
  std::vector<Owned> owned_;
  std::vector<Example> examples_;
};

// Splits one step's units (examples, or DPO pairs) among `world` ranks so
// that their costs (real tokens) come out as even as possible: longest
// first, each to the rank with the least so far (ties: the lower unit, the
// lower rank). Returns each rank's units in ascending order; the same on
// every rank, since it depends on the costs alone.
std::vector<std::vector<int64_t>> BalanceAcrossRanks(const std::vector<int64_t>& costs, int64_t world);

// A seeded permutation of [0, n) for an epoch (the same on every machine:
// splitmix64 + Fisher-Yates, no std:: distributions).
std::vector<int64_t> EpochOrder(int64_t n, uint64_t seed, int64_t epoch);

// The micro-batches of one step's examples: groups of `micro_batch_size`
// (0: all in one), after sorting by length when not packing.
std::vector<std::vector<int64_t>> SplitMicroBatches(const Dataset& data,
                                                    std::vector<int64_t> examples,
                                                    int64_t micro_batch_size, bool packing);

struct MicroBatch {
  at::Tensor input_ids;       // [R, T] int64
  at::Tensor labels;          // [R, T]; -100 where no loss (prompt, padding, example starts)
  at::Tensor sequence_ids;    // packed: [R, T]; undefined otherwise
  at::Tensor attention_mask;  // [R, T]: 1 for tokens, 0 for padding
  at::Tensor class_labels;    // classification: [R] int64
  at::Tensor last_index;      // classification: [R] position of each row's last token
  int64_t trained_tokens = 0;
  int64_t real_tokens = 0;
  int64_t slots = 0;          // R * T
};

// Rows for `examples`: packed, one row with every example back to back
// (no padding; attention stays within each example and positions restart
// at each, so the row may be longer than `max_sequence_length`, which
// bounds each example), or one padded row each. Classification batches
// are always one example per row.
MicroBatch MakeMicroBatch(const Dataset& data, const std::vector<int64_t>& examples, bool packing,
                          int64_t max_sequence_length, bool classification = false);

}  // namespace tunefleet::trainer
