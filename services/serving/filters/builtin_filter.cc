#include "services/serving/filters/builtin_filter.h"

#include <re2/re2.h>

#include <algorithm>
#include <cctype>

#include "absl/strings/str_cat.h"
#include "services/serving/filters/profanity_lexicon.h"

namespace tunefleet::serving {

namespace {

bool IsAsciiAlnum(unsigned char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

// Lowercases ASCII, turns every other ASCII byte into one space (runs
// collapse) and keeps non-ASCII bytes, so that " term " finds a whole word.
// `pos[i]` is the text offset of out[i].
std::string Normalize(absl::string_view text, std::vector<size_t>* pos) {
  std::string out;
  out.reserve(text.size() + 2);
  for (size_t i = 0; i < text.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    char n;
    if (c >= 0x80) {
      n = static_cast<char>(c);
    } else if (IsAsciiAlnum(c)) {
      n = static_cast<char>(std::tolower(c));
    } else {
      if (!out.empty() && out.back() == ' ') continue;
      n = ' ';
    }
    out.push_back(n);
    if (pos) pos->push_back(i);
  }
  return out;
}

bool HasAsciiAlnum(absl::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) { return IsAsciiAlnum(static_cast<unsigned char>(c)); });
}

}  // namespace

bool LuhnValid(absl::string_view digits) {
  int sum = 0;
  bool twice = false;
  for (auto it = digits.rbegin(); it != digits.rend(); ++it) {
    if (*it < '0' || *it > '9') return false;
    int d = *it - '0';
    if (twice) d = d * 2 > 9 ? d * 2 - 9 : d * 2;
    sum += d;
    twice = !twice;
  }
  return !digits.empty() && sum % 10 == 0;
}

bool IbanValid(absl::string_view iban) {
  if (iban.size() < 15 || iban.size() > 34) return false;
  // Move the first four characters to the end; letters count 10..35.
  const std::string moved = absl::StrCat(iban.substr(4), iban.substr(0, 4));
  int rem = 0;
  for (char c : moved) {
    int v;
    if (c >= '0' && c <= '9') {
      v = c - '0';
    } else if (c >= 'A' && c <= 'Z') {
      v = c - 'A' + 10;
    } else {
      return false;
    }
    rem = v >= 10 ? (rem * 100 + v) % 97 : (rem * 10 + v) % 97;
  }
  return rem == 1;
}

// Aho-Corasick over bytes of normalized text.
struct BuiltinFilter::Automaton {
  struct Pattern {
    size_t length;  // bytes of the normalized pattern, with its boundary spaces
    bool whole_word;
    std::string filter, kind;
    FilterCategory category;
    std::string list;
  };
  struct Node {
    std::vector<std::pair<unsigned char, int>> next;  // sorted by byte
    int fail = 0;
    int output = -1;       // a pattern ending here
    int dict = -1;         // the nearest node on the fail chain with an output
  };
  std::vector<Node> nodes{Node{}};
  std::vector<Pattern> patterns;
  std::vector<int> pattern_next;  // another pattern ending at the same node

  int Child(int n, unsigned char c) const {
    const auto& v = nodes[n].next;
    auto it = std::lower_bound(v.begin(), v.end(), std::make_pair(c, -1));
    return it != v.end() && it->first == c ? it->second : -1;
  }
  void Add(const std::string& key, Pattern p) {
    int n = 0;
    for (unsigned char c : key) {
      int child = Child(n, c);
      if (child < 0) {
        child = static_cast<int>(nodes.size());
        nodes.emplace_back();
        auto& v = nodes[n].next;
        v.insert(std::lower_bound(v.begin(), v.end(), std::make_pair(c, -1)), {c, child});
      }
      n = child;
    }
    // The same key twice from one filter (a word in two languages): once.
    for (int q = nodes[n].output; q >= 0; q = pattern_next[q]) {
      if (patterns[q].filter == p.filter && patterns[q].list == p.list) return;
    }
    patterns.push_back(std::move(p));
    pattern_next.push_back(nodes[n].output);
    nodes[n].output = static_cast<int>(patterns.size()) - 1;
  }
  void Build() {
    std::vector<int> order{0};
    for (size_t i = 0; i < order.size(); ++i) {
      const int n = order[i];
      for (auto [c, child] : nodes[n].next) {
        int target = 0;
        if (n != 0) {
          int f = nodes[n].fail;
          while (f != 0 && Child(f, c) < 0) f = nodes[f].fail;
          const int t = Child(f, c);
          target = t >= 0 ? t : 0;
        }
        nodes[child].fail = target;
        nodes[child].dict = nodes[target].output >= 0 ? target : nodes[target].dict;
        order.push_back(child);
      }
    }
  }
  int Step(int n, unsigned char c) const {
    for (;;) {
      const int child = Child(n, c);
      if (child >= 0) return child;
      if (n == 0) return 0;
      n = nodes[n].fail;
    }
  }
};

