// What a replica needs of the scheduler, as an interface so that the
// reconciler (deployment_reconciler.h) stays free of gRPC: register, watch
// the desired deployments, report readiness and usage. The gRPC
// implementation is grpc/grpc_control_plane.h (ServingControlService).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "services/serving/replica.h"

namespace tunefleet::serving {

struct ReplicaRegistration {
  std::string name;
  std::string address;  // where clients reach this replica
  int64_t memory_bytes = 0;
};

// One full desired set; each replaces the one before.
struct DesiredSet {
  int64_t generation = 0;
  std::vector<DeploymentSpec> deployments;
};

// Thread-safe: the reconciler watches on one thread and reports on another.
class ControlPlane {
 public:
  virtual ~ControlPlane() = default;
  // The replica id. Retries every error (logging each) until it works;
  // CANCELLED once Cancel() has been called.
  virtual absl::StatusOr<std::string> Register(const ReplicaRegistration& replica) = 0;
  // Calls `on_desired` with each set the scheduler sends, in order, until the
  // watch ends; returns how it ended (CANCELLED after Cancel()).
  virtual absl::Status Watch(const std::string& replica_id,
                             const std::function<void(DesiredSet)>& on_desired) = 0;
  // Every deployment's readiness and its usage since the registration as
  // `replica_id`. Idempotent (the scheduler keeps the deltas from the
  // cumulative counters). A `final` report (the drain's) is not cut short by
  // Cancel().
  virtual absl::Status Report(const std::string& replica_id,
                              const std::vector<DeploymentStatus>& deployments, bool final) = 0;
  // Ends the call in flight and every later Register and Watch; reports
  // other than final ones too.
  virtual void Cancel() = 0;
};

}  // namespace tunefleet::serving
