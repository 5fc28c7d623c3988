#include "services/scheduler/scheduler_service.h"

namespace tunefleet::scheduler {
namespace {

// WatchDeployments: level-triggered. Each wake compares the current
// generation with the last one sent and, when it moved, writes the whole
// desired set; changes that arrive during a write coalesce into the next
// one, so memory stays at one message per watcher. When the stream ends the
// replica's readiness reports stop counting.
class DeploymentsReactor final : public grpc::ServerWriteReactor<iv1::DesiredDeployments>,
                                 public Watcher {
 public:
  DeploymentsReactor(Scheduler* scheduler, rpc::Executor* executor, std::string replica_id)
      : scheduler_(scheduler), executor_(executor), replica_id_(std::move(replica_id)) {
    absl::Status s = scheduler_->bus().Subscribe(kDeploymentsTopic, this);
    absl::MutexLock lock(&mu_);
    if (!s.ok()) {
      FinishLocked(rpc::ToGrpcStatus(s));
      return;
    }
    PumpLocked();
  }

  void Wake() override {
    absl::MutexLock lock(&mu_);
    PumpLocked();
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "the replica went away"));
      return;
    }
    PumpLocked();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    if (!writing_) FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
  }

  void OnDone() override {
    scheduler_->bus().Unsubscribe(kDeploymentsTopic, this);
    // A durable write: not on the reaction thread.
    executor_->Submit([scheduler = scheduler_, id = replica_id_] { scheduler->ReplicaDisconnected(id); });
    delete this;
  }

 private:
  void FinishLocked(const grpc::Status& s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    Finish(s);
  }

  void PumpLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || writing_) return;
    if (cancelled_) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
      return;
    }
    absl::StatusOr<iv1::DesiredDeployments> desired = scheduler_->DesiredDeployments(replica_id_);
    if (!desired.ok()) {
      FinishLocked(rpc::ToGrpcStatus(desired.status()));
      return;
    }
    if (desired->generation() == sent_generation_) return;
    sent_generation_ = desired->generation();
    message_ = *std::move(desired);
    writing_ = true;
    StartWrite(&message_);
  }

  Scheduler* const scheduler_;
  rpc::Executor* const executor_;
  const std::string replica_id_;
  absl::Mutex mu_;
  iv1::DesiredDeployments message_ ABSL_GUARDED_BY(mu_);
  int64_t sent_generation_ ABSL_GUARDED_BY(mu_) = -1;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

grpc::ServerUnaryReactor* ServingControlServiceImpl::RegisterReplica(
    grpc::CallbackServerContext* context, const iv1::RegisterReplicaRequest* request,
    iv1::RegisterReplicaResponse* response) {
  return Unary(context, auth_.AuthenticateInternal(*context), executor_, response,
               [this, request](const rpc::Principal&) {
                 return scheduler_->RegisterReplica(*request);
               });
}

grpc::ServerWriteReactor<iv1::DesiredDeployments>* ServingControlServiceImpl::WatchDeployments(
    grpc::CallbackServerContext* context, const iv1::WatchDeploymentsRequest* request) {
  absl::StatusOr<rpc::Principal> caller = auth_.AuthenticateInternal(*context);
  if (!caller.ok()) return new rpc::RejectedWriteReactor<iv1::DesiredDeployments>(caller.status());
  return new DeploymentsReactor(scheduler_, executor_, request->replica_id());
}

grpc::ServerUnaryReactor* ServingControlServiceImpl::ReportReplicaStatus(
    grpc::CallbackServerContext* context, const iv1::ReportReplicaStatusRequest* request,
    iv1::ReportReplicaStatusResponse* response) {
  return Unary(context, auth_.AuthenticateInternal(*context), executor_, response,
               [this, request](const rpc::Principal&) {
                 return scheduler_->ReportReplicaStatus(*request);
               });
}

}  // namespace tunefleet::scheduler
