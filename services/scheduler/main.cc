// tunefleet-scheduler: the control plane (jobs, models, deployments, nodes).
#include <spdlog/spdlog.h>

#include "common/rpc/server_flags.h"
#include "services/scheduler/scheduler_service.h"

int main(int argc, char** argv) {
  using namespace tunefleet;
  rpc::BlockShutdownSignals();
  rpc::CommonFlags flags = rpc::ParseCommonFlags(argc, argv, "scheduler", 50052, 9092);
  auto keys = rpc::LoadKeysFromFlags(flags);
  if (!keys.ok()) {
    spdlog::critical("{}", keys.status().ToString());
    return 2;
  }
  rpc::Authenticator auth(*keys);
  scheduler::JobServiceImpl jobs(&auth);
  scheduler::ModelServiceImpl models(&auth);
  scheduler::DeploymentServiceImpl deployments(&auth);
  scheduler::TrainerControlServiceImpl trainer_control(&auth);
  scheduler::ServingControlServiceImpl serving_control(&auth);
  rpc::Server server(flags.server);
  server.AddService(&jobs);
  server.AddService(&models);
  server.AddService(&deployments);
  server.AddService(&trainer_control);
  server.AddService(&serving_control);
  return rpc::ServeUntilSignal(server, nullptr, flags.port_file);
}
