// The serving engine against one-request-at-a-time generation: continuous
// batching with mixed adapters, mid-batch joins and cancels must not change
// any request's answer. Plus the adapter cache and the train-to-serve
// contract.
#include "services/serving/engine/engine.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <condition_variable>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "common/model/generate.h"
#include "services/serving/engine/adapter_cache.h"
#include "services/serving/engine/contract.h"
#include "tests/model/model_test_util.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace tunefleet::serving {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::tunefleet::testing::StatusIs;
using ::tunefleet::testing::TempDir;

constexpr int64_t kNoStop = 299;  // keeps the tiny model's eos (2) from ending answers early

class EngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
    model::testing::UseFewThreads();
    dir_ = new TempDir();
    model::testing::WriteTinyMistral(dir_->Join("base"), 21);
    auto d = model::Decoder::Load(dir_->Join("base"));
    ASSERT_TRUE(d.ok()) << d.status();
    decoder_ = new model::Decoder(*std::move(d));
    // Two adapters with weights large enough to change greedy answers.
    for (int i = 0; i < 2; ++i) {
      model::LoraConfig lc;
      lc.rank = 4;
      auto a = model::LoraAdapter::Create(decoder_->config(), lc, 3 + i);
      ASSERT_TRUE(a.ok());
      {
        at::NoGradGuard no_grad;
        at::manual_seed(3 + i);
        for (at::Tensor& p : a->Parameters()) p.copy_(at::randn(p.sizes()) * 0.3);
      }
      ASSERT_TRUE(a->Save(dir_->Join(absl::StrCat("artifacts/adapter-", i)), "base").ok());
    }
  }
  static void TearDownTestSuite() {
    delete decoder_;
    delete dir_;
  }

  static std::unique_ptr<Engine> NewEngine(EngineOptions o = {}) {
    o.threads = 1;  // the machine is shared; one thread per engine is steadier
    auto e = Engine::Create(*decoder_, o);
    EXPECT_TRUE(e.ok()) << e.status();
    return e.ok() ? *std::move(e) : nullptr;
  }
  static std::unique_ptr<AdapterCache> NewCache(AdapterCacheOptions o = {}) {
    o.artifacts_dir = dir_->Join("artifacts");
    return std::make_unique<AdapterCache>(decoder_->config(), at::kCPU, o);
  }
  static EngineRequest Req(std::vector<int64_t> prompt, int64_t max_tokens,
                           std::shared_ptr<const ServedAdapter> adapter = nullptr) {
    EngineRequest r;
    r.prompt = std::move(prompt);
    r.sampling.max_new_tokens = max_tokens;
    r.sampling.stop_token_ids = {kNoStop};
    r.adapter = std::move(adapter);
    return r;
  }
  // One request at a time through an engine of one row.
  static std::vector<int64_t> Alone(EngineRequest r) {
    static Engine* alone = [] {
      EngineOptions o;
      o.max_batch = 1;
      return NewEngine(o).release();
    }();
    auto c = alone->Generate(std::move(r));
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? c->tokens : std::vector<int64_t>{};
  }

  static TempDir* dir_;
  static model::Decoder* decoder_;
};
TempDir* EngineTest::dir_ = nullptr;
model::Decoder* EngineTest::decoder_ = nullptr;

const std::vector<std::vector<int64_t>> kPrompts = {
    {5, 6, 7, 8, 9, 10, 11}, {20, 21}, {30, 31, 32, 33}, {40, 41, 42, 43, 44, 45, 46, 47, 48}};

// Waits for many completions.
class Collector {
 public:
  std::function<void(const Completion&)> Slot(size_t i) {
    return [this, i](const Completion& c) {
      std::lock_guard<std::mutex> lock(mu_);
      done_[i] = c;
      cv_.notify_all();
    };
  }
  void Expect(size_t n) { done_.resize(n); seen_.assign(n, false); }
  std::vector<Completion> Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] {
      for (const auto& c : done_) {
        if (!c) return false;
      }
      return true;
    });
    std::vector<Completion> out;
    for (auto& c : done_) out.push_back(*c);
    return out;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::optional<Completion>> done_;
  std::vector<bool> seen_;
};

