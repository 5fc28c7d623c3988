// tunefleet-trainer: the agent on a GPU node. It registers the node's GPUs
// with the scheduler and supervises one worker process per local GPU.
#include <unistd.h>

#include <spdlog/spdlog.h>

#include "absl/flags/flag.h"
#include "common/rpc/server_flags.h"
#include "services/trainer/agent_service.h"

ABSL_FLAG(std::string, node_name, "", "Name this node registers under (default: host name)");

int main(int argc, char** argv) {
  using namespace tunefleet;
  rpc::BlockShutdownSignals();
  rpc::CommonFlags flags = rpc::ParseCommonFlags(argc, argv, "trainer", 50053, 9093);
  auto keys = rpc::LoadKeysFromFlags(flags);
  if (!keys.ok()) {
    spdlog::critical("{}", keys.status().ToString());
    return 2;
  }
  std::string node_name = absl::GetFlag(FLAGS_node_name);
  if (node_name.empty()) {
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    node_name = host;
  }
  rpc::Authenticator auth(*keys);
  trainer::TrainerAgentServiceImpl agent(&auth, node_name);
  rpc::Server server(flags.server);
  server.AddService(&agent);
  return rpc::ServeUntilSignal(server, nullptr, flags.port_file);
}
