#include "common/model/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace tunefleet::model {

int64_t SampleToken(const float* logits, int64_t vocab, const SamplingParams& options,
                    double uniform) {
  if (options.temperature <= 0) {
    return static_cast<int64_t>(std::max_element(logits, logits + vocab) - logits);
  }
  std::vector<int64_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  auto by_logit = [&](int64_t a, int64_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  int64_t keep = vocab;
  if (options.top_k > 0 && options.top_k < vocab) {
    keep = options.top_k;
    std::partial_sort(order.begin(), order.begin() + keep, order.end(), by_logit);
  } else {
    std::sort(order.begin(), order.end(), by_logit);
  }
  // Softmax over the kept tokens, in double, highest first.
  std::vector<double> probs(static_cast<size_t>(keep));
  const double max_logit = logits[order[0]];
  double sum = 0;
  for (int64_t i = 0; i < keep; ++i) {
    probs[i] = std::exp((static_cast<double>(logits[order[i]]) - max_logit) / options.temperature);
    sum += probs[i];
  }
  if (options.top_p < 1.0) {
    double mass = 0;
    int64_t n = 0;
    while (n < keep) {
      mass += probs[n] / sum;
      ++n;
      if (mass >= options.top_p) break;
    }
    keep = n;
    sum = std::accumulate(probs.begin(), probs.begin() + keep, 0.0);
  }
  double target = uniform * sum, acc = 0;
  for (int64_t i = 0; i < keep; ++i) {
    acc += probs[i];
    if (target < acc) return order[i];
  }
  return order[keep - 1];
}

void ApplyPenalties(const SamplingParams& params, const std::unordered_map<int64_t, int64_t>& counts,
                    float* logits, int64_t vocab) {
  if (params.frequency_penalty == 0 && params.presence_penalty == 0) return;
  for (const auto& [token, count] : counts) {
    if (token < 0 || token >= vocab || count <= 0) continue;
    logits[token] -= static_cast<float>(static_cast<double>(count) * params.frequency_penalty +
                                        params.presence_penalty);
  }
}

TokenLogprob LogprobsOf(const float* logits, int64_t vocab, int64_t token, int top_n) {
  double max_logit = logits[0];
  for (int64_t i = 1; i < vocab; ++i) max_logit = std::max<double>(max_logit, logits[i]);
  double sum = 0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i]) - max_logit);
  const double log_z = max_logit + std::log(sum);
  TokenLogprob out;
  out.token = token;
  out.logprob = static_cast<double>(logits[token]) - log_z;
  const int64_t n = std::min<int64_t>(std::max(top_n, 0), vocab);
  if (n > 0) {
    std::vector<int64_t> order(static_cast<size_t>(vocab));
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + n, order.end(), [&](int64_t a, int64_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    out.top.reserve(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      out.top.emplace_back(order[i], static_cast<double>(logits[order[i]]) - log_z);
    }
  }
  return out;
}

TokenChoice ChooseToken(const Sequence& seq, const float* logits, int64_t vocab, double uniform,
                        std::vector<float>* scratch) {
  const SamplingParams& p = seq.params();
  const float* sample_from = logits;
  if ((p.frequency_penalty != 0 || p.presence_penalty != 0) && !seq.counts().empty()) {
    scratch->assign(logits, logits + vocab);
    ApplyPenalties(p, seq.counts(), scratch->data(), vocab);
    sample_from = scratch->data();
  }
  TokenChoice out;
  out.token = SampleToken(sample_from, vocab, p, uniform);
  if (p.logprobs) out.logprob = LogprobsOf(logits, vocab, out.token, p.top_logprobs);
  return out;
}

}  // namespace tunefleet::model
