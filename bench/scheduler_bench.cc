// Scheduler benchmarks, printing comparable figures:
//  1. durable CreateJob over gRPC on loopback from concurrent clients
//     (throughput, p50/p99 latency), with group commit and with one fsync per
//     mutation, beside a trivial unary call (ListDeployments, same auth +
//     executor + server stack) measured in the same run;
//  2. one placement pass: 1,000 nodes x 8 slots, 10,000 queued jobs.
// The dataset service is replaced by an in-memory DatasetClient (every file
// processed, holds are no-ops) so that the figures are the scheduler's own;
// a real CreateJob also pays GetFile + HoldFile round trips to the dataset.
#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <spdlog/spdlog.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "common/rpc/channel.h"
#include "common/rpc/server.h"
#include "services/scheduler/placement.h"
#include "services/scheduler/scheduler_service.h"

ABSL_FLAG(int, clients, 64, "Concurrent client threads");
ABSL_FLAG(bool, deadlock_detection, false,
          "Keep absl's Mutex deadlock detection on (the services turn it off)");
ABSL_FLAG(double, seconds, 3, "Seconds per measurement");
ABSL_FLAG(int, io_threads, 64, "Scheduler executor threads");
ABSL_FLAG(bool, per_mutation, true, "Also measure CreateJob with one fsync per mutation");

namespace tunefleet::scheduler {
namespace {

class InMemoryDataset final : public DatasetClient {
 public:
  absl::StatusOr<DatasetFile> GetFile(const std::string&, const std::string& id) override {
    DatasetFile f;
    f.id = id;
    f.purpose = v1::FILE_PURPOSE_FINE_TUNE;
    f.status = v1::FILE_STATUS_PROCESSED;
    f.format = v1::DATA_FORMAT_CHAT;
    f.examples = 1000;
    f.trained_tokens = 100 * f.examples;  // counted at upload: CreateJob asks for no count
    f.longest_example = 512;
    return f;
  }
  absl::StatusOr<TokenCounts> CountTokens(const std::string&, const std::string&,
                                          const std::string&, absl::Duration) override {
    return TokenCounts{100000, 512};
  }
  absl::StatusOr<std::pair<DatasetFile, DatasetFile>> SplitFile(const std::string& t,
                                                                const std::string& id, double,
                                                                int64_t) override {
    return std::make_pair(*GetFile(t, id), *GetFile(t, id));
  }
  absl::Status HoldFile(const std::string&, const std::string&, const std::string&) override {
    return absl::OkStatus();
  }
  absl::Status ReleaseFile(const std::string&, const std::string&) override {
    return absl::OkStatus();
  }
};

struct Result {
  double per_second = 0;
  double p50_ms = 0;
  double p99_ms = 0;
  int64_t calls = 0;
  int64_t errors = 0;
};

template <typename Fn>
Result Drive(int clients, absl::Duration duration, Fn call) {
  std::vector<std::vector<double>> lat(clients);
  std::atomic<int64_t> errors{0};
  absl::Time start = absl::Now();
  absl::Time end = start + duration;
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      while (absl::Now() < end) {
        absl::Time t0 = absl::Now();
        if (!call(c)) ++errors;
        lat[c].push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
      }
    });
  }
  for (auto& t : threads) t.join();
  double elapsed = absl::ToDoubleSeconds(absl::Now() - start);
  std::vector<double> all;
  for (auto& l : lat) all.insert(all.end(), l.begin(), l.end());
  std::sort(all.begin(), all.end());
  Result r;
  r.calls = static_cast<int64_t>(all.size());
  r.errors = errors;
  r.per_second = all.size() / elapsed;
  if (!all.empty()) {
    r.p50_ms = all[all.size() / 2];
    r.p99_ms = all[std::min(all.size() - 1, all.size() * 99 / 100)];
  }
  return r;
}

