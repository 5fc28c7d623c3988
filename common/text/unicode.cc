#include "common/text/unicode.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/text/unicode_tables.h"

namespace tunefleet::text {
namespace {

using internal::CodepointRange;

bool InRanges(const CodepointRange* ranges, size_t n, char32_t cp) {
  const CodepointRange* end = ranges + n;
  const CodepointRange* it =
      std::upper_bound(ranges, end, static_cast<uint32_t>(cp),
                       [](uint32_t v, const CodepointRange& r) { return v < r.lo; });
  return it != ranges && cp <= (it - 1)->hi;
}

uint8_t CombiningClass(char32_t cp) {
  if (cp < 0x300) return 0;
  const auto* begin = internal::kCombiningClasses;
  const auto* end = begin + internal::kCombiningClassesSize;
  const auto* it =
      std::upper_bound(begin, end, static_cast<uint32_t>(cp),
                       [](uint32_t v, const internal::CombiningClassRange& r) { return v < r.lo; });
  if (it == begin || cp > (it - 1)->hi) return 0;
  return (it - 1)->ccc;
}

constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr int kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
              kSCount = kLCount * kNCount;

void Decompose(char32_t cp, std::vector<char32_t>* out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const int s = static_cast<int>(cp - kSBase);
    out->push_back(kLBase + s / kNCount);
    out->push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out->push_back(kTBase + s % kTCount);
    return;
  }
  const auto* begin = internal::kDecompositions;
  const auto* end = begin + internal::kDecompositionsSize;
  const auto* it =
      std::lower_bound(begin, end, static_cast<uint32_t>(cp),
                       [](const internal::Decomposition& d, uint32_t v) { return d.cp < v; });
  if (it == end || it->cp != cp) {
    out->push_back(cp);
    return;
  }
  Decompose(it->first, out);
  if (it->second != 0) Decompose(it->second, out);
}

// The primary composite of (a, b), or 0.
char32_t Compose(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount) {
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  }
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount) {
    return a + (b - kTBase);
  }
  const auto* begin = internal::kCompositions;
  const auto* end = begin + internal::kCompositionsSize;
  const auto* it = std::lower_bound(
      begin, end, std::make_pair(static_cast<uint32_t>(a), static_cast<uint32_t>(b)),
      [](const internal::Composition& c, const std::pair<uint32_t, uint32_t>& v) {
        return c.first != v.first ? c.first < v.first : c.second < v.second;
      });
  if (it == end || it->first != a || it->second != b) return 0;
  return it->cp;
}

}  // namespace

std::string SanitizeUtf8(absl::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  const size_t n = bytes.size();
  while (i < n) {
    const unsigned char b = static_cast<unsigned char>(bytes[i]);
    if (b < 0x80) {
      out.push_back(static_cast<char>(b));
      ++i;
      continue;
    }
    size_t need = 0;
    unsigned char lower = 0x80, upper = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) {
      need = 1;
    } else if (b >= 0xE0 && b <= 0xEF) {
      need = 2;
      if (b == 0xE0) lower = 0xA0;
      if (b == 0xED) upper = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
      need = 3;
      if (b == 0xF0) lower = 0x90;
      if (b == 0xF4) upper = 0x8F;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
      continue;
    }
    size_t j = i + 1;
    bool ok = true;
    for (size_t k = 0; k < need; ++k, ++j) {
      if (j >= n) {
        ok = false;
        break;
      }
      const unsigned char c = static_cast<unsigned char>(bytes[j]);
      if (c < lower || c > upper) {
        ok = false;
        break;
      }
      lower = 0x80;
      upper = 0xBF;
    }
    if (ok) {
      out.append(bytes.data() + i, j - i);
    } else {
      out += "\xEF\xBF\xBD";  // the maximal subpart [i, j); bytes[j] is reprocessed
    }
    i = j;
  }
  return out;
}

bool IsValidUtf8(absl::string_view bytes) {
  for (unsigned char c : bytes) {
    if (c >= 0x80) return SanitizeUtf8(bytes) == bytes;
  }
  return true;
}

char32_t NextCodepoint(absl::string_view s, size_t* pos) {
  const unsigned char b = static_cast<unsigned char>(s[*pos]);
  const size_t len = std::min(Utf8SequenceLength(b), s.size() - *pos);
  char32_t cp = len == 1 ? b : len == 2 ? (b & 0x1F) : len == 3 ? (b & 0x0F) : (b & 0x07);
  for (size_t k = 1; k < len; ++k)
    cp = (cp << 6) | (static_cast<unsigned char>(s[*pos + k]) & 0x3F);
  *pos += len;
  return cp;
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool IsLetter(char32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  return InRanges(internal::kLetterRanges, internal::kLetterRangesSize, cp);
}

bool IsNumber(char32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return InRanges(internal::kNumberRanges, internal::kNumberRangesSize, cp);
}

bool IsWhiteSpace(char32_t cp) {
  // The White_Space property (stable since Unicode 6.3). JavaScript's \s
  // differs in two code points: it has U+FEFF and lacks U+0085.
  if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
  switch (cp) {
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

std::string NfcNormalize(absl::string_view utf8) {
  // Below U+0300 nothing decomposes into, or combines with, anything else.
  bool simple = true;
  for (unsigned char c : utf8) {
    if (c >= 0xCC) {  // lead bytes of U+0300 and above
      simple = false;
      break;
    }
  }
  if (simple) return std::string(utf8);
  std::vector<char32_t> cps;
  cps.reserve(utf8.size());
  for (size_t pos = 0; pos < utf8.size();) Decompose(NextCodepoint(utf8, &pos), &cps);
  // Canonical ordering: stable sort of each run of non-starters by class.
  for (size_t i = 0; i < cps.size();) {
    if (CombiningClass(cps[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < cps.size() && CombiningClass(cps[j]) != 0) ++j;
    std::stable_sort(cps.begin() + i, cps.begin() + j,
                     [](char32_t a, char32_t b) { return CombiningClass(a) < CombiningClass(b); });
    i = j;
  }
  // Canonical composition.
  std::vector<char32_t> out;
  out.reserve(cps.size());
  size_t starter = SIZE_MAX;
  int last_ccc = -1;
  for (char32_t cp : cps) {
    const int ccc = CombiningClass(cp);
    if (starter != SIZE_MAX) {
      const bool blocked = last_ccc != -1 && (last_ccc == 0 || last_ccc >= ccc);
      if (!blocked) {
        const char32_t composite = Compose(out[starter], cp);
        if (composite != 0) {
          out[starter] = composite;
          continue;
        }
      }
    }
    if (ccc == 0) {
      starter = out.size();
      last_ccc = -1;
    } else {
      last_ccc = ccc;
    }
    out.push_back(cp);
  }
  std::string result;
  result.reserve(utf8.size());
  for (char32_t cp : out) AppendUtf8(cp, &result);
  return result;
}

}  // namespace tunefleet::text
