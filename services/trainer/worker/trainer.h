// The training worker's loop: loads the base model and shards of a
// WorkerSpec, fine-tunes (LoRA or full; chat SFT), evaluates, checkpoints,
// and publishes the result (PEFT directory or HF model + contract), reporting
// events through a ReportWriter. libtorch, no gRPC.
//
// Not thread-safe; one run per process (it sets libtorch's global seed).
#pragma once

#include <atomic>
#include <string>

#include "absl/status/statusor.h"
#include "services/trainer/protocol/report.h"
#include "services/trainer/protocol/worker_spec.h"

namespace tunefleet::trainer {

struct WorkerRunOptions {
  ReportWriter* report = nullptr;  // may be null
  // Set (e.g. by SIGTERM): checkpoint at the next step boundary and return.
  const std::atomic<bool>* stop_requested = nullptr;
};

struct WorkerOutcome {
  bool stopped = false;  // checkpoint-and-exit; `dir` is the checkpoint
  std::string dir;       // the result directory when completed
};

// Runs the spec to completion (or a stop). Errors are statuses naming what
// is wrong (the spec field, the file); the caller reports them.
absl::StatusOr<WorkerOutcome> RunWorker(const WorkerSpec& spec, const WorkerRunOptions& options);


}  // namespace tunefleet::trainer
