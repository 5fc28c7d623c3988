#include "services/scheduler/job_state.h"

#include "absl/strings/str_cat.h"
#include "common/errors/error_details.h"

namespace tunefleet::scheduler {

absl::string_view TriggerName(JobTrigger t) {
  switch (t) {
    case JobTrigger::kFilesValidated: return "queue";
    case JobTrigger::kStart: return "start";
    case JobTrigger::kPause: return "pause";
    case JobTrigger::kResume: return "resume";
    case JobTrigger::kCancel: return "cancel";
    case JobTrigger::kStopped: return "stop";
    case JobTrigger::kSucceed: return "succeed";
    case JobTrigger::kFail: return "fail";
    case JobTrigger::kRequeue: return "requeue";
  }
  return "?";
}

absl::string_view StateName(v1::JobState s) {
  switch (s) {
    case v1::JOB_STATE_VALIDATING_FILES: return "validating_files";
    case v1::JOB_STATE_QUEUED: return "queued";
    case v1::JOB_STATE_RUNNING: return "running";
    case v1::JOB_STATE_PAUSED: return "paused";
    case v1::JOB_STATE_SUCCEEDED: return "succeeded";
    case v1::JOB_STATE_FAILED: return "failed";
    case v1::JOB_STATE_CANCELLED: return "cancelled";
    case v1::JOB_STATE_PAUSING: return "pausing";
    case v1::JOB_STATE_CANCELLING: return "cancelling";
    default: return "unspecified";
  }
}

bool IsTerminal(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED ||
         s == v1::JOB_STATE_CANCELLED;
}

absl::StatusOr<v1::JobState> Apply(v1::JobState state, JobTrigger trigger) {
  using T = JobTrigger;
  v1::JobState next = v1::JOB_STATE_UNSPECIFIED;
  switch (state) {
    case v1::JOB_STATE_VALIDATING_FILES:
      if (trigger == T::kFilesValidated) next = v1::JOB_STATE_QUEUED;
      if (trigger == T::kCancel) next = v1::JOB_STATE_CANCELLED;
      if (trigger == T::kFail) next = v1::JOB_STATE_FAILED;
      break;
    case v1::JOB_STATE_QUEUED:
      if (trigger == T::kStart) next = v1::JOB_STATE_RUNNING;
      if (trigger == T::kPause) next = v1::JOB_STATE_PAUSED;
      if (trigger == T::kCancel) next = v1::JOB_STATE_CANCELLED;
      if (trigger == T::kFail) next = v1::JOB_STATE_FAILED;
      break;
    case v1::JOB_STATE_RUNNING:
      if (trigger == T::kPause) next = v1::JOB_STATE_PAUSING;
      if (trigger == T::kCancel) next = v1::JOB_STATE_CANCELLING;
      if (trigger == T::kSucceed) next = v1::JOB_STATE_SUCCEEDED;
      if (trigger == T::kFail) next = v1::JOB_STATE_FAILED;
      // Ranks that stop on their own (preempted) go back to the queue.
      if (trigger == T::kRequeue || trigger == T::kStopped) next = v1::JOB_STATE_QUEUED;
      break;
    case v1::JOB_STATE_PAUSING:
      // A lost attempt while pausing: paused at its last checkpoint.
      if (trigger == T::kStopped || trigger == T::kRequeue) next = v1::JOB_STATE_PAUSED;
      if (trigger == T::kCancel) next = v1::JOB_STATE_CANCELLING;
      if (trigger == T::kSucceed) next = v1::JOB_STATE_SUCCEEDED;  // finished first
      if (trigger == T::kFail) next = v1::JOB_STATE_FAILED;
      break;
    case v1::JOB_STATE_PAUSED:
      if (trigger == T::kResume) next = v1::JOB_STATE_QUEUED;
      if (trigger == T::kCancel) next = v1::JOB_STATE_CANCELLED;
      break;
    case v1::JOB_STATE_CANCELLING:
      // The cancel was acknowledged: however the ranks end, the job is cancelled.
      if (trigger == T::kStopped || trigger == T::kRequeue || trigger == T::kFail ||
          trigger == T::kSucceed)
        next = v1::JOB_STATE_CANCELLED;
      break;
    default:
      break;
  }
  if (next == v1::JOB_STATE_UNSPECIFIED) {
    return errors::WithReason(
        absl::FailedPreconditionError(
            absl::StrCat("cannot ", TriggerName(trigger), " a job that is ", StateName(state))),
        "JOB_STATE", {{"state", std::string(StateName(state))}});
  }
  return next;
}

}  // namespace tunefleet::scheduler
