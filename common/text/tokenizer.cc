#include "common/text/tokenizer.h"

#include <algorithm>
#include <array>
#include <fstream>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "common/base/status_macros.h"
#include "common/text/config_json.h"
#include "common/text/unicode.h"

namespace tunefleet::text {
namespace {

using json = nlohmann::json;

constexpr absl::string_view kSpmSpace = "\xE2\x96\x81";  // U+2581 ▁
// Ids above this are refused rather than allocated for (the largest real
// vocabularies have a few hundred thousand tokens).
constexpr int64_t kMaxVocab = int64_t{1} << 24;

// ---------------------------------------------------------------------------
// JSON helpers: every error names the source file and the JSON path.

class JsonReader {
 public:
  explicit JsonReader(std::string source) : source_(std::move(source)) {}

  absl::Status Error(const std::string& path, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": ", path, ": ", what));
  }
  absl::Status Unsupported(const std::string& path, absl::string_view what) const {
    return absl::UnimplementedError(absl::StrCat(source_, ": ", path, ": ", what));
  }

  absl::StatusOr<std::string> String(const json& j, const std::string& path) const {
    if (!j.is_string()) return Error(path, "expected a string");
    return j.get<std::string>();
  }
  absl::StatusOr<std::string> StringField(const json& obj, const std::string& path,
                                          const char* key) const {
    auto it = obj.find(key);
    if (it == obj.end()) return Error(path, absl::StrCat("missing field \"", key, "\""));
    return String(*it, absl::StrCat(path, ".", key));
  }
  absl::StatusOr<bool> BoolField(const json& obj, const std::string& path, const char* key,
                                 bool dflt) const {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return dflt;
    if (!it->is_boolean()) return Error(absl::StrCat(path, ".", key), "expected a boolean");
    return it->get<bool>();
  }
  absl::StatusOr<int64_t> IntField(const json& obj, const std::string& path,
                                   const char* key) const {
    auto it = obj.find(key);
    if (it == obj.end()) return Error(path, absl::StrCat("missing field \"", key, "\""));
    if (!it->is_number_integer()) return Error(absl::StrCat(path, ".", key), "expected an integer");
    return it->get<int64_t>();
  }
  absl::StatusOr<std::string> Type(const json& obj, const std::string& path) const {
    if (!obj.is_object()) return Error(path, "expected an object");
    return StringField(obj, path, "type");
  }
  // A {"String": "..."} pattern; regex patterns are not supported here.
  absl::StatusOr<std::string> StringPattern(const json& obj, const std::string& path) const {
    auto it = obj.find("pattern");
    if (it == obj.end() || !it->is_object()) return Error(path, "missing object field \"pattern\"");
    if (it->contains("String")) return String((*it)["String"], path + ".pattern.String");
    return Unsupported(path + ".pattern", "only String patterns are supported here");
  }

 private:
  std::string source_;
};

// ---------------------------------------------------------------------------
// The byte-level alphabet (GPT-2's bytes_to_unicode).

struct ByteLevelAlphabet {
  std::array<std::string, 256> byte_to_char;
  absl::flat_hash_map<char32_t, uint8_t> char_to_byte;
  ByteLevelAlphabet() {
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable =
          (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const char32_t cp = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
      AppendUtf8(cp, &byte_to_char[b]);
      char_to_byte[cp] = static_cast<uint8_t>(b);
    }
  }
};

const ByteLevelAlphabet& Alphabet() {
  static const ByteLevelAlphabet* alphabet = new ByteLevelAlphabet();
  return *alphabet;
}

// ---------------------------------------------------------------------------
// The pre-tokenizer regexes, matched by hand (see SplitPattern).

enum class SplitPattern {
  kGpt2,    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  kCl100k,  // Llama-3: (?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
            // ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  kQwen,    // as kCl100k with \p{N} (one digit)
};

constexpr absl::string_view kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr absl::string_view kCl100kRegex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr absl::string_view kQwenRegex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Length (in code points) of the regex's leftmost-first match at cps[i];
// every position matches at least one code point.
size_t MatchAt(const std::vector<char32_t>& cps, size_t i, SplitPattern p) {
  const size_t n = cps.size();
  auto at = [&](size_t k) -> char32_t { return k < n ? cps[k] : 0; };
  auto letter = [&](size_t k) { return k < n && IsLetter(cps[k]); };
  auto number = [&](size_t k) { return k < n && IsNumber(cps[k]); };
  auto space = [&](size_t k) { return k < n && IsWhiteSpace(cps[k]); };
  auto other = [&](size_t k) {
    return k < n && !IsWhiteSpace(cps[k]) && !IsLetter(cps[k]) && !IsNumber(cps[k]);
  };
  const bool icase = p != SplitPattern::kGpt2;
  const char32_t c = cps[i];

  // Contractions.
  if (c == '\'') {
    auto is = [&](size_t k, char lower) {
      char32_t x = at(k);
      if (icase && x >= 'A' && x <= 'Z') x += 32;
      if (icase && lower == 's' && x == 0x17F) return true;  // ſ folds to s
      return x == static_cast<char32_t>(lower);
    };
    if (is(i + 1, 's') || is(i + 1, 't') || is(i + 1, 'm') || is(i + 1, 'd')) return 2;
    if ((is(i + 1, 'r') && is(i + 2, 'e')) || (is(i + 1, 'v') && is(i + 2, 'e')) ||
        (is(i + 1, 'l') && is(i + 2, 'l'))) {
      return 3;
    }
  }
  auto run = [&](size_t k, auto pred) {
    size_t e = k;
    while (pred(e)) ++e;
    return e - k;
  };
  if (p == SplitPattern::kGpt2) {
    const size_t lead = c == ' ' ? 1 : 0;
    if (letter(i + lead)) return lead + run(i + lead, letter);
    if (number(i + lead)) return lead + run(i + lead, number);
    if (other(i + lead)) return lead + run(i + lead, other);
  } else {
    if (letter(i)) return run(i, letter);
    if (c != '\r' && c != '\n' && !IsNumber(c) && letter(i + 1)) return 1 + run(i + 1, letter);
    if (number(i)) {
      const size_t max = p == SplitPattern::kQwen ? 1 : 3;
      return std::min(max, run(i, number));
    }
    const size_t lead = c == ' ' ? 1 : 0;
    if (other(i + lead)) {
      size_t len = lead + run(i + lead, other);
      while (at(i + len) == '\r' || at(i + len) == '\n') ++len;
      return len;
    }
  }
  // Whitespace (the remaining case).
  const size_t w = run(i, space);
  if (w == 0) return 1;  // unreachable: every code point is L, N, \s or other
  if (p != SplitPattern::kGpt2) {
    // \s*[\r\n]+ : up to the last CR/LF of the run.
    for (size_t k = i + w; k > i; --k) {
      if (cps[k - 1] == '\r' || cps[k - 1] == '\n') return k - i;
    }
  }
  // \s+(?!\S) then \s+.
  if (i + w == n) return w;
  return w > 1 ? w - 1 : w;
}

