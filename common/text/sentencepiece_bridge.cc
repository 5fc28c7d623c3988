// No Abseil header here (see sentencepiece_bridge.h).
#include "common/text/sentencepiece_bridge.h"

#include <sentencepiece_processor.h>

namespace tunefleet::text::internal {

bool LoadSentencePieceVocab(const std::string& path, SentencePieceVocab* vocab,
                            std::string* error) {
  sentencepiece::SentencePieceProcessor sp;
  const auto status = sp.Load(path);
  if (!status.ok()) {
    *error = status.ToString();
    return false;
  }
  const int n = sp.GetPieceSize();
  vocab->pieces.reserve(n);
  for (int id = 0; id < n; ++id) {
    vocab->pieces.push_back(sp.IdToPiece(id));
    vocab->scores.push_back(sp.GetScore(id));
    vocab->types.push_back(sp.IsUnknown(id)   ? SentencePieceType::kUnknown
                           : sp.IsControl(id) ? SentencePieceType::kControl
                           : sp.IsUnused(id)  ? SentencePieceType::kUnused
                           : sp.IsByte(id)    ? SentencePieceType::kByte
                                              : SentencePieceType::kNormal);
  }
  vocab->unk_id = sp.unk_id();
  vocab->bos_id = sp.bos_id();
  vocab->eos_id = sp.eos_id();
  return true;
}

}  // namespace tunefleet::text::internal
