// The Prometheus /metrics endpoint of a server: GET /metrics answers the
// registry in the text exposition format.
//
// Why not prometheus-cpp's Exposer: it runs on civetweb, whose threads get a
// fixed ~100 KiB stack; in a process that loads libtorch (serving), the
// static TLS of libtorch no longer fits and civetweb cannot start any thread
// ("Cannot create first worker thread"). This server's one thread has the
// default stack. Thread-safe: Start once, Stop any time (idempotent).
#pragma once

#include <memory>
#include <string>
#include <thread>

#include <prometheus/registry.h>

#include "absl/status/statusor.h"

namespace httplib {
class Server;
}

namespace tunefleet::rpc {

class MetricsHttpServer {
 public:
  explicit MetricsHttpServer(std::shared_ptr<prometheus::Registry> registry);
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  // Binds `address` ("host:port", port 0 = any free port) and serves on a
  // thread. Returns the bound port; UNAVAILABLE when the address cannot be
  // bound.
  absl::StatusOr<int> Start(const std::string& address);
  void Stop();

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
};

}  // namespace tunefleet::rpc
