#include "common/base/status_macros.h"
#include "services/scheduler/topic_reactor.h"
#include "services/scheduler/scheduler_service.h"

namespace tunefleet::scheduler {
namespace {

// WatchDeployments on the shared pull reactor: each pull compares the
// current generation with the last one sent and, when it moved, writes the
// whole desired set; changes that arrive during a write coalesce into the
// next one, so memory stays at one message per watcher. When the stream ends
// the replica's readiness reports stop counting.
class DeploymentsReactor final : public TopicReactor<iv1::DesiredDeployments> {
 public:
  DeploymentsReactor(Scheduler* scheduler, rpc::Executor* executor, std::string replica_id)
      : TopicReactor(&scheduler->bus(), kDeploymentsTopic, executor),
        scheduler_(scheduler),
        executor_(executor),
        replica_id_(std::move(replica_id)) {
    Begin();
  }

 private:
  absl::StatusOr<rpc::Pulled> Pull(iv1::DesiredDeployments* out) override {
    TF_ASSIGN_OR_RETURN(iv1::DesiredDeployments desired,
                        scheduler_->DesiredDeployments(replica_id_));
    if (desired.generation() == sent_generation_) return rpc::Pulled::kWait;
    sent_generation_ = desired.generation();
    *out = std::move(desired);
    return rpc::Pulled::kMessage;
  }

  void Ended() override {
    // A durable write: not on the reaction thread.
    executor_->Submit(
        [scheduler = scheduler_, id = replica_id_] { scheduler->ReplicaDisconnected(id); });
  }

  Scheduler* const scheduler_;
  rpc::Executor* const executor_;
  const std::string replica_id_;
  int64_t sent_generation_ = -1;  // pulls run one at a time
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