TEST_F(EngineTest, BatchedEqualsOneByOneWithMixedAdapters) {
  auto cache = NewCache();
  TF_ASSERT_OK_AND_ASSIGN(auto a0, cache->Acquire("adapter-0"));
  TF_ASSERT_OK_AND_ASSIGN(auto a1, cache->Acquire("adapter-1"));
  const std::vector<std::shared_ptr<const ServedAdapter>> adapters = {a0, a1, nullptr};
  for (double temperature : {0.0, 0.9}) {
    std::vector<EngineRequest> reqs;
    for (size_t p = 0; p < kPrompts.size(); ++p) {
      for (size_t a = 0; a < adapters.size(); ++a) {
        EngineRequest r = Req(kPrompts[p], 6 + static_cast<int64_t>(p + a) % 5, adapters[a]);
        r.sampling.temperature = temperature;
        r.sampling.top_p = 0.9;
        r.sampling.seed = 100 + p * 10 + a;
        reqs.push_back(std::move(r));
      }
    }
    std::vector<std::vector<int64_t>> alone;
    for (const EngineRequest& r : reqs) alone.push_back(Alone(r));

    auto engine = NewEngine();
    Collector col;
    col.Expect(reqs.size());
    for (size_t i = 0; i < reqs.size(); ++i) {
      EngineRequest r = reqs[i];
      r.on_done = col.Slot(i);
      TF_ASSERT_OK(engine->Submit(std::move(r)).status());
    }
    std::vector<Completion> batched = col.Wait();
    for (size_t i = 0; i < reqs.size(); ++i) {
      TF_EXPECT_OK(batched[i].status);
      EXPECT_EQ(batched[i].tokens, alone[i]) << "request " << i << " temperature " << temperature;
      EXPECT_EQ(batched[i].finish, EngineFinish::kLength);
      EXPECT_EQ(batched[i].prompt_tokens, static_cast<int64_t>(reqs[i].prompt.size()));
    }
    // The adapters do change the answers (so the test compares something).
    if (temperature == 0) {
      EXPECT_NE(alone[0], alone[2]);
      EXPECT_NE(alone[1], alone[2]);
    }
    EXPECT_GT(engine->stats().cache_rows, 1) << "the requests never shared a batch";
  }
}

// The engine on a GPU (fp32, so that batched and alone compute the same
// sums): the per-row adapters' batched products, the KV cache and the
// greedy argmax on the device give the answers each request gets alone.
// Skipped without CUDA; scripts/gpu-check runs it.
class CudaEngineTest : public EngineTest {};

TEST_F(CudaEngineTest, BatchedEqualsOneByOneWithMixedAdapters) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA in this libtorch or machine";
  model::DecoderOptions cuda;
  cuda.device = at::Device(at::kCUDA, 0);
  auto decoder = model::Decoder::Load(dir_->Join("base"), cuda);
  ASSERT_TRUE(decoder.ok()) << decoder.status();
  AdapterCacheOptions ao;
  ao.artifacts_dir = dir_->Join("artifacts");
  AdapterCache cache(decoder->config(), cuda.device, ao);
  TF_ASSERT_OK_AND_ASSIGN(auto a0, cache.Acquire("adapter-0"));
  TF_ASSERT_OK_AND_ASSIGN(auto a1, cache.Acquire("adapter-1"));
  const std::vector<std::shared_ptr<const ServedAdapter>> adapters = {a0, a1, nullptr};
  std::vector<EngineRequest> reqs;
  for (size_t p = 0; p < kPrompts.size(); ++p) {
    for (size_t a = 0; a < adapters.size(); ++a)
      reqs.push_back(Req(kPrompts[p], 6 + static_cast<int64_t>(p + a) % 5, adapters[a]));
  }
  EngineOptions one;
  one.max_batch = 1;
  auto alone_engine = Engine::Create(*decoder, one);
  ASSERT_TRUE(alone_engine.ok()) << alone_engine.status();
  std::vector<std::vector<int64_t>> alone;
  for (const EngineRequest& r : reqs) {
    auto c = (*alone_engine)->Generate(r);
    ASSERT_TRUE(c.ok()) << c.status();
    alone.push_back(c->tokens);
  }
  auto engine = Engine::Create(*decoder, EngineOptions{});
  ASSERT_TRUE(engine.ok()) << engine.status();
  Collector col;
  col.Expect(reqs.size());
  for (size_t i = 0; i < reqs.size(); ++i) {
    EngineRequest r = reqs[i];
    r.on_done = col.Slot(i);
    TF_ASSERT_OK((*engine)->Submit(std::move(r)).status());
  }
  std::vector<Completion> batched = col.Wait();
  for (size_t i = 0; i < reqs.size(); ++i) {
    TF_EXPECT_OK(batched[i].status);
    EXPECT_EQ(batched[i].tokens, alone[i]) << "request " << i;
  }
  // The same answers as the CPU's engine (fp32 both; greedy).
  for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ(alone[i], Alone(reqs[i])) << "request " << i;
  EXPECT_NE(alone[0], alone[2]);  // the adapters change the answers
  EXPECT_GT((*engine)->stats().cache_rows, 1) << "the requests never shared a batch";
}