// ---------------------------------------------------------------------------
// Pipeline steps.

struct NormalizerStep {
  enum Kind { kPrepend, kReplace, kNfc } kind;
  std::string a, b;
};

struct PreTokenizerStep {
  enum Kind { kSplit, kByteLevel, kMetaspace } kind;
  SplitPattern pattern = SplitPattern::kGpt2;
  bool add_prefix_space = false;
  bool use_regex = false;
  std::string replacement;
  enum Prepend { kAlways, kFirst, kNever } prepend = kAlways;
  bool split = false;
};

struct DecoderStep {
  enum Kind { kReplace, kByteFallback, kFuse, kStrip, kByteLevel, kMetaspace } kind;
  std::string a, b;
  size_t start = 0, stop = 0;
  bool prepend = false;
};

struct TemplatePiece {
  bool is_sequence = false;
  std::vector<int32_t> ids;  // special tokens
};

uint64_t PairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

struct Piece {
  bool added = false;
  int32_t id = -1;
  size_t begin = 0, end = 0;  // byte offsets in the sanitized text
};

}  // namespace

struct Tokenizer::Impl {
  std::string source;
  // BPE model.
  absl::flat_hash_map<std::string, int32_t> vocab;
  std::vector<std::string> id_to_token;  // model tokens by id
  struct Merge {
    int32_t rank;
    int32_t id;
  };
  absl::flat_hash_map<uint64_t, Merge> merges;
  std::optional<int32_t> unk_id;
  bool byte_fallback = false;
  bool fuse_unk = false;
  bool ignore_merges = false;
  std::array<int32_t, 256> byte_ids;
  // Pipeline.
  std::vector<NormalizerStep> normalizers;
  std::vector<PreTokenizerStep> pre_tokenizers;
  bool byte_level = false;
  bool has_decoder = false;
  std::vector<DecoderStep> decoders;
  std::vector<TemplatePiece> single_template;  // empty: no post-processing
  // Added tokens.
  std::vector<AddedToken> added;
  absl::flat_hash_map<int32_t, size_t> added_by_id;
  absl::flat_hash_map<std::string, size_t> added_by_content;
  std::array<std::vector<size_t>, 256> added_by_first_byte;  // longest first
  int32_t vocab_size = 0;
  std::string bos_token, eos_token;
  // No token has a ▁ after another character, so no merge crosses the start
  // of a ▁ run: a sentencepiece-style text can be merged word by word, which
  // gives the same ids as merging it whole and keeps the merge queues short.
  bool split_before_spm_space = false;

  absl::Status Load(const json& root, const JsonReader& r);
  absl::Status LoadModel(const json& m, const JsonReader& r);
  absl::Status LoadNormalizer(const json& n, const std::string& path, const JsonReader& r);
  absl::Status LoadPreTokenizer(const json& p, const std::string& path, const JsonReader& r);
  absl::Status LoadDecoder(const json& d, const std::string& path, const JsonReader& r);
  absl::Status LoadPostProcessor(const json& p, const std::string& path, const JsonReader& r);

  std::vector<Piece> SplitAdded(absl::string_view text) const;
  // The model's tokens for one piece between added tokens.
  void EncodePiece(absl::string_view span, bool first, std::vector<int32_t>* ids) const;
  std::string Normalize(absl::string_view piece) const;
  std::vector<std::string> PreTokenize(std::string normalized, bool at_text_start) const;
  void Bpe(absl::string_view word, std::vector<int32_t>* out) const;
  std::vector<std::string> DecodeChain(std::vector<std::string> tokens) const;
};

// --- loading -----------------------------------------------------------------

