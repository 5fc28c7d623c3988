// Keeps a replica in step with the scheduler (the Kubernetes controller
// pattern): registers, watches the desired deployments (a full set per
// message), applies each set to the Replica and reports every deployment's
// readiness. Registration retries every error (rpc::CallWithRetry) until it
// works or Stop(); a broken stream is re-established with backoff
// (registering again: the scheduler may have restarted). Owns one thread.
#pragma once

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>

#include "absl/time/time.h"
#include "common/rpc/client.h"
#include "services/serving/replica.h"

namespace tunefleet::serving {

struct ReconcilerOptions {
  std::string replica_name;
  std::string advertise_address;  // where clients reach this replica
  int64_t memory_bytes = 0;
  std::string internal_key;  // sent as the bearer token
  absl::Duration call_timeout = absl::Seconds(10);
  // Watches are re-opened after this long (every call has a deadline).
  absl::Duration watch_timeout = absl::Hours(1);
  absl::Duration min_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(10);
};

class DeploymentReconciler {
 public:
  // `on_applied(bases_loaded)` runs after every applied set (e.g. to set the
  // health status).
  DeploymentReconciler(std::shared_ptr<grpc::Channel> scheduler, Replica* replica,
                       ReconcilerOptions options, std::function<void(bool)> on_applied = nullptr);
  ~DeploymentReconciler();  // Stop()
  void Start();
  void Stop();
  // Waits until a desired set has been applied; false on timeout.
  bool WaitForFirstApply(absl::Duration timeout);
  int64_t applied_generation() const;
  std::string replica_id() const;

 private:
  void Run();
  rpc::CallOptions BaseCallOptions();

  std::shared_ptr<grpc::Channel> channel_;
  Replica* replica_;
  const ReconcilerOptions options_;
  std::function<void(bool)> on_applied_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  int64_t applied_generation_ = -1;
  int64_t applies_ = 0;
  std::string replica_id_;
  rpc::CallCancellation stop_;  // cancels the call in flight and any backoff
  std::thread thread_;
};

}  // namespace tunefleet::serving
