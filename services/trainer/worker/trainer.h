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

// Sets glibc's allocator up for a training loop, which frees and allocates
// the same activation buffers (MBs each) every step: blocks up to 32 MB come
// from the heap rather than fresh mappings, and freed memory stays in the
// process instead of going back to the kernel, so a step does not fault in
// and zero its buffers again (~40% of LoRA step time on a 2-core VM, see
// bench/train_bench). Peak memory is unchanged: each step reuses the last
// one's. Process-wide: the worker's main calls it before anything else.
void TuneAllocatorForTraining();

}  // namespace tunefleet::trainer