absl::Status Tokenizer::Impl::LoadModel(const json& m, const JsonReader& r) {
  TF_ASSIGN_OR_RETURN(std::string type, r.Type(m, "model"));
  if (type != "BPE")
    return r.Unsupported("model.type", absl::StrCat("model type \"", type, "\" (only BPE)"));
  if (m.contains("dropout") && !m["dropout"].is_null() &&
      !(m["dropout"].is_number() && m["dropout"].get<double>() == 0)) {
    return r.Unsupported("model.dropout", "BPE dropout");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (m.contains(key) && !m[key].is_null() &&
        !(m[key].is_string() && m[key].get<std::string>().empty())) {
      return r.Unsupported(absl::StrCat("model.", key), "a non-empty value");
    }
  }
  TF_ASSIGN_OR_RETURN(byte_fallback, r.BoolField(m, "model", "byte_fallback", false));
  TF_ASSIGN_OR_RETURN(fuse_unk, r.BoolField(m, "model", "fuse_unk", false));
  TF_ASSIGN_OR_RETURN(ignore_merges, r.BoolField(m, "model", "ignore_merges", false));
  auto vit = m.find("vocab");
  if (vit == m.end() || !vit->is_object())
    return r.Error("model.vocab", "expected an object of token: id");
  vocab.reserve(vit->size());
  for (auto it = vit->begin(); it != vit->end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
        it.value().get<int64_t>() >= kMaxVocab) {
      return r.Error(absl::StrCat("model.vocab[\"", it.key(), "\"]"), "expected a non-negative id");
    }
    const int32_t id = static_cast<int32_t>(it.value().get<int64_t>());
    vocab[it.key()] = id;
    if (static_cast<size_t>(id) >= id_to_token.size()) id_to_token.resize(id + 1);
    id_to_token[id] = it.key();
  }
  auto mit = m.find("merges");
  if (mit == m.end() || !mit->is_array()) return r.Error("model.merges", "expected an array");
  merges.reserve(mit->size());
  int32_t rank = 0;
  for (const json& merge : *mit) {
    const std::string path = absl::StrCat("model.merges[", rank, "]");
    std::string a, b;
    if (merge.is_string()) {
      const std::string s = merge.get<std::string>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
        return r.Error(path, "expected \"left right\"");
      }
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
               merge[1].is_string()) {
      a = merge[0].get<std::string>();
      b = merge[1].get<std::string>();
    } else {
      return r.Error(path, "expected \"left right\" or [left, right]");
    }
    auto ia = vocab.find(a), ib = vocab.find(b), im = vocab.find(a + b);
    if (ia == vocab.end() || ib == vocab.end() || im == vocab.end()) {
      return r.Error(
          path, absl::StrCat("merge \"", a, " ", b, "\" uses a token missing from model.vocab"));
    }
    merges.try_emplace(PairKey(ia->second, ib->second), Merge{rank, im->second});
    ++rank;
  }
  if (m.contains("unk_token") && !m["unk_token"].is_null()) {
    TF_ASSIGN_OR_RETURN(std::string unk, r.String(m["unk_token"], "model.unk_token"));
    auto it = vocab.find(unk);
    if (it == vocab.end())
      return r.Error("model.unk_token", absl::StrCat("\"", unk, "\" is not in model.vocab"));
    unk_id = it->second;
  }
  split_before_spm_space = true;
  for (const std::string& token_string : id_to_token) {
    const absl::string_view token(token_string);
    for (size_t pos = token.find(kSpmSpace, 1); pos != absl::string_view::npos;
         pos = token.find(kSpmSpace, pos + 1)) {
      if (!absl::EndsWith(token.substr(0, pos), kSpmSpace)) split_before_spm_space = false;
    }
    if (!split_before_spm_space) break;
  }
  for (int b = 0; b < 256; ++b) {
    auto it = vocab.find(absl::StrFormat("<0x%02X>", b));
    byte_ids[b] = it == vocab.end() ? -1 : it->second;
  }
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::LoadNormalizer(const json& n, const std::string& path,
                                             const JsonReader& r) {
  if (n.is_null()) return absl::OkStatus();
  TF_ASSIGN_OR_RETURN(std::string type, r.Type(n, path));
  if (type == "Sequence") {
    auto it = n.find("normalizers");
    if (it == n.end() || !it->is_array())
      return r.Error(path + ".normalizers", "expected an array");
    for (size_t i = 0; i < it->size(); ++i) {
      TF_RETURN_IF_ERROR(LoadNormalizer((*it)[i], absl::StrCat(path, ".normalizers[", i, "]"), r));
    }
  } else if (type == "Prepend") {
    TF_ASSIGN_OR_RETURN(std::string s, r.StringField(n, path, "prepend"));
    normalizers.push_back({NormalizerStep::kPrepend, s, ""});
  } else if (type == "Replace") {
    TF_ASSIGN_OR_RETURN(std::string pattern, r.StringPattern(n, path));
    TF_ASSIGN_OR_RETURN(std::string content, r.StringField(n, path, "content"));
    if (pattern.empty()) return r.Error(path + ".pattern", "empty pattern");
    normalizers.push_back({NormalizerStep::kReplace, pattern, content});
  } else if (type == "NFC") {
    normalizers.push_back({NormalizerStep::kNfc, "", ""});
  } else {
    return r.Unsupported(path + ".type", absl::StrCat("normalizer \"", type, "\""));
  }
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::LoadPreTokenizer(const json& p, const std::string& path,
                                               const JsonReader& r) {
  if (p.is_null()) return absl::OkStatus();
  TF_ASSIGN_OR_RETURN(std::string type, r.Type(p, path));
  PreTokenizerStep step;
  if (type == "Sequence") {
    auto it = p.find("pretokenizers");
    if (it == p.end() || !it->is_array())
      return r.Error(path + ".pretokenizers", "expected an array");
    for (size_t i = 0; i < it->size(); ++i) {
      TF_RETURN_IF_ERROR(
          LoadPreTokenizer((*it)[i], absl::StrCat(path, ".pretokenizers[", i, "]"), r));
    }
    return absl::OkStatus();
  } else if (type == "Split") {
    auto pit = p.find("pattern");
    if (pit == p.end() || !pit->is_object() || !pit->contains("Regex") ||
        !(*pit)["Regex"].is_string()) {
      return r.Unsupported(path + ".pattern",
                           "only the Regex patterns of GPT-2, Llama-3 and Qwen are supported");
    }
    const std::string regex = (*pit)["Regex"].get<std::string>();
    if (regex == kGpt2Regex) {
      step.pattern = SplitPattern::kGpt2;
    } else if (regex == kCl100kRegex) {
      step.pattern = SplitPattern::kCl100k;
    } else if (regex == kQwenRegex) {
      step.pattern = SplitPattern::kQwen;
    } else {
      return r.Unsupported(path + ".pattern.Regex", absl::StrCat("regex ", regex));
    }
    TF_ASSIGN_OR_RETURN(std::string behavior, r.StringField(p, path, "behavior"));
    TF_ASSIGN_OR_RETURN(bool invert, r.BoolField(p, path, "invert", false));
    if (behavior != "Isolated" || invert)
      return r.Unsupported(path + ".behavior", "only Isolated, not inverted");
    step.kind = PreTokenizerStep::kSplit;
  } else if (type == "ByteLevel") {
    step.kind = PreTokenizerStep::kByteLevel;
    TF_ASSIGN_OR_RETURN(step.add_prefix_space, r.BoolField(p, path, "add_prefix_space", true));
    TF_ASSIGN_OR_RETURN(step.use_regex, r.BoolField(p, path, "use_regex", true));
    byte_level = true;
  } else if (type == "Metaspace") {
    step.kind = PreTokenizerStep::kMetaspace;
    TF_ASSIGN_OR_RETURN(step.replacement, r.StringField(p, path, "replacement"));
    TF_ASSIGN_OR_RETURN(step.split, r.BoolField(p, path, "split", true));
    if (p.contains("prepend_scheme")) {
      TF_ASSIGN_OR_RETURN(std::string scheme,
                          r.String(p["prepend_scheme"], path + ".prepend_scheme"));
      if (scheme == "always") {
        step.prepend = PreTokenizerStep::kAlways;
      } else if (scheme == "first") {
        step.prepend = PreTokenizerStep::kFirst;
      } else if (scheme == "never") {
        step.prepend = PreTokenizerStep::kNever;
      } else {
        return r.Error(path + ".prepend_scheme", "expected always, first or never");
      }
    } else {
      TF_ASSIGN_OR_RETURN(bool add, r.BoolField(p, path, "add_prefix_space", true));
      step.prepend = add ? PreTokenizerStep::kAlways : PreTokenizerStep::kNever;
    }
  } else {
    return r.Unsupported(path + ".type", absl::StrCat("pre-tokenizer \"", type, "\""));
  }
  pre_tokenizers.push_back(std::move(step));
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::LoadDecoder(const json& d, const std::string& path,
                                          const JsonReader& r) {
  if (d.is_null()) return absl::OkStatus();
  has_decoder = true;
  TF_ASSIGN_OR_RETURN(std::string type, r.Type(d, path));
  DecoderStep step;
  if (type == "Sequence") {
    auto it = d.find("decoders");
    if (it == d.end() || !it->is_array()) return r.Error(path + ".decoders", "expected an array");
    for (size_t i = 0; i < it->size(); ++i) {
      TF_RETURN_IF_ERROR(LoadDecoder((*it)[i], absl::StrCat(path, ".decoders[", i, "]"), r));
    }
    return absl::OkStatus();
  } else if (type == "Replace") {
    step.kind = DecoderStep::kReplace;
    TF_ASSIGN_OR_RETURN(step.a, r.StringPattern(d, path));
    TF_ASSIGN_OR_RETURN(step.b, r.StringField(d, path, "content"));
    if (step.a.empty()) return r.Error(path + ".pattern", "empty pattern");
  } else if (type == "ByteFallback") {
    step.kind = DecoderStep::kByteFallback;
  } else if (type == "Fuse") {
    step.kind = DecoderStep::kFuse;
  } else if (type == "Strip") {
    step.kind = DecoderStep::kStrip;
    TF_ASSIGN_OR_RETURN(step.a, r.StringField(d, path, "content"));
    TF_ASSIGN_OR_RETURN(int64_t start, r.IntField(d, path, "start"));
    TF_ASSIGN_OR_RETURN(int64_t stop, r.IntField(d, path, "stop"));
    if (start < 0 || stop < 0) return r.Error(path, "negative start/stop");
    step.start = static_cast<size_t>(start);
    step.stop = static_cast<size_t>(stop);
  } else if (type == "ByteLevel") {
    step.kind = DecoderStep::kByteLevel;
  } else if (type == "Metaspace") {
    step.kind = DecoderStep::kMetaspace;
    TF_ASSIGN_OR_RETURN(step.a, r.StringField(d, path, "replacement"));
    if (d.contains("prepend_scheme")) {
      TF_ASSIGN_OR_RETURN(std::string scheme,
                          r.String(d["prepend_scheme"], path + ".prepend_scheme"));
      step.prepend = scheme != "never";
    } else {
      TF_ASSIGN_OR_RETURN(step.prepend, r.BoolField(d, path, "add_prefix_space", true));
    }
  } else {
    return r.Unsupported(path + ".type", absl::StrCat("decoder \"", type, "\""));
  }
  decoders.push_back(std::move(step));
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::LoadPostProcessor(const json& p, const std::string& path,
                                                const JsonReader& r) {
  if (p.is_null()) return absl::OkStatus();
  TF_ASSIGN_OR_RETURN(std::string type, r.Type(p, path));
  if (type == "Sequence") {
    auto it = p.find("processors");
    if (it == p.end() || !it->is_array()) return r.Error(path + ".processors", "expected an array");
    for (size_t i = 0; i < it->size(); ++i) {
      TF_RETURN_IF_ERROR(
          LoadPostProcessor((*it)[i], absl::StrCat(path, ".processors[", i, "]"), r));
    }
  } else if (type == "ByteLevel") {
    // Only trims offsets; ids are unchanged.
  } else if (type == "TemplateProcessing") {
    auto sit = p.find("single");
    if (sit == p.end() || !sit->is_array()) return r.Error(path + ".single", "expected an array");
    auto tit = p.find("special_tokens");
    if (tit == p.end() || !tit->is_object())
      return r.Error(path + ".special_tokens", "expected an object");
    single_template.clear();
    for (size_t i = 0; i < sit->size(); ++i) {
      const json& item = (*sit)[i];
      const std::string ipath = absl::StrCat(path, ".single[", i, "]");
      TemplatePiece piece;
      if (item.is_object() && item.contains("Sequence")) {
        piece.is_sequence = true;
      } else if (item.is_object() && item.contains("SpecialToken") &&
                 item["SpecialToken"].is_object()) {
        TF_ASSIGN_OR_RETURN(std::string name,
                            r.StringField(item["SpecialToken"], ipath + ".SpecialToken", "id"));
        auto st = tit->find(name);
        if (st == tit->end()) {
          return r.Error(ipath, absl::StrCat("special token \"", name, "\" is not in ", path,
                                             ".special_tokens"));
        }
        auto ids = st->find("ids");
        if (ids == st->end() || !ids->is_array()) {
          return r.Error(absl::StrCat(path, ".special_tokens[\"", name, "\"].ids"),
                         "expected an array");
        }
        for (const json& id : *ids) {
          if (!id.is_number_integer()) {
            return r.Error(absl::StrCat(path, ".special_tokens[\"", name, "\"].ids"),
                           "expected integers");
          }
          piece.ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
        }
        if (bos_token.empty() && single_template.empty()) bos_token = name;
      } else {
        return r.Error(ipath, "expected {\"SpecialToken\": ...} or {\"Sequence\": ...}");
      }
      single_template.push_back(std::move(piece));
    }
  } else {
    return r.Unsupported(path + ".type", absl::StrCat("post-processor \"", type, "\""));
  }
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::Load(const json& root, const JsonReader& r) {
  if (!root.is_object()) return r.Error("$", "expected a JSON object");
  if (!root.contains("model")) return r.Error("$", "missing field \"model\"");
  TF_RETURN_IF_ERROR(LoadModel(root["model"], r));
  TF_RETURN_IF_ERROR(LoadNormalizer(root.value("normalizer", json()), "normalizer", r));
  TF_RETURN_IF_ERROR(LoadPreTokenizer(root.value("pre_tokenizer", json()), "pre_tokenizer", r));
  TF_RETURN_IF_ERROR(LoadPostProcessor(root.value("post_processor", json()), "post_processor", r));
  TF_RETURN_IF_ERROR(LoadDecoder(root.value("decoder", json()), "decoder", r));
  vocab_size = static_cast<int32_t>(id_to_token.size());
  if (root.contains("added_tokens") && !root["added_tokens"].is_null()) {
    const json& list = root["added_tokens"];
    if (!list.is_array()) return r.Error("added_tokens", "expected an array");
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string path = absl::StrCat("added_tokens[", i, "]");
      const json& t = list[i];
      if (!t.is_object()) return r.Error(path, "expected an object");
      AddedToken tok;
      TF_ASSIGN_OR_RETURN(int64_t id, r.IntField(t, path, "id"));
      if (id < 0 || id >= kMaxVocab) return r.Error(path + ".id", "out of range");
      tok.id = static_cast<int32_t>(id);
      TF_ASSIGN_OR_RETURN(tok.content, r.StringField(t, path, "content"));
      if (tok.content.empty()) return r.Error(path + ".content", "empty");
      TF_ASSIGN_OR_RETURN(tok.single_word, r.BoolField(t, path, "single_word", false));
      TF_ASSIGN_OR_RETURN(tok.lstrip, r.BoolField(t, path, "lstrip", false));
      TF_ASSIGN_OR_RETURN(tok.rstrip, r.BoolField(t, path, "rstrip", false));
      TF_ASSIGN_OR_RETURN(tok.normalized, r.BoolField(t, path, "normalized", false));
      TF_ASSIGN_OR_RETURN(tok.special, r.BoolField(t, path, "special", false));
      if (added_by_content.contains(tok.content)) continue;
      added_by_id[tok.id] = added.size();
      added_by_content[tok.content] = added.size();
      added.push_back(std::move(tok));
      vocab_size = std::max(vocab_size, static_cast<int32_t>(id) + 1);
    }
  }
  for (size_t i = 0; i < added.size(); ++i) {
    added_by_first_byte[static_cast<unsigned char>(added[i].content[0])].push_back(i);
  }
  for (auto& list : added_by_first_byte) {
    std::stable_sort(list.begin(), list.end(), [&](size_t a, size_t b) {
      return added[a].content.size() > added[b].content.size();
    });
  }
  return absl::OkStatus();
}

// --- encoding ------------------------------------------------------------------

namespace {

bool IsWordChar(char32_t cp) { return IsLetter(cp) || IsNumber(cp) || cp == '_'; }

// The code point that ends just before byte `pos`.
char32_t CodepointBefore(absl::string_view s, size_t pos) {
  size_t start = pos;
  while (start > 0 && (static_cast<unsigned char>(s[start - 1]) & 0xC0) == 0x80) --start;
  if (start > 0) --start;
  size_t p = start;
  return NextCodepoint(s, &p);
}

}  // namespace

std::vector<Piece> Tokenizer::Impl::SplitAdded(absl::string_view text) const {
  std::vector<Piece> pieces;
  size_t text_begin = 0;  // start of the pending non-added text
  size_t i = 0;
  while (i < text.size()) {
    const auto& candidates = added_by_first_byte[static_cast<unsigned char>(text[i])];
    const AddedToken* match = nullptr;
    for (size_t idx : candidates) {
      const AddedToken& t = added[idx];
      if (!absl::StartsWith(text.substr(i), t.content)) continue;
      if (t.single_word) {
        const size_t end = i + t.content.size();
        if (i > 0 && IsWordChar(CodepointBefore(text, i))) continue;
        size_t p = end;
        if (end < text.size() && IsWordChar(NextCodepoint(text, &p))) continue;
      }
      match = &t;
      break;
    }
    if (match == nullptr) {
      i += Utf8SequenceLength(static_cast<unsigned char>(text[i]));
      continue;
    }
    size_t begin = i, end = i + match->content.size();
    if (match->lstrip) {
      while (begin > text_begin) {
        const char32_t cp = CodepointBefore(text, begin);
        if (!IsWhiteSpace(cp)) break;
        std::string enc;
        AppendUtf8(cp, &enc);
        begin -= enc.size();
      }
    }
    if (match->rstrip) {
      while (end < text.size()) {
        size_t p = end;
        if (!IsWhiteSpace(NextCodepoint(text, &p))) break;
        end = p;
      }
    }
    if (begin > text_begin) pieces.push_back({false, -1, text_begin, begin});
    pieces.push_back({true, match->id, begin, end});
    text_begin = end;
    i = end;
  }
  if (text_begin < text.size()) pieces.push_back({false, -1, text_begin, text.size()});
  return pieces;
}

std::string Tokenizer::Impl::Normalize(absl::string_view piece) const {
  std::string s(piece);
  for (const NormalizerStep& step : normalizers) {
    switch (step.kind) {
      case NormalizerStep::kPrepend:
        if (!s.empty()) s.insert(0, step.a);
        break;
      case NormalizerStep::kReplace:
        s = absl::StrReplaceAll(s, {{step.a, step.b}});
        break;
      case NormalizerStep::kNfc:
        s = NfcNormalize(s);
        break;
    }
  }
  return s;
}

std::vector<std::string> Tokenizer::Impl::PreTokenize(std::string normalized,
                                                      bool at_text_start) const {
  std::vector<std::string> words;
  words.push_back(std::move(normalized));
  for (const PreTokenizerStep& step : pre_tokenizers) {
    std::vector<std::string> next;
    next.reserve(words.size());
    for (std::string& w : words) {
      switch (step.kind) {
        case PreTokenizerStep::kSplit:
        case PreTokenizerStep::kByteLevel: {
          if (step.kind == PreTokenizerStep::kByteLevel && step.add_prefix_space &&
              !absl::StartsWith(w, " ")) {
            w.insert(0, " ");
          }
          std::vector<std::string> parts;
          const bool split = step.kind == PreTokenizerStep::kSplit || step.use_regex;
          if (split) {
            std::vector<char32_t> cps;
            std::vector<size_t> offsets;
            for (size_t pos = 0; pos < w.size();) {
              offsets.push_back(pos);
              cps.push_back(NextCodepoint(w, &pos));
            }
            offsets.push_back(w.size());
            const SplitPattern pattern =
                step.kind == PreTokenizerStep::kSplit ? step.pattern : SplitPattern::kGpt2;
            for (size_t i = 0; i < cps.size();) {
              const size_t len = MatchAt(cps, i, pattern);
              parts.push_back(w.substr(offsets[i], offsets[i + len] - offsets[i]));
              i += len;
            }
          } else {
            parts.push_back(std::move(w));
          }
          for (std::string& part : parts) {
            if (step.kind == PreTokenizerStep::kByteLevel) {
              std::string mapped;
              mapped.reserve(part.size() * 2);
              for (unsigned char b : part) mapped += Alphabet().byte_to_char[b];
              next.push_back(std::move(mapped));
            } else {
              next.push_back(std::move(part));
            }
          }
          break;
        }
        case PreTokenizerStep::kMetaspace: {
          std::string s = absl::StrReplaceAll(w, {{" ", step.replacement}});
          const bool prepend = step.prepend == PreTokenizerStep::kAlways ||
                               (step.prepend == PreTokenizerStep::kFirst && at_text_start);
          if (prepend && !absl::StartsWith(s, step.replacement)) s.insert(0, step.replacement);
          if (!step.split) {
            next.push_back(std::move(s));
            break;
          }
          // Split before every replacement (MergedWithNext).
          size_t start = 0;
          for (size_t pos = s.find(step.replacement, 1); pos != std::string::npos;
               pos = s.find(step.replacement, pos + 1)) {
            if (pos > start) {
              next.push_back(s.substr(start, pos - start));
              start = pos;
            }
          }
          if (start < s.size()) next.push_back(s.substr(start));
          break;
        }
      }
    }
    words = std::move(next);
  }
  return words;
}

void Tokenizer::Impl::Bpe(absl::string_view word, std::vector<int32_t>* out) const {
  if (word.empty()) return;
  if (ignore_merges) {
    auto it = vocab.find(word);
    if (it != vocab.end()) {
      out->push_back(it->second);
      return;
    }
  }
  struct Symbol {
    int32_t id;
    int32_t prev, next;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  int32_t pending_unk = -1;  // a fused unknown run not yet pushed
  auto push = [&](int32_t id) {
    const int32_t idx = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, idx - 1, idx + 1});
  };
  for (size_t pos = 0; pos < word.size();) {
    const size_t len =
        std::min(Utf8SequenceLength(static_cast<unsigned char>(word[pos])), word.size() - pos);
    const absl::string_view ch = word.substr(pos, len);
    pos += len;
    auto it = vocab.find(ch);
    if (it != vocab.end()) {
      if (pending_unk >= 0) push(pending_unk);
      pending_unk = -1;
      push(it->second);
      continue;
    }
    if (byte_fallback) {
      bool all = true;
      for (unsigned char b : ch) all = all && byte_ids[b] >= 0;
      if (all) {
        if (pending_unk >= 0) push(pending_unk);
        pending_unk = -1;
        for (unsigned char b : ch) push(byte_ids[b]);
        continue;
      }
    }
    if (unk_id) {
      if (pending_unk >= 0 && !fuse_unk) push(pending_unk);
      pending_unk = *unk_id;
    }
  }
  if (pending_unk >= 0) push(pending_unk);
  if (symbols.empty()) return;
  symbols.back().next = -1;

  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t left, right, merged;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  auto consider = [&](int32_t pos) {
    if (pos < 0) return;
    const int32_t next = symbols[pos].next;
    if (next < 0) return;
    auto it = merges.find(PairKey(symbols[pos].id, symbols[next].id));
    if (it != merges.end())
      queue.push({it->second.rank, pos, symbols[pos].id, symbols[next].id, it->second.id});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) consider(i);
  std::vector<bool> dead(symbols.size(), false);
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    if (dead[c.pos] || symbols[c.pos].id != c.left) continue;
    const int32_t next = symbols[c.pos].next;
    if (next < 0 || symbols[next].id != c.right) continue;
    symbols[c.pos].id = c.merged;
    symbols[c.pos].next = symbols[next].next;
    if (symbols[next].next >= 0) symbols[symbols[next].next].prev = c.pos;
    dead[next] = true;
    consider(symbols[c.pos].prev);
    consider(c.pos);
  }
  for (int32_t i = 0; i >= 0; i = symbols[i].next) out->push_back(symbols[i].id);
}

// --- decoding ------------------------------------------------------------------

std::vector<std::string> Tokenizer::Impl::DecodeChain(std::vector<std::string> tokens) const {
  for (const DecoderStep& step : decoders) {
    switch (step.kind) {
      case DecoderStep::kReplace:
        for (std::string& t : tokens) t = absl::StrReplaceAll(t, {{step.a, step.b}});
        break;
      case DecoderStep::kByteFallback: {
        std::vector<std::string> next;
        std::string bytes;
        size_t byte_tokens = 0;
        auto flush = [&] {
          if (byte_tokens == 0) return;
          if (IsValidUtf8(bytes)) {
            next.push_back(bytes);
          } else {
            for (size_t k = 0; k < byte_tokens; ++k) next.push_back("\xEF\xBF\xBD");
          }
          bytes.clear();
          byte_tokens = 0;
        };
        for (std::string& t : tokens) {
          int value = -1;
          if (t.size() == 6 && absl::StartsWith(t, "<0x") && t[5] == '>') {
            auto hex = [](char c) {
              return c >= '0' && c <= '9'   ? c - '0'
                     : c >= 'A' && c <= 'F' ? c - 'A' + 10
                     : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                            : -1;
            };
            const int hi = hex(t[3]), lo = hex(t[4]);
            if (hi >= 0 && lo >= 0) value = hi * 16 + lo;
          }
          if (value >= 0) {
            bytes.push_back(static_cast<char>(value));
            ++byte_tokens;
          } else {
            flush();
            next.push_back(std::move(t));
          }
        }
        flush();
        tokens = std::move(next);
        break;
      }
      case DecoderStep::kFuse: {
        std::string all;
        for (const std::string& t : tokens) all += t;
        tokens.assign(1, std::move(all));
        break;
      }
      case DecoderStep::kStrip:
        for (std::string& t : tokens) {
          size_t begin = 0, end = t.size();
          for (size_t k = 0;
               k < step.start && absl::StartsWith(absl::string_view(t).substr(begin), step.a);
               ++k) {
            begin += step.a.size();
          }
          for (size_t k = 0;
               k < step.stop && end >= begin + step.a.size() &&
               absl::string_view(t).substr(end - step.a.size(), step.a.size()) == step.a;
               ++k) {
            end -= step.a.size();
          }
          t = t.substr(begin, end - begin);
        }
        break;
      case DecoderStep::kByteLevel: {
        std::string bytes;
        for (const std::string& t : tokens) {
          std::string mapped;
          bool ok = true;
          for (size_t pos = 0; pos < t.size() && ok;) {
            auto it = Alphabet().char_to_byte.find(NextCodepoint(t, &pos));
            if (it == Alphabet().char_to_byte.end()) {
              ok = false;
            } else {
              mapped.push_back(static_cast<char>(it->second));
            }
          }
          bytes += ok ? mapped : t;
        }
        tokens.assign(1, SanitizeUtf8(bytes));
        break;
      }
      case DecoderStep::kMetaspace:
        for (size_t k = 0; k < tokens.size(); ++k) {
          std::string t = absl::StrReplaceAll(tokens[k], {{step.a, " "}});
          if (k == 0 && step.prepend && absl::StartsWith(t, " ")) t.erase(0, 1);
          tokens[k] = std::move(t);
        }
        break;
    }
  }
  return tokens;
}

// --- Tokenizer -------------------------------------------------------------------

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {}
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(absl::string_view text,
                                                               const std::string& source) {
  const JsonReader reader(source);
  json root = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return reader.Error("$", "not valid JSON");
  std::unique_ptr<Tokenizer> tok(new Tokenizer());
  tok->impl_->source = source;
  try {
    TF_RETURN_IF_ERROR(tok->impl_->Load(root, reader));
  } catch (const std::exception& e) {
    return reader.Error("$", e.what());
  }
  if (!tok->impl_->bos_token.empty() && !tok->TokenToId(tok->impl_->bos_token))
    tok->impl_->bos_token.clear();
  return tok;
}

namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read error"));
  return ss.str();
}


}  // namespace

