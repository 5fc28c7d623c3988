// Serving benchmark: the engine (continuous batching, per-row LoRA) on a
// ~100M-parameter Phi-3-shaped model. Prints single-stream decode tokens/s
// against the weight-read roofline measured in the same run, throughput and
// time to first token at 1/8/32 concurrent streams, 32 streams over 50
// adapters against 32 over one, and the content filter's added latency.
//
//   serving_bench [--threads N] [--device cpu|cuda] [--layers 8 --hidden 768 ...]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/model/allocator.h"
#include "common/model/decode_attention.h"
#include "common/model/decoder.h"
#include "common/model/lora.h"
#include "common/model/small_gemm.h"
#include "common/model/tiny_model.h"
#include "services/serving/engine/adapter_cache.h"
#include "services/serving/engine/engine.h"
#ifdef TUNEFLEET_BENCH_FILTERS
#include "services/serving/filters/builtin_filter.h"
#endif

ABSL_FLAG(int64_t, layers, 8, "decoder layers");
ABSL_FLAG(int64_t, hidden, 768, "hidden size");
ABSL_FLAG(int64_t, heads, 12, "attention heads");
ABSL_FLAG(int64_t, intermediate, 2048, "MLP size");
ABSL_FLAG(int, threads, 0, "intra-op threads (0: all cores)");
ABSL_FLAG(std::string, device, "cpu", "cpu or cuda");
ABSL_FLAG(std::string, model_dir, "",
          "base model directory to use, or to create with the shape flags (default: one in the "
          "bench's temporary directory)");
ABSL_FLAG(int64_t, prompt, 64, "prompt tokens per request");
ABSL_FLAG(int64_t, decode, 64, "completion tokens per request");
ABSL_FLAG(int, adapters, 50, "adapters in the many-adapter run");
ABSL_FLAG(int64_t, lora_rank, 8, "adapter rank");
ABSL_FLAG(std::vector<std::string>, streams, std::vector<std::string>({"1", "8", "32"}),
          "concurrent stream counts to measure (the first is the base of the ratios)");
ABSL_FLAG(bool, decode_attention, true,
          "decode steps' attention through model::DecodeAttention (false: libtorch's batched "
          "matmuls, to measure both in the same conditions)");
ABSL_FLAG(bool, ragged, true,
          "steps compute only the real tokens (model::Decoder::ExtendRows, ragged); false: "
          "every row padded to the step's longest chunk, to measure both");
ABSL_FLAG(int, sustained_clients, 32,
          "clients of the sustained run (0: none): each sends --sustained_requests requests one "
          "after another, prompts of 16-192 tokens and answers of 16-128, so that requests join "
          "and leave between steps; run with ragged steps and with padded ones, alternating");
ABSL_FLAG(int, sustained_requests, 2, "requests per client in the sustained run");
ABSL_FLAG(int, sustained_rounds, 1, "ragged/padded pairs of sustained runs");
ABSL_FLAG(bool, adapter_runs, true, "measure 32 streams over 1 and over --adapters adapters");
ABSL_FLAG(int, adapter_rounds, 3,
          "alternating 1-adapter / many-adapter runs (the best of each is compared: this VM's "
          "speed swings by more than the difference between them from one run to the next)");
ABSL_FLAG(bool, tune_allocator, true,
          "glibc's allocator set up as the replica's main does (TuneAllocatorForTensorWork); "
          "false: glibc's defaults, to measure the difference in the same minutes");
ABSL_FLAG(bool, steady, true,
          "warm up with every --streams count too, so that the measured runs find the engine "
          "as a loaded server has it (its KV caches allocated); false: each count's first "
          "burst pays for them");

