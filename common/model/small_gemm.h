// x·Wᵀ for inference on the CPU, without OpenBLAS's per-call packing.
//
// OpenBLAS's SGEMM copies the whole weight matrix into panels on every call;
// with the few rows of a decode step that copy costs more than the product
// (8 rows took 2.3x as long as one row through GEMV on the 2-core build
// machine). On this machine OpenBLAS also runs its AVX2 (Haswell) kernels:
// its AVX-512 ones are switched off by OPENBLAS_CORETYPE on processors that
// its build does not know, where they compute wrong results. The kernels here
// read each weight where it lies, in fp32:
//   - AVX-512 (checked at run time), 1 to 8 rows: dot products of 8 weight
//     rows with 2 input rows at a time (one row: a matrix-vector product),
//     each weight read once;
//   - AVX-512, 9 rows and more: the input transposed into blocks of up to 64
//     rows, each weight broadcast against 16 rows per FMA (no reductions,
//     no packing of the weights); larger batches (prefill) go 64 rows at a time;
//   - AVX2+FMA only: 1 to 16 rows by dot products; more rows decline.
// One row (a single-stream decode step) reads the weights at the memory's
// speed, as OpenBLAS's GEMV does, but on ATen's OpenMP threads: a decode step
// that went back and forth between the two thread pools lost time to each
// pool's waiting threads (OpenBLAS's spin on sched_yield; perf showed ~20%
// of a single-stream step there). Inference only (autograd off); anything
// else is declined. Each output
// is computed by one thread in a fixed order, so results do not depend on the
// number of threads. Under the CPU's autocast every entry point declines (the
// product is then at::linear's, in autocast's dtype).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

namespace tunefleet::model {

// y = x·wᵀ (+ b) for x [..., K] and w [N, K], both fp32 on the CPU, with
// autograd off (at::NoGradGuard), where a kernel above covers the number of
// rows on this CPU; std::nullopt otherwise (the caller then uses at::linear,
// or at::mv for one row).
std::optional<at::Tensor> InferenceLinear(const at::Tensor& x, const at::Tensor& w,
                                          const at::Tensor& b);

// g·w for g [..., N] and w [N, K], fp32 on the CPU with autograd off: the
// gradient toward the input of x·wᵀ. The many-rows kernel above with the
// weight read down its columns (16 consecutive floats of a row at a time);
// on AVX-512 CPUs, for more than 8 rows; std::nullopt otherwise.
std::optional<at::Tensor> InferenceLinearInputGrad(const at::Tensor& g, const at::Tensor& w);

// y = x·wᵀ (+ b) with autograd on, for a weight (and bias) that is not
// trained: LoRA's frozen base. Forward through InferenceLinear, backward
// toward x alone through InferenceLinearInputGrad; x is not kept for
// backward. std::nullopt where those kernels do not cover the product (no
// AVX-512, 8 rows or fewer, w or b needing a gradient, not fp32 on the CPU):
// the caller then uses at::linear.
std::optional<at::Tensor> FrozenWeightLinear(const at::Tensor& x, const at::Tensor& w,
                                             const at::Tensor& b);

// y = x·wᵀ + h·bᵀ for a frozen w [N, K] and a low-rank term: h [..., r] (a
// LoRA's scaled A·x) and b [N, r] (its B), trained or not. h's r values join
// x's K in the same accumulators of one pass of the many-rows kernel, instead
// of a second product over [M, N] outputs and an add. Under autograd:
// backward g·w toward x, g·b toward h, gᵀ·h toward b. std::nullopt where
// FrozenWeightLinear's kernels do not cover x·wᵀ (with or without autograd),
// or h and b do not match it.
std::optional<at::Tensor> FrozenLinearPlusLowRank(const at::Tensor& x, const at::Tensor& w,
                                                  const at::Tensor& h, const at::Tensor& b);

// Per-row LoRA deltas for rows that each carry their own adapter (a decode
// step over many adapters): row t of the result is scale[t]·b[t]·(a[t]·x[t])
// for x [n, in], a[t] [r, in], b[t] [out, r], every rank and shape alike, fp32
// on the CPU with autograd off. Each row reads its adapter where it lies (no
// stacked copies; libtorch without MKL runs bmm as one OpenBLAS call per
// row). std::nullopt where that does not apply (the caller then uses bmm).
std::optional<at::Tensor> InferenceLoraRows(const at::Tensor& x, const std::vector<at::Tensor>& a,
                                            const std::vector<at::Tensor>& b,
                                            const std::vector<float>& scale);

// On by default; benchmarks turn it off to measure OpenBLAS in the same run.
void EnableInferenceLinear(bool on);

// The most rows InferenceLinear covers on this CPU (0: none; no limit is
// int64 max).
int64_t InferenceLinearMaxRows();

namespace internal {
// The one check in front of this library's AVX2+FMA kernels (InferenceLinear,
// DecodeAttention): whether this CPU runs them (an x86-64 with AVX2 and FMA,
// asked once); always false elsewhere, where the callers decline before
// reaching their kernels, so only the kernels and their calls sit under
// `#if defined(__x86_64__)`.
bool HaveAvx2Fma();
// Whether this CPU (and its OS) runs AVX-512F, asked once.
bool HaveAvx512();
// Tests: pretend AVX-512 is absent (the AVX2 kernels then run), or not.
void ForceAvx2ForTesting(bool on);
}  // namespace internal

}  // namespace tunefleet::model