void Print(const std::string& name, const Result& r) {
  std::printf("%-44s %9.0f /s   p50 %7.2f ms   p99 %7.2f ms   (%lld calls, %lld errors)\n",
              name.c_str(), r.per_second, r.p50_ms, r.p99_ms, static_cast<long long>(r.calls),
              static_cast<long long>(r.errors));
}

void RpcBench(bool group_commit) {
  std::string dir = absl::StrCat("/tmp/scheduler_bench.", getpid(), group_commit ? ".g" : ".s");
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir + "/models/base");
  // A small Llama's config.json (the scheduler checks it with the model
  // library's parser before offering the base).
  std::ofstream(dir + "/models/base/config.json")
      << R"({"model_type":"llama","architectures":["LlamaForCausalLM"],"vocab_size":32000,)"
         R"("hidden_size":512,"intermediate_size":1376,"num_hidden_layers":4,)"
         R"("num_attention_heads":8,"num_key_value_heads":8,"max_position_embeddings":2048,)"
         R"("rms_norm_eps":1e-5,"rope_theta":10000.0,"hidden_act":"silu",)"
         R"("tie_word_embeddings":false,"torch_dtype":"float32"})";
  InMemoryDataset dataset;
  SchedulerOptions options;
  options.db_path = dir + "/scheduler.db";
  options.models_dir = dir + "/models";
  options.group_commit = group_commit;
  auto sched = Scheduler::Open(options, &dataset);
  if (!sched.ok()) {
    std::fprintf(stderr, "%s\n", sched.status().ToString().c_str());
    return;
  }
  rpc::NewKey key = rpc::GenerateKey("tenant-a", rpc::Role::kTenant, "a");
  rpc::Authenticator auth(*rpc::KeyRing::Parse(key.line, "bench"));
  rpc::Executor executor(absl::GetFlag(FLAGS_io_threads));
  JobServiceImpl jobs(&auth, sched->get(), &executor);
  DeploymentServiceImpl deps(&auth, sched->get(), &executor);
  rpc::ServerOptions so;
  so.listen_address = "127.0.0.1:0";
  so.metrics_address = "";
  so.drain_timeout = absl::Seconds(1);
  rpc::Server server(so);
  server.AddService(&jobs);
  server.AddService(&deps);
  if (!server.Start().ok()) return;
  server.SetServing(true);
  rpc::ChannelOptions co;
  co.target = absl::StrCat("127.0.0.1:", server.port());
  const int clients = absl::GetFlag(FLAGS_clients);
  // A few channels, so that the client side is not one HTTP/2 connection.
  std::vector<std::unique_ptr<v1::JobService::Stub>> job_stubs;
  std::vector<std::unique_ptr<v1::DeploymentService::Stub>> dep_stubs;
  for (int i = 0; i < 4; ++i) {
    grpc::ChannelArguments args;
    args.SetInt("bench.channel", i);  // distinct channels, not a shared subchannel
    auto ch = grpc::CreateCustomChannel(co.target, grpc::InsecureChannelCredentials(), args);
    job_stubs.push_back(v1::JobService::NewStub(ch));
    dep_stubs.push_back(v1::DeploymentService::NewStub(ch));
  }
  const absl::Duration d = absl::Seconds(absl::GetFlag(FLAGS_seconds));
  Result trivial = Drive(clients, d, [&](int c) {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, key.key, absl::Seconds(10));
    v1::ListDeploymentsRequest req;
    v1::ListDeploymentsResponse resp;
    return dep_stubs[c % 4]->ListDeployments(&ctx, req, &resp).ok();
  });
  const SchedulerStore::SyncTimes before = (*sched)->store().sync_times();
  Result creates = Drive(clients, d, [&](int c) {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, key.key, absl::Seconds(10));
    v1::CreateJobRequest req;
    req.set_base_model("base");
    req.set_training_file("file-bench");
    v1::Job job;
    return job_stubs[c % 4]->CreateJob(&ctx, req, &job).ok();
  });
  const SchedulerStore::SyncTimes after = (*sched)->store().sync_times();
  const int64_t syncs = after.syncs - before.syncs;
  std::string mode = group_commit ? "group commit" : "fsync per mutation";
  Print(absl::StrCat("trivial unary (ListDeployments), ", clients, " clients"), trivial);
  Print(absl::StrCat("durable CreateJob, ", mode), creates);
  if (group_commit && creates.calls > 0) {
    const double rounds = static_cast<double>(std::max<int64_t>(1, syncs));
    std::printf("%-44s %9.1f creates per fsync; per round: COMMIT %.2f ms, fsync %.2f ms\n", "",
                static_cast<double>(creates.calls) / rounds,
                absl::ToDoubleMilliseconds(after.commit - before.commit) / rounds,
                absl::ToDoubleMilliseconds(after.fsync - before.fsync) / rounds);
  }
  server.Shutdown();
  std::filesystem::remove_all(dir);
}