std::string ConfigToken(const json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    return (*it)["content"].get<std::string>();
  }
  return "";
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path) {
  TF_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  return FromJson(text, path);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromDirectory(const std::string& dir) {
  TF_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, FromFile(dir + "/tokenizer.json"));
  const std::string config_path = dir + "/tokenizer_config.json";
  absl::StatusOr<std::string> text = ReadFile(config_path);
  if (!text.ok()) return tok;  // optional
  json config = json::parse(text->begin(), text->end(), nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(config_path, ": $: not a JSON object"));
  }
  Impl& impl = *tok->impl_;
  const std::string bos = ConfigToken(config, "bos_token"), eos = ConfigToken(config, "eos_token");
  if (!bos.empty()) impl.bos_token = bos;
  if (!eos.empty()) impl.eos_token = eos;
  if (config.contains("bos_token") && config["bos_token"].is_null()) impl.bos_token.clear();
  // transformers' LlamaTokenizerFast rebuilds the post-processor from
  // add_bos_token (default true) and add_eos_token (default false).
  const std::string cls = config.value("tokenizer_class", "");
  if (cls == "LlamaTokenizer" || cls == "LlamaTokenizerFast") {
    const bool add_bos = config.contains("add_bos_token") && config["add_bos_token"].is_boolean()
                             ? config["add_bos_token"].get<bool>()
                             : true;
    const bool add_eos = config.contains("add_eos_token") && config["add_eos_token"].is_boolean()
                             ? config["add_eos_token"].get<bool>()
                             : false;
    std::vector<TemplatePiece> tmpl;
    auto bos_id = tok->bos_id();
    auto eos_id = tok->eos_id();
    if (add_bos && bos_id) tmpl.push_back({false, {*bos_id}});
    tmpl.push_back({true, {}});
    if (add_eos && eos_id) tmpl.push_back({false, {*eos_id}});
    impl.single_template = std::move(tmpl);
  }
  return tok;
}

