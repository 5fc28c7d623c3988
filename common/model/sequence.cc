#include "common/model/sequence.h"

#include <algorithm>
#include <utility>

namespace tunefleet::model {
namespace {

bool IsContinuation(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// U+FFFD (EF BF BD) at the end: the decoder saw an incomplete sequence.
bool EndsWithReplacement(const std::string& s) {
  return s.size() >= 3 && s.compare(s.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}

}  // namespace

StopMatcher::StopMatcher(std::vector<std::string> stops) {
  for (auto& s : stops) {
    if (s.empty()) continue;
    longest_ = std::max(longest_, s.size());
    stops_.push_back(std::move(s));
  }
}

StopMatcher::Step StopMatcher::Feed(absl::string_view piece) {
  Step step;
  if (stopped_) return step;
  pending_.append(piece.data(), piece.size());
  // The earliest match wins (two stops may both occur in the window).
  size_t best = std::string::npos;
  for (const std::string& s : stops_) {
    const size_t at = pending_.find(s);
    if (at < best) {
      best = at;
      step.stop = s;
    }
  }
  if (best != std::string::npos) {
    stopped_ = true;
    step.release = pending_.substr(0, best);
    pending_.clear();
    return step;
  }
  // Hold back what could be the start of a stop string, on a character
  // boundary.
  const size_t keep = longest_ > 0 ? longest_ - 1 : 0;
  if (pending_.size() <= keep) return step;
  size_t cut = pending_.size() - keep;
  while (cut > 0 && cut < pending_.size() && IsContinuation(pending_[cut])) --cut;
  step.release = pending_.substr(0, cut);
  pending_.erase(0, cut);
  return step;
}

std::string StopMatcher::Flush() {
  if (stopped_) return {};
  return std::exchange(pending_, std::string());
}

std::string IncrementalDetokenizer::Decode(size_t from, size_t to) const {
  if (from >= to) return {};
  return decode_(std::vector<int64_t>(ids_.begin() + static_cast<std::ptrdiff_t>(from),
                                      ids_.begin() + static_cast<std::ptrdiff_t>(to)));
}

std::string IncrementalDetokenizer::Push(int64_t token) {
  ids_.push_back(token);
  const std::string before = Decode(prefix_, read_);
  const std::string now = Decode(prefix_, ids_.size());
  // Nothing new, or an unfinished character: wait for the next token.
  if (now.size() <= before.size() || EndsWithReplacement(now)) return {};
  // The window [prefix_, read_) rendered `before`; what the new tokens add
  // follows it. The next window starts where this step's tokens begin.
  std::string out = now.substr(before.size());
  prefix_ = read_;
  read_ = ids_.size();
  return out;
}

std::string IncrementalDetokenizer::Flush() {
  const std::string before = Decode(prefix_, read_);
  const std::string now = Decode(prefix_, ids_.size());
  read_ = ids_.size();
  if (now.size() <= before.size()) return {};
  return now.substr(before.size());
}

Sequence::Sequence(SamplingParams params, IncrementalDetokenizer::DecodeFn decode)
    : params_(std::move(params)),
      want_text_(static_cast<bool>(decode)),
      detok_(std::move(decode)),
      matcher_(params_.stop_strings) {
  if (params_.max_new_tokens <= 0) Finish(FinishReason::kLength);
}

void Sequence::MarkTextEnds() {
  for (size_t i = text_ends_.size(); i < tokens_.size(); ++i) text_ends_.push_back(decoded_);
}

std::optional<FinishReason> Sequence::Accept(int64_t token, std::optional<TokenLogprob> logprob) {
  if (finish_) return finish_;
  const auto& stops = params_.stop_token_ids;
  if (std::find(stops.begin(), stops.end(), token) != stops.end()) {
    stop_token_id_ = token;
    Finish(FinishReason::kStopToken);
    return finish_;
  }
  tokens_.push_back(token);
  ++counts_[token];
  if (params_.logprobs) {
    if (!logprob) logprob = TokenLogprob{token, 0, {}};
    logprobs_.push_back(*std::move(logprob));
  }
  if (want_text_) {
    const std::string piece = detok_.Push(token);
    decoded_ += piece.size();
    // A token whose characters are incomplete ends with the next one that
    // completes them.
    if (!piece.empty()) MarkTextEnds();
    StopMatcher::Step step = matcher_.Feed(piece);
    text_ += step.release;
    if (step.stop) {
      stop_string_ = *step.stop;
      finish_ = FinishReason::kStopString;  // the matcher has released all it will
      return finish_;
    }
  }
  if (static_cast<int64_t>(tokens_.size()) >= params_.max_new_tokens) Finish(FinishReason::kLength);
  return finish_;
}

void Sequence::Cancel() {
  if (!finish_) Finish(FinishReason::kCancelled);
}

void Sequence::Finish(FinishReason reason) {
  finish_ = reason;
  if (!want_text_) return;
  const std::string rest = detok_.Flush();
  decoded_ += rest.size();
  MarkTextEnds();
  StopMatcher::Step step = matcher_.Feed(rest);
  text_ += step.release;
  if (step.stop) {
    stop_string_ = *step.stop;
    finish_ = FinishReason::kStopString;
    return;
  }
  text_ += matcher_.Flush();
}

std::string Sequence::TakeNewText() {
  std::string out = text_.substr(taken_);
  taken_ = text_.size();
  return out;
}

}  // namespace tunefleet::model
