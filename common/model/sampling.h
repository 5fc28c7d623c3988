// Choosing a sequence's next token from the model's logits, without
// libtorch: OpenAI's frequency and presence penalties (from the tokens the
// sequence generated so far), greedy or seeded sampling (temperature, top-k,
// top-p), and log-probabilities when the request asks for them. Generate
// (generate.h) and the serving engine both choose every token here, one row
// at a time, so rows of a mixed batch each follow their own parameters.
#pragma once

#include <cstdint>
#include <optional>
#include <unordered_map>
#include <vector>

#include "common/model/sequence.h"

namespace tunefleet::model {

// Picks the next token from fp32 logits [vocab] under `params` (temperature,
// top-k, top-p; penalties are not applied here) with `uniform` in [0,1).
int64_t SampleToken(const float* logits, int64_t vocab, const SamplingParams& params,
                    double uniform);

// Subtracts count x frequency_penalty + presence_penalty (count > 0) from
// the logit of every token in `counts`.
void ApplyPenalties(const SamplingParams& params, const std::unordered_map<int64_t, int64_t>& counts,
                    float* logits, int64_t vocab);

// log_softmax(logits)[token] and the `top_n` most likely tokens with theirs
// (computed in double; most likely first, ties by lower id).
TokenLogprob LogprobsOf(const float* logits, int64_t vocab, int64_t token, int top_n);

struct TokenChoice {
  int64_t token = -1;
  std::optional<TokenLogprob> logprob;  // when seq.params().logprobs
};

// The next token of `seq` from the model's logits for it: penalties from
// seq.counts() (on a copy in `scratch`, only when a penalty is set), then
// SampleToken with `uniform` (draw it only when temperature > 0, so greedy
// rows consume no randomness), then the log-probabilities of the model's
// raw distribution when asked. The caller passes the result to Accept.
TokenChoice ChooseToken(const Sequence& seq, const float* logits, int64_t vocab, double uniform,
                        std::vector<float>* scratch);

}  // namespace tunefleet::model
