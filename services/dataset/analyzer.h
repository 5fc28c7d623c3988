// Reads a stored file once, streaming: validation and statistics together.
#pragma once

#include <functional>

#include "absl/status/statusor.h"
#include "common/store/artifact_store.h"
#include "services/dataset/statistics.h"

namespace tunefleet::dataset {

struct AnalyzeOptions {
  // Unset: guessed from the first non-blank line ("messages" → chat,
  // "input"/"preferred_output" → preference, "text" and "label" →
  // classification), chat when unsure.
  std::optional<DataFormat> format;
  size_t max_issues = 100;
  // Training files need at least 10 examples; a validation file, one.
  int64_t min_examples = 10;
  int64_t max_sequence_length = 0;
  TokenCounter token_counter;  // may be null
  // Called with every valid example after statistics (e.g. to split).
  JsonlValidator::ExampleCallback on_example;
  // Asked between 1 MiB chunks: true stops the pass with CANCELLED (a caller
  // that went away or whose deadline passed). May be null.
  std::function<bool()> cancelled;
};

struct Analysis {
  DataFormat format = DataFormat::kChat;
  ValidationSummary validation;
  DatasetStatistics statistics;
};

absl::StatusOr<Analysis> Analyze(store::ArtifactReader& reader, const AnalyzeOptions& options);

// The format a first line suggests.
DataFormat SniffFormat(absl::string_view first_chunk);

}  // namespace tunefleet::dataset
