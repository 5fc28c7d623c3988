#include "common/errors/labels.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace tunefleet::errors {
namespace {

bool KeyChar(char c) {
  return absl::ascii_islower(c) || absl::ascii_isdigit(c) || c == '.' || c == '_' || c == '-';
}
bool Alnum(char c) { return absl::ascii_islower(c) || absl::ascii_isdigit(c); }

// The part after an optional "prefix/": 1..63 of [a-z0-9._-], alphanumeric at
// both ends. The prefix: 1..253 of [a-z0-9.-].
std::string KeyProblem(absl::string_view key) {
  if (key.empty()) return "a label key must not be empty";
  absl::string_view name = key;
  size_t slash = key.find('/');
  if (slash != absl::string_view::npos) {
    absl::string_view prefix = key.substr(0, slash);
    name = key.substr(slash + 1);
    if (prefix.empty() || prefix.size() > 253) return "the key's prefix must be 1 to 253 characters";
    for (char c : prefix) {
      if (!(Alnum(c) || c == '.' || c == '-')) return "the key's prefix must be of [a-z0-9.-]";
    }
  }
  if (name.empty() || name.size() > 63) return "the key's name must be 1 to 63 characters";
  for (char c : name) {
    if (!KeyChar(c)) return "the key must be of [a-z0-9._-] (lower case)";
  }
  if (!Alnum(name.front()) || !Alnum(name.back()))
    return "the key must start and end with a letter or digit";
  return "";
}

std::string ValueProblem(absl::string_view value) {
  if (value.size() > 63) return "a label value is at most 63 characters";
  for (char c : value) {
    if (!(absl::ascii_isalnum(c) || c == '.' || c == '_' || c == '-'))
      return "a label value must be of [A-Za-z0-9._-]";
  }
  return "";
}

bool ValidUtf8(absl::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    int n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (int k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80) return false;
    }
    i += n;
  }
  return true;
}

}  // namespace

void CheckLabels(const Labels& labels, absl::string_view field,
                 std::vector<FieldViolation>* violations) {
  if (labels.size() > kMaxLabels) {
    violations->push_back({std::string(field), absl::StrCat("at most ", kMaxLabels, " labels, not ",
                                                            labels.size())});
  }
  for (const auto& [key, value] : labels) {
    std::string path = absl::StrCat(field, "[\"", key, "\"]");
    std::string problem = KeyProblem(key);
    if (problem.empty()) problem = ValueProblem(value);
    if (!problem.empty()) violations->push_back({path, problem});
  }
}

void CheckDescription(absl::string_view description, absl::string_view field,
                      std::vector<FieldViolation>* violations) {
  if (description.size() > kMaxDescriptionBytes) {
    violations->push_back({std::string(field), absl::StrCat("at most ", kMaxDescriptionBytes,
                                                            " bytes, not ", description.size())});
    return;
  }
  if (!ValidUtf8(description)) {
    violations->push_back({std::string(field), "must be valid UTF-8"});
    return;
  }
  for (char c : description) {
    if (static_cast<unsigned char>(c) < 0x20 && c != '\n' && c != '\t') {
      violations->push_back({std::string(field), "must not contain control characters"});
      return;
    }
  }
}

bool LabelsMatch(const Labels& have, const Labels& want) {
  for (const auto& [key, value] : want) {
    auto it = have.find(key);
    if (it == have.end() || it->second != value) return false;
  }
  return true;
}

}  // namespace tunefleet::errors
