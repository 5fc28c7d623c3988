// Data-parallel collectives for the worker: a c10d TCPStore rendezvous at
// rank 0 and a ProcessGroupGloo (CPU), behind a small interface so that the
// training loop is the same for one rank (no collectives at all) and many.
//
// Gradients are reduced as one flat all-reduce after the step's backward
// passes (with gradient accumulation there is one reduction per optimizer
// step, not per micro-batch). c10d's Reducer (bucketed, overlapped with
// backward) is the intended replacement; see the worker README note.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "services/trainer/protocol/worker_spec.h"

namespace tunefleet::trainer {

class Collectives {
 public:
  virtual ~Collectives() = default;
  virtual int64_t rank() const = 0;
  virtual int64_t world_size() const = 0;
  // Sums `t` (a contiguous CPU tensor) over the ranks, in place.
  virtual absl::Status AllReduceSum(at::Tensor& t) = 0;
  virtual absl::Status Barrier() = 0;
};

// One rank: every collective is the identity.
std::unique_ptr<Collectives> SingleProcess();

// Joins the spec's process group (world_size ranks, rendezvous at
// master_addr:master_port, rank 0 hosting the store). A peer that does not
// join or answer within collective_timeout_s is UNAVAILABLE.
absl::StatusOr<std::unique_ptr<Collectives>> JoinProcessGroup(const WorkerSpec& spec);

}  // namespace tunefleet::trainer