// The engine chooses tokens through the model library's Sequence, as
// Generate does: rows with their own penalties, logprobs and stop strings
// in one mixed batch give what Generate gives each alone, token for token.
TEST_F(EngineTest, PenaltiesLogprobsAndStopStringsPerRowMatchGenerate) {
  auto detok = [](const std::vector<int64_t>& ids) {
    std::string out;
    for (int64_t id : ids) absl::StrAppend(&out, "<", id, ">");
    return out;
  };
  std::vector<EngineRequest> reqs;
  for (size_t p = 0; p < kPrompts.size(); ++p) {
    EngineRequest r = Req(kPrompts[p], 10);
    r.sampling.frequency_penalty = p == 0 ? 1.5 : 0;
    r.sampling.presence_penalty = p == 1 ? 2.0 : (p == 2 ? -0.5 : 0);
    r.sampling.logprobs = p != 3;
    r.sampling.top_logprobs = static_cast<int>(p);
    r.sampling.temperature = p == 2 ? 0.8 : 0;
    r.sampling.seed = 40 + p;
    r.detokenize = detok;
    reqs.push_back(std::move(r));
  }
  std::vector<model::Generation> expected;
  for (const EngineRequest& r : reqs) {
    model::GenerationOptions o;
    static_cast<model::SamplingParams&>(o) = r.sampling;
    o.detokenize = detok;
    auto g = model::Generate(*decoder_, {r.prompt}, o);
    ASSERT_TRUE(g.ok()) << g.status();
    expected.push_back((*g)[0]);
  }
  // A stop string taken from the middle of row 0's answer ends it there.
  ASSERT_GE(expected[0].tokens.size(), 6u);
  const std::string stop = absl::StrCat("<", expected[0].tokens[4], ">");
  reqs[0].sampling.stop_strings = {stop};
  const std::string cut = expected[0].text.substr(0, expected[0].text.find(stop));

  auto engine = NewEngine();
  Collector col;
  col.Expect(reqs.size());
  std::vector<std::string> streamed(reqs.size());
  for (size_t i = 0; i < reqs.size(); ++i) {
    EngineRequest r = reqs[i];
    r.on_text = [&streamed, i](const std::string& text, const model::Sequence&) {
      streamed[i] += text;
    };
    r.on_done = col.Slot(i);
    TF_ASSERT_OK(engine->Submit(std::move(r)).status());
  }
  std::vector<Completion> got = col.Wait();
  EXPECT_EQ(got[0].finish, EngineFinish::kStop);
  EXPECT_EQ(got[0].stop_string, stop);
  EXPECT_EQ(got[0].text, cut);
  EXPECT_EQ(streamed[0], cut);
  for (size_t i = 1; i < reqs.size(); ++i) {
    TF_EXPECT_OK(got[i].status);
    EXPECT_EQ(got[i].tokens, expected[i].tokens) << "request " << i;
    EXPECT_EQ(got[i].text, expected[i].text);
    EXPECT_THAT(got[i].text, ::testing::StartsWith(streamed[i]));
    ASSERT_EQ(got[i].logprobs.size(), expected[i].logprobs.size());
    for (size_t t = 0; t < got[i].logprobs.size(); ++t) {
      EXPECT_EQ(got[i].logprobs[t].token, got[i].tokens[t]);
      EXPECT_NEAR(got[i].logprobs[t].logprob, expected[i].logprobs[t].logprob, 1e-4);
      EXPECT_EQ(got[i].logprobs[t].top.size(), i);
    }
    EXPECT_EQ(got[i].text_ends.size(), got[i].tokens.size());
  }
  EXPECT_TRUE(got[3].logprobs.empty());
  // A penalty changes the greedy answer of the row that repeats (row 0's
  // answer without one).
  EngineRequest plain = Req(kPrompts[0], 10);
  const std::vector<int64_t> unpenalized = Alone(plain);
  std::map<int64_t, int> seen;
  int repeats = 0;
  for (int64_t t : unpenalized) repeats += seen[t]++ > 0;
  if (repeats > 0) {
    EXPECT_NE(expected[0].tokens, unpenalized);
  }
  // Out-of-range values are refused.
  EngineRequest bad = Req(kPrompts[0], 4);
  bad.sampling.frequency_penalty = 2.5;
  EXPECT_THAT(engine->Submit(bad).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("frequency_penalty")));
  bad = Req(kPrompts[0], 4);
  bad.sampling.top_logprobs = 21;
  EXPECT_THAT(engine->Submit(bad).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("top_logprobs")));
  bad = Req(kPrompts[0], 4);
  bad.sampling.stop_strings = {"x"};
  EXPECT_THAT(engine->Submit(bad).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("detokenize")));
}

