// train_bench: training throughput of the worker's loop (the same code the
// tunefleet-train-worker process runs) on a Phi-3-shaped model with random
// weights and a chat-like length distribution. Prints tokens/s and model
// FLOP utilisation (LoRA 4N, full 6N FLOPs per token, N = parameters outside
// the embedding table, the vocabulary head counted on trained tokens only)
// against a matmul peak measured in the same run (the better of OpenBLAS and
// the model library's own kernels), and packed vs padded real-token
// throughput.
//
// Then 1 vs 2 ranks (weak scaling: `--batch` examples per rank per step,
// Gloo on loopback, the threads split between the ranks): efficiency = the
// two ranks' summed real tokens/s over twice one rank's on half the threads,
// and over two independent one-rank runs side by side (what the machine
// gives two processes at once). The other process is this binary
// re-executed (--rank_child, --solo_child).
//
//   train_bench [--hidden 512 --layers 8 ...] [--steps 4] [--threads N] [--only "lora packed"]
//
// With --device cuda (a GPU node, scripts/gpu-check): the worker trains under
// bf16 autocast, the model is written in bf16, MFU is against a bf16 matmul
// rate measured on the GPU in the same run, and there is no scaling run (one
// GPU cannot host two NCCL ranks). scripts/gpu-check passes a
// Phi-3-mini shape (--hidden 3072 --layers 32 --heads 32 --intermediate 8192)
// at --max_len 2048.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "common/model/allocator.h"
#include "common/model/model_config.h"
#include "common/model/small_gemm.h"
#include "common/model/tiny_model.h"
#include "services/trainer/protocol/report.h"
#include "services/trainer/protocol/shard_file.h"
#include "services/trainer/protocol/worker_spec.h"
#include "services/trainer/worker/trainer.h"

// The defaults are model_bench's and serving_bench's shape: ~106M parameters
// (81M outside the embedding table).
ABSL_FLAG(int64_t, hidden, 768, "Hidden size");
ABSL_FLAG(int64_t, layers, 8, "Decoder layers");
ABSL_FLAG(int64_t, heads, 12, "Attention heads");
ABSL_FLAG(int64_t, intermediate, 2048, "MLP intermediate size");
ABSL_FLAG(int64_t, steps, 4, "Optimizer steps timed per configuration (after one warm-up step)");
ABSL_FLAG(int64_t, batch, 16, "Examples per step");
ABSL_FLAG(int64_t, max_len, 512, "max_sequence_length (packed row length)");
ABSL_FLAG(int, threads, 0, "Intra-op threads (0: all cores)");
ABSL_FLAG(bool, full, true, "Also time full fine-tuning");
ABSL_FLAG(bool, scaling, true, "Also time 1 vs 2 data-parallel ranks (LoRA, packed; CPU only)");
ABSL_FLAG(std::string, device, "cpu", "cpu or cuda");
ABSL_FLAG(std::string, model_dir, "",
          "model directory to use, or to create with the shape flags (default: a temporary one); "
          "the benchmarks share one this way");
ABSL_FLAG(std::string, only, "",
          "Time only the configurations whose name contains this (e.g. 'lora padded'), for "
          "profiling one of them");
// Internal: a second rank of the scaling run.
ABSL_FLAG(int, rank_child, -1, "(internal) run as this rank of the 2-rank scaling run");
ABSL_FLAG(std::string, child_dir, "", "(internal) the parent's working directory");
ABSL_FLAG(int, child_port, 0, "(internal) the rendezvous port");
ABSL_FLAG(bool, solo_child, false,
          "(internal) run one rank alone on rank1.shard beside the parent's (the 2-rank baseline)");

namespace {

using namespace tunefleet;
namespace fs = std::filesystem;

// The best rate of 1024^3 fp32 products: OpenBLAS (at::mm) and, where the
// CPU has them, the model library's own kernels (InferenceLinear, which the
// worker uses for LoRA's frozen products).
struct Peak {
  double openblas = 0, kernels = 0;
  double best() const { return std::max(openblas, kernels); }
};

// The bf16 rate of 8192^3 products on the GPU (at::mm, cuBLAS), in GFLOP/s.
// The sum's item() waits for the queued products.
double CudaBf16PeakGflops() {
  const int64_t n = 8192;
  at::NoGradGuard no_grad;
  auto o = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  at::Tensor a = at::randn({n, n}, o), b = at::randn({n, n}, o);
  at::mm(a, b).sum().item<float>();  // warm-up
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    at::Tensor c;
    for (int i = 0; i < 10; ++i) c = at::mm(a, b);
    c.sum().item<float>();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 10 * 2.0 * n * n * n / s / 1e9);
  }
  return best;
}

