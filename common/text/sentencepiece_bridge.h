// The few libsentencepiece calls the importer needs, behind standard types:
// sentencepiece's header declares `absl::string_view` itself, which clashes
// with Abseil's, so only sentencepiece_bridge.cc includes it.
#pragma once

#include <string>
#include <vector>

namespace tunefleet::text::internal {

enum class SentencePieceType { kNormal, kUnknown, kControl, kUnused, kByte };

struct SentencePieceVocab {
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<SentencePieceType> types;
  int unk_id = -1, bos_id = -1, eos_id = -1;
};

// False with `*error` when `path` is not a loadable sentencepiece model.
bool LoadSentencePieceVocab(const std::string& path, SentencePieceVocab* vocab, std::string* error);

}  // namespace tunefleet::text::internal
