#include "services/dataset/statistics.h"

#include <algorithm>
#include <cmath>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"

namespace tunefleet::dataset {

Distribution Summarize(std::vector<double>& values) {
  Distribution d;
  if (values.empty()) return d;
  std::sort(values.begin(), values.end());
  double sum = 0;
  for (double v : values) sum += v;
  auto rank = [&](double p) {
    size_t r = static_cast<size_t>(std::ceil(p * static_cast<double>(values.size())));
    return values[std::min(values.size() - 1, r == 0 ? 0 : r - 1)];
  };
  d.min = values.front();
  d.max = values.back();
  d.mean = sum / static_cast<double>(values.size());
  d.p50 = rank(0.50);
  d.p95 = rank(0.95);
  return d;
}

absl::Status StatisticsBuilder::Add(const Example& ex) {
  ++stats_.examples;
  // Duplicates: the same conversation (roles and contents) or the same
  // text and label, whatever the JSON formatting.
  std::string key;
  if (!ex.messages.empty()) {
    bool system = false, user = false;
    for (const ChatMessage& m : ex.messages) {
      absl::StrAppend(&key, m.role, "\x1f", m.content, "\x1e");
      system |= m.role == "system";
      user |= m.role == "user";
    }
    if (!system) ++stats_.examples_missing_system;
    if (!user) ++stats_.examples_missing_user;
    messages_.push_back(static_cast<double>(ex.messages.size()));
  } else {
    absl::StrAppend(&key, ex.text, "\x1f", ex.label);
    ++stats_.label_counts[ex.label];
  }
  if (!seen_.insert(absl::Hash<std::string>{}(key)).second) ++stats_.duplicate_examples;

  if (counter_) {
    absl::StatusOr<TokenCount> count = counter_(ex);
    if (!count.ok()) {
      counter_ = nullptr;
      return absl::Status(count.status().code(),
                          absl::StrCat("line ", ex.line, ": ", count.status().message()));
    }
    stats_.has_tokens = true;
    stats_.total_tokens += count->total;
    stats_.trained_tokens += count->trained;
    tokens_.push_back(static_cast<double>(count->total));
    if (max_len_ > 0 && count->total > max_len_) {
      ++stats_.examples_over_max_length;
      stats_.tokens_truncated += count->total - max_len_;
      if (stats_.over_max_length_lines.size() < 100) {
        stats_.over_max_length_lines.push_back(ex.line);
      }
    }
  }
  return absl::OkStatus();
}

DatasetStatistics StatisticsBuilder::Finish() {
  stats_.messages_per_example = Summarize(messages_);
  stats_.tokens_per_example = Summarize(tokens_);
  return std::move(stats_);
}

}  // namespace tunefleet::dataset