void Tokenizer::Impl::EncodePiece(absl::string_view span, bool first,
                                  std::vector<int32_t>* ids) const {
  for (const std::string& word : PreTokenize(Normalize(span), first)) {
    if (!split_before_spm_space) {
      Bpe(word, ids);
      continue;
    }
    const absl::string_view w(word);
    size_t start = 0;
    for (size_t pos = w.find(kSpmSpace, 1); pos != absl::string_view::npos;
         pos = w.find(kSpmSpace, pos + 1)) {
      if (!absl::EndsWith(w.substr(0, pos), kSpmSpace)) {
        Bpe(w.substr(start, pos - start), ids);
        start = pos;
      }
    }
    Bpe(w.substr(start), ids);
  }
}

std::vector<int32_t> Tokenizer::EncodePiece(absl::string_view span, bool first) const {
  std::vector<int32_t> ids;
  impl_->EncodePiece(span, first, &ids);
  return ids;
}

std::optional<std::vector<int32_t>> Tokenizer::EncodeWithPieces(
    absl::string_view text, std::vector<EncodedPiece>* pieces) const {
  const Impl& impl = *impl_;
  if (SanitizeUtf8(text) != text) return std::nullopt;
  std::vector<int32_t> ids;
  pieces->clear();
  for (const Piece& piece : impl.SplitAdded(text)) {
    EncodedPiece p;
    p.byte_begin = piece.begin;
    p.byte_end = piece.end;
    p.token_begin = ids.size();
    p.added = piece.added;
    if (piece.added) {
      ids.push_back(piece.id);
    } else {
      impl.EncodePiece(text.substr(piece.begin, piece.end - piece.begin), piece.begin == 0, &ids);
    }
    p.token_end = ids.size();
    pieces->push_back(p);
  }
  return ids;
}

