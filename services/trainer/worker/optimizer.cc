#include "services/trainer/worker/optimizer.h"

#include <ATen/ATen.h>

#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"

namespace tunefleet::trainer {

AdamW::AdamW(std::vector<at::Tensor> params, AdamWOptions options)
    : params_(std::move(params)), options_(options) {
  for (const at::Tensor& p : params_) {
    m_.push_back(at::zeros_like(p, at::MemoryFormat::Contiguous).detach());
    v_.push_back(at::zeros_like(p, at::MemoryFormat::Contiguous).detach());
  }
}

void AdamW::Step(double lr) {
  at::NoGradGuard no_grad;
  ++steps_;
  const double b1 = options_.beta1, b2 = options_.beta2;
  const double bias1 = 1.0 - std::pow(b1, static_cast<double>(steps_));
  const double bias2 = 1.0 - std::pow(b2, static_cast<double>(steps_));
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor p = params_[i];
    at::Tensor g = p.grad();
    if (!g.defined()) g = at::zeros_like(p);
    if (options_.weight_decay > 0 && p.dim() >= 2) p.mul_(1.0 - lr * options_.weight_decay);
    m_[i].mul_(b1).add_(g, 1.0 - b1);
    v_[i].mul_(b2).addcmul_(g, g, 1.0 - b2);
    at::Tensor denom = (v_[i].sqrt() / std::sqrt(bias2)).add_(options_.eps);
    p.addcdiv_(m_[i], denom, -lr / bias1);
  }
}

model::NamedTensors AdamW::State() const {
  model::NamedTensors out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out.emplace_back(absl::StrCat("exp_avg.", i), m_[i]);
    out.emplace_back(absl::StrCat("exp_avg_sq.", i), v_[i]);
  }
  return out;
}

absl::Status AdamW::LoadState(const model::NamedTensors& state, int64_t steps) {
  std::map<std::string, at::Tensor> by_name(state.begin(), state.end());
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    for (auto [name, dst] : {std::pair{absl::StrCat("exp_avg.", i), &m_[i]},
                             std::pair{absl::StrCat("exp_avg_sq.", i), &v_[i]}}) {
      auto it = by_name.find(name);
      if (it == by_name.end())
        return absl::InvalidArgumentError(absl::StrCat("optimizer state: missing ", name));
      if (it->second.sizes() != dst->sizes() || it->second.scalar_type() != dst->scalar_type())
        return absl::InvalidArgumentError(
            absl::StrCat("optimizer state: ", name, " does not match its parameter's shape"));
      dst->copy_(it->second);
    }
  }
  if (by_name.size() != 2 * params_.size())
    return absl::InvalidArgumentError(absl::StrCat("optimizer state: ", by_name.size(),
                                                   " tensors for ", params_.size(), " parameters"));
  steps_ = steps;
  return absl::OkStatus();
}

double ScheduledLearningRate(const WorkerHyperparameters& h, int64_t step, int64_t total) {
  const int64_t warmup = static_cast<int64_t>(std::ceil(h.warmup_ratio * static_cast<double>(total)));
  if (step < warmup) return h.learning_rate * static_cast<double>(step + 1) / static_cast<double>(warmup);
  const double progress = total > warmup ? static_cast<double>(step - warmup) /
                                               static_cast<double>(total - warmup)
                                         : 0.0;
  switch (h.lr_scheduler) {
    case LrScheduler::kConstant:
      return h.learning_rate;
    case LrScheduler::kLinear:
      return h.learning_rate * (1.0 - progress);
    case LrScheduler::kCosine:
    default:
      return h.learning_rate * 0.5 * (1.0 + std::cos(M_PI * progress));
  }
}

double ClipGradNorm(const std::vector<at::Tensor>& params, double max_norm) {
  at::NoGradGuard no_grad;
  at::Tensor total;  // on the parameters' device: one sync, at the end
  for (const at::Tensor& p : params) {
    if (!p.grad().defined()) continue;
    at::Tensor sq = p.grad().to(at::kDouble).pow(2).sum();
    total = total.defined() ? total + sq : sq;
  }
  const double norm = total.defined() ? std::sqrt(total.item<double>()) : 0.0;
  if (max_norm > 0 && norm > max_norm) {
    const double scale = max_norm / (norm + 1e-6);
    for (const at::Tensor& p : params)
      if (p.grad().defined()) p.grad().mul_(scale);
  }
  return norm;
}

}  // namespace tunefleet::trainer
