#include "services/serving/deployment_reconciler.h"

#include <algorithm>
#include <utility>
#include <vector>

#include <spdlog/spdlog.h>

namespace tunefleet::serving {

DeploymentReconciler::DeploymentReconciler(ControlPlane* control, Replica* replica,
                                           ReconcilerOptions options,
                                           std::function<void(bool)> on_applied)
    : control_(control),
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
  control_->Cancel();
  if (thread_.joinable()) thread_.join();
}

void DeploymentReconciler::RunReports() {
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
    if (!id.empty() && applied) Report(id, /*final=*/last);
    lock.lock();
    if (last) return;
  }
}

void DeploymentReconciler::Report(const std::string& replica_id, bool final) {
  std::lock_guard<std::mutex> serial(report_mu_);
  std::map<std::string, DeploymentUsage> baseline;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (replica_id != replica_id_) return;  // registered again meanwhile
    baseline = baseline_;
  }
  std::vector<DeploymentStatus> statuses = replica_->Statuses();
  for (DeploymentStatus& st : statuses) {
    const DeploymentUsage& b = baseline[st.id];
    st.usage.requests -= b.requests;
    st.usage.prompt_tokens -= b.prompt_tokens;
    st.usage.completion_tokens -= b.completion_tokens;
  }
  if (absl::Status s = control_->Report(replica_id, statuses, final); !s.ok()) {
    spdlog::warn("replica={} status report failed: {}", options_.replica_name, s.ToString());
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

void DeploymentReconciler::Apply(const std::string& replica_id, const DesiredSet& desired) {
  replica_->Apply(desired.deployments);
  // Health before the report: once the scheduler hears "ready", the replica
  // already answers probes as serving.
  if (on_applied_) on_applied_(replica_->BasesLoaded());
  // The full set each time (with the usage): repeating it is harmless.
  Report(replica_id, /*final=*/false);
  {
    std::lock_guard<std::mutex> lock(mu_);
    applied_generation_ = desired.generation;
    ++applies_;
  }
  cv_.notify_all();
}

void DeploymentReconciler::Run() {
  absl::Duration backoff = options_.min_backoff;
  const ReplicaRegistration registration{options_.replica_name, options_.advertise_address,
                                         options_.memory_bytes};
  for (;;) {
    // Until it works: a replica without a scheduler has nothing to do (a
    // wrong key is logged at every attempt, and the replica stays unready).
    absl::StatusOr<std::string> id = control_->Register(registration);
    if (!id.ok()) return;  // stopped
    {
      // Counters under a new replica id start from zero.
      std::map<std::string, DeploymentUsage> baseline;
      for (const DeploymentStatus& st : replica_->Statuses()) baseline[st.id] = st.usage;
      std::lock_guard<std::mutex> lock(mu_);
      replica_id_ = *id;
      baseline_ = std::move(baseline);
    }
    spdlog::info("replica={} registered as {}", options_.replica_name, *id);
    bool received = false;
    const absl::Status ended = control_->Watch(*id, [&](DesiredSet desired) {
      received = true;
      Apply(*id, desired);
    });
    if (received) backoff = options_.min_backoff;
    std::unique_lock<std::mutex> lock(mu_);
    if (stopping_) return;  // Stop() cancels the watch after setting this
    spdlog::warn("replica={} watch ended: {}; re-registering in {}", options_.replica_name,
                 ended.ToString(), absl::FormatDuration(backoff));
    if (cv_.wait_for(lock, absl::ToChronoNanoseconds(backoff), [&] { return stopping_; })) return;
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

}  // namespace tunefleet::serving