std::vector<int32_t> Tokenizer::Encode(absl::string_view raw, bool add_special_tokens) const {
  const Impl& impl = *impl_;
  const std::string text = SanitizeUtf8(raw);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  for (const Piece& piece : impl.SplitAdded(text)) {
    if (piece.added) {
      ids.push_back(piece.id);
      continue;
    }
    impl.EncodePiece(absl::string_view(text).substr(piece.begin, piece.end - piece.begin),
                     piece.begin == 0, &ids);
  }
  if (!add_special_tokens || impl.single_template.empty()) return ids;
  std::vector<int32_t> out;
  out.reserve(ids.size() + 4);
  for (const TemplatePiece& p : impl.single_template) {
    if (p.is_sequence) {
      out.insert(out.end(), ids.begin(), ids.end());
    } else {
      out.insert(out.end(), p.ids.begin(), p.ids.end());
    }
  }
  return out;
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const {
  const Impl& impl = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    auto it = impl.added_by_id.find(id);
    if (it != impl.added_by_id.end()) {
      const AddedToken& t = impl.added[it->second];
      if (skip_special_tokens && t.special) continue;
      tokens.push_back(t.content);
    } else if (id >= 0 && static_cast<size_t>(id) < impl.id_to_token.size() &&
               !impl.id_to_token[id].empty()) {
      tokens.push_back(impl.id_to_token[id]);
    }
  }
  if (!impl.has_decoder) {
    std::string out;
    for (size_t k = 0; k < tokens.size(); ++k) absl::StrAppend(&out, k ? " " : "", tokens[k]);
    return out;
  }
  std::string out;
  for (const std::string& t : impl.DecodeChain(std::move(tokens))) out += t;
  return out;
}

