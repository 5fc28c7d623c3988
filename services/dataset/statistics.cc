#include "services/dataset/statistics.h"

#include <algorithm>
#include <cmath>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"

namespace tunefleet::dataset {

Distribution IntHistogram::Summarize() const {
  Distribution d;
  if (n_ == 0) return d;
  d.min = static_cast<double>(counts_.begin()->first);
  d.max = static_cast<double>(counts_.rbegin()->first);
  d.mean = sum_ / static_cast<double>(n_);
  auto rank = [&](double p) {
    int64_t r = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(p * static_cast<double>(n_))));
    int64_t seen = 0;
    for (const auto& [value, count] : counts_) {
      seen += count;
      if (seen >= r) return static_cast<double>(value);
    }
    return d.max;
  };
  d.p50 = rank(0.50);
  d.p95 = rank(0.95);
  return d;
}

absl::Status StatisticsBuilder::Add(const Example& ex) {
  ++stats_.examples;
  // Duplicates: the same conversation (roles, contents, tool calls and
  // tools; for preference data both outputs) or the same text and label,
  // whatever the JSON formatting.
  std::string key;
  if (!ex.messages.empty()) {
    bool system = false, user = false;
    auto append = [&key](const ChatMessage& m) {
      absl::StrAppend(&key, m.role, "\x1f", m.content, "\x1f", m.tool_call_id);
      for (const ToolCall& c : m.tool_calls) {
        absl::StrAppend(&key, "\x1d", c.id, "\x1f", c.name, "\x1f", c.arguments);
      }
      absl::StrAppend(&key, "\x1e");
    };
    for (const ChatMessage& m : ex.messages) {
      append(m);
      system |= m.role == "system";
      user |= m.role == "user";
    }
    // Preference: the rejected answer and the tools make the example too.
    if (!ex.non_preferred.role.empty()) append(ex.non_preferred);
    absl::StrAppend(&key, ex.tools);
    if (!system) ++stats_.examples_missing_system;
    if (!user) ++stats_.examples_missing_user;
    messages_.Add(static_cast<int64_t>(ex.messages.size()));
  } else {
    absl::StrAppend(&key, ex.text, "\x1f", ex.label);
    ++stats_.label_counts[ex.label];
  }
  const uint64_t hash = absl::Hash<std::string>{}(key);
  if (seen_.contains(hash)) {
    ++stats_.duplicate_examples;
  } else if (seen_.size() < kMaxTracked) {
    seen_.insert(hash);
  }

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
    tokens_.Add(count->total);
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
  stats_.messages_per_example = messages_.Summarize();
  stats_.tokens_per_example = tokens_.Summarize();
  return std::move(stats_);
}

}  // namespace tunefleet::dataset
