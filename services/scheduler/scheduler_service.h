// The scheduler's gRPC surface: the public job, model and deployment APIs and
// the internal control APIs that trainer agents and serving replicas call.
// The control-plane logic lands with the scheduler issue; for now every call
// authenticates and answers UNIMPLEMENTED.
#pragma once

#include "common/rpc/auth.h"
#include "common/rpc/service_util.h"
#include "tunefleet/internal/v1/serving.grpc.pb.h"
#include "tunefleet/internal/v1/trainer.grpc.pb.h"
#include "tunefleet/v1/deployments.grpc.pb.h"
#include "tunefleet/v1/jobs.grpc.pb.h"
#include "tunefleet/v1/models.grpc.pb.h"

namespace tunefleet::scheduler {

using rpc::Audience;
namespace v1 = ::tunefleet::v1;
namespace iv1 = ::tunefleet::internal::v1;

class JobServiceImpl final : public v1::JobService::CallbackService {
 public:
  explicit JobServiceImpl(const rpc::Authenticator* auth) : auth_(*auth) {}
  TF_NOT_IMPLEMENTED_UNARY(CreateJob, v1::CreateJobRequest, v1::Job, Audience::kTenant)
  TF_NOT_IMPLEMENTED_UNARY(GetJob, v1::GetJobRequest, v1::Job, Audience::kTenant)
  TF_NOT_IMPLEMENTED_UNARY(ListJobs, v1::ListJobsRequest, v1::ListJobsResponse, Audience::kTenant)
  TF_NOT_IMPLEMENTED_UNARY(CancelJob, v1::CancelJobRequest, v1::Job, Audience::kTenant)
  TF_NOT_IMPLEMENTED_UNARY(PauseJob, v1::PauseJobRequest, v1::Job, Audience::kTenant)
  TF_NOT_IMPLEMENTED_UNARY(ResumeJob, v1::ResumeJobRequest, v1::Job, Audience::kTenant)
  TF_NOT_IMPLEMENTED_SERVER_STREAM(StreamJobEvents, v1::StreamJobEventsRequest, v1::JobEvent,
                                   Audience::kTenant)
  TF_NOT_IMPLEMENTED_UNARY(ListCheckpoints, v1::ListCheckpointsRequest,
                           v1::ListCheckpointsResponse, Audience::kTenant)

 private:
  const rpc::Authenticator& auth_;
};

class ModelServiceImpl final : public v1::ModelService::CallbackService {
 public:
  explicit ModelServiceImpl(const rpc::Authenticator* auth) : auth_(*auth) {}
  TF_NOT_IMPLEMENTED_UNARY(ListModels, v1::ListModelsRequest, v1::ListModelsResponse,
                           Audience::kTenant)
  TF_NOT_IMPLEMENTED_UNARY(GetModel, v1::GetModelRequest, v1::Model, Audience::kTenant)
  TF_NOT_IMPLEMENTED_UNARY(DeleteModel, v1::DeleteModelRequest, v1::DeleteModelResponse,
                           Audience::kTenant)

 private:
  const rpc::Authenticator& auth_;
};

class DeploymentServiceImpl final : public v1::DeploymentService::CallbackService {
 public:
  explicit DeploymentServiceImpl(const rpc::Authenticator* auth) : auth_(*auth) {}
  TF_NOT_IMPLEMENTED_UNARY(CreateDeployment, v1::CreateDeploymentRequest, v1::Deployment,
                           Audience::kTenant)
  TF_NOT_IMPLEMENTED_UNARY(GetDeployment, v1::GetDeploymentRequest, v1::Deployment,
                           Audience::kTenant)
  TF_NOT_IMPLEMENTED_UNARY(ListDeployments, v1::ListDeploymentsRequest,
                           v1::ListDeploymentsResponse, Audience::kTenant)
  TF_NOT_IMPLEMENTED_UNARY(DeleteDeployment, v1::DeleteDeploymentRequest,
                           v1::DeleteDeploymentResponse, Audience::kTenant)

 private:
  const rpc::Authenticator& auth_;
};

class TrainerControlServiceImpl final : public iv1::TrainerControlService::CallbackService {
 public:
  explicit TrainerControlServiceImpl(const rpc::Authenticator* auth) : auth_(*auth) {}
  TF_NOT_IMPLEMENTED_UNARY(RegisterNode, iv1::RegisterNodeRequest, iv1::RegisterNodeResponse,
                           Audience::kInternal)
  TF_NOT_IMPLEMENTED_UNARY(Heartbeat, iv1::HeartbeatRequest, iv1::HeartbeatResponse,
                           Audience::kInternal)
  TF_NOT_IMPLEMENTED_UNARY(ReportProgress, iv1::ReportProgressRequest,
                           iv1::ReportProgressResponse, Audience::kInternal)
  TF_NOT_IMPLEMENTED_UNARY(ReportCheckpoint, iv1::ReportCheckpointRequest,
                           iv1::ReportCheckpointResponse, Audience::kInternal)
  TF_NOT_IMPLEMENTED_UNARY(CompleteAssignment, iv1::CompleteAssignmentRequest,
                           iv1::CompleteAssignmentResponse, Audience::kInternal)

 private:
  const rpc::Authenticator& auth_;
};

class ServingControlServiceImpl final : public iv1::ServingControlService::CallbackService {
 public:
  explicit ServingControlServiceImpl(const rpc::Authenticator* auth) : auth_(*auth) {}
  TF_NOT_IMPLEMENTED_UNARY(RegisterReplica, iv1::RegisterReplicaRequest,
                           iv1::RegisterReplicaResponse, Audience::kInternal)
  TF_NOT_IMPLEMENTED_SERVER_STREAM(WatchDeployments, iv1::WatchDeploymentsRequest,
                                   iv1::DesiredDeployments, Audience::kInternal)
  TF_NOT_IMPLEMENTED_UNARY(ReportReplicaStatus, iv1::ReportReplicaStatusRequest,
                           iv1::ReportReplicaStatusResponse, Audience::kInternal)

 private:
  const rpc::Authenticator& auth_;
};

}  // namespace tunefleet::scheduler