TEST_F(EngineTest, ARequestJoiningMidBatchGetsTheSameAnswer) {
  auto cache = NewCache();
  TF_ASSERT_OK_AND_ASSIGN(auto a0, cache->Acquire("adapter-0"));
  const std::vector<int64_t> long_alone = Alone(Req(kPrompts[0], 40, a0));
  const std::vector<int64_t> late_alone = Alone(Req(kPrompts[3], 12));

  auto engine = NewEngine();
  Collector col;
  col.Expect(2);
  std::mutex mu;
  std::condition_variable cv;
  int seen = 0;
  EngineRequest first = Req(kPrompts[0], 40, a0);
  first.on_token = [&](int64_t) {
    std::lock_guard<std::mutex> lock(mu);
    ++seen;
    cv.notify_all();
  };
  first.on_done = col.Slot(0);
  TF_ASSERT_OK(engine->Submit(std::move(first)).status());
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return seen >= 5; });
  }
  EngineRequest late = Req(kPrompts[3], 12);
  late.on_done = col.Slot(1);
  TF_ASSERT_OK(engine->Submit(std::move(late)).status());
  std::vector<Completion> out = col.Wait();
  EXPECT_EQ(out[0].tokens, long_alone);
  EXPECT_EQ(out[1].tokens, late_alone);
  // 1 row, then 2: the first row's keys and values were copied to the new
  // cache, not computed again.
  const EngineStats st = engine->stats();
  EXPECT_GE(st.resizes, 2);
  EXPECT_EQ(st.rows_recomputed, 0);
}