Peak MatmulPeakGflops() {
  const int64_t n = 1024;
  at::NoGradGuard no_grad;
  at::Tensor a = at::randn({n, n}), b = at::randn({n, n});
  Peak peak;
  for (int which = 0; which < 2; ++which) {
    auto product = [&] {
      if (which == 0) return at::mm(a, b);
      std::optional<at::Tensor> y = model::InferenceLinear(a, b, at::Tensor());
      return y ? *y : at::Tensor();
    };
    if (!product().defined()) break;  // warm-up; no kernel on this CPU
    double best = 0;
    for (int rep = 0; rep < 5; ++rep) {
      auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < 4; ++i) product();
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      best = std::max(best, 4 * 2.0 * n * n * n / s / 1e9);
    }
    (which == 0 ? peak.openblas : peak.kernels) = best;
  }
  return peak;
}

struct Figures {
  double tokens_per_second = 0;  // real tokens
  double padding_fraction = 0;
  // The worker's memory estimate (common/model/memory_estimate.h) and what
  // it measured: the device's bytes in use on a GPU (the driver's count),
  // else the process's peak resident memory (a high-water mark of this
  // whole process, so later runs show at least the earlier ones'), and of
  // that what the process held before the run loaded the model (libraries,
  // the CUDA context; the estimate leaves it out).
  double estimated_bytes = 0, measured_bytes = 0, runtime_bytes = 0;
};

Figures RunOnce(const trainer::WorkerSpec& spec, const std::string& report_path) {
  int fd = ::open(report_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  trainer::ReportWriter report(fd);
  trainer::WorkerRunOptions o;
  o.report = &report;
  absl::StatusOr<trainer::WorkerOutcome> out = trainer::RunWorker(spec, o);
  ::close(fd);
  if (!out.ok()) {
    std::fprintf(stderr, "train_bench: %s\n", out.status().ToString().c_str());
    std::exit(1);
  }
  std::ifstream in(report_path);
  std::string line;
  std::vector<double> tps;
  Figures f;
  while (std::getline(in, line)) {
    auto e = trainer::ParseReportLine(line);
    if (!e.ok()) continue;
    if (e->kind == trainer::ReportKind::kProgress && e->step > 1 && e->tokens_per_second)
      tps.push_back(*e->tokens_per_second);
    if (e->kind != trainer::ReportKind::kCompleted) continue;
    auto metric = [&](const char* name) {
      auto it = e->metrics.find(name);
      return it == e->metrics.end() ? 0.0 : it->second;
    };
    f.padding_fraction = metric("padding_fraction");
    f.estimated_bytes = metric("estimated_memory_bytes");
    f.measured_bytes = metric("peak_device_bytes") > 0 ? metric("peak_device_bytes")
                                                        : metric("peak_rss_bytes");
    f.runtime_bytes = metric("runtime_bytes");
  }
  std::sort(tps.begin(), tps.end());
  f.tokens_per_second = tps.empty() ? 0 : tps[tps.size() / 2];
  return f;
}

int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a = {};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

}  // namespace