// One placement pass over 10,000 queued jobs and 1,000 nodes of 8 slots;
// `memory`: the nodes' GPUs are 24, 48 or 80 GiB (a third each) and every
// job names the memory a rank needs (4 to 100 GiB), so each job first picks
// the node classes that hold it.
void PlacementBench(bool memory) {
  constexpr int64_t G = int64_t{1} << 30;
  std::mt19937 rng(1);
  std::vector<SlotNode> nodes;
  const int64_t gpu_memory[] = {24 * G, 48 * G, 80 * G};
  for (int i = 0; i < 1000; ++i)
    nodes.push_back(SlotNode{absl::StrCat("node-", i), 8, 8, memory ? gpu_memory[i % 3] : 0, memory});
  std::vector<QueuedJob> jobs;
  const int sizes[] = {1, 1, 1, 2, 2, 4, 8};
  int never = 0;
  for (int i = 0; i < 10000; ++i) {
    const int64_t need = memory ? static_cast<int64_t>(4 + rng() % 97) * G : 0;
    never += need > 80 * G;
    jobs.push_back(QueuedJob{absl::StrCat("ftjob-", i), static_cast<int>(rng() % 5), i,
                             sizes[rng() % 7], "", need});
  }
  double best = 1e9;
  size_t placed = 0, never_fit = 0;
  for (int rep = 0; rep < 5; ++rep) {
    absl::Time t0 = absl::Now();
    PlacementResult r = Place(jobs, nodes);
    best = std::min(best, absl::ToDoubleMilliseconds(absl::Now() - t0));
    placed = r.placed.size();
    never_fit = r.never_fit.size();
  }
  if (static_cast<int>(never_fit) != never) std::printf("never_fit %zu, expected %d\n", never_fit, never);
  std::printf("%-44s %9.2f ms   (%zu of 10000 jobs placed on 8000 slots, %zu never fit, best of 5)\n",
              memory ? "placement pass, GPUs of 24/48/80 GiB" : "placement pass, 1000 nodes x 8, 10000 jobs",
              best, placed, never_fit);
}

}  // namespace
}  // namespace tunefleet::scheduler

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  // As the service binaries run (ParseCommonFlags; --mutex_deadlock_detection
  // turns it back on there): no lock-order graph on every Mutex acquisition.
  if (!absl::GetFlag(FLAGS_deadlock_detection)) {
    absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  }
  spdlog::set_level(spdlog::level::warn);
  std::printf("scheduler_bench: %d clients, %.1f s per figure, %u hardware threads\n",
              absl::GetFlag(FLAGS_clients), absl::GetFlag(FLAGS_seconds),
              std::thread::hardware_concurrency());
  tunefleet::scheduler::RpcBench(/*group_commit=*/true);
  if (absl::GetFlag(FLAGS_per_mutation)) tunefleet::scheduler::RpcBench(/*group_commit=*/false);
  tunefleet::scheduler::PlacementBench(/*memory=*/false);
  tunefleet::scheduler::PlacementBench(/*memory=*/true);
  return 0;
}