BuiltinFilter::~BuiltinFilter() = default;

absl::StatusOr<std::unique_ptr<BuiltinFilter>> BuiltinFilter::Create(
    const BuiltinFilterOptions& options) {
  std::unique_ptr<BuiltinFilter> f(new BuiltinFilter());
  f->terms_ = std::make_unique<Automaton>();
  auto add = [&](absl::string_view term, std::string filter, std::string kind, FilterCategory c,
                 std::string list) {
    std::string n = Normalize(term, nullptr);
    while (!n.empty() && n.front() == ' ') n.erase(n.begin());
    while (!n.empty() && n.back() == ' ') n.pop_back();
    if (n.empty()) return;
    // Terms with letters or digits match as whole words; terms of scripts
    // written without spaces (Chinese, Japanese, Thai, ...) anywhere.
    const bool whole_word = HasAsciiAlnum(n);
    std::string key = whole_word ? absl::StrCat(" ", n, " ") : n;
    f->max_span_ = std::max(f->max_span_, term.size() + 2);
    f->terms_->Add(key, Automaton::Pattern{key.size(), whole_word, std::move(filter), std::move(kind),
                                           c, std::move(list)});
    ++f->num_terms_;
  };
  for (const std::string& t : options.blocklist_terms) {
    add(t, "blocklist", t, FilterCategory::kBlocklist, "replica");
  }
  for (const NamedBlocklist& b : options.blocklists) {
    for (const std::string& t : b.terms) add(t, "blocklist", t, FilterCategory::kBlocklist, b.name);
  }
  if (options.profanity) {
    for (int i = 0; i < kProfanityLexiconSize; ++i) {
      const ProfanityEntry& e = kProfanityLexicon[i];
      const auto& langs = options.profanity_languages;
      if (!langs.empty() && std::find(langs.begin(), langs.end(), e.language) == langs.end()) {
        continue;
      }
      add(e.term, "profanity", e.language, FilterCategory::kProfanity, "");
    }
  }
  f->terms_->Build();
  for (size_t i = 0; i < options.blocklist_patterns.size(); ++i) {
    const std::string& p = options.blocklist_patterns[i];
    auto re = std::make_unique<re2::RE2>(p, re2::RE2::Quiet);
    if (!re->ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("blocklist_patterns[", i, "] \"", p, "\" does not compile: ", re->error()));
    }
    f->patterns_.push_back(std::move(re));
    f->pattern_names_.emplace_back("replica", p);
  }
  for (size_t i = 0; i < options.blocklists.size(); ++i) {
    const NamedBlocklist& b = options.blocklists[i];
    for (size_t j = 0; j < b.regexes.size(); ++j) {
      auto re = std::make_unique<re2::RE2>(b.regexes[j], re2::RE2::Quiet);
      if (!re->ok()) {
        return absl::InvalidArgumentError(absl::StrCat("blocklists[", i, "].regexes[", j, "] \"",
                                                       b.regexes[j], "\" (list ", b.name,
                                                       ") does not compile: ", re->error()));
      }
      f->patterns_.push_back(std::move(re));
      f->pattern_names_.emplace_back(b.name, b.regexes[j]);
    }
  }
  f->pii_ = options.pii;
  if (f->pii_) {
    f->email_ = std::make_unique<re2::RE2>(
        R"([A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,})");
    f->digits_ = std::make_unique<re2::RE2>(R"(\+?\(?\d[\d \t().\-]{7,26}\d)");
    f->iban_ = std::make_unique<re2::RE2>(R"(\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b)");
    // An IBAN with spaces (42) is the longest PII value guaranteed to be held back.
    f->max_span_ = std::max<size_t>(f->max_span_, 48);
  }
  return f;
}

