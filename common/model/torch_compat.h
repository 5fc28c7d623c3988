// The one place where libtorch versions differ for the model code: 1.13 (Debian,
// CPU) has no public scaled-dot-product attention; 2.x (CUDA builds) does, and
// runs fused kernels with it. Everything version-specific stays in this header.
#pragma once

#include <ATen/ATen.h>
#include <torch/version.h>

#include <cmath>

namespace tunefleet::model::compat {

inline constexpr bool kHasSdpa = TORCH_VERSION_MAJOR >= 2;

// Attention over q [B,H,Tq,D], k/v [B,H,Tk,D] with a boolean `keep` mask
// broadcastable to [B,H,Tq,Tk] (true = attend). Every query row must keep at
// least one key. Scores and softmax run in fp32 on the plain path so that
// bf16/fp16 inputs stay accurate.
inline at::Tensor Attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& keep) {
#if TORCH_VERSION_MAJOR >= 2
  if (q.is_cuda()) {
    return at::scaled_dot_product_attention(q, k, v, keep);
  }
#endif
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  at::Tensor scores = at::matmul(q.to(at::kFloat), k.to(at::kFloat).transpose(-2, -1)).mul_(scale);
  scores.masked_fill_(keep.logical_not(), -std::numeric_limits<float>::infinity());
  at::Tensor probs = at::softmax(scores, -1);
  return at::matmul(probs.to(v.scalar_type()), v);
}

}  // namespace tunefleet::model::compat
