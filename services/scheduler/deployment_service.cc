#include "common/errors/error_details.h"
#include "services/scheduler/scheduler_service.h"
#include "services/scheduler/topic_reactor.h"

namespace tunefleet::scheduler {
namespace {

bool Settled(v1::DeploymentState s) {
  return s == v1::DEPLOYMENT_STATE_ACTIVE || s == v1::DEPLOYMENT_STATE_FAILED ||
         s == v1::DEPLOYMENT_STATE_DELETING;
}

// WatchDeployment on the shared pull reactor (level-triggered, like
// StreamJobEvents): a bus wake on "deployment/<id>" only says "look again";
// each Pull reads the deployment and yields it when it differs from the
// last message sent, so changes during a slow write coalesce into the next
// message and a slow client costs one message. A deletion (NOT_FOUND after
// the first message) is sent as the last known deployment in state
// DELETING. The stream ends with OK after a message in ACTIVE, FAILED or
// DELETING.
class DeploymentWatchReactor final : public TopicReactor<v1::Deployment> {
 public:
  DeploymentWatchReactor(Scheduler* scheduler, rpc::Executor* executor, std::string tenant,
                         std::string id)
      : TopicReactor(&scheduler->bus(), DeploymentTopic(id), executor),
        scheduler_(scheduler),
        tenant_(std::move(tenant)),
        id_(std::move(id)) {
    Begin();
  }

 private:
  // Runs one at a time (the base's rule): sent_ needs no lock.
  absl::StatusOr<rpc::Pulled> Pull(v1::Deployment* out) override {
    if (any_sent_ && Settled(sent_.state())) return rpc::Pulled::kEnd;
    absl::StatusOr<v1::Deployment> now = scheduler_->GetDeployment(tenant_, id_);
    if (!now.ok()) {
      if (!absl::IsNotFound(now.status()) || !any_sent_) return now.status();
      now = sent_;  // deleted since the last message
      now->set_state(v1::DEPLOYMENT_STATE_DELETING);
    }
    if (any_sent_ && now->SerializeAsString() == sent_.SerializeAsString()) {
      return rpc::Pulled::kWait;
    }
    sent_ = *std::move(now);
    any_sent_ = true;
    *out = sent_;
    return rpc::Pulled::kMessage;
  }
  Scheduler* const scheduler_;
  const std::string tenant_;
  const std::string id_;
  bool any_sent_ = false;
  v1::Deployment sent_;
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
  return new DeploymentWatchReactor(scheduler_, executor_, caller->tenant,
                                    request->deployment_id());
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
