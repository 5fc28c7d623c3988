// Tokenizers read from a Hugging Face `tokenizer.json`: BPE with the
// sentencepiece-style normalizer and byte fallback (Llama-2, Mistral, Phi-3),
// byte-level BPE with its pre-tokenizer regex (Llama-3, Qwen), added tokens,
// the post-processor's special tokens and the decoder chain.
//
// Thread-safety: a Tokenizer is immutable after loading; Encode and Decode
// may be called from any number of threads. StreamDecoder is not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace tunefleet::text {

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool single_word = false;  // only matches as a whole word
  bool lstrip = false;       // swallows the whitespace before it
  bool rstrip = false;       // swallows the whitespace after it
  bool normalized = false;
  bool special = false;  // skipped by Decode(..., skip_special_tokens=true)
};

class Tokenizer {
 public:
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Parses tokenizer.json text; `source` (a file name) prefixes every error,
  // which also names the JSON path. INVALID_ARGUMENT for malformed input,
  // UNIMPLEMENTED for a component this library does not support.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(
      absl::string_view json, const std::string& source = "tokenizer.json");
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(
      const std::string& tokenizer_json_path);
  // A model directory: tokenizer.json, and tokenizer_config.json when present
  // for bos/eos/pad token names and, for LlamaTokenizer classes, the
  // add_bos_token/add_eos_token switches that transformers applies over the
  // post-processor. NOT_FOUND when tokenizer.json is missing.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromDirectory(const std::string& dir);

  // Token ids of `text`, which may be any bytes: invalid UTF-8 is replaced
  // by U+FFFD first (as browsers and Node decode it). Added tokens are
  // matched before the model; `add_special_tokens` adds the post-processor's
  // tokens (e.g. BOS).
  std::vector<int32_t> Encode(absl::string_view text, bool add_special_tokens = true) const;
  // How Encode split a text around added tokens: each piece's byte range and
  // the range of its tokens in the result. Tokens never span two pieces.
  struct EncodedPiece {
    size_t byte_begin = 0, byte_end = 0;
    size_t token_begin = 0, token_end = 0;
    bool added = false;
  };
  // Encode(text, false), also filling `pieces`. Returns nullopt when `text`
  // is not valid UTF-8 (byte ranges would not refer to it).
  std::optional<std::vector<int32_t>> EncodeWithPieces(absl::string_view text,
                                                       std::vector<EncodedPiece>* pieces) const;
  // The tokens Encode gives a non-added piece that spans exactly `span`,
  // where `first` says whether the piece starts the text (some normalizers
  // treat the first piece apart).
  std::vector<int32_t> EncodePiece(absl::string_view span, bool first) const;

  // The text of `ids` through the decoder chain; ids outside the vocabulary
  // are skipped. May hold U+FFFD where ids end inside a UTF-8 sequence.
  std::string Decode(absl::Span<const int32_t> ids, bool skip_special_tokens = false) const;

  std::optional<int32_t> TokenToId(absl::string_view token) const;
  // The token string (model or added); empty for an unknown id.
  std::string IdToToken(int32_t id) const;
  // One past the largest id (model or added).
  int32_t vocab_size() const;
  bool IsSpecial(int32_t id) const;
  const std::vector<AddedToken>& added_tokens() const;

  // From tokenizer_config.json (FromDirectory), else guessed from the
  // post-processor; empty/nullopt when unknown.
  const std::string& bos_token() const;
  const std::string& eos_token() const;
  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;

 private:
  Tokenizer();
  struct Impl;
  std::unique_ptr<Impl> impl_;
  friend class StreamDecoder;
};

// Incremental decoding for token streaming: Push returns the text that the
// new token completes, never a broken UTF-8 sequence (an incomplete one is
// held back until the tokens that complete it arrive); the concatenation of
// all Push results and Flush equals Decode of all ids.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer* tokenizer, bool skip_special_tokens = false);
  std::string Push(int32_t id);
  // Whatever is held back (with U+FFFD for an unfinished sequence).
  std::string Flush();

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_tokens_;
  std::vector<int32_t> ids_;
  size_t prefix_offset_ = 0;  // the window that gives decoding context
  size_t read_offset_ = 0;    // ids_[..read_offset_) are emitted
};

}  // namespace tunefleet::text
