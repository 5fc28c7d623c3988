// The ControlPlane over the scheduler's internal ServingControlService.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/channel.h>

#include "absl/time/time.h"
#include "common/rpc/client.h"
#include "services/serving/control_plane.h"

namespace tunefleet::serving {

struct GrpcControlPlaneOptions {
  std::string internal_key;  // sent as the bearer token
  std::string replica_name;  // in log lines
  absl::Duration call_timeout = absl::Seconds(10);
  // Watches are re-opened after this long (every call has a deadline).
  absl::Duration watch_timeout = absl::Hours(1);
  // Between registration attempts (doubling).
  absl::Duration min_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(10);
};

class GrpcControlPlane final : public ControlPlane {
 public:
  GrpcControlPlane(std::shared_ptr<grpc::Channel> scheduler, GrpcControlPlaneOptions options);
  absl::StatusOr<std::string> Register(const ReplicaRegistration& replica) override;
  absl::Status Watch(const std::string& replica_id,
                     const std::function<void(DesiredSet)>& on_desired) override;
  absl::Status Report(const std::string& replica_id,
                      const std::vector<DeploymentStatus>& deployments, bool final) override;
  void Cancel() override { stop_.Cancel(); }

 private:
  rpc::CallOptions BaseCallOptions();

  std::shared_ptr<grpc::Channel> channel_;
  const GrpcControlPlaneOptions options_;
  rpc::CallCancellation stop_;  // cancels the calls in flight and any backoff
};

}  // namespace tunefleet::serving
