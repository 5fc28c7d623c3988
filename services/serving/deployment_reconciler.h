// Keeps a replica in step with the scheduler (the Kubernetes controller
// pattern): registers, watches the desired deployments (a full set per
// message), applies each set to the Replica and reports every deployment's
// readiness and usage. Registration retries until it works or Stop(); a
// watch that ends is re-established with backoff (registering again: the
// scheduler may have restarted). Besides the report after each apply, a
// second thread reports every report_interval (and once at Stop, the drain)
// each deployment's readiness and its usage since this registration
// (requests, prompt and completion tokens: cumulative counters under the
// replica id; the scheduler keeps the deltas). Owns two threads. No gRPC:
// the scheduler is reached through a ControlPlane (control_plane.h).
#pragma once

#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "absl/time/time.h"
#include "services/serving/control_plane.h"
#include "services/serving/replica.h"

namespace tunefleet::serving {

struct ReconcilerOptions {
  std::string replica_name;
  std::string advertise_address;  // where clients reach this replica
  int64_t memory_bytes = 0;
  // Between a watch that ended and the next registration (doubling).
  absl::Duration min_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(10);
  // Usage reports between applies; InfiniteDuration: only after applies
  // and at Stop.
  absl::Duration report_interval = absl::Seconds(10);
};

class DeploymentReconciler {
 public:
  // `on_applied(bases_loaded)` runs after every applied set (e.g. to set the
  // health status). `control` outlives the reconciler.
  DeploymentReconciler(ControlPlane* control, Replica* replica, ReconcilerOptions options,
                       std::function<void(bool)> on_applied = nullptr);
  ~DeploymentReconciler();  // Stop()
  void Start();
  // Sends a last report (the drain), then stops.
  void Stop();
  // Waits until a desired set has been applied; false on timeout.
  bool WaitForFirstApply(absl::Duration timeout);
  int64_t applied_generation() const;
  std::string replica_id() const;

 private:
  void Run();
  void RunReports();
  void Apply(const std::string& replica_id, const DesiredSet& desired);
  // Every deployment's status and its usage since the registration as
  // `replica_id` (the usage baseline taken then); serialized, so that the
  // scheduler sees the counters in order.
  void Report(const std::string& replica_id, bool final);

  ControlPlane* const control_;
  Replica* const replica_;
  const ReconcilerOptions options_;
  std::function<void(bool)> on_applied_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  int64_t applied_generation_ = -1;
  int64_t applies_ = 0;
  std::string replica_id_;
  std::map<std::string, DeploymentUsage> baseline_;  // usage at registration; guarded by mu_
  std::mutex report_mu_;  // one report at a time
  std::thread thread_;
  std::thread reporter_;
};

}  // namespace tunefleet::serving
