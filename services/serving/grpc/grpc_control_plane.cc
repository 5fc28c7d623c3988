#include "services/serving/grpc/grpc_control_plane.h"

#include <utility>

#include <spdlog/spdlog.h>

#include "common/rpc/channel.h"
#include "services/serving/grpc/proto_convert.h"
#include "tunefleet/internal/v1/serving.grpc.pb.h"

namespace tunefleet::serving {

namespace internal_v1 = ::tunefleet::internal::v1;
using Client = rpc::TypedClient<internal_v1::ServingControlService>;

GrpcControlPlane::GrpcControlPlane(std::shared_ptr<grpc::Channel> scheduler,
                                   GrpcControlPlaneOptions options)
    : channel_(std::move(scheduler)), options_(std::move(options)) {}

rpc::CallOptions GrpcControlPlane::BaseCallOptions() {
  rpc::CallOptions o;
  o.api_key = options_.internal_key;
  o.timeout = options_.call_timeout;
  o.initial_backoff = options_.min_backoff;
  o.max_backoff = options_.max_backoff;
  o.cancel = &stop_;
  return o;
}

absl::StatusOr<std::string> GrpcControlPlane::Register(const ReplicaRegistration& replica) {
  internal_v1::RegisterReplicaRequest reg;
  reg.set_replica_name(replica.name);
  reg.set_address(replica.address);
  reg.set_memory_bytes(replica.memory_bytes);
  Client client(channel_, BaseCallOptions());
  rpc::CallOptions o = client.defaults();
  o.max_attempts = 0;
  o.retry_every_error = true;
  o.on_retry = [&](const absl::Status& s, int attempt, absl::Duration wait) {
    spdlog::warn("replica={} register attempt {} failed: {}; retrying in {}",
                 options_.replica_name, attempt, s.ToString(), absl::FormatDuration(wait));
  };
  absl::StatusOr<internal_v1::RegisterReplicaResponse> registered =
      client.Call(&internal_v1::ServingControlService::Stub::RegisterReplica, reg, o);
  if (!registered.ok()) return registered.status();
  return registered->replica_id();
}

absl::Status GrpcControlPlane::Watch(const std::string& replica_id,
                                     const std::function<void(DesiredSet)>& on_desired) {
  Client client(channel_, BaseCallOptions());
  grpc::ClientContext context;
  rpc::PrepareContext(&context, options_.internal_key, options_.watch_timeout);
  if (!stop_.Register(&context)) return absl::CancelledError("stopped");
  internal_v1::WatchDeploymentsRequest request;
  request.set_replica_id(replica_id);
  auto reader = client.stub()->WatchDeployments(&context, request);
  internal_v1::DesiredDeployments desired;
  while (reader->Read(&desired)) {
    DesiredSet set;
    set.generation = desired.generation();
    for (const auto& d : desired.deployments()) set.deployments.push_back(SpecFromProto(d));
    on_desired(std::move(set));
  }
  const grpc::Status s = reader->Finish();
  stop_.Unregister(&context);
  if (stop_.cancelled()) return absl::CancelledError("stopped");
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

absl::Status GrpcControlPlane::Report(const std::string& replica_id,
                                      const std::vector<DeploymentStatus>& deployments,
                                      bool final) {
  internal_v1::ReportReplicaStatusRequest report;
  report.set_replica_id(replica_id);
  for (const DeploymentStatus& st : deployments) {
    auto* r = report.add_deployments();
    r->set_deployment_id(st.id);
    r->set_ready(st.ready);
    r->set_error(st.error);
    r->set_requests(st.usage.requests);
    r->set_prompt_tokens(st.usage.prompt_tokens);
    r->set_completion_tokens(st.usage.completion_tokens);
  }
  Client client(channel_, BaseCallOptions());
  rpc::CallOptions o = client.defaults();
  o.retry_deadline_exceeded = true;  // idempotent: cumulative counters
  if (final) {
    // The drain's report goes out even as the replica stops.
    o.cancel = nullptr;
    o.max_attempts = 2;
  }
  return client.Call(&internal_v1::ServingControlService::Stub::ReportReplicaStatus, report, o)
      .status();
}

}  // namespace tunefleet::serving