std::optional<int32_t> Tokenizer::TokenToId(absl::string_view token) const {
  auto a = impl_->added_by_content.find(std::string(token));
  if (a != impl_->added_by_content.end()) return impl_->added[a->second].id;
  auto it = impl_->vocab.find(token);
  if (it != impl_->vocab.end()) return it->second;
  return std::nullopt;
}

std::string Tokenizer::IdToToken(int32_t id) const {
  auto it = impl_->added_by_id.find(id);
  if (it != impl_->added_by_id.end()) return impl_->added[it->second].content;
  if (id >= 0 && static_cast<size_t>(id) < impl_->id_to_token.size()) return impl_->id_to_token[id];
  return "";
}

int32_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

bool Tokenizer::IsSpecial(int32_t id) const {
  auto it = impl_->added_by_id.find(id);
  return it != impl_->added_by_id.end() && impl_->added[it->second].special;
}

const std::vector<AddedToken>& Tokenizer::added_tokens() const { return impl_->added; }
const std::string& Tokenizer::bos_token() const { return impl_->bos_token; }
const std::string& Tokenizer::eos_token() const { return impl_->eos_token; }
std::optional<int32_t> Tokenizer::bos_id() const {
  return impl_->bos_token.empty() ? std::nullopt : TokenToId(impl_->bos_token);
}
std::optional<int32_t> Tokenizer::eos_id() const {
  return impl_->eos_token.empty() ? std::nullopt : TokenToId(impl_->eos_token);
}

