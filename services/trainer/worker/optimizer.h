// AdamW with decoupled weight decay (Loshchilov & Hutter; torch.optim.AdamW's
// update, bit for bit in fp32 order of operations is not promised), the
// learning-rate schedule and gradient clipping. State is plain tensors so
// that a checkpoint restores it exactly.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "common/model/safetensors.h"
#include "services/trainer/protocol/worker_spec.h"

namespace tunefleet::trainer {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
};

class AdamW {
 public:
  // Weight decay applies to matrices only (not to norms and biases, as
  // Hugging Face's Trainer does).
  AdamW(std::vector<at::Tensor> params, AdamWOptions options);
  // One update from the parameters' .grad() (a missing grad counts as zero).
  void Step(double lr);
  int64_t steps() const { return steps_; }
  // exp_avg.<i> and exp_avg_sq.<i> for every parameter.
  model::NamedTensors State() const;
  absl::Status LoadState(const model::NamedTensors& state, int64_t steps);

 private:
  std::vector<at::Tensor> params_;
  std::vector<at::Tensor> m_, v_;
  AdamWOptions options_;
  int64_t steps_ = 0;
};

// The learning rate of step `step` (0-based) of `total`: linear warmup over
// ceil(warmup_ratio * total) steps to the peak, then cosine to 0, linear to
// 0, or constant.
double ScheduledLearningRate(const WorkerHyperparameters& h, int64_t step, int64_t total);

// Scales the gradients so that their global L2 norm is at most `max_norm`
// (0: no clipping); returns the norm before clipping.
double ClipGradNorm(const std::vector<at::Tensor>& params, double max_norm);

}  // namespace tunefleet::trainer
