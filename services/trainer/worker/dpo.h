// Direct Preference Optimization (Rafailov et al., 2023) for the worker:
// on a pair (prompt x, chosen y_w, rejected y_l),
//   loss = -log sigmoid(beta * ((log pi(y_w|x) - log ref(y_w|x))
//                              - (log pi(y_l|x) - log ref(y_l|x))))
// with sequence log-probabilities summed over the completion's loss-masked
// tokens. The implicit rewards are beta * (log pi - log ref); a pair is
// "correct" when the chosen reward exceeds the rejected one, and its margin
// is their difference.
//
// The reference: with LoRA, the same decoder with the adapter switched off
// (or with the frozen adapter the job started from); with full fine-tuning,
// a frozen copy of the starting weights. It runs without autograd.
// libtorch, no gRPC. Not thread-safe.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/decoder.h"
#include "services/trainer/worker/data.h"

namespace tunefleet::trainer {

struct DpoLoss {
  at::Tensor loss_sum;  // sum over the pairs of their losses; differentiable
  int64_t pairs = 0;
  int64_t correct = 0;        // chosen reward > rejected reward
  double margin_sum = 0;      // sum of (chosen reward - rejected reward)
  double chosen_reward_sum = 0;
  double rejected_reward_sum = 0;
};

// The loss of P pairs from their sequence log-probabilities ([P] each; the
// reference ones carry no gradient).
DpoLoss DpoLossFromLogProbs(const at::Tensor& policy_chosen, const at::Tensor& policy_rejected,
                            const at::Tensor& reference_chosen,
                            const at::Tensor& reference_rejected, double beta);

// The policy and the reference it is measured against.
struct DpoModels {
  const model::Decoder* policy = nullptr;
  model::AdapterChoice policy_adapter;
  const model::Decoder* reference = nullptr;  // may equal policy (LoRA)
  model::AdapterChoice reference_adapter;     // none: the base
  double beta = 0.1;
};

struct DpoBatchOutput {
  DpoLoss loss;
  int64_t real_tokens = 0;
  int64_t slots = 0;
};

// The DPO loss of `pairs` of `data` (pair p: examples 2p chosen, 2p+1
// rejected), as one padded batch of 2P rows: a policy forward (with dropout
// and `gradient_checkpointing` when training) and a reference forward
// without autograd.
absl::StatusOr<DpoBatchOutput> DpoBatch(const DpoModels& models, const Dataset& data,
                                        const std::vector<int64_t>& pairs,
                                        int64_t max_sequence_length, bool training,
                                        bool gradient_checkpointing = false);

// The micro-batches of a step's pairs: groups of `micro_batch_size` pairs
// (0: all at once), longest first, so that similar lengths share padding.
std::vector<std::vector<int64_t>> SplitPairMicroBatches(const Dataset& data,
                                                        std::vector<int64_t> pairs,
                                                        int64_t micro_batch_size);

}  // namespace tunefleet::trainer
