// tunefleet-scheduler: the control plane (jobs, models, deployments, nodes).
#include <atomic>
#include <filesystem>
#include <thread>

#include <spdlog/spdlog.h>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/rpc/channel.h"
#include "common/rpc/server_flags.h"
#include "services/scheduler/grpc_dataset_client.h"
#include "services/scheduler/scheduler_metrics.h"
#include "services/scheduler/scheduler_service.h"

ABSL_FLAG(std::string, models_dir, "",
          "Directory of base models: <models_dir>/<base-model-id>/config.json (the id is the "
          "folder name)");
ABSL_FLAG(std::string, artifacts_dir, "",
          "Shared artifact directory; checkpoint and result artifact names are relative to it");
ABSL_FLAG(std::string, dataset_address, "127.0.0.1:50051", "host:port of tunefleet-dataset");
ABSL_FLAG(std::string, internal_key_file, "",
          "File holding the internal API key (one line) sent to the dataset service");
ABSL_FLAG(absl::Duration, heartbeat_interval, absl::Seconds(2),
          "How often trainer agents are told to heartbeat");
ABSL_FLAG(absl::Duration, lease, absl::Seconds(10),
          "A trainer node silent this long is lost; its jobs requeue from their last checkpoint");
ABSL_FLAG(int, max_retries, 3, "Lost attempts a job survives before it fails (worker_lost)");
ABSL_FLAG(absl::Duration, unschedulable_grace, absl::Minutes(10),
          "How long a queued job that no registered node holds waits for one before it fails");
ABSL_FLAG(absl::Duration, token_count_timeout, absl::Seconds(10),
          "How long CreateJob spends counting the tokens of a file uploaded without a base "
          "model (for the memory and cost estimates) before it keeps their upper bounds");
ABSL_FLAG(absl::Duration, tick_interval, absl::Milliseconds(200),
          "How often leases are checked and queued jobs placed");
ABSL_FLAG(int, max_active_jobs_per_tenant, 0,
          "Unfinished jobs a tenant may have (0: unlimited); beyond, RESOURCE_EXHAUSTED");
ABSL_FLAG(int, max_gpus_per_tenant, 0,
          "GPUs a tenant's unfinished jobs may ask in all (0: unlimited)");
ABSL_FLAG(int64_t, max_trained_tokens_per_tenant, 0,
          "Trained tokens a tenant may use per --trained_tokens_period (0: unlimited)");
ABSL_FLAG(absl::Duration, trained_tokens_period, absl::Hours(24 * 30),
          "The rolling window of --max_trained_tokens_per_tenant");
ABSL_FLAG(int, io_threads, 16,
          "Threads for blocking work: calls wait here for their group commit (one shared fsync)");
ABSL_FLAG(std::string, price_table, "",
          "JSON price table per base model (services/scheduler/usage.h); empty: usage unpriced");
ABSL_FLAG(bool, group_commit, true,
          "Share one WAL fsync between concurrent mutations (off: one fsync per mutation)");

int main(int argc, char** argv) {
  using namespace tunefleet;
  rpc::BlockShutdownSignals();
  rpc::CommonFlags flags = rpc::ParseCommonFlags(argc, argv, "scheduler", 50052, 9092);
  auto keys = rpc::LoadKeysFromFlags(flags);
  if (!keys.ok()) {
    spdlog::critical("{}", keys.status().ToString());
    return 2;
  }
  std::string internal_key;
  if (!absl::GetFlag(FLAGS_internal_key_file).empty()) {
    auto key = rpc::ReadFileToString(absl::GetFlag(FLAGS_internal_key_file));
    if (!key.ok()) {
      spdlog::critical("--internal_key_file: {}", key.status().ToString());
      return 2;
    }
    internal_key = std::string(absl::StripAsciiWhitespace(*key));
  }
  auto channel =
      rpc::MakeChannel(rpc::ClientChannelOptions(flags, absl::GetFlag(FLAGS_dataset_address)));
  if (!channel.ok()) {
    spdlog::critical("--dataset_address: {}", channel.status().ToString());
    return 2;
  }
  scheduler::GrpcDatasetClient dataset(*channel, internal_key);

  scheduler::SchedulerOptions options;
  std::error_code ec;
  std::filesystem::create_directories(flags.data_dir, ec);
  options.db_path = (std::filesystem::path(flags.data_dir) / "scheduler.db").string();
  options.models_dir = absl::GetFlag(FLAGS_models_dir);
  options.artifacts_dir = absl::GetFlag(FLAGS_artifacts_dir);
  options.heartbeat_interval = absl::GetFlag(FLAGS_heartbeat_interval);
  options.lease = absl::GetFlag(FLAGS_lease);
  options.max_retries = absl::GetFlag(FLAGS_max_retries);
  options.unschedulable_grace = absl::GetFlag(FLAGS_unschedulable_grace);
  options.token_count_timeout = absl::GetFlag(FLAGS_token_count_timeout);
  options.group_commit = absl::GetFlag(FLAGS_group_commit);
  options.max_active_jobs_per_tenant = absl::GetFlag(FLAGS_max_active_jobs_per_tenant);
  options.max_gpus_per_tenant = absl::GetFlag(FLAGS_max_gpus_per_tenant);
  options.max_trained_tokens_per_tenant = absl::GetFlag(FLAGS_max_trained_tokens_per_tenant);
  options.trained_tokens_period = absl::GetFlag(FLAGS_trained_tokens_period);
  if (!absl::GetFlag(FLAGS_price_table).empty()) {
    auto prices = scheduler::PriceTable::LoadFile(absl::GetFlag(FLAGS_price_table));
    if (!prices.ok()) {
      spdlog::critical("--price_table: {}", prices.status().ToString());
      return 2;
    }
    options.prices = *std::move(prices);
  }
  auto sched = scheduler::Scheduler::Open(options, &dataset);
  if (!sched.ok()) {
    spdlog::critical("cannot open {}: {}", options.db_path, sched.status().ToString());
    return 1;
  }
  rpc::Executor executor(absl::GetFlag(FLAGS_io_threads));
  rpc::Authenticator auth(*keys);
  scheduler::JobServiceImpl jobs(&auth, sched->get(), &executor);
  scheduler::ModelServiceImpl models(&auth, sched->get(), &executor);
  scheduler::DeploymentServiceImpl deployments(&auth, sched->get(), &executor);
  scheduler::TrainerControlServiceImpl trainer_control(&auth, sched->get(), &executor);
  scheduler::ServingControlServiceImpl serving_control(&auth, sched->get(), &executor);
  scheduler::UsageServiceImpl usage(&auth, sched->get(), &executor);
  rpc::Server server(flags.server);
  server.AddService(&jobs);
  server.AddService(&models);
  server.AddService(&deployments);
  server.AddService(&trainer_control);
  server.AddService(&serving_control);
  server.AddService(&usage);

  scheduler::SchedulerMetrics metrics(server.registry());
  // The one clock of the control plane: leases and placement.
  std::atomic<bool> stop{false};
  const absl::Duration tick = absl::GetFlag(FLAGS_tick_interval);
  std::thread ticker([&] {
    while (!stop.load()) {
      (*sched)->Tick(Clock::Real()->Now());
      metrics.Update((*sched)->Stats());
      absl::SleepFor(tick);
    }
  });
  int rc = rpc::ServeUntilSignal(server, nullptr, flags.port_file);
  stop = true;
  ticker.join();
  return rc;
}