namespace {

using namespace tunefleet;
using Clock = std::chrono::steady_clock;
double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

void Die(const absl::Status& s) {
  std::fprintf(stderr, "serving_bench: %s\n", s.ToString().c_str());
  std::exit(1);
}

struct RunResult {
  double seconds = 0;
  int64_t tokens = 0;
  std::vector<double> ttft;
  double single_decode_tps = 0;  // stream 0's tokens/s after its first token
  // 1 / stream 0's median time between tokens: the same statistic as the
  // best-of-n passes it is compared with, less the VM's pauses.
  double single_median_tps = 0;
};

// Submits `n` requests at once and waits for all.
RunResult Run(serving::Engine& engine, int n, int64_t vocab,
              const std::vector<std::shared_ptr<const serving::ServedAdapter>>& adapters) {
  std::mutex mu;
  std::condition_variable cv;
  int done = 0;
  RunResult r;
  std::vector<Clock::time_point> first(n), last(n);
  std::vector<int64_t> count(n, 0);
  std::vector<Clock::time_point> times0;  // stream 0's token times
  times0.reserve(static_cast<size_t>(absl::GetFlag(FLAGS_decode)));
  const Clock::time_point start = Clock::now();
  for (int i = 0; i < n; ++i) {
    serving::EngineRequest req;
    for (int64_t t = 0; t < absl::GetFlag(FLAGS_prompt); ++t) req.prompt.push_back((t * 7919 + i * 104729) % (vocab - 100) + 50);
    req.sampling.max_new_tokens = absl::GetFlag(FLAGS_decode);
    req.sampling.stop_token_ids = {-1};  // never: every request decodes its budget
    if (!adapters.empty()) req.adapter = adapters[i % adapters.size()];
    req.on_token = [&, i](int64_t) {
      const Clock::time_point now = Clock::now();
      if (count[i]++ == 0) first[i] = now;
      last[i] = now;
      if (i == 0) times0.push_back(now);
    };
    req.on_done = [&](const serving::Completion& c) {
      std::lock_guard<std::mutex> lock(mu);
      if (!c.status.ok()) Die(c.status);
      r.tokens += static_cast<int64_t>(c.tokens.size());
      r.ttft.push_back(c.ttft_seconds);
      ++done;
      cv.notify_all();
    };
    auto h = engine.Submit(std::move(req));
    if (!h.ok()) Die(h.status());
  }
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done == n; });
  r.seconds = Seconds(Clock::now() - start);
  if (count[0] > 1) r.single_decode_tps = (count[0] - 1) / Seconds(last[0] - first[0]);
  if (times0.size() > 1) {
    std::vector<double> gaps;
    for (size_t t = 1; t < times0.size(); ++t) gaps.push_back(Seconds(times0[t] - times0[t - 1]));
    std::nth_element(gaps.begin(), gaps.begin() + gaps.size() / 2, gaps.end());
    r.single_median_tps = 1.0 / gaps[gaps.size() / 2];
  }
  std::sort(r.ttft.begin(), r.ttft.end());
  return r;
}

struct SustainedResult {
  double seconds = 0;
  int64_t tokens = 0, prompt_tokens = 0;
  std::vector<double> ttft;
};

// `clients` closed loops, each sending `per_client` requests of varied
// lengths (the same lengths in every run) one after another.
SustainedResult RunSustained(serving::Engine& engine, int clients, int per_client, int64_t vocab) {
  std::mutex mu;
  SustainedResult r;
  const Clock::time_point start = Clock::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      for (int k = 0; k < per_client; ++k) {
        const uint64_t h = (static_cast<uint64_t>(c) * 2654435761u + static_cast<uint64_t>(k) * 40503u) ^ 0x9e37u;
        serving::EngineRequest req;
        const int64_t prompt = 16 + static_cast<int64_t>(h % 177);
        for (int64_t t = 0; t < prompt; ++t) {
          req.prompt.push_back((t * 7919 + c * 104729 + k * 15485863) % (vocab - 100) + 50);
        }
        req.sampling.max_new_tokens = 16 + static_cast<int64_t>((h / 177) % 113);
        req.sampling.stop_token_ids = {-1};
        std::mutex done_mu;
        std::condition_variable done_cv;
        std::optional<serving::Completion> done;
        req.on_done = [&](const serving::Completion& comp) {
          std::lock_guard<std::mutex> lock(done_mu);
          done = comp;
          done_cv.notify_all();
        };
        auto handle = engine.Submit(std::move(req));
        if (!handle.ok()) Die(handle.status());
        std::unique_lock<std::mutex> lock(done_mu);
        done_cv.wait(lock, [&] { return done.has_value(); });
        if (!done->status.ok()) Die(done->status);
        std::lock_guard<std::mutex> rl(mu);
        r.tokens += static_cast<int64_t>(done->tokens.size());
        r.prompt_tokens += prompt;
        r.ttft.push_back(done->ttft_seconds);
      }
    });
  }
  for (auto& t : threads) t.join();
  r.seconds = Seconds(Clock::now() - start);
  std::sort(r.ttft.begin(), r.ttft.end());
  return r;
}

