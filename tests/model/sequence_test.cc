// Generation as steps: incremental stop strings (split across tokens, never
// released in part), stop tokens, budgets, whole UTF-8 characters, and
// decoding on short windows only.
#include "common/model/sequence.h"

#include <gmock/gmock.h>

#include <cmath>

#include "common/model/sampling.h"
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

namespace tunefleet::model {
namespace {

using ::testing::ElementsAre;
using ::testing::Optional;

// A toy tokenizer: each id is a fixed byte string; ids 100/101 are the two
// bytes of "é" (a broken sequence alone renders as U+FFFD, as real
// byte-fallback tokenizers do).
const std::map<int64_t, std::string>& Vocab() {
  static const auto* v = new std::map<int64_t, std::string>{
      {1, "Hel"}, {2, "lo "}, {3, "wor"}, {4, "ld"}, {5, "<"}, {6, "/s"}, {7, ">"},
      {8, " more"}, {9, "<x"}, {100, "\xC3"}, {101, "\xA9"}, {2000, "EOS"}};
  return *v;
}
size_t max_window = 0;
std::string Decode(const std::vector<int64_t>& ids) {
  max_window = std::max(max_window, ids.size());
  std::string raw;
  for (int64_t id : ids) raw += Vocab().at(id);
  // Replace an incomplete trailing UTF-8 sequence, like a real decoder.
  if (!raw.empty() && static_cast<unsigned char>(raw.back()) == 0xC3) {
    raw.back() = '\xEF';
    raw += "\xBF\xBD";
  }
  if (!raw.empty() && static_cast<unsigned char>(raw.front()) == 0xA9) raw.replace(0, 1, "\xEF\xBF\xBD");
  return raw;
}

SamplingParams Params(std::vector<std::string> stops, int64_t budget = 100) {
  SamplingParams p;
  p.max_new_tokens = budget;
  p.stop_token_ids = {2000};
  p.stop_strings = std::move(stops);
  return p;
}

TEST(StopMatcher, FindsAStopSplitAcrossPiecesAndNeverReleasesPartOfIt) {
  StopMatcher m({"</s>", "STOP"});
  std::string released;
  for (const char* piece : {"Hello", " wor", "ld <", "/", "s", "> tail"}) {
    StopMatcher::Step step = m.Feed(piece);
    released += step.release;
    EXPECT_EQ(released.find('<'), std::string::npos) << "released " << released;
    if (step.stop) {
      EXPECT_EQ(*step.stop, "</s>");
      break;
    }
  }
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(released, "Hello world ");
  EXPECT_TRUE(m.Feed("more").release.empty());
}

TEST(StopMatcher, ReleasesTheHeldTailWhenNoStopComes) {
  StopMatcher m({"</s>"});
  std::string released = m.Feed("a <").release;
  released += m.Feed("/b").release;
  released += m.Flush();
  EXPECT_EQ(released, "a </b");
}

TEST(Sequence, StopStringSplitAcrossTokensCutsTheText) {
  max_window = 0;
  Sequence seq(Params({"</s>"}), Decode);
  std::string streamed;
  std::optional<FinishReason> finish;
  for (int64_t t : {1, 2, 3, 4, 5, 6, 7, 8}) {
    finish = seq.Accept(t);
    streamed += seq.TakeNewText();
    EXPECT_EQ(streamed.find('<'), std::string::npos);
    if (finish) break;
  }
  EXPECT_THAT(finish, Optional(FinishReason::kStopString));
  EXPECT_EQ(seq.stop_string(), "</s>");
  EXPECT_EQ(seq.text(), "Hello world");
  EXPECT_EQ(streamed, "Hello world");
  EXPECT_THAT(seq.tokens(), ElementsAre(1, 2, 3, 4, 5, 6, 7));
  // Each step decoded a short window, never the whole output.
  EXPECT_LE(max_window, 3u);
  // Finished: further tokens change nothing.
  EXPECT_THAT(seq.Accept(8), Optional(FinishReason::kStopString));
  EXPECT_EQ(seq.tokens().size(), 7u);
}

TEST(Sequence, AFalseStartIsReleasedWhenItTurnsOutNotToBeAStop) {
  Sequence seq(Params({"</s>"}, 4), Decode);
  EXPECT_EQ(seq.Accept(1), std::nullopt);
  EXPECT_EQ(seq.Accept(9), std::nullopt);  // "<x": could have been a stop
  EXPECT_EQ(seq.Accept(2), std::nullopt);
  EXPECT_THAT(seq.Accept(3), Optional(FinishReason::kLength));
  EXPECT_EQ(seq.text(), "Hel<xlo wor");
}

TEST(Sequence, StopTokenIsNotAppendedAndFlushesTheText) {
  Sequence seq(Params({"</s>"}), Decode);
  seq.Accept(1);
  seq.Accept(2);
  EXPECT_THAT(seq.Accept(2000), Optional(FinishReason::kStopToken));
  EXPECT_EQ(seq.stop_token_id(), 2000);
  EXPECT_THAT(seq.tokens(), ElementsAre(1, 2));
  EXPECT_EQ(seq.text(), "Hello ");
}

TEST(Sequence, ReleasesWholeUtf8CharactersOnly) {
  Sequence seq(Params({}), Decode);
  seq.Accept(1);
  EXPECT_EQ(seq.TakeNewText(), "Hel");
  seq.Accept(100);  // the first byte of "é"
  EXPECT_EQ(seq.TakeNewText(), "");
  seq.Accept(101);
  EXPECT_EQ(seq.TakeNewText(), "\xC3\xA9");
  seq.Accept(4);
  EXPECT_EQ(seq.TakeNewText(), "ld");
}

TEST(Sequence, BudgetAndCancelWithoutText) {
  Sequence budget(Params({}, 2), nullptr);
  EXPECT_EQ(budget.Accept(1), std::nullopt);
  EXPECT_THAT(budget.Accept(2), Optional(FinishReason::kLength));
  EXPECT_TRUE(budget.text().empty());
  Sequence cancelled(Params({}, 10), Decode);
  cancelled.Accept(1);
  cancelled.Cancel();
  EXPECT_THAT(cancelled.finish_reason(), Optional(FinishReason::kCancelled));
  EXPECT_EQ(cancelled.text(), "Hel");
  Sequence none(Params({}, 0), Decode);
  EXPECT_THAT(none.finish_reason(), Optional(FinishReason::kLength));
}

// Penalties on a manual logits case: count x frequency_penalty and a flat
// presence_penalty move the argmax away from a repeated token, per sequence.
TEST(Sampling, PenaltiesChangeTheArgmaxAsOpenAIDefinesThem) {
  const std::vector<float> logits = {1.0f, 3.0f, 2.9f, 0.0f};
  auto choose = [&](const Sequence& seq) {
    std::vector<float> scratch;
    return ChooseToken(seq, logits.data(), 4, /*uniform=*/0.0, &scratch).token;
  };
  SamplingParams p;
  p.max_new_tokens = 10;
  Sequence plain(p, nullptr);
  plain.Accept(1);
  EXPECT_EQ(choose(plain), 1);  // no penalty: the repeated token wins again
  p.frequency_penalty = 0.06;   // once: 3.0 - 0.06 > 2.9; twice: 3.0 - 0.12 < 2.9
  Sequence freq(p, nullptr);
  EXPECT_EQ(choose(freq), 1);  // nothing generated yet: nothing to penalize
  freq.Accept(1);
  EXPECT_EQ(choose(freq), 1);
  freq.Accept(1);
  EXPECT_EQ(choose(freq), 2);
  EXPECT_EQ(freq.counts().at(1), 2);
  p.frequency_penalty = 0;
  p.presence_penalty = 0.2;  // flat, whatever the count
  Sequence presence(p, nullptr);
  presence.Accept(1);
  EXPECT_EQ(choose(presence), 2);
  p.presence_penalty = -1.5;  // negative: favours what occurred
  Sequence favour(p, nullptr);
  favour.Accept(2);  // 2.9 + 1.5 > 3.0
  EXPECT_EQ(choose(favour), 2);
  // The logits themselves are untouched (the penalty works on a copy).
  EXPECT_EQ(logits[1], 3.0f);
}

TEST(Sampling, LogprobsAreTheLogSoftmaxWithASortedTopList) {
  const std::vector<float> logits = {0.5f, 2.0f, -1.0f, 2.0f, 1.0f};
  double z = 0;
  for (float l : logits) z += std::exp(static_cast<double>(l));
  TokenLogprob lp = LogprobsOf(logits.data(), 5, 4, 3);
  EXPECT_EQ(lp.token, 4);
  EXPECT_NEAR(lp.logprob, 1.0 - std::log(z), 1e-12);
  ASSERT_EQ(lp.top.size(), 3u);
  EXPECT_EQ(lp.top[0].first, 1);  // ties: lower id first
  EXPECT_EQ(lp.top[1].first, 3);
  EXPECT_EQ(lp.top[2].first, 4);
  EXPECT_NEAR(lp.top[0].second, 2.0 - std::log(z), 1e-12);
  // Logprobs come from the raw logits: penalties and temperature do not
  // change them, only the choice.
  SamplingParams p;
  p.logprobs = true;
  p.top_logprobs = 2;
  p.frequency_penalty = 2;
  Sequence seq(p, nullptr);
  seq.Accept(1);
  std::vector<float> scratch;
  TokenChoice c = ChooseToken(seq, logits.data(), 5, 0.0, &scratch);
  EXPECT_EQ(c.token, 3);
  ASSERT_TRUE(c.logprob.has_value());
  EXPECT_NEAR(c.logprob->logprob, 2.0 - std::log(z), 1e-12);
  seq.Accept(c.token, c.logprob);
  ASSERT_EQ(seq.logprobs().size(), 2u);
  EXPECT_EQ(seq.logprobs()[1].token, 3);
  // Not asked: none computed.
  p.logprobs = false;
  Sequence quiet(p, nullptr);
  EXPECT_FALSE(ChooseToken(quiet, logits.data(), 5, 0.0, &scratch).logprob.has_value());
}

// Where each token's text ends, for releasing logprobs with their text: a
// token of half a character ends with the token that completes it.
TEST(Sequence, TextEndsFollowWholeCharacters) {
  Sequence seq(Params({}), Decode);
  seq.Accept(1);    // "Hel"
  seq.Accept(100);  // first byte of "é"
  EXPECT_EQ(seq.text_end(0), 3u);
  EXPECT_EQ(seq.text_end(1), Sequence::kTextPending);
  seq.Accept(101);  // completes "é"
  EXPECT_EQ(seq.text_end(1), 5u);
  EXPECT_EQ(seq.text_end(2), 5u);
  seq.Accept(2000);  // stop token: not appended
  EXPECT_EQ(seq.tokens().size(), 3u);
  EXPECT_EQ(seq.text(), "Hel\xC3\xA9");
}

}  // namespace
}  // namespace tunefleet::model
