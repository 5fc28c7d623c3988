// train_bench: training throughput of the worker's loop (the same code the
// tunefleet-train-worker process runs) on a Phi-3-shaped model with random
// weights and a chat-like length distribution. Prints tokens/s and model
// FLOP utilisation (LoRA 4N, full 6N FLOPs per token, N = parameters outside
// the embedding table, the vocabulary head counted on trained tokens only)
// against a matmul peak measured in the same run (the better of OpenBLAS and
// the model library's own kernels), and packed vs padded real-token
// throughput.
//
// Then 1 vs 2 ranks (weak scaling: each rank its own `--batch` examples per
// step, Gloo on loopback, the threads split between the ranks): efficiency =
// the two ranks' summed real tokens/s over twice one rank's on half the
// threads. The second rank is this binary re-executed (--rank_child).
//
//   train_bench [--hidden 512 --layers 8 ...] [--steps 4] [--threads N] [--only "lora packed"]
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
ABSL_FLAG(bool, scaling, true, "Also time 1 vs 2 data-parallel ranks (LoRA, packed)");
ABSL_FLAG(std::string, only, "",
          "Time only the configurations whose name contains this (e.g. 'lora padded'), for "
          "profiling one of them");
// Internal: a second rank of the scaling run.
ABSL_FLAG(int, rank_child, -1, "(internal) run as this rank of the 2-rank scaling run");
ABSL_FLAG(std::string, child_dir, "", "(internal) the parent's working directory");
ABSL_FLAG(int, child_port, 0, "(internal) the rendezvous port");
ABSL_FLAG(bool, peak_child, false, "(internal) measure a one-thread matmul rate beside the parent");

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

