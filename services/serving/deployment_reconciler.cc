#include "services/serving/deployment_reconciler.h"

#include <spdlog/spdlog.h>

#include "common/rpc/channel.h"
#include "services/serving/proto_convert.h"
#include "tunefleet/internal/v1/serving.grpc.pb.h"

namespace tunefleet::serving {

namespace internal_v1 = ::tunefleet::internal::v1;

DeploymentReconciler::DeploymentReconciler(std::shared_ptr<grpc::Channel> scheduler,
                                           Replica* replica, ReconcilerOptions options,
                                           std::function<void(bool)> on_applied)
    : channel_(std::move(scheduler)),
      replica_(replica),
      options_(std::move(options)),
      on_applied_(std::move(on_applied)) {}

DeploymentReconciler::~DeploymentReconciler() { Stop(); }

void DeploymentReconciler::Start() { thread_ = std::thread([this] { Run(); }); }

void DeploymentReconciler::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  stop_.Cancel();
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool DeploymentReconciler::WaitForFirstApply(absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout),
                      [&] { return applies_ > 0 || stopping_; }) &&
         applies_ > 0;
}

int64_t DeploymentReconciler::applied_generation() const {
  std::lock_guard<std::mutex> lock(mu_);
  return applied_generation_;
}

std::string DeploymentReconciler::replica_id() const {
  std::lock_guard<std::mutex> lock(mu_);
  return replica_id_;
}

rpc::CallOptions DeploymentReconciler::BaseCallOptions() {
  rpc::CallOptions o;
  o.api_key = options_.internal_key;
  o.timeout = options_.call_timeout;
  o.initial_backoff = options_.min_backoff;
  o.max_backoff = options_.max_backoff;
  o.cancel = &stop_;
  return o;
}

void DeploymentReconciler::Run() {
  rpc::TypedClient<internal_v1::ServingControlService> client(channel_, BaseCallOptions());
  absl::Duration backoff = options_.min_backoff;
  for (;;) {
    internal_v1::RegisterReplicaRequest reg;
    reg.set_replica_name(options_.replica_name);
    reg.set_address(options_.advertise_address);
    reg.set_memory_bytes(options_.memory_bytes);
    // Until it works: a replica without a scheduler has nothing to do (a
    // wrong key is logged at every attempt, and the replica stays unready).
    rpc::CallOptions ro = client.defaults();
    ro.max_attempts = 0;
    ro.retry_every_error = true;
    ro.on_retry = [&](const absl::Status& s, int attempt, absl::Duration wait) {
      spdlog::warn("replica={} register attempt {} failed: {}; retrying in {}",
                   options_.replica_name, attempt, s.ToString(), absl::FormatDuration(wait));
    };
    absl::StatusOr<internal_v1::RegisterReplicaResponse> registered =
        client.Call(&internal_v1::ServingControlService::Stub::RegisterReplica, reg, ro);
    if (!registered.ok()) return;  // stopped
    {
      std::lock_guard<std::mutex> lock(mu_);
      replica_id_ = registered->replica_id();
    }
    spdlog::info("replica={} registered as {}", options_.replica_name, registered->replica_id());

    grpc::ClientContext wc;
    rpc::PrepareContext(&wc, options_.internal_key, options_.watch_timeout);
    if (!stop_.Register(&wc)) return;
    internal_v1::WatchDeploymentsRequest wr;
    wr.set_replica_id(registered->replica_id());
    auto reader = client.stub()->WatchDeployments(&wc, wr);
    internal_v1::DesiredDeployments desired;
    while (reader->Read(&desired)) {
      backoff = options_.min_backoff;
      std::vector<DeploymentSpec> specs;
      for (const auto& d : desired.deployments()) specs.push_back(SpecFromProto(d));
      std::vector<DeploymentStatus> statuses = replica_->Apply(specs);
      // Health before the report: once the scheduler hears "ready", the
      // replica already answers probes as serving.
      if (on_applied_) on_applied_(replica_->BasesLoaded());
      internal_v1::ReportReplicaStatusRequest report;
      report.set_replica_id(registered->replica_id());
      for (const DeploymentStatus& st : statuses) {
        auto* r = report.add_deployments();
        r->set_deployment_id(st.id);
        r->set_ready(st.ready);
        r->set_error(st.error);
      }
      // The full set each time: repeating it is harmless.
      rpc::CallOptions so = client.defaults();
      so.retry_deadline_exceeded = true;
      absl::Status rs =
          client.Call(&internal_v1::ServingControlService::Stub::ReportReplicaStatus, report, so)
              .status();
      if (!rs.ok()) {
        spdlog::warn("replica={} status report failed: {}", options_.replica_name, rs.ToString());
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        applied_generation_ = desired.generation();
        ++applies_;
      }
      cv_.notify_all();
    }
    grpc::Status ws = reader->Finish();
    stop_.Unregister(&wc);
    if (stop_.cancelled()) return;
    spdlog::warn("replica={} watch ended: {}; re-registering in {}", options_.replica_name,
                 ws.error_message(), absl::FormatDuration(backoff));
    if (!stop_.SleepFor(backoff)) return;
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

}  // namespace tunefleet::serving