absl::StatusOr<std::vector<Detection>> BuiltinFilter::Classify(absl::string_view text,
                                                               TextSource source,
                                                               bool partial) const {
  std::vector<Detection> out;
  // Terms: " " + text (+ " " when final), so that edges are word boundaries.
  std::vector<size_t> pos;
  std::string norm = Normalize(text, &pos);
  std::string padded = absl::StrCat(" ", norm, partial ? "" : " ");
  auto to_text = [&](size_t padded_index) -> size_t {
    // padded[k] is norm[k-1]; the sentinels map to the edges.
    if (padded_index == 0) return 0;
    if (padded_index - 1 >= pos.size()) return text.size();
    return pos[padded_index - 1];
  };
  int node = 0;
  for (size_t i = 0; i < padded.size(); ++i) {
    node = terms_->Step(node, static_cast<unsigned char>(padded[i]));
    for (int n = terms_->nodes[node].output >= 0 ? node : terms_->nodes[node].dict; n > 0;
         n = terms_->nodes[n].dict) {
      for (int p = terms_->nodes[n].output; p >= 0; p = terms_->pattern_next[p]) {
        const Automaton::Pattern& pat = terms_->patterns[p];
        const size_t start = i + 1 - pat.length;  // padded index of the first byte
        const size_t first = pat.whole_word ? start + 1 : start;
        const size_t last = pat.whole_word ? i - 1 : i;  // padded index of the last byte
        Detection d;
        d.category = pat.category;
        d.severity = pat.category == FilterCategory::kBlocklist ? FilterSeverity::kHigh
                                                                : FilterSeverity::kMedium;
        d.filter = pat.filter;
        d.kind = pat.kind;
        d.list = pat.list;
        d.begin = to_text(first);
        d.end = std::min(text.size(), to_text(last) + 1);
        out.push_back(std::move(d));
      }
    }
  }
  auto scan = [&](const re2::RE2& re, auto&& on_match) {
    re2::StringPiece input(text.data(), text.size()), m;
    size_t at = 0;
    while (at <= text.size() && re.Match(input, at, text.size(), re2::RE2::UNANCHORED, &m, 1)) {
      const size_t b = static_cast<size_t>(m.data() - text.data()), e = b + m.size();
      // In a stream, a match that reaches the end may still grow.
      if (!(partial && e == text.size())) on_match(b, e);
      at = e > b ? e : b + 1;
    }
  };
  for (size_t i = 0; i < patterns_.size(); ++i) {
    scan(*patterns_[i], [&](size_t b, size_t e) {
      out.push_back(Detection{FilterCategory::kBlocklist, FilterSeverity::kHigh, "blocklist",
                              pattern_names_[i].second, b, e, pattern_names_[i].first});
    });
  }
  if (pii_) {
    scan(*email_, [&](size_t b, size_t e) {
      out.push_back(Detection{FilterCategory::kPii, FilterSeverity::kHigh, "pii", "email", b, e});
    });
    scan(*iban_, [&](size_t b, size_t e) {
      std::string compact;
      for (size_t k = b; k < e; ++k) {
        if (text[k] != ' ') compact.push_back(text[k]);
      }
      if (IbanValid(compact)) {
        out.push_back(Detection{FilterCategory::kPii, FilterSeverity::kHigh, "pii", "iban", b, e});
      }
    });
    const size_t ibans_end = out.size();
    scan(*digits_, [&](size_t b, size_t e) {
      // The digits of an IBAN are not a phone number as well.
      for (size_t k = 0; k < ibans_end; ++k) {
        if (out[k].kind == "iban" && b < out[k].end && out[k].begin < e) return;
      }
      std::string digits;
      for (size_t k = b; k < e; ++k) {
        if (text[k] >= '0' && text[k] <= '9') digits.push_back(text[k]);
      }
      const char* kind = nullptr;
      if (digits.size() >= 13 && digits.size() <= 19 && LuhnValid(digits)) {
        kind = "card";
      } else if (digits.size() >= 9 && digits.size() <= 15) {
        kind = "phone";
      }
      if (kind) {
        out.push_back(Detection{FilterCategory::kPii, FilterSeverity::kHigh, "pii", kind, b, e});
      }
    });
  }
  (void)source;
  return out;
}

}  // namespace tunefleet::serving
