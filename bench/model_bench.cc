// Model benchmark: load throughput against a plain read of the same files,
// and prefill/decode tokens/s of a ~100M-parameter Phi-3-shaped model, with
// decode reported against the memory-bandwidth roofline measured in the same
// run (weight bytes read per token ÷ tensor copy bandwidth).
//
//   model_bench [--threads N] [--device cpu|cuda] [--layers 8 --hidden 768 ...]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "common/model/allocator.h"
#include "common/model/decoder.h"
#include "common/model/small_gemm.h"
#include "common/model/tiny_model.h"

ABSL_FLAG(std::string, dir, "", "model directory to use or create (default: a temporary one)");
ABSL_FLAG(int64_t, layers, 8, "decoder layers");
ABSL_FLAG(int64_t, hidden, 768, "hidden size");
ABSL_FLAG(int64_t, heads, 12, "attention heads");
ABSL_FLAG(int64_t, intermediate, 2048, "MLP size");
ABSL_FLAG(int, threads, 0, "intra-op threads (0: all cores)");
ABSL_FLAG(std::string, device, "cpu", "cpu or cuda");
ABSL_FLAG(int64_t, prompt, 128, "prefill tokens");
ABSL_FLAG(int64_t, decode, 64, "decode steps");
ABSL_FLAG(int64_t, batch, 1, "rows decoded together");
ABSL_FLAG(int, repeats, 3, "repetitions (best is reported)");

namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

void Die(const absl::Status& s) {
  std::fprintf(stderr, "model_bench: %s\n", s.ToString().c_str());
  std::exit(1);
}

// Reads every safetensors file of `dir` with read(2) into one buffer.
double PlainRead(const std::string& dir, uint64_t* bytes) {
  std::vector<char> buf(64 << 20);
  *bytes = 0;
  auto t0 = Clock::now();
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().extension() != ".safetensors") continue;
    int fd = ::open(e.path().c_str(), O_RDONLY);
    if (fd < 0) continue;
    ssize_t n;
    while ((n = ::read(fd, buf.data(), buf.size())) > 0) *bytes += static_cast<uint64_t>(n);
    ::close(fd);
  }
  return Seconds(t0, Clock::now());
}

void Sync(const at::Tensor& t) { (void)t.reshape({-1})[0].item<double>(); }

}  // namespace

