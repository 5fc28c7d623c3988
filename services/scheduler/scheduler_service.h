// The scheduler's gRPC surface: the public job, model and deployment APIs and
// the internal control APIs that trainer agents and serving replicas call.
// Thin: authenticate, call the Scheduler core, convert its status. Blocking
// work (SQLite commits) runs on the executor, never on a reaction thread.
// One .cc file per service.
#pragma once

#include <functional>

#include "common/rpc/auth.h"
#include "common/rpc/service_util.h"
#include "services/scheduler/scheduler.h"
#include "tunefleet/internal/v1/serving.grpc.pb.h"
#include "tunefleet/internal/v1/trainer.grpc.pb.h"
#include "tunefleet/v1/deployments.grpc.pb.h"
#include "tunefleet/v1/jobs.grpc.pb.h"
#include "tunefleet/v1/models.grpc.pb.h"
#include "tunefleet/v1/usage.grpc.pb.h"

namespace tunefleet::scheduler {

// Runs `call` (the core, for the authenticated caller) on the executor and
// finishes the unary call with its status, copying its value into `out`.
template <typename Response, typename Call>
grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* context,
                                absl::StatusOr<rpc::Principal> caller, rpc::Executor* executor,
                                Response* out, Call call) {
  return rpc::RunOnExecutor(context, std::move(caller), executor,
                            [out, call = std::move(call)](const rpc::Principal& p) -> absl::Status {
                              absl::StatusOr<Response> r = call(p);
                              if (!r.ok()) return r.status();
                              *out = *std::move(r);
                              return absl::OkStatus();
                            });
}

class JobServiceImpl final : public v1::JobService::CallbackService {
 public:
  JobServiceImpl(const rpc::Authenticator* auth, Scheduler* scheduler, rpc::Executor* executor)
      : auth_(*auth), scheduler_(scheduler), executor_(executor) {}
  grpc::ServerUnaryReactor* CreateJob(grpc::CallbackServerContext* context,
                                      const v1::CreateJobRequest* request, v1::Job* response) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context,
                                   const v1::GetJobRequest* request, v1::Job* response) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* context,
                                     const v1::ListJobsRequest* request,
                                     v1::ListJobsResponse* response) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* context,
                                      const v1::CancelJobRequest* request, v1::Job* response) override;
  grpc::ServerUnaryReactor* PauseJob(grpc::CallbackServerContext* context,
                                     const v1::PauseJobRequest* request, v1::Job* response) override;
  grpc::ServerUnaryReactor* ResumeJob(grpc::CallbackServerContext* context,
                                      const v1::ResumeJobRequest* request, v1::Job* response) override;
  grpc::ServerWriteReactor<v1::JobEvent>* StreamJobEvents(
      grpc::CallbackServerContext* context, const v1::StreamJobEventsRequest* request) override;
  grpc::ServerUnaryReactor* ListJobEvents(grpc::CallbackServerContext* context,
                                          const v1::ListJobEventsRequest* request,
                                          v1::ListJobEventsResponse* response) override;
  grpc::ServerUnaryReactor* GetJobMetrics(grpc::CallbackServerContext* context,
                                          const v1::GetJobMetricsRequest* request,
                                          v1::JobMetrics* response) override;
  grpc::ServerUnaryReactor* ListCheckpoints(grpc::CallbackServerContext* context,
                                            const v1::ListCheckpointsRequest* request,
                                            v1::ListCheckpointsResponse* response) override;

 private:
  const rpc::Authenticator& auth_;
  Scheduler* scheduler_;
  rpc::Executor* executor_;
};

class ModelServiceImpl final : public v1::ModelService::CallbackService {
 public:
  ModelServiceImpl(const rpc::Authenticator* auth, Scheduler* scheduler, rpc::Executor* executor)
      : auth_(*auth), scheduler_(scheduler), executor_(executor) {}
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* context,
                                     const v1::GetModelRequest* request, v1::Model* response) override;
  grpc::ServerUnaryReactor* DeleteModel(grpc::CallbackServerContext* context,
                                        const v1::DeleteModelRequest* request,
                                        v1::DeleteModelResponse* response) override;
  grpc::ServerWriteReactor<v1::ModelContentChunk>* GetModelContent(
      grpc::CallbackServerContext* context, const v1::GetModelContentRequest* request) override;

 private:
  const rpc::Authenticator& auth_;
  Scheduler* scheduler_;
  rpc::Executor* executor_;
};

