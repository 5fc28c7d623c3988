// The decoder's small elementwise steps, each as one pass, for inference on
// the CPU.
//
// A one-token decode step of the ~100M-parameter model ran ~40 libtorch
// operators a layer besides its four products (RMSNorm alone is seven:
// to, pow, mean, add, rsqrt, two muls; rotary is ten more a tensor; the cache
// write two index_puts), each a few microseconds of dispatch and allocation
// for a few hundred floats of work: together they cost ~30% of the step.
// These functions do the same arithmetic in one loop each, without the
// dispatcher. They run where autograd is off (or nothing needs a gradient)
// on fp32 CPU tensors whose last dimension is contiguous, and return
// std::nullopt otherwise: the caller then runs the libtorch operators. The
// decoder takes them in forwards with a KV cache (generation, serving) only:
// the rounding differs from libtorch's by a few ulps, and a training or
// evaluation forward must compute exactly what the same forward under
// autograd does (a DPO reference against its policy, a checkpointed layer
// against its recomputation). Rows are independent: a row's result does not
// depend on the other rows or on the thread count.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace tunefleet::model {

// weight · x / sqrt(mean(x²) + eps) over the last dimension, x [..., n],
// weight [n]: the decoder's RMSNorm. The result is contiguous.
std::optional<at::Tensor> FusedRmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps);

// up · silu(gate) for gate and up of the same shape [..., n] (views into a
// fused gate_up product are fine). The result is contiguous.
std::optional<at::Tensor> FusedSiluMul(const at::Tensor& gate, const at::Tensor& up);

// Rotary embedding of one step's queries and keys, the keys and values
// written into the KV cache, in one pass: q [B,T,H·D], k and v [B,T,KV·D]
// (views into a fused qkv product are fine), cos and sin [B,1,T,R] (R <= D,
// rotating the first R dims, halves as rotate_half pairs them; broadcast
// strides are fine), the cache's keys and values [rows, capacity, KV, D]
// (contiguous), token (b,t) going to cache row rows[b,t] at slot cols[b,t]
// (int64 on the CPU, broadcastable to [B,T]). Writes the cache and returns
// the rotated queries [B,H,T,D] (contiguous); std::nullopt, with nothing
// written, where it does not apply or an index is out of range.
std::optional<at::Tensor> FusedRotaryIntoCache(const at::Tensor& q, const at::Tensor& k,
                                               const at::Tensor& v, const at::Tensor& cos,
                                               const at::Tensor& sin, at::Tensor& cache_k,
                                               at::Tensor& cache_v, const at::Tensor& rows,
                                               const at::Tensor& cols, int64_t heads,
                                               int64_t kv_heads);

}  // namespace tunefleet::model
