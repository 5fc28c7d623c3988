// Labels and descriptions on files, jobs, models and deployments: one rule
// for what a caller may set, and one for how a List filters by labels.
// Labels are Kubernetes-shaped: a key of at most 63 characters of
// [a-z0-9._-] that starts and ends with a letter or digit (optionally
// prefixed by a DNS-style "team.example.com/"), a value of at most 63
// characters of [A-Za-z0-9._-] (may be empty), at most 64 labels.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "common/errors/error_details.h"

namespace tunefleet::errors {

using Labels = std::map<std::string, std::string>;

inline constexpr size_t kMaxLabels = 64;
inline constexpr size_t kMaxDescriptionBytes = 1024;

// Appends one violation per bad entry, with the field path
// `<field>["<key>"]` (or `<field>` for too many labels).
void CheckLabels(const Labels& labels, absl::string_view field,
                 std::vector<FieldViolation>* violations);
// At most kMaxDescriptionBytes of valid UTF-8 without control characters
// other than newline and tab.
void CheckDescription(absl::string_view description, absl::string_view field,
                      std::vector<FieldViolation>* violations);

// True when `have` carries every key of `want` with the same value (an
// empty filter matches everything).
bool LabelsMatch(const Labels& have, const Labels& want);

// Converts any map-like of string pairs (a protobuf Map) to Labels.
template <typename Map>
Labels ToLabels(const Map& m) {
  return Labels(m.begin(), m.end());
}

}  // namespace tunefleet::errors
