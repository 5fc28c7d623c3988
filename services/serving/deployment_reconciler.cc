#include "services/serving/deployment_reconciler.h"

#include <spdlog/spdlog.h>

#include "common/rpc/channel.h"
#include "common/rpc/status.h"
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
    if (watch_) watch_->TryCancel();
  }
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

bool DeploymentReconciler::Backoff(absl::Duration* backoff) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, absl::ToChronoNanoseconds(*backoff), [&] { return stopping_; });
  *backoff = std::min(*backoff * 2, options_.max_backoff);
  return !stopping_;
}

void DeploymentReconciler::Run() {
  auto stub = internal_v1::ServingControlService::NewStub(channel_);
  absl::Duration backoff = options_.min_backoff;
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
    }
    internal_v1::RegisterReplicaRequest reg;
    reg.set_replica_name(options_.replica_name);
    reg.set_address(options_.advertise_address);
    reg.set_memory_bytes(options_.memory_bytes);
    internal_v1::RegisterReplicaResponse registered;
    grpc::ClientContext rc;
    rpc::PrepareContext(&rc, options_.internal_key, options_.call_timeout);
    grpc::Status s = stub->RegisterReplica(&rc, reg, &registered);
    if (!s.ok()) {
      spdlog::warn("replica={} register failed: {} ({}); retrying", options_.replica_name,
                   s.error_message(), static_cast<int>(s.error_code()));
      if (!Backoff(&backoff)) return;
      continue;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      replica_id_ = registered.replica_id();
    }
    spdlog::info("replica={} registered as {}", options_.replica_name, registered.replica_id());

    grpc::ClientContext wc;
    rpc::PrepareContext(&wc, options_.internal_key, options_.watch_timeout);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
      watch_ = &wc;
    }
    internal_v1::WatchDeploymentsRequest wr;
    wr.set_replica_id(registered.replica_id());
    auto reader = stub->WatchDeployments(&wc, wr);
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
      report.set_replica_id(registered.replica_id());
      for (const DeploymentStatus& st : statuses) {
        auto* r = report.add_deployments();
        r->set_deployment_id(st.id);
        r->set_ready(st.ready);
        r->set_error(st.error);
      }
      internal_v1::ReportReplicaStatusResponse ignored;
      grpc::ClientContext sc;
      rpc::PrepareContext(&sc, options_.internal_key, options_.call_timeout);
      grpc::Status rs = stub->ReportReplicaStatus(&sc, report, &ignored);
      if (!rs.ok()) spdlog::warn("replica={} status report failed: {}", options_.replica_name, rs.error_message());
      {
        std::lock_guard<std::mutex> lock(mu_);
        applied_generation_ = desired.generation();
        ++applies_;
      }
      cv_.notify_all();
    }
    grpc::Status ws = reader->Finish();
    {
      std::lock_guard<std::mutex> lock(mu_);
      watch_ = nullptr;
      if (stopping_) return;
    }
    spdlog::warn("replica={} watch ended: {}; re-registering", options_.replica_name, ws.error_message());
    if (!Backoff(&backoff)) return;
  }
}

}  // namespace tunefleet::serving
