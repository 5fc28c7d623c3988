#include "services/trainer/worker/dpo.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"

namespace tunefleet::trainer {

DpoLoss DpoLossFromLogProbs(const at::Tensor& policy_chosen, const at::Tensor& policy_rejected,
                            const at::Tensor& reference_chosen,
                            const at::Tensor& reference_rejected, double beta) {
  at::Tensor chosen = (policy_chosen - reference_chosen.detach()) * beta;
  at::Tensor rejected = (policy_rejected - reference_rejected.detach()) * beta;
  at::Tensor margin = chosen - rejected;
  DpoLoss out;
  // -log sigmoid(m), computed stably.
  out.loss_sum = (-at::log_sigmoid(margin)).sum();
  out.pairs = margin.size(0);
  at::Tensor m = margin.detach();
  out.correct = (m > 0).sum().item<int64_t>();
  out.margin_sum = m.sum().item<double>();
  out.chosen_reward_sum = chosen.detach().sum().item<double>();
  out.rejected_reward_sum = rejected.detach().sum().item<double>();
  return out;
}

absl::StatusOr<DpoBatchOutput> DpoBatch(const DpoModels& models, const Dataset& data,
                                        const std::vector<int64_t>& pairs,
                                        int64_t max_sequence_length, bool training,
                                        bool gradient_checkpointing) {
  if (pairs.empty()) return absl::InvalidArgumentError("DpoBatch: no pairs");
  std::vector<int64_t> rows;
  rows.reserve(pairs.size() * 2);
  for (int64_t p : pairs) {
    rows.push_back(2 * p);
    rows.push_back(2 * p + 1);
  }
  // One padded row per example, in order: row 2i chosen, 2i+1 rejected.
  MicroBatch mb = MakeMicroBatch(data, rows, /*packing=*/false, max_sequence_length);
  const int64_t P = static_cast<int64_t>(pairs.size());
  at::Tensor even = at::arange(0, 2 * P, 2, at::kLong);
  at::Tensor odd = even + 1;

  model::ForwardOptions fo;
  fo.attention_mask = mb.attention_mask;
  fo.adapter = models.policy_adapter;
  fo.training = training;
  fo.gradient_checkpointing = gradient_checkpointing;
  TF_ASSIGN_OR_RETURN(model::Decoder::SequenceLogProbs policy,
                      models.policy->SequenceLogProb(mb.input_ids, mb.labels, fo));
  at::Tensor reference;
  {
    at::NoGradGuard no_grad;
    model::ForwardOptions ro;
    ro.attention_mask = mb.attention_mask;
    ro.adapter = models.reference_adapter;
    TF_ASSIGN_OR_RETURN(model::Decoder::SequenceLogProbs ref,
                        models.reference->SequenceLogProb(mb.input_ids, mb.labels, ro));
    reference = ref.sum;
  }
  const at::Device dev = policy.sum.device();
  even = even.to(dev);
  odd = odd.to(dev);
  DpoBatchOutput out;
  out.loss = DpoLossFromLogProbs(policy.sum.index_select(0, even), policy.sum.index_select(0, odd),
                                 reference.index_select(0, even), reference.index_select(0, odd),
                                 models.beta);
  out.real_tokens = mb.real_tokens;
  out.slots = mb.slots;
  return out;
}

std::vector<std::vector<int64_t>> SplitPairMicroBatches(const Dataset& data,
                                                        std::vector<int64_t> pairs,
                                                        int64_t micro_batch_size) {
  auto length = [&](int64_t p) {
    return std::max(data.at(2 * p).length, data.at(2 * p + 1).length);
  };
  std::stable_sort(pairs.begin(), pairs.end(),
                   [&](int64_t a, int64_t b) { return length(a) > length(b); });
  std::vector<std::vector<int64_t>> out;
  const size_t m = micro_batch_size > 0 ? static_cast<size_t>(micro_batch_size) : pairs.size();
  for (size_t i = 0; i < pairs.size(); i += m)
    out.emplace_back(pairs.begin() + i, pairs.begin() + std::min(pairs.size(), i + m));
  return out;
}

}  // namespace tunefleet::trainer