double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  return sorted[std::min(sorted.size() - 1, static_cast<size_t>(p * (sorted.size() - 1) + 0.5))];
}

}  // namespace

int main(int argc, char** argv) {
  // libgomp's waiting as the replica has it (common/model/allocator.h).
  model::ExecWithDecoderThreading(argv);
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_tune_allocator)) model::TuneAllocatorForTensorWork();
  const int threads = absl::GetFlag(FLAGS_threads) > 0
                          ? absl::GetFlag(FLAGS_threads)
                          : static_cast<int>(std::thread::hardware_concurrency());
  at::set_num_threads(threads);
  model::EnableDecodeAttention(absl::GetFlag(FLAGS_decode_attention));
  const bool cuda = absl::GetFlag(FLAGS_device) == "cuda";
  const std::string dir = (std::filesystem::temp_directory_path() /
                           ("tunefleet-serving-bench-" + std::to_string(::getpid())))
                              .string();
  model::TinyModelOptions o;
  o.seed = 1;
  o.num_layers = absl::GetFlag(FLAGS_layers);
  o.hidden_size = absl::GetFlag(FLAGS_hidden);
  o.num_heads = absl::GetFlag(FLAGS_heads);
  o.num_kv_heads = o.num_heads;
  o.intermediate_size = absl::GetFlag(FLAGS_intermediate);
  o.dtype = cuda ? "bfloat16" : "float32";
  if (cuda && !at::hasCUDA()) Die(absl::FailedPreconditionError("--device cuda: no CUDA here"));
  const std::string base_dir =
      absl::GetFlag(FLAGS_model_dir).empty() ? dir + "/base" : absl::GetFlag(FLAGS_model_dir);
  if (!std::filesystem::exists(std::filesystem::path(base_dir) / "config.json")) {
    if (absl::Status s = model::WriteTinyPhi3(base_dir, o); !s.ok()) Die(s);
  }
  absl::StatusOr<model::DecoderOptions> placed = model::DecoderOptionsFor(cuda ? "cuda" : "cpu", "auto");
  if (!placed.ok()) Die(placed.status());
  model::DecoderOptions dopts = *placed;
  dopts.ragged_extend = absl::GetFlag(FLAGS_ragged);
  auto decoder = model::Decoder::Load(base_dir, dopts);
  if (!decoder.ok()) Die(decoder.status());
  // The same weights (mapped once) for the sustained run's padded engine.
  model::DecoderOptions padded_opts = dopts;
  padded_opts.ragged_extend = false;
  auto padded_decoder = model::Decoder::Load(base_dir, padded_opts);
  if (!padded_decoder.ok()) Die(padded_decoder.status());
  const model::ModelConfig cfg = decoder->config();
  const double weight_bytes = static_cast<double>(decoder->WeightBytes());
  const double embed_bytes =
      static_cast<double>(cfg.vocab_size * cfg.hidden_size * at::elementSize(dopts.dtype));

  // Roofline: every decode step reads the weights once (less the embedding
  // table, of which it reads one row). Measured two ways: reading alone (a
  // sum over one float of every 64-byte line of a 512 MB buffer: every line
  // comes from memory, with almost no arithmetic), which is what a decode
  // step does with its weights, and the copy bandwidth (read + write bytes
  // of a 512 MB copy), the bench's earlier proxy, kept for comparison.
  auto topts = at::TensorOptions().dtype(at::kFloat).device(dopts.device);
  const int64_t copy_elems = 128ll << 20;
  at::Tensor src = at::ones({copy_elems}, topts), dst = at::empty({copy_elems}, topts);
  dst.copy_(src);
  double copy_s = 1e30;
  for (int i = 0; i < 3; ++i) {
    auto t0 = Clock::now();
    dst.copy_(src);
    (void)dst[0].item<float>();
    copy_s = std::min(copy_s, Seconds(Clock::now() - t0));
  }
  double read_s = 1e30;
  {
    at::Tensor lines = src.view({-1, 16}).select(1, 0);  // one float a cache line
    (void)lines.sum().item<float>();
    for (int i = 0; i < 3; ++i) {
      auto t0 = Clock::now();
      (void)lines.sum().item<float>();
      read_s = std::min(read_s, Seconds(Clock::now() - t0));
    }
  }
  src = at::Tensor();
  dst = at::Tensor();
  const double copy_bw = 2.0 * static_cast<double>(copy_elems) * 4.0 / copy_s;
  const double read_bw = static_cast<double>(copy_elems) * 4.0 / read_s;
  const double roofline = read_bw / (weight_bytes - embed_bytes);
  const double copy_roofline = copy_bw / (weight_bytes - embed_bytes);

  // 50 adapters on disk, loaded through the cache.
  const int n_adapters = absl::GetFlag(FLAGS_adapters);
  for (int i = 0; i < n_adapters; ++i) {
    model::LoraConfig lc;
    lc.rank = absl::GetFlag(FLAGS_lora_rank);
    auto a = model::LoraAdapter::Create(cfg, lc, static_cast<uint64_t>(i));
    if (!a.ok()) Die(a.status());
    {
      at::NoGradGuard no_grad;
      for (at::Tensor& p : a->Parameters()) p.normal_(0, 0.01);
    }
    if (absl::Status s = a->Save(absl::StrCat(dir, "/artifacts/a", i), "base"); !s.ok()) Die(s);
  }
  serving::AdapterCacheOptions ao;
  ao.artifacts_dir = dir + "/artifacts";
  serving::AdapterCache cache(cfg, dopts.device, ao);
  std::vector<std::shared_ptr<const serving::ServedAdapter>> many, one;
  double load_s = 0;
  for (int i = 0; i < n_adapters; ++i) {
    auto t0 = Clock::now();
    auto a = cache.Acquire(absl::StrCat("a", i));
    load_s += Seconds(Clock::now() - t0);
    if (!a.ok()) Die(a.status());
    many.push_back(*a);
  }
  one.push_back(many[0]);

  serving::EngineOptions eo;
  eo.max_batch = 32;
  // Room for the sustained run's longest request (192 + 128) too.
  eo.max_context = std::max<int64_t>(absl::GetFlag(FLAGS_prompt) + absl::GetFlag(FLAGS_decode), 320) + 8;
  eo.threads = threads;
  // What the products alone reach: one-row products over every weight
  // matrix the step reads (the embedding table excluded), through the
  // decoder's own path, nothing else; the decode's fraction of it is what
  // the rest of the step (norms, attention, sampling, the engine) costs.
  // Measured before the engine's thread has a team of workers (allocator.h).
  double pass_s = 1e30;
  {
    std::vector<at::Tensor> mats;
    const std::vector<at::Tensor> params = decoder->Parameters();
    for (const at::Tensor& p : params) {
      if (p.dim() == 2 && !p.is_same(params[0])) mats.push_back(p);
    }
    at::NoGradGuard no_grad;
    for (int r = 0; r < 20; ++r) {
      auto t0 = Clock::now();
      for (const at::Tensor& w : mats) {
        at::Tensor x = at::ones({1, w.size(1)}, w.options());
        std::optional<at::Tensor> y = model::InferenceLinear(x, w, at::Tensor());
        if (!y) y = at::mv(w, x[0]);
        if (cuda) (void)y->sum().item<float>();
      }
      pass_s = std::min(pass_s, Seconds(Clock::now() - t0));
    }
  }
  auto engine = serving::Engine::Create(*std::move(decoder), eo);
  if (!engine.ok()) Die(engine.status());
  // The engine's thread alone keeps a team of ATen workers while it runs
  // (allocator.h: a second team makes libgomp's workers sleep between
  // products); this thread's comes back for its own measurements.
  model::ReleaseThreadTeam();
  Run(**engine, 1, cfg.vocab_size, {});  // warm-up
  for (const std::string& arg : absl::GetFlag(FLAGS_streams)) {
    int n = 0;
    if (absl::GetFlag(FLAGS_steady) && absl::SimpleAtoi(arg, &n) && n > 1) {
      Run(**engine, n, cfg.vocab_size, {});
    }
  }

  std::printf("serving_bench: device=%s threads=%d dtype=%s OMP_WAIT_POLICY=%s GOMP_SPINCOUNT=%s "
              "decode_attention=%d ragged=%d steady=%d tune_allocator=%d\n",
              cuda ? "cuda" : "cpu", threads, cuda ? "bf16" : "fp32", std::getenv("OMP_WAIT_POLICY"),
              std::getenv("GOMP_SPINCOUNT"),
              absl::GetFlag(FLAGS_decode_attention) ? 1 : 0, (*engine)->decoder().RaggedExtend() ? 1 : 0,
              absl::GetFlag(FLAGS_steady) ? 1 : 0,
              absl::GetFlag(FLAGS_tune_allocator) ? 1 : 0);
  std::printf("model: phi3 layers=%lld hidden=%lld intermediate=%lld vocab=%lld weights=%.1f MB; "
              "prompt=%lld decode=%lld per request\n",
              static_cast<long long>(cfg.num_hidden_layers), static_cast<long long>(cfg.hidden_size),
              static_cast<long long>(cfg.intermediate_size), static_cast<long long>(cfg.vocab_size),
              weight_bytes / 1e6, static_cast<long long>(absl::GetFlag(FLAGS_prompt)),
              static_cast<long long>(absl::GetFlag(FLAGS_decode)));
  std::printf("%-52s %10.2f\n", "copy bandwidth (GB/s, read+write)", copy_bw / 1e9);
  std::printf("%-52s %10.2f\n", "read bandwidth (GB/s, every line of 512 MB)", read_bw / 1e9);
  std::printf("%-52s %10.1f\n", "decode roofline (tokens/s, one stream; read)", roofline);
  RunResult single = Run(**engine, 1, cfg.vocab_size, {});
  std::printf("%-52s %10.1f\n", "single-stream decode (tokens/s)", single.single_decode_tps);
  std::printf("%-52s %10.3f\n", "single-stream fraction of roofline (goal >= 0.8)",
              single.single_decode_tps / roofline);
  std::printf("%-52s %10.3f\n", "single-stream fraction of the copy roofline",
              single.single_decode_tps / copy_roofline);
  std::printf("%-52s %10.1f\n", "single-stream decode (tokens/s, median token time)",
              single.single_median_tps);
  std::printf("%-52s %10.3f\n", "  its fraction of the read roofline", single.single_median_tps / roofline);
  std::printf("%-52s %10.1f\n", "products-only pass over the weights (steps/s)", 1.0 / pass_s);
  std::printf("%-52s %10.3f\n", "single-stream fraction of the products-only pass",
              single.single_decode_tps * pass_s);
  std::printf("%-52s %10.3f\n", "  the same by the median token time", single.single_median_tps * pass_s);
  double base_tps = 0;
  for (const std::string& arg : absl::GetFlag(FLAGS_streams)) {
    int n = 0;
    if (!absl::SimpleAtoi(arg, &n) || n < 1) Die(absl::InvalidArgumentError("--streams: " + arg));
    const serving::EngineStats before = (*engine)->stats();
    RunResult r = Run(**engine, n, cfg.vocab_size, {});
    const double tps = r.tokens / r.seconds;
    if (base_tps == 0) base_tps = tps;
    const serving::EngineStats after = (*engine)->stats();
    std::printf("%2d streams: %8.1f tokens/s (x%.2f of 1)  TTFT p50 %7.1f ms  p99 %7.1f ms  "
                "steps %lld resizes %lld (%lld allocated)\n",
                n, tps, tps / base_tps, Percentile(r.ttft, 0.5) * 1e3, Percentile(r.ttft, 0.99) * 1e3,
                static_cast<long long>(after.steps - before.steps),
                static_cast<long long>(after.resizes - before.resizes),
                static_cast<long long>(after.cache_allocations - before.cache_allocations));
    std::printf("    engine thread: forward %.2f s, sampling and callbacks %.2f s, resizes %.2f s "
                "of %.2f s\n",
                after.forward_seconds - before.forward_seconds,
                after.sample_seconds - before.sample_seconds,
                after.resize_seconds - before.resize_seconds, r.seconds);
  }
  if (absl::GetFlag(FLAGS_adapter_runs)) {
    double t1 = 0, tn = 0;
    std::vector<std::string> rounds;
    for (int round = 0; round < std::max(1, absl::GetFlag(FLAGS_adapter_rounds)); ++round) {
      RunResult r1 = Run(**engine, 32, cfg.vocab_size, one);
      RunResult rn = Run(**engine, 32, cfg.vocab_size, many);
      t1 = std::max(t1, r1.tokens / r1.seconds);
      tn = std::max(tn, rn.tokens / rn.seconds);
      rounds.push_back(absl::StrFormat("%.1f/%.1f", r1.tokens / r1.seconds, rn.tokens / rn.seconds));
    }
    std::printf("32 streams, 1 adapter:   %8.1f tokens/s (best of %zu)\n", t1, rounds.size());
    std::printf("32 streams, %d adapters: %8.1f tokens/s  ratio %.3f (goal >= 0.9)\n", n_adapters,
                tn, tn / t1);
    std::printf("    rounds (1 / %d adapters): %s\n", n_adapters, absl::StrJoin(rounds, "  ").c_str());
  }
  if (const int clients = absl::GetFlag(FLAGS_sustained_clients); clients > 0) {
    // Requests join and leave between steps, so most steps mix prompt
    // chunks with one-token decodes: ragged steps compute the real tokens,
    // padded ones rows x the longest chunk.
    auto padded = serving::Engine::Create(*std::move(padded_decoder), eo);
    if (!padded.ok()) Die(padded.status());
    const int per = absl::GetFlag(FLAGS_sustained_requests);
    RunSustained(**padded, clients, 1, cfg.vocab_size);  // warm-up (its caches)
    std::printf("sustained: %d clients x %d requests, prompts 16-192 and answers 16-128 tokens\n",
                clients, per);
    for (int round = 0; round < absl::GetFlag(FLAGS_sustained_rounds); ++round) {
      double tps[2] = {0, 0};
      for (int ragged = 1; ragged >= 0; --ragged) {
        serving::Engine& e = ragged ? **engine : **padded;
        const serving::EngineStats before = e.stats();
        SustainedResult r = RunSustained(e, clients, per, cfg.vocab_size);
        const serving::EngineStats after = e.stats();
        tps[ragged] = r.tokens / r.seconds;
        std::printf("  %-7s %8.1f tokens/s out (%7.1f in)  TTFT p50 %7.1f ms  p99 %7.1f ms  "
                    "steps %lld  forward %.2f s of %.2f s\n",
                    e.decoder().RaggedExtend() ? "ragged" : "padded", tps[ragged],
                    r.prompt_tokens / r.seconds, Percentile(r.ttft, 0.5) * 1e3,
                    Percentile(r.ttft, 0.99) * 1e3, static_cast<long long>(after.steps - before.steps),
                    after.forward_seconds - before.forward_seconds, r.seconds);
      }
      std::printf("  round %d: ragged / padded %.2fx\n", round + 1, tps[1] / tps[0]);
    }
    padded->reset();
  }
  std::printf("%-52s %10.2f\n", "adapter load from disk (ms each, mean)", load_s / n_adapters * 1e3);
