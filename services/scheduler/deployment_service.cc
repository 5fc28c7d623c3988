#include "common/errors/error_details.h"
#include "services/scheduler/scheduler_service.h"

namespace tunefleet::scheduler {
namespace {

bool Settled(v1::DeploymentState s) {
  return s == v1::DEPLOYMENT_STATE_ACTIVE || s == v1::DEPLOYMENT_STATE_FAILED ||
         s == v1::DEPLOYMENT_STATE_DELETING;
}

// WatchDeployment: the same level-triggered pattern as the replicas'
// WatchDeployments and StreamJobEvents (the event bus only says "look
// again"). Each wake reads the deployment and writes it when it differs from
// the last message sent; changes during a write coalesce into the next one,
// so a slow client costs one message. A deletion (NOT_FOUND after the first
// message) is sent as the last known deployment in state DELETING. The
// stream ends with OK after a message in ACTIVE, FAILED or DELETING.
class DeploymentWatchReactor final : public grpc::ServerWriteReactor<v1::Deployment>,
                                     public Watcher {
 public:
  DeploymentWatchReactor(Scheduler* scheduler, std::string tenant, std::string id)
      : scheduler_(scheduler),
        tenant_(std::move(tenant)),
        id_(std::move(id)),
        topic_(DeploymentTopic(id_)) {
    absl::Status s = scheduler_->bus().Subscribe(topic_, this);
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
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
      return;
    }
    if (Settled(sent_.state())) {
      FinishLocked(grpc::Status::OK);
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
    scheduler_->bus().Unsubscribe(topic_, this);
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
    absl::StatusOr<v1::Deployment> now = scheduler_->GetDeployment(tenant_, id_);
    if (!now.ok()) {
      if (!absl::IsNotFound(now.status()) || !any_sent_) {
        FinishLocked(rpc::ToGrpcStatus(now.status()));
        return;
      }
      now = sent_;  // deleted since the last message
      now->set_state(v1::DEPLOYMENT_STATE_DELETING);
    }
    if (any_sent_ && now->SerializeAsString() == sent_.SerializeAsString()) return;
    sent_ = *std::move(now);
    any_sent_ = true;
    writing_ = true;
    StartWrite(&sent_);
  }

  Scheduler* const scheduler_;
  const std::string tenant_;
  const std::string id_;
  const std::string topic_;
  absl::Mutex mu_;
  v1::Deployment sent_ ABSL_GUARDED_BY(mu_);
  bool any_sent_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

grpc::ServerWriteReactor<v1::Deployment>* DeploymentServiceImpl::WatchDeployment(
    grpc::CallbackServerContext* context, const v1::WatchDeploymentRequest* request) {
  absl::StatusOr<rpc::Principal> caller = auth_.AuthenticateTenant(*context);
  if (!caller.ok()) return new rpc::RejectedWriteReactor<v1::Deployment>(caller.status());
  if (request->deployment_id().empty()) {
    return new rpc::RejectedWriteReactor<v1::Deployment>(
        errors::FieldError("deployment_id", "required"));
  }
  return new DeploymentWatchReactor(scheduler_, caller->tenant, request->deployment_id());
}

grpc::ServerUnaryReactor* DeploymentServiceImpl::CreateDeployment(
    grpc::CallbackServerContext* context, const v1::CreateDeploymentRequest* request,
    v1::Deployment* response) {
  return Unary(context, auth_.AuthenticateTenant(*context), executor_, response,
               [this, request](const rpc::Principal& p) {
                 return scheduler_->CreateDeployment(p.tenant, *request);
               });
}

grpc::ServerUnaryReactor* DeploymentServiceImpl::GetDeployment(
    grpc::CallbackServerContext* context, const v1::GetDeploymentRequest* request,
    v1::Deployment* response) {
  return Unary(context, auth_.AuthenticateTenant(*context), executor_, response,
               [this, request](const rpc::Principal& p) {
                 return scheduler_->GetDeployment(p.tenant, request->deployment_id());
               });
}

grpc::ServerUnaryReactor* DeploymentServiceImpl::ListDeployments(
    grpc::CallbackServerContext* context, const v1::ListDeploymentsRequest* request,
    v1::ListDeploymentsResponse* response) {
  return Unary(context, auth_.AuthenticateTenant(*context), executor_, response,
               [this, request](const rpc::Principal& p) {
                 return scheduler_->ListDeployments(p.tenant, *request);
               });
}

grpc::ServerUnaryReactor* DeploymentServiceImpl::DeleteDeployment(
    grpc::CallbackServerContext* context, const v1::DeleteDeploymentRequest* request,
    v1::Deployment* response) {
  return Unary(context, auth_.AuthenticateTenant(*context), executor_, response,
               [this, request](const rpc::Principal& p) {
                 return scheduler_->DeleteDeployment(p.tenant, request->deployment_id());
               });
}

grpc::ServerUnaryReactor* DeploymentServiceImpl::UpdateDeployment(
    grpc::CallbackServerContext* context, const v1::UpdateDeploymentRequest* request,
    v1::Deployment* response) {
  return Unary(context, auth_.AuthenticateTenant(*context), executor_, response,
               [this, request](const rpc::Principal& p) {
                 return scheduler_->UpdateDeployment(p.tenant, *request);
               });
}

}  // namespace tunefleet::scheduler
