// Statistics of a training file's valid examples: shape, duplicates, labels,
// and — when a tokenizer is supplied — tokens, trained tokens and what
// truncation to the maximum sequence length would remove.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "services/dataset/jsonl_validator.h"

namespace tunefleet::dataset {

struct Distribution {
  double min = 0, mean = 0, p50 = 0, p95 = 0, max = 0;
};

// Tokens of one example under a model's chat template.
struct TokenCount {
  int64_t total = 0;
  int64_t trained = 0;  // tokens with loss (assistant content, end-of-turn)
};
using TokenCounter = std::function<absl::StatusOr<TokenCount>(const Example&)>;

struct DatasetStatistics {
  int64_t examples = 0;
  Distribution messages_per_example;
  bool has_tokens = false;  // the token fields below were computed
  Distribution tokens_per_example;
  int64_t total_tokens = 0;
  int64_t trained_tokens = 0;
  int64_t examples_missing_system = 0;
  int64_t examples_missing_user = 0;
  int64_t duplicate_examples = 0;
  int64_t examples_over_max_length = 0;
  int64_t tokens_truncated = 0;
  std::vector<int64_t> over_max_length_lines;  // the first 100
  std::map<std::string, int64_t> label_counts;
};

// Exact distribution of small non-negative integers (messages or tokens per
// example) in memory proportional to the number of distinct values, not of
// examples, so that a file of any size is summarized in bounded memory.
class IntHistogram {
 public:
  void Add(int64_t value) {
    ++counts_[value];
    ++n_;
    sum_ += static_cast<double>(value);
  }
  // Percentiles use the nearest rank.
  Distribution Summarize() const;

 private:
  std::map<int64_t, int64_t> counts_;
  int64_t n_ = 0;
  double sum_ = 0;
};

// Not thread-safe.
class StatisticsBuilder {
 public:
  // `counter` may be null (no token statistics); `max_sequence_length` 0
  // disables the truncation count.
  StatisticsBuilder(TokenCounter counter, int64_t max_sequence_length)
      : counter_(std::move(counter)), max_len_(max_sequence_length) {}

  // The first tokenizer error is returned (and stops token counting).
  absl::Status Add(const Example& example);
  DatasetStatistics Finish();

 private:
  TokenCounter counter_;
  int64_t max_len_;
  DatasetStatistics stats_;
  IntHistogram messages_, tokens_;
  // Hashes of the examples seen, for duplicates; bounded (kMaxTracked) so
  // that memory stays flat: past it, only repeats of tracked examples count.
  static constexpr size_t kMaxTracked = 2'000'000;
  absl::flat_hash_set<uint64_t> seen_;
};


}  // namespace tunefleet::dataset
