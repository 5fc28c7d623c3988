// Per-RPC Prometheus metrics for every service, recorded by a server
// interceptor so that no handler has to remember to count itself:
//   tunefleet_<service>_rpc_total{method, code}
//   tunefleet_<service>_rpc_duration_seconds{method}
#pragma once

#include <memory>
#include <string>

#include <grpcpp/support/server_interceptor.h>
#include <prometheus/counter.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"

namespace tunefleet::rpc {

// Thread-safe. Handles per (method, code) are created once and cached, since
// creating a Prometheus child costs microseconds and incrementing nanoseconds.
class RpcMetrics {
 public:
  RpcMetrics(const std::string& service, prometheus::Registry& registry);

  void Record(const std::string& method, int code, double seconds);

  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> InterceptorFactory();

 private:
  prometheus::Family<prometheus::Counter>& total_;
  prometheus::Family<prometheus::Histogram>& duration_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, prometheus::Counter*> counters_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, prometheus::Histogram*> histograms_ ABSL_GUARDED_BY(mu_);
};

// The canonical upper-case name of a gRPC status code ("NOT_FOUND").
const char* StatusCodeName(int code);

}  // namespace tunefleet::rpc