int main(int argc, char** argv) {
  // As the trainer agent starts its workers: idle OpenMP threads sleep, and
  // OpenBLAS's idle threads stop spinning at once.
  bool set = false;
  for (const auto& [name, value] : {std::pair{"OMP_WAIT_POLICY", "PASSIVE"},
                                    std::pair{"OPENBLAS_THREAD_TIMEOUT", "4"}}) {
    if (std::getenv(name) == nullptr) {
      ::setenv(name, value, 1);
      set = true;
    }
  }
  if (set) ::execv("/proc/self/exe", argv);
  absl::ParseCommandLine(argc, argv);
  model::TuneAllocatorForTensorWork();  // as the worker's main does
  const int threads = absl::GetFlag(FLAGS_threads) > 0
                          ? absl::GetFlag(FLAGS_threads)
                          : static_cast<int>(std::thread::hardware_concurrency());
  at::set_num_threads(threads);
  const bool solo = absl::GetFlag(FLAGS_solo_child);
  const int child = solo ? 1 : absl::GetFlag(FLAGS_rank_child);
  const bool cuda = absl::GetFlag(FLAGS_device) == "cuda";
  if (cuda && !at::hasCUDA()) {
    std::fprintf(stderr, "train_bench: --device cuda, but this libtorch or machine has no CUDA\n");
    return 1;
  }
  const std::string dir =
      child >= 0 ? absl::GetFlag(FLAGS_child_dir)
                 : (fs::temp_directory_path() / absl::StrCat("train_bench-", ::getpid())).string();
  fs::create_directories(dir);

  model::TinyModelOptions mo;
  mo.seed = 1;
  mo.hidden_size = absl::GetFlag(FLAGS_hidden);
  mo.num_layers = absl::GetFlag(FLAGS_layers);
  mo.num_heads = absl::GetFlag(FLAGS_heads);
  mo.num_kv_heads = mo.num_heads;
  mo.intermediate_size = absl::GetFlag(FLAGS_intermediate);
  if (cuda) mo.dtype = "bfloat16";  // half the bytes to write and read
  const std::string model_dir =
      absl::GetFlag(FLAGS_model_dir).empty() ? dir + "/model" : absl::GetFlag(FLAGS_model_dir);
  const bool write_model = child < 0 && !fs::exists(fs::path(model_dir) / "config.json");
  if (auto s = write_model ? model::WriteTinyPhi3(model_dir, mo) : absl::OkStatus(); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  auto cfg = model::LoadModelConfig(model_dir);
  const double n_params = static_cast<double>(cfg->NumParameters() - cfg->vocab_size * cfg->hidden_size);
  // The vocabulary head (counted in N) runs on the trained tokens alone.
  const double head_params =
      cfg->tie_word_embeddings ? 0.0 : static_cast<double>(cfg->vocab_size * cfg->hidden_size);
  int64_t real_tokens = 0, trained_tokens = 0;  // in train.shard

  // Chat-like lengths: mostly short (log-normal, median ~90 tokens), a few
  // long; the prompt untrained, the answer trained.
  const int64_t steps = absl::GetFlag(FLAGS_steps) + 1;
  const int64_t batch = absl::GetFlag(FLAGS_batch);
  const int64_t max_len = absl::GetFlag(FLAGS_max_len);
  const std::string shard = dir + "/train.shard";
  // train.shard (rank 0 and the single runs) and rank1.shard (the scaling
  // run's second rank): the same length distribution, other draws.
  for (const auto& [path, seed] : {std::pair{shard, 7}, std::pair{dir + "/rank1.shard", 8}}) {
    if (child >= 0) break;  // the parent wrote them
    auto w = trainer::ShardFileWriter::Create(path, cfg->vocab_size);
    std::mt19937_64 rng(seed);
    std::lognormal_distribution<double> len(4.5, 0.7);
    std::uniform_int_distribution<int32_t> tok(0, 32000 - 1);
    for (int64_t i = 0; i < steps * batch; ++i) {
      const int64_t n = std::clamp<int64_t>(static_cast<int64_t>(len(rng)), 8, max_len);
      std::vector<int32_t> ids(n);
      std::vector<uint8_t> mask(n);
      for (int64_t k = 0; k < n; ++k) {
        ids[k] = tok(rng);
        mask[k] = k >= n / 3 ? 1 : 0;
      }
      (void)(*w)->AddExample(ids, mask);
      if (seed == 7) {
        real_tokens += n;
        trained_tokens += std::count(mask.begin(), mask.end(), 1);
      }
    }
    if (auto s = (*w)->Finish(); !s.ok()) return 1;
  }

  auto spec_for = [&](bool packing, trainer::TrainingMethod method) {
    trainer::WorkerSpec s;
    s.job_id = "bench";
    s.base_model_dir = model_dir;
    s.train_shards = {shard};
    s.output_dir = dir + "/out";
    s.checkpoint_root = dir + "/ckpt";
    s.method = method;
    s.hyper.batch_size = batch;
    s.hyper.max_sequence_length = max_len;
    s.hyper.packing = packing;
    s.hyper.lora_rank = 16;
    s.hyper.lora_alpha = 32;
    s.hyper.lora_dropout = 0;
    s.hyper.max_steps = steps;
    s.hyper.checkpoint_interval_steps = 0;
    s.hyper.epochs = 1;
    s.progress_interval_s = 0;
    s.device = cuda ? "cuda" : "cpu";
    return s;
  };
  // A rank of the 2-rank scaling run: rank 0 holds train.shard, rank 1
  // rank1.shard; 2 x `batch` examples a step, split between the ranks by
  // tokens (the worker gathers each step's examples on both).
  auto ranked = [&](int rank, int port) {
    trainer::WorkerSpec s = spec_for(true, trainer::TrainingMethod::kLora);
    s.rank = rank;
    s.world_size = 2;
    s.master_addr = "127.0.0.1";
    s.master_port = port;
    s.train_shards = {rank == 0 ? shard : dir + "/rank1.shard"};
    s.hyper.batch_size = 2 * batch;  // across the ranks
    s.output_dir = dir + "/out-ddp";
    s.checkpoint_root = dir + "/ckpt-ddp";
    s.collective_timeout_s = 600;
    return s;
  };
  // One rank alone on `shard`, its own output: the 1-rank run, and the two
  // independent runs side by side.
  auto solo_spec = [&](const std::string& shard_path, const std::string& name) {
    trainer::WorkerSpec s = spec_for(true, trainer::TrainingMethod::kLora);
    s.train_shards = {shard_path};
    s.output_dir = dir + "/out-" + name;
    s.checkpoint_root = dir + "/ckpt-" + name;
    return s;
  };
  if (solo) {
    Figures f = RunOnce(solo_spec(dir + "/rank1.shard", "solo1"), dir + "/report-solo1.jsonl");
    std::ofstream(dir + "/solo1.tps") << f.tokens_per_second << "\n";
    return 0;
  }
  if (child >= 0) {
    Figures f = RunOnce(ranked(child, absl::GetFlag(FLAGS_child_port)),
                        absl::StrCat(dir, "/report-rank", child, ".jsonl"));
    std::ofstream(absl::StrCat(dir, "/rank", child, ".tps")) << f.tokens_per_second << "\n";
    return 0;
  }

  Peak peak;
  if (cuda) {
    peak.kernels = CudaBf16PeakGflops();
  } else {
    peak = MatmulPeakGflops();
  }
  const double trained_share =
      real_tokens > 0 ? static_cast<double>(trained_tokens) / real_tokens : 1.0;
  // Model FLOPs per real token for `per_param` FLOPs per parameter (4 LoRA,
  // 6 full): the body on every token, the head on the trained share.
  auto model_flops = [&](double per_param) {
    return per_param * ((n_params - head_params) + head_params * trained_share);
  };
  std::printf("train_bench: device=%s threads=%d OMP_WAIT_POLICY=%s\n", cuda ? "cuda (bf16 autocast)" : "cpu (fp32)",
              threads, std::getenv("OMP_WAIT_POLICY"));
  std::printf("model: phi3 layers=%lld hidden=%lld intermediate=%lld vocab=%lld N(non-embedding)=%.1fM\n",
              static_cast<long long>(cfg->num_hidden_layers), static_cast<long long>(cfg->hidden_size),
              static_cast<long long>(cfg->intermediate_size), static_cast<long long>(cfg->vocab_size),
              n_params / 1e6);
  std::printf("data: batch=%lld examples/step, max_sequence_length=%lld, %lld timed steps\n",
              static_cast<long long>(batch), static_cast<long long>(max_len),
              static_cast<long long>(steps - 1));
  if (cuda) {
    std::printf("measured bf16 matmul peak on the GPU (8192^3, at::mm): %.1f TFLOP/s\n",
                peak.best() / 1e3);
  } else {
    std::printf("measured fp32 matmul peak (1024^3): %.1f GFLOP/s (OpenBLAS at::mm %.1f, own kernels %.1f)\n",
                peak.best(), peak.openblas, peak.kernels);
  }
  std::printf("MFU counts 4N (LoRA) or 6N (full) FLOPs per real token, the vocabulary head (%.1fM of N) "
              "on the %.0f%% of tokens that are trained\n",
              head_params / 1e6, 100 * trained_share);
  std::printf("%-28s %14s %10s %10s %34s\n", "configuration", "real tok/s", "MFU", "padding",
              cuda ? "GiB est. / GPU used (before model)" : "GiB est. / peak RSS (before model)");

  double packed_tps = 0, padded_tps = 0;
  for (auto [name, packing, method, flops] :
       {std::tuple{"lora packed", true, trainer::TrainingMethod::kLora, 4.0},
        std::tuple{"lora padded (length-sorted)", false, trainer::TrainingMethod::kLora, 4.0},
        std::tuple{"full packed", true, trainer::TrainingMethod::kFull, 6.0}}) {
    if (method == trainer::TrainingMethod::kFull && !absl::GetFlag(FLAGS_full)) continue;
    if (std::string_view(name).find(absl::GetFlag(FLAGS_only)) == std::string_view::npos) continue;
    Figures f = RunOnce(spec_for(packing, method), dir + "/report.jsonl");
    const double mfu = f.tokens_per_second * model_flops(flops) / (peak.best() * 1e9);
    constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
    std::printf("%-28s %14.1f %9.1f%% %9.1f%% %14.2f / %.2f (%.2f)\n", name, f.tokens_per_second,
                100 * mfu, 100 * f.padding_fraction, f.estimated_bytes / kGiB,
                f.measured_bytes / kGiB, f.runtime_bytes / kGiB);
    if (method == trainer::TrainingMethod::kLora) (packing ? packed_tps : padded_tps) = f.tokens_per_second;
  }
  if (padded_tps > 0) std::printf("packed / padded real-token throughput: %.2fx\n", packed_tps / padded_tps);

  if (absl::GetFlag(FLAGS_scaling) && !cuda) {
    const int half = std::max(1, threads / 2);
    at::set_num_threads(half);
    // This binary re-executed with the model's shape and `flag`.
    auto spawn = [&](std::vector<std::string> args) {
      args.insert(args.begin(), "/proc/self/exe");
      args.push_back("--child_dir=" + dir);
      args.push_back(absl::StrCat("--threads=", half));
      for (const auto& [name, value] :
           {std::pair{"hidden", absl::GetFlag(FLAGS_hidden)},
            std::pair{"layers", absl::GetFlag(FLAGS_layers)},
            std::pair{"heads", absl::GetFlag(FLAGS_heads)},
            std::pair{"intermediate", absl::GetFlag(FLAGS_intermediate)},
            std::pair{"steps", absl::GetFlag(FLAGS_steps)}, std::pair{"batch", batch},
            std::pair{"max_len", max_len}}) {
        args.push_back(absl::StrCat("--", name, "=", value));
      }
      args.push_back("--model_dir=" + model_dir);
      std::vector<char*> cargv;
      for (std::string& a : args) cargv.push_back(a.data());
      cargv.push_back(nullptr);
      const pid_t pid = ::fork();
      if (pid == 0) {
        ::execv("/proc/self/exe", cargv.data());
        _exit(127);
      }
      return pid;
    };
    auto child_tps = [&](pid_t pid, const std::string& file) {
      int status = 0;
      ::waitpid(pid, &status, 0);
      double tps = 0;
      std::ifstream(dir + "/" + file) >> tps;
      if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || tps <= 0) {
        std::fprintf(stderr, "train_bench: the second process failed\n");
        std::exit(1);
      }
      return tps;
    };
    Figures one = RunOnce(solo_spec(shard, "one"), dir + "/report.jsonl");
    // What this machine gives two ranks that never talk: two one-rank runs
    // at once, on the two ranks' data. On a VM whose vCPUs share caches,
    // memory bandwidth or a core's FMA units, two ranks cannot beat it.
    const pid_t solo_pid = spawn({"--solo_child"});
    Figures solo0 = RunOnce(solo_spec(shard, "solo0"), dir + "/report-solo0.jsonl");
    const double side_by_side = solo0.tokens_per_second + child_tps(solo_pid, "solo1.tps");
    const int port = FreePort();
    const pid_t rank_pid = spawn({"--rank_child=1", absl::StrCat("--child_port=", port)});
    Figures rank0 = RunOnce(ranked(0, port), dir + "/report-rank0.jsonl");
    const double two = rank0.tokens_per_second + child_tps(rank_pid, "rank1.tps");
    std::printf("1 rank, %d threads: %.1f real tok/s; two such runs side by side (no collectives): "
                "%.1f real tok/s together (%.2fx)\n",
                half, one.tokens_per_second, side_by_side, side_by_side / one.tokens_per_second);
    std::printf("2 Gloo ranks, %d threads each, %lld examples a step split by tokens: %.1f real tok/s "
                "together\n",
                half, static_cast<long long>(2 * batch), two);
    std::printf("2-rank scaling efficiency: %.1f%% of twice one rank (goal 90%%); %.1f%% of the two "
                "side-by-side runs (what data parallelism itself costs on this machine)\n",
                100 * two / (2 * one.tokens_per_second), 100 * two / side_by_side);
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  return 0;
}
