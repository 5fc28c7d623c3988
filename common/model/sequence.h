// Generation as steps, without libtorch: one request's sampling parameters,
// and a Sequence that takes the chosen tokens one at a time and says when
// (and why) the request is finished. Generate (generate.h) is a loop over
// Sequences; engines that run their own decode loop use them too.
//
// Stop strings are matched incrementally: each token's text is decoded
// against a short window of the tokens before it (never the whole output
// again), and a stop string split across any number of tokens is found.
// Text that could still be the start of a stop string is held back, so
// what text() has released never contains a stop string or part of one.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"

namespace tunefleet::model {

enum class FinishReason { kStopToken, kStopString, kLength, kCancelled };

// Per request: how to pick tokens and when to stop.
struct SamplingParams {
  int64_t max_new_tokens = 256;
  // 0: greedy (argmax); otherwise logits are divided by it and sampled.
  double temperature = 0.0;
  double top_p = 1.0;  // nucleus: the smallest set of tokens with this much mass
  int64_t top_k = 0;   // 0: no limit
  uint64_t seed = 0;
  // The request ends (not included in the output) at one of these.
  std::vector<int64_t> stop_token_ids;
  // The request ends when its text contains one of these; the text is cut
  // before it.
  std::vector<std::string> stop_strings;
  // OpenAI's penalties, from the counts of the tokens this sequence has
  // generated so far (the prompt does not count): before sampling, a
  // token's logit drops by frequency_penalty x its count, and by
  // presence_penalty once it has occurred. Negative values favour
  // repetition. 0: off (no cost).
  double frequency_penalty = 0;
  double presence_penalty = 0;
  // The log-probability of each generated token and of the `top_logprobs`
  // most likely tokens at its step. They come from the model's own
  // distribution: log_softmax of the raw logits, before penalties,
  // temperature, top-k and top-p (so a label's probability does not depend
  // on how it was sampled). Off: no cost.
  bool logprobs = false;
  int top_logprobs = 0;
};

// One generated token's log-probability and the most likely alternatives at
// its step (most likely first; ties: lower id first).
struct TokenLogprob {
  int64_t token = -1;
  double logprob = 0;
  std::vector<std::pair<int64_t, double>> top;
};

// Finds stop strings in text that arrives in pieces. Feed returns the text
// that is now safe to release: none of it can be part of a stop string.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);

  struct Step {
    std::string release;       // safe text (whole UTF-8 characters)
    std::optional<std::string> stop;  // the stop string found, if any
  };
  // After a stop is found, further pieces are ignored.
  Step Feed(absl::string_view piece);
  // The held-back tail, at the natural end of the text.
  std::string Flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  size_t longest_ = 0;
  std::string pending_;
  bool stopped_ = false;
};

// Turns tokens into text one at a time, given a function that decodes a
// run of tokens: each step decodes only a short window (the tokens of the
// previous release as context, since tokenizers render a token differently
// at the start of a text, plus those not yet released). Never releases a
// broken UTF-8 sequence (U+FFFD at the end means "wait for more").
class IncrementalDetokenizer {
 public:
  using DecodeFn = std::function<std::string(const std::vector<int64_t>&)>;
  explicit IncrementalDetokenizer(DecodeFn decode) : decode_(std::move(decode)) {}
  std::string Push(int64_t token);
  std::string Flush();

 private:
  std::string Decode(size_t from, size_t to) const;
  DecodeFn decode_;
  std::vector<int64_t> ids_;
  size_t prefix_ = 0;  // the decoding window starts here
  size_t read_ = 0;    // ids_[..read_) are released
};

// One request's state across decode steps.
class Sequence {
 public:
  // `decode` may be empty when there are no stop strings and no text is
  // wanted.
  Sequence(SamplingParams params, IncrementalDetokenizer::DecodeFn decode);

  // The token chosen at this step (with its log-probabilities when the
  // params ask for them, see ChooseToken in sampling.h). Returns the finish
  // reason once the request is done (then further calls are ignored): a
  // stop token (not appended), a stop string (the text is cut before it),
  // or the budget.
  std::optional<FinishReason> Accept(int64_t token, std::optional<TokenLogprob> logprob = {});
  // Ends the request early (a cancel): kCancelled.
  void Cancel();

  const SamplingParams& params() const { return params_; }
  const std::vector<int64_t>& tokens() const { return tokens_; }
  bool finished() const { return finish_.has_value(); }
  std::optional<FinishReason> finish_reason() const { return finish_; }
  int64_t stop_token_id() const { return stop_token_id_; }
  const std::string& stop_string() const { return stop_string_; }
  // The text released so far (cut at a stop string); complete once
  // finished.
  const std::string& text() const { return text_; }
  // The text released since the last call (for streaming).
  std::string TakeNewText();
  // How often each generated token occurred (what the penalties read).
  const std::unordered_map<int64_t, int64_t>& counts() const { return counts_; }
  // Parallel to tokens() when params().logprobs.
  const std::vector<TokenLogprob>& logprobs() const { return logprobs_; }
  // With text: where token i's text ends in the decoded output (text() is a
  // prefix of it), once known (kTextPending while its characters are
  // incomplete). A caller that releases text() in pieces releases token i's
  // log-probabilities once it has released text_end(i) bytes.
  static constexpr size_t kTextPending = static_cast<size_t>(-1);
  size_t text_end(size_t i) const { return i < text_ends_.size() ? text_ends_[i] : kTextPending; }

 private:
  void Finish(FinishReason reason);
  SamplingParams params_;
  bool want_text_;
  IncrementalDetokenizer detok_;
  StopMatcher matcher_;
  std::vector<int64_t> tokens_;
  std::optional<FinishReason> finish_;
  int64_t stop_token_id_ = -1;
  std::string stop_string_;
  std::string text_;
  size_t taken_ = 0;
  std::unordered_map<int64_t, int64_t> counts_;
  std::vector<TokenLogprob> logprobs_;
  std::vector<size_t> text_ends_;
  size_t decoded_ = 0;  // bytes the detokenizer has produced
  void MarkTextEnds();  // tokens whose text is complete end at decoded_
};

}  // namespace tunefleet::model
