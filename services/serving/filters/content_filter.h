// Content filters: what a filter detects in a text (Classify), and how a
// deployment's policy turns detections into a verdict (ApplyPolicy). One
// interface, several implementations: the built-in one (blocklists, PII,
// profanity lexicon) here, a remote ContentFilterService behind the same
// interface later. Neither gRPC nor libtorch.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tunefleet::serving {

// The values of tunefleet.v1.ContentFilterCategory and Severity.
enum class FilterCategory : int {
  kUnspecified = 0,  // detections without a category: PII, custom blocklists
  kHate = 1,
  kSexual = 2,
  kViolence = 3,
  kSelfHarm = 4,
  kJailbreak = 5,
  kProfanity = 6,
  kPii = 7,        // reported as findings (filter "pii")
  kBlocklist = 8,  // reported as findings (filter "blocklist")
};
inline constexpr int kNumFilterCategories = 9;
enum class FilterSeverity : int { kUnspecified = 0, kSafe = 1, kLow = 2, kMedium = 3, kHigh = 4 };
enum class TextSource { kPrompt, kCompletion };

// One thing a filter found.
struct Detection {
  FilterCategory category = FilterCategory::kUnspecified;
  FilterSeverity severity = FilterSeverity::kMedium;
  // "profanity", "pii", "blocklist", "remote" (an external classifier's
  // category), or "classifier" (kind "error": the external classifier failed)
  std::string filter;
  std::string kind;    // pii: email|phone|card|iban; blocklist: the term or pattern; profanity: language
  size_t begin = 0, end = 0;  // byte range in the classified text
  std::string list;   // blocklist: the list's name ("replica" for the replica's own)
  std::string error;  // classifier: what failed ("DEADLINE_EXCEEDED: ...")
};

// A policy's named blocklist (tunefleet.v1.Blocklist).
struct NamedBlocklist {
  std::string name;
  std::vector<std::string> terms;    // whole words, case-insensitive
  std::vector<std::string> regexes;  // RE2
};

// Thread-safe: Classify may run concurrently.
class ContentFilter {
 public:
  virtual ~ContentFilter() = default;
  // `partial`: the text is a prefix of a stream that goes on, so a match
  // that reaches its end may still change (a longer word); such matches are
  // left for a later call.
  virtual absl::StatusOr<std::vector<Detection>> Classify(absl::string_view text, TextSource source,
                                                          bool partial = false) const = 0;
  // The longest span (bytes) of one detection that a stream's hold-back
  // window must cover so that none of it is ever released.
  virtual size_t max_span() const = 0;
};

// Every filter's detections, in order (the built-in one and a remote one).
class CombinedFilter final : public ContentFilter {
 public:
  explicit CombinedFilter(std::vector<std::shared_ptr<const ContentFilter>> filters)
      : filters_(std::move(filters)) {}
  absl::StatusOr<std::vector<Detection>> Classify(absl::string_view text, TextSource source,
                                                  bool partial = false) const override;
  size_t max_span() const override;

 private:
  std::vector<std::shared_ptr<const ContentFilter>> filters_;
};

enum class FindingAction { kOff, kAnnotate, kBlock };

// A category's rule, as tunefleet.v1.ContentFilterRule: at or above
// `threshold`, block (or only annotate: reported with filtered = false) the
// sources it applies to; a rule that names neither source applies to both.
// For a source that the category's rules leave out, detections are
// reported and never block.
struct FilterRule {
  FilterCategory category = FilterCategory::kUnspecified;
  FilterSeverity threshold = FilterSeverity::kMedium;
  bool apply_to_prompt = true;
  bool apply_to_completion = true;
  FindingAction action = FindingAction::kBlock;  // kBlock or kAnnotate
};

struct FilterPolicy {
  // Opt-out, explicit: nothing is classified.
  bool disabled = false;
  // Categories without a rule block at medium on prompt and completion.
  std::vector<FilterRule> rules;
  // PII and blocklist matches without a rule for kPii / kBlocklist (the
  // replica's defaults).
  FindingAction pii_prompt = FindingAction::kAnnotate;
  FindingAction pii_completion = FindingAction::kBlock;
  FindingAction blocklist = FindingAction::kBlock;
  // The policy's own lists (the replica compiles them into a filter).
  std::vector<NamedBlocklist> blocklists;
  // An external classifier that failed: block the text (fail closed) or let
  // it pass (fail open); the finding reports the error either way.
  bool classifier_fail_open = false;
};

struct CategoryVerdict {
  FilterCategory category = FilterCategory::kUnspecified;
  FilterSeverity severity = FilterSeverity::kSafe;
  bool detected = false;
  bool filtered = false;
  size_t begin = 0, end = 0;  // the most severe detection's bytes (first on ties)
};
struct FindingVerdict {
  std::string filter, kind;
  bool filtered = false;
  std::string list;   // blocklist: the list's name
  FilterCategory category = FilterCategory::kUnspecified;  // kPii, kBlocklist or none
  size_t begin = 0, end = 0;  // the first match's bytes
  std::string error;  // classifier: what failed
};
struct FilterVerdict {
  bool blocked = false;
  // One per category a filter may report (profanity for the built-in one).
  std::vector<CategoryVerdict> categories;
  std::vector<FindingVerdict> findings;
};

FilterVerdict ApplyPolicy(const FilterPolicy& policy, TextSource source,
                          const std::vector<Detection>& detections,
                          const std::vector<FilterCategory>& reported = {FilterCategory::kProfanity});

// Streaming safety: generated text is released only once the filter has
// passed it with a hold-back window after it, so that no byte of a
// detection of at most `holdback` bytes ever reaches the client, while the
// first text is delayed by the window only (not to the end of the answer).
// Not thread-safe (one per stream).
class StreamGuard {
 public:
  // `holdback` 0: the filter's max_span().
  StreamGuard(const ContentFilter* filter, const FilterPolicy* policy, size_t holdback = 0);
  // Appends generated text (whole UTF-8 characters); returns what may be
  // released now. After a block, returns "" and blocked() is true.
  absl::StatusOr<std::string> Push(absl::string_view delta);
  // The answer ended: checks the whole text; returns the rest if it passes.
  absl::StatusOr<std::string> Finish();
  bool blocked() const { return blocked_; }
  // The verdict that blocked, or after Finish the whole answer's.
  const FilterVerdict& verdict() const { return verdict_; }
  const std::string& text() const { return text_; }
  size_t released() const { return released_; }
  size_t holdback() const { return holdback_; }

 private:
  const ContentFilter* filter_;
  const FilterPolicy* policy_;
  size_t holdback_;
  std::string text_;
  size_t released_ = 0;
  bool blocked_ = false;
  FilterVerdict verdict_;
};

}  // namespace tunefleet::serving
