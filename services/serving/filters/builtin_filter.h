// The built-in content filter: custom blocklists (terms matched as whole
// words, case-insensitively; RE2 patterns), a PII detector (e-mail
// addresses, phone numbers, card numbers that pass the Luhn check, IBANs
// that pass mod-97) and the generated multilingual profanity lexicon.
// Terms are matched with one Aho-Corasick automaton, so a text costs one
// pass however long the lists are. Immutable after Create: thread-safe.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "services/serving/filters/content_filter.h"

namespace re2 {
class RE2;
}

namespace tunefleet::serving {

struct BuiltinFilterOptions {
  // The replica's own list (named "replica" in findings).
  std::vector<std::string> blocklist_terms;
  std::vector<std::string> blocklist_patterns;  // RE2 syntax
  // Named lists (a deployment policy's); matches name their list.
  std::vector<NamedBlocklist> blocklists;
  bool pii = true;
  bool profanity = true;
  // Lexicon languages to use ("en", "de", ...); empty: all of them.
  std::vector<std::string> profanity_languages;
};

class BuiltinFilter final : public ContentFilter {
 public:
  // INVALID_ARGUMENT naming the pattern that does not compile
  // ("blocklists[i].regexes[j] ..." for a named list).
  static absl::StatusOr<std::unique_ptr<BuiltinFilter>> Create(const BuiltinFilterOptions& options);
  ~BuiltinFilter() override;

  absl::StatusOr<std::vector<Detection>> Classify(absl::string_view text, TextSource source,
                                                  bool partial = false) const override;
  size_t max_span() const override { return max_span_; }
  int num_terms() const { return num_terms_; }

 private:
  BuiltinFilter() = default;
  struct Automaton;
  std::unique_ptr<Automaton> terms_;
  std::vector<std::unique_ptr<re2::RE2>> patterns_;
  std::vector<std::pair<std::string, std::string>> pattern_names_;  // list, pattern
  std::unique_ptr<re2::RE2> email_, digits_, iban_;
  bool pii_ = true;
  size_t max_span_ = 0;
  int num_terms_ = 0;
};

// For tests and the PII detector: the Luhn check over a string of digits.
bool LuhnValid(absl::string_view digits);
// The IBAN mod-97 check over an IBAN without spaces.
bool IbanValid(absl::string_view iban);

}  // namespace tunefleet::serving
