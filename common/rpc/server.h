// The bootstrap every Tunefleet service uses: listen address, optional TLS and
// mTLS, grpc.health.v1 with real readiness, server reflection, a Prometheus
// /metrics port with per-RPC counters and latency, keepalive, message size
// limits and a graceful drain on shutdown.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/server.h>
#include <prometheus/registry.h>

#include "common/rpc/channel.h"
#include "common/rpc/metrics_http.h"
#include "common/rpc/shutdown_signals.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/rpc/metrics.h"

namespace tunefleet::rpc {

struct TlsOptions {
  // PEM files. Both empty: plaintext (for loopback and meshes that add mTLS).
  std::string cert_file;
  std::string key_file;
  // With a CA, clients must present a certificate it signed (mTLS).
  std::string client_ca_file;
  bool enabled() const { return !cert_file.empty() || !key_file.empty(); }
};

struct ServerOptions {
  // Used in metric names (tunefleet_<service>_rpc_total) and logs.
  std::string service_name = "tunefleet";
  // host:port; port 0 picks a free one (see Server::port()).
  std::string listen_address = "0.0.0.0:50051";
  // host:port of the Prometheus endpoint; empty disables it.
  std::string metrics_address = "0.0.0.0:9090";
  // host:port of a plaintext port that serves only grpc.health.v1 (the same
  // statuses as the main port), for probes that cannot speak TLS, such as
  // Kubernetes' gRPC probes in front of an mTLS service; empty: none.
  std::string health_address;
  TlsOptions tls;
  int max_receive_message_bytes = 64 << 20;
  // A fixed HTTP/2 receive window per stream instead of gRPC's automatic
  // one, which grows with the measured bandwidth-delay product and lets a
  // fast client park tens of MiB in the server when it falls behind. 0: the
  // automatic window.
  int stream_window_bytes = 0;
  int max_send_message_bytes = 64 << 20;
  absl::Duration keepalive_time = absl::Seconds(30);
  absl::Duration keepalive_timeout = absl::Seconds(10);
  // How long in-flight calls may run after shutdown begins before they are
  // cancelled.
  absl::Duration drain_timeout = absl::Seconds(30);
};

// Thread-safe after Start(). Services are owned by the caller and must
// outlive the Server.
class Server {
 public:
  explicit Server(ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Registry for the service's own metrics; served on /metrics.
  prometheus::Registry& registry() { return *registry_; }
  void AddService(grpc::Service* service);

  // Binds and starts serving. Health reports NOT_SERVING until
  // SetServing(true): a service calls it when it is really ready.
  absl::Status Start();
  void SetServing(bool serving);

  // Stops accepting calls, lets in-flight ones finish within the drain
  // timeout (then cancels them) and stops the metrics endpoint.
  void Shutdown();
  void Wait();

  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  int health_port() const { return health_port_; }
  grpc::Server* grpc_server() { return server_.get(); }
  const ServerOptions& options() const { return options_; }

 private:
  ServerOptions options_;
  std::shared_ptr<prometheus::Registry> registry_;
  RpcMetrics rpc_metrics_;
  std::vector<grpc::Service*> services_;
  std::vector<std::string> service_names_;  // as registered, for health
  std::unique_ptr<MetricsHttpServer> metrics_http_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::Server> health_server_;
  int port_ = 0;
  int health_port_ = 0;
  int metrics_port_ = 0;
  bool shut_down_ = false;
};

// ReadFileToString (a whole PEM or key file) is in common/rpc/channel.h.

// BlockShutdownSignals, WaitForShutdownSignal: common/rpc/shutdown_signals.h.

}  // namespace tunefleet::rpc
