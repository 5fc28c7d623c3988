// The job state machine as a pure table: Apply(state, trigger) gives the next
// state, or FAILED_PRECONDITION naming the state that blocks the trigger.
//
//   validating_files --validated--> queued --start--> running --succeed--> succeeded
//   queued/paused --cancel--> cancelled        running --cancel--> cancelling --stopped--> cancelled
//   queued --pause--> paused                   running --pause--> pausing --stopped--> paused
//   paused --resume--> queued                  running --requeue (node lost, preempted)--> queued
//   any unfinished --fail--> failed (cancelling: cancelled)
#pragma once

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "tunefleet/v1/jobs.pb.h"

namespace tunefleet::scheduler {

enum class JobTrigger {
  kFilesValidated,
  kStart,     // gang placed: every rank reserved
  kPause,     // the caller asked
  kResume,    // the caller asked
  kCancel,    // the caller asked
  kStopped,   // every rank of the attempt has stopped (after pause/cancel)
  kSucceed,   // rank 0 completed with a result
  kFail,      // a rank failed, or the retry limit was reached
  kRequeue,   // the attempt was lost (node lease expired) or preempted
};

absl::string_view TriggerName(JobTrigger t);  // "cancel", "pause", ...
// "queued", "running", ... (the lower-case state name callers see in errors).
absl::string_view StateName(v1::JobState s);
bool IsTerminal(v1::JobState s);

// Pure. FAILED_PRECONDITION: "cannot <trigger> a job that is <state>".
absl::StatusOr<v1::JobState> Apply(v1::JobState state, JobTrigger trigger);

}  // namespace tunefleet::scheduler
