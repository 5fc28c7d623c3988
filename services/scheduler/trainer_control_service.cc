#include "services/scheduler/scheduler_service.h"

namespace tunefleet::scheduler {

grpc::ServerUnaryReactor* TrainerControlServiceImpl::RegisterNode(
    grpc::CallbackServerContext* context, const iv1::RegisterNodeRequest* request,
    iv1::RegisterNodeResponse* response) {
  return Unary(context, auth_.AuthenticateInternal(*context), executor_, response,
               [this, request](const rpc::Principal&) { return scheduler_->RegisterNode(*request); });
}

grpc::ServerUnaryReactor* TrainerControlServiceImpl::Heartbeat(
    grpc::CallbackServerContext* context, const iv1::HeartbeatRequest* request,
    iv1::HeartbeatResponse* response) {
  return Unary(context, auth_.AuthenticateInternal(*context), executor_, response,
               [this, request](const rpc::Principal&) { return scheduler_->Heartbeat(*request); });
}

grpc::ServerUnaryReactor* TrainerControlServiceImpl::ReportProgress(
    grpc::CallbackServerContext* context, const iv1::ReportProgressRequest* request,
    iv1::ReportProgressResponse* response) {
  return Unary(context, auth_.AuthenticateInternal(*context), executor_, response,
               [this, request](const rpc::Principal&) {
                 return scheduler_->ReportProgress(*request);
               });
}

grpc::ServerUnaryReactor* TrainerControlServiceImpl::ReportCheckpoint(
    grpc::CallbackServerContext* context, const iv1::ReportCheckpointRequest* request,
    iv1::ReportCheckpointResponse* response) {
  return Unary(context, auth_.AuthenticateInternal(*context), executor_, response,
               [this, request](const rpc::Principal&) {
                 return scheduler_->ReportCheckpoint(*request);
               });
}

grpc::ServerUnaryReactor* TrainerControlServiceImpl::CompleteAssignment(
    grpc::CallbackServerContext* context, const iv1::CompleteAssignmentRequest* request,
    iv1::CompleteAssignmentResponse* response) {
  return Unary(context, auth_.AuthenticateInternal(*context), executor_, response,
               [this, request](const rpc::Principal&) {
                 return scheduler_->CompleteAssignment(*request);
               });
}

}  // namespace tunefleet::scheduler