int main(int argc, char** argv) {
  // libgomp's waiting as a serving replica has it (common/model/allocator.h):
  // set in the environment, and the program started again.
  tunefleet::model::ExecWithDecoderThreading(argv);
  absl::ParseCommandLine(argc, argv);
  const int threads = absl::GetFlag(FLAGS_threads) > 0
                          ? absl::GetFlag(FLAGS_threads)
                          : static_cast<int>(std::thread::hardware_concurrency());
  at::set_num_threads(threads);
  const bool cuda = absl::GetFlag(FLAGS_device) == "cuda";
  const int repeats = std::max(1, absl::GetFlag(FLAGS_repeats));

  if (cuda && !at::hasCUDA()) {
    std::fprintf(stderr, "model_bench: --device cuda: no CUDA here\n");
    return 1;
  }
  std::string dir = absl::GetFlag(FLAGS_dir);
  bool temporary = false;
  if (dir.empty()) {
    dir = (std::filesystem::temp_directory_path() /
           ("tunefleet-model-bench-" + std::to_string(::getpid())))
              .string();
    temporary = true;
  }
  if (!std::filesystem::exists(std::filesystem::path(dir) / "config.json")) {
    tunefleet::model::TinyModelOptions o;
    o.seed = 1;
    o.num_layers = absl::GetFlag(FLAGS_layers);
    o.hidden_size = absl::GetFlag(FLAGS_hidden);
    o.num_heads = absl::GetFlag(FLAGS_heads);
    o.num_kv_heads = o.num_heads;
    o.intermediate_size = absl::GetFlag(FLAGS_intermediate);
    o.dtype = cuda ? "bfloat16" : "float32";
    if (absl::Status s = tunefleet::model::WriteTinyPhi3(dir, o); !s.ok()) Die(s);
  }

  tunefleet::model::DecoderOptions dopts;
  if (cuda) {
    dopts.device = at::Device(at::kCUDA);
    dopts.dtype = at::kBFloat16;
  }

  // Load: the plain read and the load, both from the page cache (a first
  // untimed read warms it), the load including a pass over every weight
  // byte so that lazily mapped pages count.
  uint64_t file_bytes = 0;
  PlainRead(dir, &file_bytes);
  double read_s = 1e30, load_s = 1e30, open_s = 1e30;
  for (int r = 0; r < repeats; ++r) read_s = std::min(read_s, PlainRead(dir, &file_bytes));
  int64_t params = 0, weight_bytes = 0, embed_bytes = 0;
  std::unique_ptr<tunefleet::model::Decoder> decoder;
  for (int r = 0; r < repeats; ++r) {
    decoder.reset();
    auto t0 = Clock::now();
    auto d = tunefleet::model::Decoder::Load(dir, dopts);
    if (!d.ok()) Die(d.status());
    auto t1 = Clock::now();
    double checksum = 0;
    for (const at::Tensor& p : d->Parameters()) checksum += p.sum().item<double>();
    auto t2 = Clock::now();
    open_s = std::min(open_s, Seconds(t0, t1));
    load_s = std::min(load_s, Seconds(t0, t2));
    if (checksum == 12345.678) std::printf(" ");  // keep the pass
    decoder = std::make_unique<tunefleet::model::Decoder>(*std::move(d));
  }
  const auto& cfg = decoder->config();
  for (const at::Tensor& p : decoder->Parameters()) params += p.numel();
  weight_bytes = decoder->WeightBytes();
  embed_bytes =
      cfg.vocab_size * cfg.hidden_size * static_cast<int64_t>(at::elementSize(dopts.dtype));

  // Copy bandwidth on the model's device: bytes read + written per second.
  const int64_t copy_elems = 128ll << 20;  // 512 MiB of fp32
  auto opts = at::TensorOptions().dtype(at::kFloat).device(dopts.device);
  at::Tensor src = at::ones({copy_elems}, opts), dst = at::empty({copy_elems}, opts);
  dst.copy_(src);
  Sync(dst);
  double copy_s = 1e30;
  for (int r = 0; r < repeats + 2; ++r) {
    auto t0 = Clock::now();
    dst.copy_(src);
    Sync(dst);
    copy_s = std::min(copy_s, Seconds(t0, Clock::now()));
  }
  const double copy_bw = 2.0 * static_cast<double>(copy_elems) * 4.0 / copy_s;
  src.reset();
  dst.reset();

  // Prefill and decode with the KV cache.
  const int64_t prompt = absl::GetFlag(FLAGS_prompt), steps = absl::GetFlag(FLAGS_decode);
  const int64_t batch = absl::GetFlag(FLAGS_batch);
  at::Tensor ids = (at::arange(batch * prompt, at::kLong) * 7919 % 32000).view({batch, prompt});
  double prefill_s = 1e30, decode_s = 1e30, gemm_prefill_s = 1e30, gemm_decode_s = 1e30;
  // Repeats alternate between the decoder as it runs (InferenceLinear for
  // 2 rows and more) and the same decoder with every product through OpenBLAS
  // (the baseline: GEMM, or GEMV for one row), so that both see the same
  // machine.
  const bool compare = !cuda && tunefleet::model::InferenceLinearMaxRows() > 0;
  for (int r = 0; r < (compare ? 2 * repeats : repeats); ++r) {
    const bool baseline = compare && r % 2 == 1;
    tunefleet::model::EnableInferenceLinear(!baseline);
    auto cache = decoder->NewCache(batch, prompt + steps);
    if (!cache.ok()) Die(cache.status());
    auto t0 = Clock::now();
    auto logits = decoder->Extend(*cache, ids);
    if (!logits.ok()) Die(logits.status());
    Sync(*logits);
    auto t1 = Clock::now();
    for (int64_t s = 0; s < steps; ++s) {
      at::Tensor next = logits->argmax(-1).view({batch, 1});
      logits = decoder->Extend(*cache, next);
      if (!logits.ok()) Die(logits.status());
    }
    Sync(*logits);
    auto t2 = Clock::now();
    if (baseline) {
      gemm_prefill_s = std::min(gemm_prefill_s, Seconds(t0, t1));
      gemm_decode_s = std::min(gemm_decode_s, Seconds(t1, t2));
      continue;
    }
    prefill_s = std::min(prefill_s, Seconds(t0, t1));
    decode_s = std::min(decode_s, Seconds(t1, t2));
  }
  tunefleet::model::EnableInferenceLinear(true);
  // The floor our decode could reach on this BLAS: one matrix-vector product
  // per weight matrix (the embedding table excluded), nothing else.
  double gemv_s = 1e30;
  {
    std::vector<at::Tensor> mats;
    for (const at::Tensor& p : decoder->Parameters()) {
      if (p.dim() == 2 && !p.is_same(decoder->Parameters()[0])) mats.push_back(p);
    }
    for (int r = 0; r < repeats + 1; ++r) {
      auto t0 = Clock::now();
      at::Tensor acc;
      for (const at::Tensor& w : mats) {
        at::Tensor x = at::ones({w.size(1)}, w.options());
        at::Tensor y = cuda ? at::matmul(w, x) : at::mv(w, x);
        acc = acc.defined() ? acc + y.sum() : y.sum();
      }
      Sync(acc);
      gemv_s = std::min(gemv_s, Seconds(t0, Clock::now()));
    }
  }
  const double prefill_tps = static_cast<double>(batch * prompt) / prefill_s;
  const double decode_tps = static_cast<double>(batch * steps) / decode_s;
  // One decode step reads every weight once, except that only `batch` rows
  // of the embedding table are touched.
  const double bytes_per_step = static_cast<double>(weight_bytes - embed_bytes);
  const double roofline_steps = copy_bw / bytes_per_step;
  const double decode_steps_per_s = static_cast<double>(steps) / decode_s;

  auto env = [](const char* name) { return std::getenv(name) ? std::getenv(name) : "(unset)"; };
  std::printf("model_bench: device=%s threads=%d dtype=%s OMP_WAIT_POLICY=%s GOMP_SPINCOUNT=%s\n",
              cuda ? "cuda" : "cpu", threads, c10::toString(dopts.dtype), env("OMP_WAIT_POLICY"),
              env("GOMP_SPINCOUNT"));
  std::printf(
      "model: phi3 layers=%lld hidden=%lld heads=%lld intermediate=%lld vocab=%lld params=%.1fM "
      "weights=%.1f MB\n",
      static_cast<long long>(cfg.num_hidden_layers), static_cast<long long>(cfg.hidden_size),
      static_cast<long long>(cfg.num_attention_heads),
      static_cast<long long>(cfg.intermediate_size), static_cast<long long>(cfg.vocab_size),
      static_cast<double>(params) / 1e6, static_cast<double>(weight_bytes) / 1e6);
  std::printf("%-44s %12s\n", "metric", "value");
  std::printf("%-44s %12.2f\n", "plain read of the files (GB/s, page cache)",
              file_bytes / read_s / 1e9);
  std::printf("%-44s %12.2f\n", "load: open+map only (GB/s)", file_bytes / open_s / 1e9);
  std::printf("%-44s %12.2f\n", "load: open+map+touch every weight (GB/s)",
              file_bytes / load_s / 1e9);
  std::printf("%-44s %12.2f\n", "load vs plain read (ratio)", read_s / load_s);
  std::printf("%-44s %12.2f\n", "copy bandwidth (GB/s, read+write)", copy_bw / 1e9);
  std::printf("%-44s %12.1f\n", "prefill tokens/s", prefill_tps);
  std::printf("%-44s %12.1f\n", "decode tokens/s", decode_tps);
  std::printf("%-44s %12.1f\n", "decode roofline steps/s (copy bw / bytes)", roofline_steps);
  std::printf("%-44s %12.3f\n", "decode fraction of roofline", decode_steps_per_s / roofline_steps);
  std::printf("%-44s %12.1f\n", "GEMV-only pass over the weights (steps/s)", 1.0 / gemv_s);
  std::printf("%-44s %12.3f\n", "decode fraction of the GEMV-only pass",
              decode_steps_per_s * gemv_s);
  if (compare) {
    std::printf("%-44s %12.1f\n", "prefill tokens/s, OpenBLAS GEMM",
                static_cast<double>(batch * prompt) / gemm_prefill_s);
    std::printf("%-44s %12.2f\n", "prefill speed-up of InferenceLinear", gemm_prefill_s / prefill_s);
  }
  if (compare) {
    std::printf("%-44s %12.1f\n", batch > 1 ? "decode tokens/s, OpenBLAS GEMM for every row"
                                            : "decode tokens/s, OpenBLAS GEMV",
                static_cast<double>(batch * steps) / gemm_decode_s);
    std::printf("%-44s %12.2f\n", "decode speed-up of InferenceLinear", gemm_decode_s / decode_s);
  }
  std::printf("(prompt=%lld decode=%lld batch=%lld, best of %d)\n", static_cast<long long>(prompt),
              static_cast<long long>(steps), static_cast<long long>(batch), repeats);
  if (temporary) std::filesystem::remove_all(dir);
  return 0;
}