// --- StreamDecoder -----------------------------------------------------------------

StreamDecoder::StreamDecoder(const Tokenizer* tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

std::string StreamDecoder::Push(int32_t id) {
  ids_.push_back(id);
  const absl::Span<const int32_t> all(ids_);
  const std::string prefix = tokenizer_->Decode(
      all.subspan(prefix_offset_, read_offset_ - prefix_offset_), skip_special_tokens_);
  const std::string text = tokenizer_->Decode(all.subspan(prefix_offset_), skip_special_tokens_);
  if (text.size() <= prefix.size() || absl::EndsWith(text, "\xEF\xBF\xBD") ||
      !absl::StartsWith(text, prefix)) {
    // An unfinished UTF-8 sequence (or nothing new yet): wait for more.
    return "";
  }
  prefix_offset_ = read_offset_;
  read_offset_ = ids_.size();
  return text.substr(prefix.size());
}

std::string StreamDecoder::Flush() {
  const absl::Span<const int32_t> all(ids_);
  const std::string prefix = tokenizer_->Decode(
      all.subspan(prefix_offset_, read_offset_ - prefix_offset_), skip_special_tokens_);
  const std::string text = tokenizer_->Decode(all.subspan(prefix_offset_), skip_special_tokens_);
  prefix_offset_ = read_offset_ = ids_.size();
  return absl::StartsWith(text, prefix) ? text.substr(prefix.size()) : "";
}

}  // namespace tunefleet::text
