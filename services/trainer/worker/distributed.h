// Data-parallel collectives for the worker: a c10d TCPStore rendezvous at
// rank 0 and a process group (Gloo; NCCL beside it for a GPU job), behind a small interface so that the
// training loop is the same for one rank (no collectives at all) and many.
//
// Gradients are reduced by c10d's own DDP engine, the Reducer: buckets of
// gradients are all-reduced as backward produces them, overlapped with the
// rest of backward. With gradient accumulation only the step's last
// backward is synchronised (PyTorch's no_sync for the others).
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
  // Hands the trainable parameters (leaves requiring grad) to the Reducer.
  virtual absl::Status AttachGradients(const std::vector<at::Tensor>& params) = 0;
  // Call right before the backward whose gradients are to be reduced; after
  // that backward every parameter's .grad() holds the MEAN over the ranks of
  // what each rank accumulated. Every parameter must receive a gradient.
  virtual absl::Status PrepareSyncedBackward(const at::Tensor& loss) = 0;
};

// Whether this build reduces CUDA tensors (NCCL); without it a GPU job runs
// on one rank.
bool HaveNccl();

// One rank: every collective is the identity.
std::unique_ptr<Collectives> SingleProcess();

// Joins the spec's process group (world_size ranks, rendezvous at
// master_addr:master_port, rank 0 hosting the store): Gloo for CPU tensors,
// and on a CUDA device NCCL for CUDA tensors (the gradients), where the
// build has NCCL (FAILED_PRECONDITION otherwise). A peer that does not join
// or answer within collective_timeout_s is UNAVAILABLE. One rank gets
// SingleProcess(), unless `group_of_one` (tests: a real group of one rank,
// e.g. NCCL on a machine with one GPU).
absl::StatusOr<std::unique_ptr<Collectives>> JoinProcessGroup(const WorkerSpec& spec,
                                                               bool group_of_one = false);

}  // namespace tunefleet::trainer
