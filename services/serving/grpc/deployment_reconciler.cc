#include "services/serving/grpc/deployment_reconciler.h"

#include <spdlog/spdlog.h>

#include "common/rpc/channel.h"
#include "services/serving/grpc/proto_convert.h"
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

void DeploymentReconciler::Start() {
  thread_ = std::thread([this] { Run(); });
  reporter_ = std::thread([this] { RunReports(); });
}

void DeploymentReconciler::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (reporter_.joinable()) reporter_.join();  // after its last report
  stop_.Cancel();
  if (thread_.joinable()) thread_.join();
}

void DeploymentReconciler::RunReports() {
  rpc::TypedClient<internal_v1::ServingControlService> client(channel_, BaseCallOptions());
  // Not cancelled by Stop: the last report is the drain's.
  rpc::CallOptions o = client.defaults();
  o.cancel = nullptr;
  o.retry_deadline_exceeded = true;
  o.max_attempts = 2;
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    if (options_.report_interval == absl::InfiniteDuration()) {
      cv_.wait(lock, [&] { return stopping_; });
    } else {
      cv_.wait_for(lock, absl::ToChronoNanoseconds(options_.report_interval),
                   [&] { return stopping_; });
    }
    const bool last = stopping_;
    const std::string id = replica_id_;
    const bool applied = applies_ > 0;
    lock.unlock();
    if (!id.empty() && applied) Report(id, o);
    lock.lock();
    if (last) return;
  }
}

void DeploymentReconciler::Report(const std::string& replica_id, const rpc::CallOptions& options) {
  std::lock_guard<std::mutex> serial(report_mu_);
  std::map<std::string, DeploymentUsage> baseline;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (replica_id != replica_id_) return;  // registered again meanwhile
    baseline = baseline_;
  }
  internal_v1::ReportReplicaStatusRequest report;
  report.set_replica_id(replica_id);
  for (const DeploymentStatus& st : replica_->Statuses()) {
    auto* r = report.add_deployments();
    r->set_deployment_id(st.id);
    r->set_ready(st.ready);
    r->set_error(st.error);
    const DeploymentUsage& b = baseline[st.id];
    r->set_requests(st.usage.requests - b.requests);
    r->set_prompt_tokens(st.usage.prompt_tokens - b.prompt_tokens);
    r->set_completion_tokens(st.usage.completion_tokens - b.completion_tokens);
  }
  rpc::TypedClient<internal_v1::ServingControlService> client(channel_, options);
  absl::Status rs =
      client.Call(&internal_v1::ServingControlService::Stub::ReportReplicaStatus, report, options)
          .status();
  if (!rs.ok()) {
    spdlog::warn("replica={} status report failed: {}", options_.replica_name, rs.ToString());
  }
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
      // Counters under a new replica id start from zero.
      std::map<std::string, DeploymentUsage> baseline;
      for (const DeploymentStatus& st : replica_->Statuses()) baseline[st.id] = st.usage;
      std::lock_guard<std::mutex> lock(mu_);
      replica_id_ = registered->replica_id();
      baseline_ = std::move(baseline);
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
      replica_->Apply(specs);
      // Health before the report: once the scheduler hears "ready", the
      // replica already answers probes as serving.
      if (on_applied_) on_applied_(replica_->BasesLoaded());
      // The full set each time (with the usage): repeating it is harmless.
      rpc::CallOptions so = client.defaults();
      so.retry_deadline_exceeded = true;
      Report(registered->replica_id(), so);
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
