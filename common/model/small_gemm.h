// x·Wᵀ for a few rows on the CPU (decode steps of a small batch).
//
// OpenBLAS's SGEMM packs the whole weight matrix into panels on every call;
// with 1-16 rows that copy costs more than the product itself, so a decode
// step with 8 rows ran at under a quarter of the memory bandwidth (measured on
// the 2-core build machine: 8 rows took 2.3x as long as one row through GEMV,
// 32 rows 3.5x). SmallRowsLinear reads each weight row once, straight from
// where it lies, and multiplies it with every input row while it is in cache:
// the step costs one pass over the weights for any batch up to the compute
// bound. fp32, AVX2+FMA (checked at run time), inference only (autograd off);
// anything else is declined.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace tunefleet::model {

// Rows up to which SmallRowsLinear is used for x·Wᵀ.
inline constexpr int64_t kSmallRowsMax = 16;

// y = x·wᵀ (+ b) for x [..., K] with 2 to kSmallRowsMax rows and w [N, K],
// both fp32 on the CPU, with autograd off (at::NoGradGuard); std::nullopt
// when the inputs are not that (the caller then uses at::linear).
std::optional<at::Tensor> SmallRowsLinear(const at::Tensor& x, const at::Tensor& w,
                                          const at::Tensor& b);

// On by default; benchmarks turn it off to measure OpenBLAS in the same run.
void EnableSmallRowsLinear(bool on);

namespace internal {
// The one check in front of this library's AVX2+FMA kernels (SmallRowsLinear,
// DecodeAttention): whether this CPU runs them (an x86-64 with AVX2 and FMA,
// asked once); always false elsewhere, where the callers decline before
// reaching their kernels, so only the kernels and their calls sit under
// `#if defined(__x86_64__)`.
bool HaveAvx2Fma();
}  // namespace internal

}  // namespace tunefleet::model
