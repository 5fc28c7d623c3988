// A classification model served by this replica, used as a content filter:
// its labels map to content filter categories (a policy's classifier_labels,
// else by the label's name: "violence" -> kViolence), each label's
// probability to a severity. DeploymentClassifierFilter is the ContentFilter
// a policy's classifier_deployment becomes: it classifies in-process through
// a function (the Replica's), and a failure (the deployment not served here,
// not ready, of another tenant, not a classification model) is a
// "classifier"/"error" detection, so that on_classifier_error decides, as for
// a remote classifier. No gRPC, no libtorch.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "services/serving/filters/content_filter.h"

namespace tunefleet::serving {

// A classification's output: the model's labels and their probabilities.
struct LabelScores {
  std::vector<std::string> labels;
  std::vector<double> probabilities;  // parallel to labels; sums to 1
  int64_t prompt_tokens = 0;
};

// p >= 0.8 high, >= 0.5 medium, >= 0.25 low, else safe.
FilterSeverity SeverityFromProbability(double p);

// The category a label's name stands for (case-insensitive; '-', ' ' and
// '_' alike; "CONTENT_FILTER_CATEGORY_" prefix allowed): hate, sexual,
// violence, self_harm, jailbreak, profanity. nullopt for any other name.
std::optional<FilterCategory> CategoryFromLabelName(absl::string_view label);

// One detection per label that maps to a category (`mapping` first, then
// the label's name) with a severity above safe, over the whole text
// (filter "model", kind = the label).
std::vector<Detection> LabelDetections(const LabelScores& scores,
                                       const std::map<std::string, FilterCategory>& mapping,
                                       size_t text_size);

class DeploymentClassifierFilter final : public ContentFilter {
 public:
  using ClassifyFn = std::function<absl::StatusOr<LabelScores>(absl::string_view text)>;
  // `deployment`: the classification deployment (named in errors).
  DeploymentClassifierFilter(std::string deployment, std::map<std::string, FilterCategory> mapping,
                             ClassifyFn classify, size_t max_span = 64)
      : deployment_(std::move(deployment)),
        mapping_(std::move(mapping)),
        classify_(std::move(classify)),
        max_span_(max_span) {}
  absl::StatusOr<std::vector<Detection>> Classify(absl::string_view text, TextSource source,
                                                  bool partial = false) const override;
  size_t max_span() const override { return max_span_; }

 private:
  const std::string deployment_;
  const std::map<std::string, FilterCategory> mapping_;
  const ClassifyFn classify_;
  const size_t max_span_;
};

}  // namespace tunefleet::serving
