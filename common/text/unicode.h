// UTF-8 and Unicode helpers for the tokenizer: decoding with the WHATWG
// replacement rules, the character classes of the pre-tokenizer regexes, NFC.
#pragma once

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace tunefleet::text {

// Valid UTF-8 where every maximal ill-formed subsequence of `bytes` became
// U+FFFD, exactly as the WHATWG (browser, Node) decoder and Rust's
// from_utf8_lossy do.
std::string SanitizeUtf8(absl::string_view bytes);
bool IsValidUtf8(absl::string_view bytes);

// Decodes the code point at `s[*pos]` of valid UTF-8 and advances `*pos`.
char32_t NextCodepoint(absl::string_view s, size_t* pos);
void AppendUtf8(char32_t cp, std::string* out);
// Byte length of a UTF-8 sequence from its lead byte (1 for invalid leads).
inline size_t Utf8SequenceLength(unsigned char lead) {
  return lead < 0x80 ? 1 : lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
}

// \p{L}, \p{N}, and \s (the Unicode White_Space property).
bool IsLetter(char32_t cp);
bool IsNumber(char32_t cp);
bool IsWhiteSpace(char32_t cp);

// Unicode Normalization Form C of valid UTF-8.
std::string NfcNormalize(absl::string_view utf8);

}  // namespace tunefleet::text