class DeploymentServiceImpl final : public v1::DeploymentService::CallbackService {
 public:
  DeploymentServiceImpl(const rpc::Authenticator* auth, Scheduler* scheduler,
                        rpc::Executor* executor)
      : auth_(*auth), scheduler_(scheduler), executor_(executor) {}
  grpc::ServerUnaryReactor* CreateDeployment(grpc::CallbackServerContext* context,
                                             const v1::CreateDeploymentRequest* request,
                                             v1::Deployment* response) override;
  grpc::ServerUnaryReactor* GetDeployment(grpc::CallbackServerContext* context,
                                          const v1::GetDeploymentRequest* request,
                                          v1::Deployment* response) override;
  grpc::ServerUnaryReactor* ListDeployments(grpc::CallbackServerContext* context,
                                            const v1::ListDeploymentsRequest* request,
                                            v1::ListDeploymentsResponse* response) override;
  grpc::ServerUnaryReactor* DeleteDeployment(grpc::CallbackServerContext* context,
                                             const v1::DeleteDeploymentRequest* request,
                                             v1::Deployment* response) override;
  grpc::ServerUnaryReactor* UpdateDeployment(grpc::CallbackServerContext* context,
                                             const v1::UpdateDeploymentRequest* request,
                                             v1::Deployment* response) override;
  grpc::ServerWriteReactor<v1::Deployment>* WatchDeployment(
      grpc::CallbackServerContext* context, const v1::WatchDeploymentRequest* request) override;

 private:
  const rpc::Authenticator& auth_;
  Scheduler* scheduler_;
  rpc::Executor* executor_;
};

// UsageService: a tenant's own usage; an internal caller names the tenant.
class UsageServiceImpl final : public v1::UsageService::CallbackService {
 public:
  UsageServiceImpl(const rpc::Authenticator* auth, Scheduler* scheduler, rpc::Executor* executor)
      : auth_(*auth), scheduler_(scheduler), executor_(executor) {}
  grpc::ServerUnaryReactor* GetUsage(grpc::CallbackServerContext* context,
                                     const v1::GetUsageRequest* request,
                                     v1::UsageReport* response) override;

 private:
  const rpc::Authenticator& auth_;
  Scheduler* scheduler_;
  rpc::Executor* executor_;
};

class TrainerControlServiceImpl final : public iv1::TrainerControlService::CallbackService {
 public:
  TrainerControlServiceImpl(const rpc::Authenticator* auth, Scheduler* scheduler,
                            rpc::Executor* executor)
      : auth_(*auth), scheduler_(scheduler), executor_(executor) {}
  grpc::ServerUnaryReactor* RegisterNode(grpc::CallbackServerContext* context,
                                         const iv1::RegisterNodeRequest* request,
                                         iv1::RegisterNodeResponse* response) override;
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* context,
                                      const iv1::HeartbeatRequest* request,
                                      iv1::HeartbeatResponse* response) override;
  grpc::ServerUnaryReactor* ReportProgress(grpc::CallbackServerContext* context,
                                           const iv1::ReportProgressRequest* request,
                                           iv1::ReportProgressResponse* response) override;
  grpc::ServerUnaryReactor* ReportCheckpoint(grpc::CallbackServerContext* context,
                                             const iv1::ReportCheckpointRequest* request,
                                             iv1::ReportCheckpointResponse* response) override;
  grpc::ServerUnaryReactor* CompleteAssignment(grpc::CallbackServerContext* context,
                                               const iv1::CompleteAssignmentRequest* request,
                                               iv1::CompleteAssignmentResponse* response) override;

 private:
  const rpc::Authenticator& auth_;
  Scheduler* scheduler_;
  rpc::Executor* executor_;
};

class ServingControlServiceImpl final : public iv1::ServingControlService::CallbackService {
 public:
  ServingControlServiceImpl(const rpc::Authenticator* auth, Scheduler* scheduler,
                            rpc::Executor* executor)
      : auth_(*auth), scheduler_(scheduler), executor_(executor) {}
  grpc::ServerUnaryReactor* RegisterReplica(grpc::CallbackServerContext* context,
                                            const iv1::RegisterReplicaRequest* request,
                                            iv1::RegisterReplicaResponse* response) override;
  grpc::ServerWriteReactor<iv1::DesiredDeployments>* WatchDeployments(
      grpc::CallbackServerContext* context, const iv1::WatchDeploymentsRequest* request) override;
  grpc::ServerUnaryReactor* ReportReplicaStatus(grpc::CallbackServerContext* context,
                                                const iv1::ReportReplicaStatusRequest* request,
                                                iv1::ReportReplicaStatusResponse* response) override;

 private:
  const rpc::Authenticator& auth_;
  Scheduler* scheduler_;
  rpc::Executor* executor_;
};

}  // namespace tunefleet::scheduler
