// Text generation over a Decoder with a KV cache: greedy or sampled
// (temperature, top-k, top-p, seeded), stopping at end tokens, stop strings
// or a token budget: a batched loop over Sequences (sequence.h), one per
// prompt. The tokenizer stays outside this library: stop strings and text
// need a `detokenize` callback (called on short windows of tokens).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/decoder.h"
#include "common/model/sampling.h"
#include "common/model/sequence.h"

namespace tunefleet::model {

// The sampling parameters (sequence.h) for a batch (each row's token is
// chosen by ChooseToken, sampling.h: penalties from that row's own tokens,
// log-probabilities when asked), with two batch rules:
// row i samples from its own stream seeded with seed + i, so a row's tokens
// do not depend on what else is in the batch; empty stop_token_ids mean the
// model config's eos_token_id(s). Stop strings require `detokenize`.
struct GenerationOptions : SamplingParams {
  std::function<std::string(const std::vector<int64_t>&)> detokenize;
  // Called with each new token of each row as it is chosen; returning false
  // stops that row (finish reason kCancelled).
  std::function<bool(size_t row, int64_t token)> on_token;
  // One adapter for all prompts, or one per prompt (nullptr: the base).
  AdapterChoice adapter;
};

struct Generation {
  std::vector<int64_t> tokens;  // generated, without the prompt or stop token
  FinishReason finish_reason = FinishReason::kLength;
  int64_t stop_token_id = -1;  // kStopToken
  std::string stop_string;     // kStopString
  std::string text;            // detokenized output, cut at a stop string (with detokenize)
  std::vector<TokenLogprob> logprobs;  // parallel to tokens, when options.logprobs
};

// Generates a continuation of each prompt (token ids; rows may differ in
// length), batched. InvalidArgument for an empty prompt, an out-of-range id,
// stop strings without detokenize, or a prompt that leaves no room below
// max_position_embeddings.
absl::StatusOr<std::vector<Generation>> Generate(const Decoder& decoder,
                                                 const std::vector<std::vector<int64_t>>& prompts,
                                                 const GenerationOptions& options);

}  // namespace tunefleet::model
