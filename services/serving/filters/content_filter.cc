#include "services/serving/filters/content_filter.h"

#include <algorithm>

namespace tunefleet::serving {

namespace {

bool Applies(const FilterRule& r, TextSource source) {
  if (!r.apply_to_prompt && !r.apply_to_completion) return true;  // no target: both
  return source == TextSource::kPrompt ? r.apply_to_prompt : r.apply_to_completion;
}

// The rule for `category` on `source`: the last one that applies. `*any`:
// whether the policy has a rule for the category at all.
const FilterRule* RuleFor(const FilterPolicy& policy, FilterCategory category, TextSource source,
                          bool* any) {
  const FilterRule* found = nullptr;
  *any = false;
  for (const FilterRule& r : policy.rules) {
    if (r.category != category) continue;
    *any = true;
    if (Applies(r, source)) found = &r;
  }
  return found;
}

FilterSeverity Threshold(const FilterRule& r) {
  return r.threshold == FilterSeverity::kUnspecified ? FilterSeverity::kMedium : r.threshold;
}

}  // namespace

FilterVerdict ApplyPolicy(const FilterPolicy& policy, TextSource source,
                          const std::vector<Detection>& detections,
                          const std::vector<FilterCategory>& reported) {
  FilterVerdict v;
  if (policy.disabled) return v;
  auto category = [&](FilterCategory c) -> CategoryVerdict& {
    for (CategoryVerdict& cv : v.categories) {
      if (cv.category == c) return cv;
    }
    CategoryVerdict cv;
    cv.category = c;
    v.categories.push_back(cv);
    return v.categories.back();
  };
  for (FilterCategory c : reported) category(c);
  const bool prompt = source == TextSource::kPrompt;
  for (const Detection& d : detections) {
    const bool pii = d.category == FilterCategory::kPii;
    const bool listed = d.category == FilterCategory::kBlocklist;
    const bool classifier = d.filter == "classifier";
    if (!pii && !listed && !classifier && d.category != FilterCategory::kUnspecified) {
      CategoryVerdict& cv = category(d.category);
      if (!cv.detected || d.severity > cv.severity) {
        cv.begin = d.begin;
        cv.end = d.end;
      }
      cv.detected = true;
      cv.severity = std::max(cv.severity, d.severity);
      continue;
    }
    FindingAction action;
    if (classifier) {
      action = policy.classifier_fail_open ? FindingAction::kAnnotate : FindingAction::kBlock;
    } else if (pii || listed) {
      bool any = false;
      const FilterRule* rule = RuleFor(policy, d.category, source, &any);
      if (rule) {
        action = d.severity >= Threshold(*rule) ? rule->action : FindingAction::kAnnotate;
      } else if (any) {
        action = FindingAction::kAnnotate;  // the category's rules leave this source out
      } else {
        action = pii ? (prompt ? policy.pii_prompt : policy.pii_completion) : policy.blocklist;
      }
    } else {
      action = FindingAction::kBlock;  // an uncategorized detection of another filter
    }
    if (action == FindingAction::kOff) continue;
    const bool filtered = action == FindingAction::kBlock;
    v.blocked |= filtered;
    auto same = [&](const FindingVerdict& f) {
      return f.filter == d.filter && f.kind == d.kind && f.list == d.list;
    };
    auto it = std::find_if(v.findings.begin(), v.findings.end(), same);
    if (it == v.findings.end()) {
      FindingVerdict f;
      f.filter = d.filter;
      f.kind = d.kind;
      f.filtered = filtered;
      f.list = d.list;
      f.category = d.category;
      f.begin = d.begin;
      f.end = d.end;
      f.error = d.error;
      v.findings.push_back(std::move(f));
    } else {
      it->filtered |= filtered;
    }
  }
  for (CategoryVerdict& cv : v.categories) {
    if (!cv.detected) continue;
    bool any = false;
    const FilterRule* rule = RuleFor(policy, cv.category, source, &any);
    if (!any) {
      cv.filtered = cv.severity >= FilterSeverity::kMedium;  // the default rule
    } else {
      cv.filtered = rule && rule->action == FindingAction::kBlock && cv.severity >= Threshold(*rule);
    }
    v.blocked |= cv.filtered;
  }
  return v;
}

namespace {
bool IsContinuation(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }
bool IsAsciiWordByte(char c) {
  const unsigned char u = static_cast<unsigned char>(c);
  return u >= 0x80 || (u >= '0' && u <= '9') || (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z');
}
}  // namespace

StreamGuard::StreamGuard(const ContentFilter* filter, const FilterPolicy* policy, size_t holdback)
    : filter_(filter), policy_(policy), holdback_(holdback ? holdback : filter->max_span()) {}

absl::StatusOr<std::string> StreamGuard::Push(absl::string_view delta) {
  if (blocked_) return std::string();
  text_.append(delta.data(), delta.size());
  if (policy_->disabled) {
    std::string out = text_.substr(released_);
    released_ = text_.size();
    return out;
  }
  // Only the text a new detection can touch: the window before what was
  // released and everything after, started at a word boundary so that a
  // cut word does not look like a whole one.
  size_t from = released_ > holdback_ ? released_ - holdback_ : 0;
  for (size_t limit = 0; from > 0 && IsAsciiWordByte(text_[from - 1]) && limit < 256; ++limit) --from;
  while (from > 0 && IsContinuation(text_[from])) --from;
  auto detections =
      filter_->Classify(absl::string_view(text_).substr(from), TextSource::kCompletion, true);
  if (!detections.ok()) return detections.status();
  // Offsets in the whole completion so far.
  for (Detection& d : *detections) {
    d.begin += from;
    d.end += from;
  }
  FilterVerdict v = ApplyPolicy(*policy_, TextSource::kCompletion, *detections);
  if (v.blocked) {
    blocked_ = true;
    verdict_ = std::move(v);
    return std::string();
  }
  size_t safe = text_.size() > holdback_ ? text_.size() - holdback_ : 0;
  while (safe > released_ && safe < text_.size() && IsContinuation(text_[safe])) --safe;
  if (safe <= released_) return std::string();
  std::string out = text_.substr(released_, safe - released_);
  released_ = safe;
  return out;
}

absl::StatusOr<std::string> StreamGuard::Finish() {
  if (blocked_) return std::string();
  auto detections = filter_->Classify(text_, TextSource::kCompletion, false);
  if (!detections.ok()) return detections.status();
  verdict_ = ApplyPolicy(*policy_, TextSource::kCompletion, *detections);
  if (verdict_.blocked) {
    blocked_ = true;
    return std::string();
  }
  std::string out = text_.substr(released_);
  released_ = text_.size();
  return out;
}

absl::StatusOr<std::vector<Detection>> CombinedFilter::Classify(absl::string_view text,
                                                                TextSource source,
                                                                bool partial) const {
  std::vector<Detection> out;
  for (const auto& f : filters_) {
    auto d = f->Classify(text, source, partial);
    if (!d.ok()) return d.status();
    out.insert(out.end(), d->begin(), d->end());
  }
  return out;
}

size_t CombinedFilter::max_span() const {
  size_t m = 0;
  for (const auto& f : filters_) m = std::max(m, f->max_span());
  return m;
}

}  // namespace tunefleet::serving