// Mean fp32 matmul rate over `seconds` of back-to-back 1024^3 at::mm.
// `ready`, when given, is created after the warm-up, and `go` waited for.
double MatmulRateGflops(double seconds, const std::string& ready = "", const std::string& go = "") {
  const int64_t n = 1024;
  at::Tensor a = at::randn({n, n}), b = at::randn({n, n});
  at::mm(a, b);  // warm-up
  if (!ready.empty()) std::ofstream(ready) << "\n";
  while (!go.empty() && !fs::exists(go)) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  int64_t count = 0;
  const auto t0 = std::chrono::steady_clock::now();
  double s = 0;
  while (s < seconds) {
    at::mm(a, b);
    ++count;
    s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  return count * 2.0 * n * n * n / s / 1e9;
}

struct Figures {
  double tokens_per_second = 0;  // real tokens
  double padding_fraction = 0;
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
    if (e->kind == trainer::ReportKind::kCompleted && e->metrics.count("padding_fraction"))
      f.padding_fraction = e->metrics.at("padding_fraction");
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
  if (absl::GetFlag(FLAGS_peak_child)) {
    const std::string d = absl::GetFlag(FLAGS_child_dir);
    const double rate = MatmulRateGflops(3.0, d + "/peak-ready", d + "/peak-go");
    std::ofstream(d + "/peak.txt") << rate << "\n";
    return 0;
  }
  const int child = absl::GetFlag(FLAGS_rank_child);
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
  const std::string model_dir = dir + "/model";
  if (auto s = child >= 0 ? absl::OkStatus() : model::WriteTinyPhi3(model_dir, mo); !s.ok()) {
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
    return s;
  };
  // A rank of the 2-rank scaling run: rank 0 reads train.shard, rank 1
  // rank1.shard; `batch` examples per rank per step.
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
  if (child >= 0) {
    Figures f = RunOnce(ranked(child, absl::GetFlag(FLAGS_child_port)),
                        absl::StrCat(dir, "/report-rank", child, ".jsonl"));
    std::ofstream(absl::StrCat(dir, "/rank", child, ".tps")) << f.tokens_per_second << "\n";
    return 0;
  }

  const Peak peak = MatmulPeakGflops();
  const double trained_share =
      real_tokens > 0 ? static_cast<double>(trained_tokens) / real_tokens : 1.0;
  // Model FLOPs per real token for `per_param` FLOPs per parameter (4 LoRA,
  // 6 full): the body on every token, the head on the trained share.
  auto model_flops = [&](double per_param) {
    return per_param * ((n_params - head_params) + head_params * trained_share);
  };
  std::printf("train_bench: threads=%d OMP_WAIT_POLICY=%s\n", threads, std::getenv("OMP_WAIT_POLICY"));
  std::printf("model: phi3 layers=%lld hidden=%lld intermediate=%lld vocab=%lld N(non-embedding)=%.1fM\n",
              static_cast<long long>(cfg->num_hidden_layers), static_cast<long long>(cfg->hidden_size),
              static_cast<long long>(cfg->intermediate_size), static_cast<long long>(cfg->vocab_size),
              n_params / 1e6);
  std::printf("data: batch=%lld examples/step, max_sequence_length=%lld, %lld timed steps\n",
              static_cast<long long>(batch), static_cast<long long>(max_len),
              static_cast<long long>(steps - 1));
  std::printf("measured fp32 matmul peak (1024^3): %.1f GFLOP/s (OpenBLAS at::mm %.1f, own kernels %.1f)\n",
              peak.best(), peak.openblas, peak.kernels);
  std::printf("MFU counts 4N (LoRA) or 6N (full) FLOPs per real token, the vocabulary head (%.1fM of N) "
              "on the %.0f%% of tokens that are trained\n",
              head_params / 1e6, 100 * trained_share);
  std::printf("%-28s %14s %10s %10s\n", "configuration", "real tok/s", "MFU", "padding");

  double packed_tps = 0, padded_tps = 0;
  for (auto [name, packing, method, flops] :
       {std::tuple{"lora packed", true, trainer::TrainingMethod::kLora, 4.0},
        std::tuple{"lora padded (length-sorted)", false, trainer::TrainingMethod::kLora, 4.0},
        std::tuple{"full packed", true, trainer::TrainingMethod::kFull, 6.0}}) {
    if (method == trainer::TrainingMethod::kFull && !absl::GetFlag(FLAGS_full)) continue;
    if (std::string_view(name).find(absl::GetFlag(FLAGS_only)) == std::string_view::npos) continue;
    Figures f = RunOnce(spec_for(packing, method), dir + "/report.jsonl");
    const double mfu = f.tokens_per_second * model_flops(flops) / (peak.best() * 1e9);
    std::printf("%-28s %14.1f %9.1f%% %9.1f%%\n", name, f.tokens_per_second, 100 * mfu,
                100 * f.padding_fraction);
    if (method == trainer::TrainingMethod::kLora) (packing ? packed_tps : padded_tps) = f.tokens_per_second;
  }
  if (padded_tps > 0) std::printf("packed / padded real-token throughput: %.2fx\n", packed_tps / padded_tps);

  if (absl::GetFlag(FLAGS_scaling)) {
    const int half = std::max(1, threads / 2);
    at::set_num_threads(half);
    Figures one = RunOnce(spec_for(true, trainer::TrainingMethod::kLora), dir + "/report.jsonl");
    const int port = FreePort();
    std::vector<std::string> args = {"/proc/self/exe",
                                     "--rank_child=1",
                                     "--child_dir=" + dir,
                                     absl::StrCat("--child_port=", port),
                                     absl::StrCat("--threads=", half)};
    for (const auto& [name, value] :
         {std::pair{"hidden", absl::GetFlag(FLAGS_hidden)},
          std::pair{"layers", absl::GetFlag(FLAGS_layers)},
          std::pair{"heads", absl::GetFlag(FLAGS_heads)},
          std::pair{"intermediate", absl::GetFlag(FLAGS_intermediate)},
          std::pair{"steps", absl::GetFlag(FLAGS_steps)}, std::pair{"batch", batch},
          std::pair{"max_len", max_len}}) {
      args.push_back(absl::StrCat("--", name, "=", value));
    }
    std::vector<char*> cargv;
    for (std::string& a : args) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::execv("/proc/self/exe", cargv.data());
      _exit(127);
    }
    Figures rank0 = RunOnce(ranked(0, port), dir + "/report-rank0.jsonl");
    int status = 0;
    ::waitpid(pid, &status, 0);
    double rank1_tps = 0;
    std::ifstream(dir + "/rank1.tps") >> rank1_tps;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || rank1_tps <= 0) {
      std::fprintf(stderr, "train_bench: the second rank failed\n");
      return 1;
    }
    const double two = rank0.tokens_per_second + rank1_tps;
    // What the machine gives two processes at once: a one-thread matmul
    // alone, then in two processes side by side. On a VM whose vCPUs share
    // one core's FMA units, two ranks cannot beat this, whatever the code.
    const double alone = MatmulRateGflops(3.0);
    const pid_t peak_pid = ::fork();
    if (peak_pid == 0) {
      std::vector<std::string> pargs = {"/proc/self/exe", "--peak_child", "--child_dir=" + dir,
                                        absl::StrCat("--threads=", half)};
      std::vector<char*> pargv;
      for (std::string& a : pargs) pargv.push_back(a.data());
      pargv.push_back(nullptr);
      ::execv("/proc/self/exe", pargv.data());
      _exit(127);
    }
    // Both start together: the child warms up, says so, and waits for us.
    bool reaped = false;
    while (!fs::exists(dir + "/peak-ready") && !reaped) {
      reaped = ::waitpid(peak_pid, &status, WNOHANG) == peak_pid;  // it failed to start
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    std::ofstream(dir + "/peak-go") << "\n";
    const double beside = MatmulRateGflops(3.0);
    if (!reaped) ::waitpid(peak_pid, &status, 0);
    double other = 0;
    std::ifstream(dir + "/peak.txt") >> other;
    const double capacity = other > 0 ? (beside + other) / (2 * alone) : 0;
    std::printf("1 rank, %d threads: %.1f real tok/s (MFU %.1f%% of a %d-thread matmul alone, "
                "%.1f GFLOP/s); 2 Gloo ranks, %d threads each, %lld examples per rank per step: "
                "%.1f real tok/s together\n",
                half, one.tokens_per_second,
                100 * one.tokens_per_second * model_flops(4) / (alone * 1e9), half, alone, half,
                static_cast<long long>(batch), two);
    std::printf("matmul in two %d-thread processes at once: %.1f + %.1f GFLOP/s = %.2fx of one alone "
                "(the machine's own 2-process capacity: %.0f%%)\n",
                half, beside, other, (beside + other) / alone, 100 * capacity);
    std::printf("2-rank scaling efficiency: %.1f%% (goal 90%%); against the machine's capacity: "
                "%.1f%%\n",
                100 * two / (2 * one.tokens_per_second),
                capacity > 0 ? 100 * two / (2 * one.tokens_per_second) / capacity : 0.0);
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  return 0;
}
