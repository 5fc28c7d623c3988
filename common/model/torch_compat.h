// The one place where libtorch versions differ for the model code: 1.13 (Debian,
// CPU) has no public scaled-dot-product attention; 2.x (CUDA builds) does, and
// runs fused kernels with it. Everything version-specific stays in this header.
#pragma once

#include <ATen/ATen.h>
#include <torch/version.h>

#include <cmath>
#include <limits>

namespace tunefleet::model::compat {

inline constexpr bool kHasSdpa = TORCH_VERSION_MAJOR >= 2;

// Attention over q [B,H,Tq,D], k/v [B,H,Tk,D] with a boolean `keep` mask
// broadcastable to [B,H,Tq,Tk] (true = attend); every query row must keep at
// least one key. An undefined `keep` means plain causal attention with
// Tq == Tk, which lets 2.x use its flash kernels. Scores and softmax run in
// fp32 on the plain path so that bf16/fp16 inputs stay accurate.
inline at::Tensor Attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& keep) {
#if TORCH_VERSION_MAJOR >= 2
  if (q.is_cuda()) {
    if (!keep.defined())
      return at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true);
    return at::scaled_dot_product_attention(q, k, v, keep);
  }
#endif
  at::Tensor mask = keep;
  if (!mask.defined())
    mask = at::ones({q.size(-2), k.size(-2)}, q.options().dtype(at::kBool)).tril();
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  at::Tensor scores = at::matmul(q.to(at::kFloat), k.to(at::kFloat).transpose(-2, -1)).mul_(scale);
  scores.masked_fill_(mask.logical_not(), -std::numeric_limits<float>::infinity());
  at::Tensor probs = at::softmax(scores, -1);
  return at::matmul(probs.to(v.scalar_type()), v);
}

}  // namespace tunefleet::model::compat