// A batch that shrinks and comes back finds its cache kept: each size is
// allocated once, the rows of a kept cache (old keys and values still in
// them) give the answers a fresh one gives, and the kept caches stay within
// kv_cache_bytes (with room for one size only, nothing is kept).
TEST_F(EngineTest, CachesAreKeptForReuseWithinTheBudget) {
  std::vector<std::vector<int64_t>> alone;
  for (const auto& p : kPrompts) alone.push_back(Alone(Req(p, 10)));
  const std::vector<int64_t> lone_alone = Alone(Req(kPrompts[1], 3));
  for (bool room : {true, false}) {
    SCOPED_TRACE(room ? "room for every size" : "room for one size");
    EngineOptions o;
    o.max_batch = 4;
    if (!room) {
      auto probe = NewEngine(o);
      o.kv_cache_bytes = probe->stats().kv_bytes_per_row * 4;
    }
    auto engine = NewEngine(o);
    for (int round = 0; round < 3; ++round) {
      // One request (4 rows shrink to 1), then a burst of four (back to 4).
      // The lone request's completion holds the engine thread until the
      // whole burst is queued, so the four join in one step however slowly
      // this thread runs (arriving one by one they could finish one by one
      // and never need four rows).
      std::promise<Completion> lone_done;
      std::promise<void> burst_queued;
      std::shared_future<void> burst_in = burst_queued.get_future().share();
      EngineRequest lone = Req(kPrompts[1], 3);
      lone.on_done = [&lone_done, burst_in](const Completion& c) {
        lone_done.set_value(c);
        burst_in.wait();
      };
      Collector col;
      col.Expect(kPrompts.size());
      std::vector<absl::Status> submitted;
      {
        absl::Cleanup release = [&burst_queued] { burst_queued.set_value(); };
        TF_ASSERT_OK(engine->Submit(std::move(lone)).status());
        const Completion lone_out = lone_done.get_future().get();
        EXPECT_EQ(lone_out.tokens, lone_alone) << "round " << round;
        for (size_t i = 0; i < kPrompts.size(); ++i) {
          EngineRequest r = Req(kPrompts[i], 10);
          r.on_done = col.Slot(i);
          submitted.push_back(engine->Submit(std::move(r)).status());
        }
      }
      for (const absl::Status& s : submitted) TF_ASSERT_OK(s);
      std::vector<Completion> out = col.Wait();
      for (size_t i = 0; i < out.size(); ++i) EXPECT_EQ(out[i].tokens, alone[i]) << "round " << round;
      const EngineStats st = engine->stats();
      EXPECT_LE(st.kv_bytes_held, o.kv_cache_bytes);
    }
    const EngineStats st = engine->stats();
    EXPECT_GE(st.resizes, 6);  // 0 -> 1 -> 4, then 4 -> 1 -> 4 twice
    if (room) {
      // Sizes 1 and 4, each allocated once.
      EXPECT_EQ(st.cache_allocations, 2);
    } else {
      EXPECT_EQ(st.cache_allocations, st.resizes);
      EXPECT_LE(st.kv_bytes_held, 4 * st.kv_bytes_per_row);
    }
  }
}

TEST_F(EngineTest, CancelFreesTheSlotForAWaitingRequest) {
  EngineOptions o;
  o.max_batch = 1;
  auto engine = NewEngine(o);
  Collector col;
  col.Expect(2);
  std::mutex mu;
  std::condition_variable cv;
  bool started = false;
  EngineRequest hog = Req(kPrompts[0], 100);
  hog.on_token = [&](int64_t) {
    std::lock_guard<std::mutex> lock(mu);
    started = true;
    cv.notify_all();
  };
  hog.on_done = col.Slot(0);
  TF_ASSERT_OK_AND_ASSIGN(auto handle, engine->Submit(std::move(hog)));
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return started; });
  }
  EngineRequest next = Req(kPrompts[1], 5);
  next.on_done = col.Slot(1);
  TF_ASSERT_OK(engine->Submit(std::move(next)).status());
  handle->Cancel();
  std::vector<Completion> out = col.Wait();
  EXPECT_EQ(out[0].finish, EngineFinish::kCancelled);
  EXPECT_THAT(out[0].status, StatusIs(absl::StatusCode::kCancelled));
  EXPECT_LT(out[0].tokens.size(), 100u);
  EXPECT_EQ(out[1].finish, EngineFinish::kLength);
  EXPECT_EQ(out[1].tokens, Alone(Req(kPrompts[1], 5)));
}

