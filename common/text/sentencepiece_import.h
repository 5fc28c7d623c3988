// Model directories that carry only a sentencepiece `tokenizer.model`
// (Llama-2, Mistral, Phi-3 style BPE): converted the way transformers'
// LlamaConverter converts them into a tokenizer.json (merges ordered by the
// merged piece's score, byte fallback, the legacy ▁ normalizer), then loaded
// as any tokenizer.json. A separate target (tunefleet_text_sentencepiece),
// built where libsentencepiece is found; tunefleet_text does not need it.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/text/tokenizer.h"

namespace tunefleet::text {

// tokenizer.json text for a sentencepiece BPE model; `add_bos` puts the BOS
// in the post-processor. INVALID_ARGUMENT naming the file for an unreadable
// model; UNIMPLEMENTED for a unigram model without merges.
absl::StatusOr<std::string> SentencePieceModelToTokenizerJson(const std::string& model_path,
                                                              bool add_bos = true);

// Tokenizer::FromDirectory when `dir` has tokenizer.json; else its
// tokenizer.model (with tokenizer_config.json's add_bos_token when present).
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerFromDirectory(const std::string& dir);

}  // namespace tunefleet::text
