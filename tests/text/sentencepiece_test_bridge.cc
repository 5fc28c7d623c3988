// No Abseil header here (see sentencepiece_test_bridge.h).
#include "tests/text/sentencepiece_test_bridge.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

namespace tunefleet::text::testing {

bool TrainSentencePiece(const std::string& args, std::string* error) {
  const auto status = sentencepiece::SentencePieceTrainer::Train(args);
  if (!status.ok()) *error = status.ToString();
  return status.ok();
}

bool SentencePieceEncode(const std::string& model_path, const std::vector<std::string>& texts,
                         std::vector<std::vector<int>>* ids, std::string* error) {
  sentencepiece::SentencePieceProcessor sp;
  auto status = sp.Load(model_path);
  if (!status.ok()) {
    *error = status.ToString();
    return false;
  }
  for (const std::string& text : texts) {
    std::vector<int> out;
    status = sp.Encode(text, &out);
    if (!status.ok()) {
      *error = status.ToString();
      return false;
    }
    ids->push_back(std::move(out));
  }
  return true;
}

}  // namespace tunefleet::text::testing
