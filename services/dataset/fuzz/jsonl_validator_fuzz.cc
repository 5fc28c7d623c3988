// Feeds arbitrary bytes to the JSONL validator in every format, split into
// chunks at a position taken from the input, and checks its invariants.
// The first byte picks the format: odd -> classification, else bit 1 set ->
// preference (e.g. a leading '\n'), else chat (e.g. a leading ' ').
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "absl/strings/string_view.h"

#include "services/dataset/jsonl_validator.h"
#include "services/dataset/statistics.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  using tunefleet::dataset::DataFormat;
  const DataFormat format = (data[0] & 1)   ? DataFormat::kClassification
                            : (data[0] & 2) ? DataFormat::kPreference
                                            : DataFormat::kChat;
  const size_t split = size > 1 ? data[1] % size : 0;
  std::string input(reinterpret_cast<const char*>(data), size);
  tunefleet::dataset::ValidatorOptions options;
  options.format = format;
  options.max_line_bytes = 256;
  options.max_issues = 8;
  options.min_examples = 1;
  tunefleet::dataset::StatisticsBuilder stats(nullptr, 0);
  int64_t seen = 0;
  tunefleet::dataset::JsonlValidator validator(options, [&](const auto& example) {
    ++seen;
    (void)stats.Add(example);
  });
  validator.Feed(absl::string_view(input).substr(0, split));
  validator.Feed(absl::string_view(input).substr(split));
  tunefleet::dataset::ValidationSummary s = validator.Finish();
  (void)stats.Finish();
  if (s.examples != seen) std::abort();
  if (s.issues.size() > options.max_issues) std::abort();
  if (static_cast<int64_t>(s.issues.size()) > s.total_errors + s.total_warnings) std::abort();
  for (const auto& issue : s.issues) {
    if (issue.line < 0 || issue.line > s.lines) std::abort();
  }
  return 0;
}