TEST_F(EngineTest, StopsAtAStopTokenWithoutOutputtingIt) {
  const std::vector<int64_t> greedy = Alone(Req(kPrompts[2], 8));
  ASSERT_EQ(greedy.size(), 8u);
  const int64_t stop = greedy[3];
  const size_t first = std::find(greedy.begin(), greedy.end(), stop) - greedy.begin();
  EngineRequest r = Req(kPrompts[2], 8);
  r.sampling.stop_token_ids = {stop};
  auto engine = NewEngine();
  TF_ASSERT_OK_AND_ASSIGN(Completion c, engine->Generate(std::move(r)));
  EXPECT_EQ(c.finish, EngineFinish::kStop);
  EXPECT_EQ(c.stop_token_id, stop);
  EXPECT_EQ(c.tokens, std::vector<int64_t>(greedy.begin(), greedy.begin() + first));
}

TEST_F(EngineTest, RefusesBadRequestsWithReasons) {
  auto engine = NewEngine();
  EXPECT_THAT(engine->Submit(Req({}, 4)).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty")));
  EXPECT_THAT(engine->Submit(Req({5, 300}, 4)).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("300")));
  std::vector<int64_t> huge(128, 5);
  EXPECT_THAT(engine->Submit(Req(huge, 4)).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("128 tokens")));
  EngineRequest bad = Req({5}, 4);
  bad.sampling.top_p = 0;
  EXPECT_THAT(engine->Submit(bad).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("top_p")));
  // The answer never runs past the context.
  std::vector<int64_t> near(120, 5);
  TF_ASSERT_OK_AND_ASSIGN(Completion c, engine->Generate(Req(near, 0)));
  EXPECT_EQ(c.tokens.size(), 8u);
  EXPECT_EQ(c.finish, EngineFinish::kLength);
}

TEST_F(EngineTest, QueueLimitAndDeadlines) {
  EngineOptions o;
  o.max_batch = 1;
  o.max_queue = 1;
  auto engine = NewEngine(o);
  Collector col;
  col.Expect(3);
  std::mutex mu;
  std::condition_variable cv;
  bool started = false;
  EngineRequest hog = Req(kPrompts[0], 100);
  hog.on_token = [&](int64_t) {
    std::lock_guard<std::mutex> lock(mu);
    started = true;
    cv.notify_all();
  };
  hog.on_done = col.Slot(0);
  TF_ASSERT_OK_AND_ASSIGN(auto handle, engine->Submit(std::move(hog)));
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return started; });
  }
  EngineRequest expired = Req(kPrompts[1], 5);
  expired.deadline = std::chrono::steady_clock::now();
  expired.on_done = col.Slot(1);
  TF_ASSERT_OK(engine->Submit(std::move(expired)).status());
  EXPECT_THAT(engine->Submit(Req(kPrompts[1], 5)).status(),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("queue")));
  handle->Cancel();
  EngineRequest after = Req(kPrompts[1], 3);
  after.on_done = col.Slot(2);
  // The queue drains (the expired one leaves), so this one is taken.
  for (;;) {
    auto h = engine->Submit(after);
    if (h.ok()) break;
    ASSERT_THAT(h.status(), StatusIs(absl::StatusCode::kResourceExhausted));
    std::this_thread::yield();
  }
  std::vector<Completion> out = col.Wait();
  EXPECT_EQ(out[1].finish, EngineFinish::kDeadline);
  EXPECT_THAT(out[1].status, StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_EQ(out[2].finish, EngineFinish::kLength);
  EXPECT_EQ(engine->stats().running, 0);
}

// --- adapter cache and contract ----------------------------------------------

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

