// libsentencepiece's trainer and encoder for sentencepiece_test.cc, behind
// standard types (its header clashes with Abseil's absl::string_view).
#pragma once

#include <string>
#include <vector>

namespace tunefleet::text::testing {

// SentencePieceTrainer::Train(args); false with `*error` on failure.
bool TrainSentencePiece(const std::string& args, std::string* error);
// sentencepiece's own ids for each text (no BOS).
bool SentencePieceEncode(const std::string& model_path, const std::vector<std::string>& texts,
                         std::vector<std::vector<int>>* ids, std::string* error);

}  // namespace tunefleet::text::testing
