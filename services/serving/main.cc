// tunefleet-serving: a serving replica (chat completions with content filters).
#include <spdlog/spdlog.h>

#include "common/rpc/server_flags.h"
#include "services/serving/serving_service.h"

int main(int argc, char** argv) {
  using namespace tunefleet;
  rpc::BlockShutdownSignals();
  rpc::CommonFlags flags = rpc::ParseCommonFlags(argc, argv, "serving", 50054, 9094);
  auto keys = rpc::LoadKeysFromFlags(flags);
  if (!keys.ok()) {
    spdlog::critical("{}", keys.status().ToString());
    return 2;
  }
  rpc::Authenticator auth(*keys);
  serving::InferenceServiceImpl inference(&auth);
  serving::ContentFilterServiceImpl content_filter(&auth);
  rpc::Server server(flags.server);
  server.AddService(&inference);
  server.AddService(&content_filter);
  return rpc::ServeUntilSignal(server, nullptr, flags.port_file);
}
