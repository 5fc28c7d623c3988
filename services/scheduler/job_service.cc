#include <deque>

#include "services/scheduler/scheduler_service.h"
#include "common/errors/error_details.h"

namespace tunefleet::scheduler {
namespace {

// StreamJobEvents: replays the job's events after `after_sequence`, then
// follows. Backpressure: one write in flight; events are pulled from the
// job's history in pages of kPage when the previous page is written, so a
// slow client holds at most one page here however many events arrive; a bus
// wake only says "look again". Ends with OK once the job is over and every
// event is sent.
class JobEventsReactor final : public grpc::ServerWriteReactor<v1::JobEvent>, public Watcher {
 public:
  static constexpr int kPage = 64;

  JobEventsReactor(Scheduler* scheduler, std::string tenant, std::string job_id, int64_t after)
      : scheduler_(scheduler),
        tenant_(std::move(tenant)),
        job_id_(std::move(job_id)),
        topic_(JobTopic(job_id_)),
        last_(after) {
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
    last_ = buffer_.front().sequence();
    buffer_.pop_front();
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
    if (buffer_.empty()) {
      bool done = false;
      absl::StatusOr<std::vector<v1::JobEvent>> events =
          scheduler_->JobEvents(tenant_, job_id_, last_, kPage, &done);
      if (!events.ok()) {
        FinishLocked(rpc::ToGrpcStatus(events.status()));
        return;
      }
      for (auto& e : *events) buffer_.push_back(std::move(e));
      if (buffer_.empty()) {
        if (done) FinishLocked(grpc::Status::OK);
        return;  // wait for a wake
      }
    }
    writing_ = true;
    StartWrite(&buffer_.front());
  }

  Scheduler* const scheduler_;
  const std::string tenant_;
  const std::string job_id_;
  const std::string topic_;
  absl::Mutex mu_;
  int64_t last_ ABSL_GUARDED_BY(mu_);
  std::deque<v1::JobEvent> buffer_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

grpc::ServerUnaryReactor* JobServiceImpl::CreateJob(grpc::CallbackServerContext* context,
                                                    const v1::CreateJobRequest* request,
                                                    v1::Job* response) {
  return Unary(context, auth_.AuthenticateTenant(*context), executor_, response,
               [this, request](const rpc::Principal& p) {
                 return scheduler_->CreateJob(p.tenant, *request);
               });
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
  return new JobEventsReactor(scheduler_, caller->tenant, request->job_id(),
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
