#include <deque>

#include "services/scheduler/scheduler_service.h"
#include "common/errors/error_details.h"
#include "common/base/status_macros.h"
#include "services/scheduler/topic_reactor.h"

namespace tunefleet::scheduler {
namespace {

// StreamJobEvents on the shared pull reactor: replays the job's events
// after `after_sequence`, then follows. Events are read from the job's
// history (on the executor) in pages of kPage when the previous page is
// written, so a slow client holds at most one page here however many events
// arrive; a bus wake only says "look again". Ends with OK once the job is
// over and every event is sent.
class JobEventsReactor final : public TopicReactor<v1::JobEvent> {
 public:
  static constexpr int kPage = 64;

  JobEventsReactor(Scheduler* scheduler, rpc::Executor* executor, std::string tenant,
                   std::string job_id, int64_t after)
      : TopicReactor(&scheduler->bus(), JobTopic(job_id), executor),
        scheduler_(scheduler),
        tenant_(std::move(tenant)),
        job_id_(std::move(job_id)),
        last_(after) {
    Begin();
  }

 private:
  // Runs one at a time (the base's rule), so the page needs no lock.
  absl::StatusOr<rpc::Pulled> Pull(v1::JobEvent* out) override {
    if (page_.empty()) {
      bool done = false;
      TF_ASSIGN_OR_RETURN(std::vector<v1::JobEvent> events,
                          scheduler_->JobEvents(tenant_, job_id_, last_, kPage, &done));
      for (auto& e : events) page_.push_back(std::move(e));
      if (page_.empty()) return done ? rpc::Pulled::kEnd : rpc::Pulled::kWait;
    }
    *out = std::move(page_.front());
    page_.pop_front();
    last_ = out->sequence();
    return rpc::Pulled::kMessage;
  }
  Scheduler* const scheduler_;
  const std::string tenant_;
  const std::string job_id_;
  int64_t last_;
  std::deque<v1::JobEvent> page_;
};

}  // namespace

grpc::ServerUnaryReactor* JobServiceImpl::CreateJob(grpc::CallbackServerContext* context,
                                                    const v1::CreateJobRequest* request,
                                                    v1::Job* response) {
  absl::StatusOr<rpc::Principal> caller = auth_.AuthenticateTenant(*context);
  if (!caller.ok()) return rpc::FinishUnary(context, caller.status());
  // On the executor (the dataset service is called); the call is finished
  // by whichever thread makes the job durable (the group commit's leader),
  // so no executor thread waits for the fsync and none is woken for it.
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  executor_->Submit([this, reactor, request, response, tenant = caller->tenant] {
    scheduler_->CreateJob(tenant, *request, [reactor, response](absl::StatusOr<v1::Job> job) {
      if (job.ok()) *response = *std::move(job);
      reactor->Finish(rpc::ToGrpcStatus(job.status()));
    });
  });
  return reactor;
}

grpc::ServerUnaryReactor* JobServiceImpl::GetJob(grpc::CallbackServerContext* context,
                                                 const v1::GetJobRequest* request,
                                                 v1::Job* response) {
  return Unary(context, auth_.AuthenticateTenant(*context), executor_, response,
               [this, request](const rpc::Principal& p) {
                 return scheduler_->GetJob(p.tenant, request->job_id());
               });
}

grpc::ServerUnaryReactor* JobServiceImpl::ListJobs(grpc::CallbackServerContext* context,
                                                   const v1::ListJobsRequest* request,
                                                   v1::ListJobsResponse* response) {
  return Unary(context, auth_.AuthenticateTenant(*context), executor_, response,
               [this, request](const rpc::Principal& p) {
                 return scheduler_->ListJobs(p.tenant, *request);
               });
}

grpc::ServerUnaryReactor* JobServiceImpl::CancelJob(grpc::CallbackServerContext* context,
                                                    const v1::CancelJobRequest* request,
                                                    v1::Job* response) {
  return Unary(context, auth_.AuthenticateTenant(*context), executor_, response,
               [this, request](const rpc::Principal& p) {
                 return scheduler_->CancelJob(p.tenant, request->job_id());
               });
}

grpc::ServerUnaryReactor* JobServiceImpl::PauseJob(grpc::CallbackServerContext* context,
                                                   const v1::PauseJobRequest* request,
                                                   v1::Job* response) {
  return Unary(context, auth_.AuthenticateTenant(*context), executor_, response,
               [this, request](const rpc::Principal& p) {
                 return scheduler_->PauseJob(p.tenant, request->job_id());
               });
}

grpc::ServerUnaryReactor* JobServiceImpl::ResumeJob(grpc::CallbackServerContext* context,
                                                    const v1::ResumeJobRequest* request,
                                                    v1::Job* response) {
  return Unary(context, auth_.AuthenticateTenant(*context), executor_, response,
               [this, request](const rpc::Principal& p) {
                 return scheduler_->ResumeJob(p.tenant, request->job_id());
               });
}

grpc::ServerWriteReactor<v1::JobEvent>* JobServiceImpl::StreamJobEvents(
    grpc::CallbackServerContext* context, const v1::StreamJobEventsRequest* request) {
  absl::StatusOr<rpc::Principal> caller = auth_.AuthenticateTenant(*context);
  if (!caller.ok()) return new rpc::RejectedWriteReactor<v1::JobEvent>(caller.status());
  if (request->after_sequence() < 0) {
    return new rpc::RejectedWriteReactor<v1::JobEvent>(
        errors::FieldError("after_sequence", "must not be negative"));
  }
  return new JobEventsReactor(scheduler_, executor_, caller->tenant, request->job_id(),
                              request->after_sequence());
}

grpc::ServerUnaryReactor* JobServiceImpl::ListJobEvents(grpc::CallbackServerContext* context,
                                                        const v1::ListJobEventsRequest* request,
                                                        v1::ListJobEventsResponse* response) {
  return Unary(context, auth_.AuthenticateTenant(*context), executor_, response,
               [this, request](const rpc::Principal& p) {
                 return scheduler_->ListJobEvents(p.tenant, *request);
               });
}

grpc::ServerUnaryReactor* JobServiceImpl::GetJobMetrics(grpc::CallbackServerContext* context,
                                                        const v1::GetJobMetricsRequest* request,
                                                        v1::JobMetrics* response) {
  return Unary(context, auth_.AuthenticateTenant(*context), executor_, response,
               [this, request](const rpc::Principal& p) {
                 return scheduler_->GetJobMetrics(p.tenant, request->job_id());
               });
}

grpc::ServerUnaryReactor* JobServiceImpl::ListCheckpoints(grpc::CallbackServerContext* context,
                                                          const v1::ListCheckpointsRequest* request,
                                                          v1::ListCheckpointsResponse* response) {
  return Unary(context, auth_.AuthenticateTenant(*context), executor_, response,
               [this, request](const rpc::Principal& p) {
                 return scheduler_->ListCheckpoints(p.tenant, *request);
               });
}

}  // namespace tunefleet::scheduler
