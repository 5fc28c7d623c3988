#include "services/dataset/analyzer.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace tunefleet::dataset {

DataFormat SniffFormat(absl::string_view chunk) {
  // Skip a byte-order mark and blank lines; look at the first line only.
  if (absl::StartsWith(chunk, "\xEF\xBB\xBF")) chunk.remove_prefix(3);
  size_t start = chunk.find_first_not_of(" \t\r\n");
  if (start == absl::string_view::npos) return DataFormat::kChat;
  absl::string_view line = chunk.substr(start, chunk.find('\n', start) - start);
  if (std::optional<DataFormat> f = DetectLineFormat(line)) return *f;
  if (!absl::StrContains(line, "\"messages\"") && absl::StrContains(line, "\"text\"") &&
      absl::StrContains(line, "\"label\"")) {
    return DataFormat::kClassification;
  }
  return DataFormat::kChat;
}

absl::StatusOr<Analysis> Analyze(store::ArtifactReader& reader, const AnalyzeOptions& options) {
  constexpr size_t kChunk = 1 << 20;
  absl::StatusOr<std::string> chunk = reader.Read(kChunk);
  if (!chunk.ok()) return chunk.status();
  Analysis analysis;
  analysis.format = options.format.value_or(SniffFormat(*chunk));
  StatisticsBuilder stats(options.token_counter, options.max_sequence_length);
  absl::Status token_error;
  ValidatorOptions vopts;
  vopts.format = analysis.format;
  vopts.max_issues = options.max_issues;
  vopts.min_examples = options.min_examples;
  JsonlValidator validator(vopts, [&](const Example& ex) {
    absl::Status s = stats.Add(ex);
    if (!s.ok() && token_error.ok()) token_error = s;
    if (options.on_example) options.on_example(ex);
  });
  int64_t read = 0;
  while (!chunk->empty()) {
    if (options.cancelled && options.cancelled()) {
      return absl::CancelledError(
          absl::StrCat("the pass stopped after ", read, " bytes: its caller went away"));
    }
    read += static_cast<int64_t>(chunk->size());
    validator.Feed(*chunk);
    chunk = reader.Read(kChunk);
    if (!chunk.ok()) return chunk.status();
  }
  analysis.validation = validator.Finish();
  if (!token_error.ok()) return token_error;
  analysis.statistics = stats.Finish();
  return analysis;
}

}  // namespace tunefleet::dataset
