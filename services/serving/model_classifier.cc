#include "services/serving/model_classifier.h"

#include <spdlog/spdlog.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace tunefleet::serving {

FilterSeverity SeverityFromProbability(double p) {
  if (p >= 0.8) return FilterSeverity::kHigh;
  if (p >= 0.5) return FilterSeverity::kMedium;
  if (p >= 0.25) return FilterSeverity::kLow;
  return FilterSeverity::kSafe;
}

std::optional<FilterCategory> CategoryFromLabelName(absl::string_view label) {
  std::string n = absl::AsciiStrToLower(label);
  for (char& c : n) {
    if (c == '-' || c == ' ') c = '_';
  }
  if (absl::StartsWith(n, "content_filter_category_")) n = n.substr(24);
  static const std::pair<const char*, FilterCategory> kNames[] = {
      {"hate", FilterCategory::kHate},          {"sexual", FilterCategory::kSexual},
      {"violence", FilterCategory::kViolence},  {"self_harm", FilterCategory::kSelfHarm},
      {"jailbreak", FilterCategory::kJailbreak}, {"profanity", FilterCategory::kProfanity},
  };
  for (const auto& [name, c] : kNames) {
    if (n == name) return c;
  }
  return std::nullopt;
}

std::vector<Detection> LabelDetections(const LabelScores& scores,
                                       const std::map<std::string, FilterCategory>& mapping,
                                       size_t text_size) {
  std::vector<Detection> out;
  for (size_t i = 0; i < scores.labels.size() && i < scores.probabilities.size(); ++i) {
    const std::string& label = scores.labels[i];
    std::optional<FilterCategory> category;
    if (auto it = mapping.find(label); it != mapping.end()) {
      category = it->second;
    } else {
      category = CategoryFromLabelName(label);
    }
    if (!category) continue;
    const FilterSeverity severity = SeverityFromProbability(scores.probabilities[i]);
    if (severity <= FilterSeverity::kSafe) continue;
    out.push_back(Detection{*category, severity, "model", label, 0, text_size});
  }
  return out;
}

absl::StatusOr<std::vector<Detection>> DeploymentClassifierFilter::Classify(absl::string_view text,
                                                                            TextSource,
                                                                            bool) const {
  absl::StatusOr<LabelScores> scores =
      classify_ ? classify_(text)
                : absl::UnavailableError(absl::StrCat("classifier deployment ", deployment_,
                                                      ": no classifier on this replica"));
  if (!scores.ok()) {
    // As a remote classifier's failure: the policy's on_classifier_error decides.
    const std::string error =
        absl::StrCat(absl::StatusCodeToString(scores.status().code()), ": ", scores.status().message());
    spdlog::warn("classifier deployment={} failed: {}", deployment_, error);
    return std::vector<Detection>{Detection{FilterCategory::kUnspecified, FilterSeverity::kHigh,
                                            "classifier", "error", 0, text.size(), "", error}};
  }
  return LabelDetections(*scores, mapping_, text.size());
}

}  // namespace tunefleet::serving
