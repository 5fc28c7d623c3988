// tunefleet-trainer: the agent on a training node. It registers the node's
// GPUs (or CPU slots) with the scheduler, heartbeats, fetches each assigned
// job's shards into a local cache and supervises one tunefleet-train-worker
// process per assignment (rank).
#include <limits.h>
#include <unistd.h>

#include <filesystem>

#include <spdlog/spdlog.h>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/rpc/channel.h"
#include "common/rpc/server_flags.h"
#include "services/trainer/agent/agent.h"
#include "services/trainer/agent/agent_service.h"
#include "services/trainer/agent/gpu_info.h"

ABSL_FLAG(std::string, node_name, "", "Name this node registers under (default: host name)");
ABSL_FLAG(std::string, scheduler_address, "127.0.0.1:50052", "Scheduler host:port");
ABSL_FLAG(std::string, dataset_address, "127.0.0.1:50051", "Dataset service host:port");
ABSL_FLAG(std::string, internal_key_file, "",
          "File holding the internal API key (one line) sent to the scheduler and dataset");
ABSL_FLAG(std::string, models_dir, "./models", "Base models: <models_dir>/<base-model-id>/");
ABSL_FLAG(std::string, artifacts_dir, "./artifacts",
          "Shared artifact store root (checkpoints and results are written under jobs/<job>/)");
ABSL_FLAG(int32_t, slots, 1, "CPU slots (ranks) this node offers when it has no GPUs");
ABSL_FLAG(int32_t, gpus, 0, "GPUs this node offers (0: CPU slots)");
ABSL_FLAG(double, gpu_memory_gib, 0,
          "Memory of each GPU in GiB, registered for placement (0: read through NVML, "
          "libnvidia-ml.so.1; unknown without it)");
ABSL_FLAG(std::string, worker_binary, "",
          "tunefleet-train-worker to run (default: next to this executable)");
ABSL_FLAG(absl::Duration, worker_timeout, absl::Minutes(10),
          "A worker silent for this long is killed and its attempt fails");
ABSL_FLAG(std::string, advertise_address, "",
          "host:port the scheduler and peer ranks reach this node at (default: the --listen host, "
          "or the host name when it listens on every interface, and the bound port)");

namespace {

std::string SelfDir() {
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return ".";
  return std::filesystem::path(std::string(buf, static_cast<size_t>(n))).parent_path().string();
}

std::string HostName() {
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  return host;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace tunefleet;
  rpc::BlockShutdownSignals();
  rpc::CommonFlags flags = rpc::ParseCommonFlags(argc, argv, "trainer", 50053, 9093);
  auto keys = rpc::LoadKeysFromFlags(flags);
  if (!keys.ok()) {
    spdlog::critical("{}", keys.status().ToString());
    return 2;
  }
  auto internal_key = rpc::ReadFileToString(absl::GetFlag(FLAGS_internal_key_file));
  if (absl::GetFlag(FLAGS_internal_key_file).empty() || !internal_key.ok()) {
    spdlog::critical("--internal_key_file: {}",
                     internal_key.ok() ? "required" : internal_key.status().ToString());
    return 2;
  }

  trainer::TrainerAgentOptions options;
  options.node_name = absl::GetFlag(FLAGS_node_name);
  if (options.node_name.empty()) options.node_name = HostName();
  options.slots = absl::GetFlag(FLAGS_slots);
  if (absl::GetFlag(FLAGS_gpu_memory_gib) < 0) {
    spdlog::critical("--gpu_memory_gib must be >= 0");
    return 2;
  }
  options.gpus = trainer::NodeGpus(
      absl::GetFlag(FLAGS_gpus),
      static_cast<int64_t>(absl::GetFlag(FLAGS_gpu_memory_gib) * 1024.0 * 1024.0 * 1024.0));
  for (const auto& g : options.gpus) {
    spdlog::info("gpu {}: {} ({} bytes{})", g.index(), g.name().empty() ? "unnamed" : g.name(),
                 g.memory_bytes(), g.memory_bytes() == 0 ? ", unknown: placement does not check it" : "");
  }
  if (options.gpus.empty() && options.slots <= 0) {
    spdlog::critical("--slots must be at least 1 on a node without --gpus");
    return 2;
  }
  options.models_dir = absl::GetFlag(FLAGS_models_dir);
  options.artifacts_dir = std::filesystem::absolute(absl::GetFlag(FLAGS_artifacts_dir)).string();
  options.data_dir = std::filesystem::absolute(flags.data_dir).string();
  options.worker_binary = absl::GetFlag(FLAGS_worker_binary);
  if (options.worker_binary.empty()) options.worker_binary = SelfDir() + "/tunefleet-train-worker";
  options.worker_timeout = absl::GetFlag(FLAGS_worker_timeout);
  options.api_key = std::string(absl::StripAsciiWhitespace(*internal_key));

  auto sched_channel =
      rpc::MakeChannel(rpc::ClientChannelOptions(flags, absl::GetFlag(FLAGS_scheduler_address)));
  auto data_channel =
      rpc::MakeChannel(rpc::ClientChannelOptions(flags, absl::GetFlag(FLAGS_dataset_address)));
  if (!sched_channel.ok() || !data_channel.ok()) {
    spdlog::critical("channels: {} {}", sched_channel.status().ToString(),
                     data_channel.status().ToString());
    return 2;
  }

  rpc::Authenticator auth(*keys);
  rpc::Server server(flags.server);
  trainer::TrainerAgent agent(options, *sched_channel, *data_channel, &server.registry());
  trainer::TrainerAgentServiceImpl service(&auth, &agent);
  server.AddService(&service);
  int rc = rpc::ServeUntilSignal(
      server,
      [&]() -> absl::Status {
        // The agent registers once the port is known (it advertises it).
        std::string advertise = absl::GetFlag(FLAGS_advertise_address);
        if (advertise.empty()) {
          // The listen host when it names one interface, else the host name.
          std::string host = flags.server.listen_address.substr(
              0, flags.server.listen_address.rfind(':'));
          if (host.empty() || host == "0.0.0.0" || host == "[::]" || host == "::") {
            host = HostName();
          }
          advertise = absl::StrCat(host, ":", server.port());
        }
        agent.Start(advertise);
        spdlog::info("trainer agent {} at {} (slots={} gpus={}) -> scheduler {} dataset {} worker {}",
                     options.node_name, advertise, options.slots, options.gpus.size(),
                     absl::GetFlag(FLAGS_scheduler_address), absl::GetFlag(FLAGS_dataset_address),
                     options.worker_binary);
        return absl::OkStatus();
      },
      flags.port_file);
  agent.Stop();
  return rc;
}