#ifdef TUNEFLEET_BENCH_FILTERS
  {
    auto filter = serving::BuiltinFilter::Create({});
    if (!filter.ok()) Die(filter.status());
    serving::FilterPolicy policy;
    std::string text;
    for (int i = 0; text.size() < 2048; ++i) absl::StrAppend(&text, "The answer number ", i, " is quite fine. ");
    auto t0 = Clock::now();
    const int reps = 200;
    for (int i = 0; i < reps; ++i) (void)(*filter)->Classify(text, serving::TextSource::kCompletion);
    const double classify_us = Seconds(Clock::now() - t0) / reps * 1e6;
    // A streamed answer: one push per ~4-byte token, as the engine thread runs it.
    t0 = Clock::now();
    int pushes = 0;
    for (int rep = 0; rep < 20; ++rep) {
      serving::StreamGuard guard(filter->get(), &policy);
      for (size_t i = 0; i < text.size(); i += 4, ++pushes) (void)guard.Push(text.substr(i, 4));
      (void)guard.Finish();
    }
    const double push_us = Seconds(Clock::now() - t0) / pushes * 1e6;
    std::printf("%-52s %10.1f\n", "filter: classify 2 KB (us)", classify_us);
    std::printf("%-52s %10.2f\n", "filter: streamed, per token (us)", push_us);
    std::printf("%-52s %10.3f\n", "filter: per-token cost / single-stream token time",
                push_us * 1e-6 * single.single_decode_tps);
    std::printf("%-52s %10zu\n", "filter: hold-back window (bytes)", (*filter)->max_span());
  }
#endif
  engine->reset();
  std::filesystem::remove_all(dir);
  return 0;
}
