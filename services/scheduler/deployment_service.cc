#include "services/scheduler/scheduler_service.h"

namespace tunefleet::scheduler {

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
    v1::DeleteDeploymentResponse* response) {
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