TEST_F(EngineTest, AdapterCacheLoadsOnceEvictsUnpinnedAndUnloads) {
  AdapterCacheOptions o;
  o.budget_bytes = 1;  // every unpinned adapter goes as soon as another loads
  auto cache = NewCache(o);
  TF_ASSERT_OK_AND_ASSIGN(auto a0, cache->Acquire("adapter-0"));
  TF_ASSERT_OK_AND_ASSIGN(auto again, cache->Acquire("adapter-0"));
  EXPECT_EQ(a0.get(), again.get());
  EXPECT_EQ(cache->stats().loads, 1);
  EXPECT_EQ(cache->stats().hits, 1);
  EXPECT_THAT(a0->warnings, ::testing::ElementsAre(HasSubstr(kContractFileName)));
  // Pinned: loading another does not evict it.
  TF_ASSERT_OK_AND_ASSIGN(auto a1, cache->Acquire("adapter-1"));
  EXPECT_TRUE(cache->IsResident("adapter-0"));
  a0.reset();
  again.reset();
  a1.reset();
  TF_ASSERT_OK_AND_ASSIGN(a0, cache->Acquire("adapter-0"));  // a hit; adapter-1 goes now
  EXPECT_FALSE(cache->IsResident("adapter-1"));
  EXPECT_GE(cache->stats().evictions, 1);
  // Hot unload while in use: the holder keeps a working adapter.
  EXPECT_TRUE(cache->Unload("adapter-0"));
  EXPECT_FALSE(cache->IsResident("adapter-0"));
  auto engine = NewEngine();
  TF_EXPECT_OK(engine->Generate(Req(kPrompts[0], 3, a0)).status());
  // And it comes back on the next use.
  TF_ASSERT_OK_AND_ASSIGN(auto back, cache->Acquire("adapter-0"));
  EXPECT_EQ(cache->stats().loads, 3);
}

TEST_F(EngineTest, AdapterCacheRefusesBadNamesAndMissingDirs) {
  auto cache = NewCache();
  EXPECT_THAT(cache->Acquire("../base").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("..")));
  EXPECT_THAT(cache->Acquire("/etc").status(), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(cache->Acquire("jobs/nope").status(),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("jobs/nope")));
}

TEST_F(EngineTest, ContractMismatchIsRefusedWithItsReason) {
  TempDir artifacts;
  model::LoraConfig lc;
  lc.rank = 2;
  TF_ASSERT_OK_AND_ASSIGN(auto a, model::LoraAdapter::Create(decoder_->config(), lc, 1));
  for (const char* name : {"good", "other-base", "other-tokenizer", "other-stops", "broken"}) {
    TF_ASSERT_OK(a.Save(artifacts.Join(name), "base"));
  }
  auto contract = [](const std::string& base, const std::string& sha, const std::string& stops) {
    return absl::StrCat(R"({"base_model": ")", base, R"(", "tokenizer_sha256": ")", sha,
                        R"(", "chat_template": "phi3", "stop_token_ids": [)", stops,
                        R"(], "generation": {"temperature": 0.5}})");
  };
  WriteFile(artifacts.Join("good/tunefleet_contract.json"), contract("tiny", "abc", "2, 7"));
  WriteFile(artifacts.Join("other-base/tunefleet_contract.json"), contract("phi-3", "abc", "2,7"));
  WriteFile(artifacts.Join("other-tokenizer/tunefleet_contract.json"), contract("tiny", "def", "2,7"));
  WriteFile(artifacts.Join("other-stops/tunefleet_contract.json"), contract("tiny", "abc", "2"));
  WriteFile(artifacts.Join("broken/tunefleet_contract.json"), R"({"stop_token_ids": "2"})");
  AdapterCacheOptions o;
  o.artifacts_dir = artifacts.path();
  o.base = BaseIdentity{"tiny", "abc", "phi3", {7, 2}};
  AdapterCache cache(decoder_->config(), at::kCPU, o);
  TF_ASSERT_OK_AND_ASSIGN(auto good, cache.Acquire("good"));
  EXPECT_TRUE(good->warnings.empty());
  ASSERT_TRUE(good->contract.has_value());
  EXPECT_EQ(good->contract->generation.temperature, 0.5);
  EXPECT_THAT(cache.Acquire("other-base").status(),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       ::testing::AllOf(HasSubstr("base_model"), HasSubstr("phi-3"), HasSubstr("tiny"))));
  EXPECT_THAT(cache.Acquire("other-tokenizer").status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("tokenizer_sha256")));
  EXPECT_THAT(cache.Acquire("other-stops").status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("stop_token_ids")));
  EXPECT_THAT(cache.Acquire("broken").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("stop_token_ids")));
  EXPECT_EQ(cache.stats().resident, 1);
}

}  // namespace
}  // namespace tunefleet::serving
