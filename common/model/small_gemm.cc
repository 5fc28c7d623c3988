#include "common/model/small_gemm.h"

#include <ATen/Parallel.h>

#include <atomic>


#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace tunefleet::model {
namespace {

#if defined(__x86_64__)
#define TF_AVX2 __attribute__((target("avx2,fma")))

TF_AVX2 inline float HorizontalSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// Output columns [n0, n1) of y[M, N] = x[M, K]·w[N, K]ᵀ. Four weight rows at
// a time against two input rows at a time: eight accumulators, six loads per
// eight FMAs; the four weight rows come from memory once and stay in L1 while
// every input row passes.
TF_AVX2 void Rows(const float* x, int64_t M, int64_t K, const float* w, int64_t N, int64_t n0,
                  int64_t n1, float* y) {
  const int64_t K8 = K / 8 * 8;
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    const float* w0 = w + n * K;
    const float* w1 = w0 + K;
    const float* w2 = w1 + K;
    const float* w3 = w2 + K;
    int64_t m = 0;
    for (; m + 2 <= M; m += 2) {
      const float* xa = x + m * K;
      const float* xb = xa + K;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
      for (int64_t k = 0; k < K8; k += 8) {
        const __m256 va = _mm256_loadu_ps(xa + k), vb = _mm256_loadu_ps(xb + k);
        const __m256 r0 = _mm256_loadu_ps(w0 + k), r1 = _mm256_loadu_ps(w1 + k);
        const __m256 r2 = _mm256_loadu_ps(w2 + k), r3 = _mm256_loadu_ps(w3 + k);
        a0 = _mm256_fmadd_ps(va, r0, a0);
        a1 = _mm256_fmadd_ps(va, r1, a1);
        a2 = _mm256_fmadd_ps(va, r2, a2);
        a3 = _mm256_fmadd_ps(va, r3, a3);
        b0 = _mm256_fmadd_ps(vb, r0, b0);
        b1 = _mm256_fmadd_ps(vb, r1, b1);
        b2 = _mm256_fmadd_ps(vb, r2, b2);
        b3 = _mm256_fmadd_ps(vb, r3, b3);
      }
      float sa[4] = {HorizontalSum(a0), HorizontalSum(a1), HorizontalSum(a2), HorizontalSum(a3)};
      float sb[4] = {HorizontalSum(b0), HorizontalSum(b1), HorizontalSum(b2), HorizontalSum(b3)};
      const float* rows[4] = {w0, w1, w2, w3};
      for (int64_t k = K8; k < K; ++k) {
        for (int j = 0; j < 4; ++j) {
          sa[j] += xa[k] * rows[j][k];
          sb[j] += xb[k] * rows[j][k];
        }
      }
      for (int j = 0; j < 4; ++j) {
        y[m * N + n + j] = sa[j];
        y[(m + 1) * N + n + j] = sb[j];
      }
    }
    for (; m < M; ++m) {
      const float* xa = x + m * K;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t k = 0; k < K8; k += 8) {
        const __m256 va = _mm256_loadu_ps(xa + k);
        a0 = _mm256_fmadd_ps(va, _mm256_loadu_ps(w0 + k), a0);
        a1 = _mm256_fmadd_ps(va, _mm256_loadu_ps(w1 + k), a1);
        a2 = _mm256_fmadd_ps(va, _mm256_loadu_ps(w2 + k), a2);
        a3 = _mm256_fmadd_ps(va, _mm256_loadu_ps(w3 + k), a3);
      }
      float s[4] = {HorizontalSum(a0), HorizontalSum(a1), HorizontalSum(a2), HorizontalSum(a3)};
      const float* rows[4] = {w0, w1, w2, w3};
      for (int64_t k = K8; k < K; ++k) {
        for (int j = 0; j < 4; ++j) s[j] += xa[k] * rows[j][k];
      }
      for (int j = 0; j < 4; ++j) y[m * N + n + j] = s[j];
    }
  }
  for (; n < n1; ++n) {  // the last 1-3 weight rows
    const float* wr = w + n * K;
    for (int64_t m = 0; m < M; ++m) {
      const float* xa = x + m * K;
      __m256 a = _mm256_setzero_ps();
      for (int64_t k = 0; k < K8; k += 8) {
        a = _mm256_fmadd_ps(_mm256_loadu_ps(xa + k), _mm256_loadu_ps(wr + k), a);
      }
      float s = HorizontalSum(a);
      for (int64_t k = K8; k < K; ++k) s += xa[k] * wr[k];
      y[m * N + n] = s;
    }
  }
}

#endif

std::atomic<bool> g_enabled{true};

}  // namespace

bool internal::HaveAvx2Fma() {
#if defined(__x86_64__)
  static const bool have = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return have;
#else
  return false;
#endif
}

void EnableSmallRowsLinear(bool on) { g_enabled.store(on); }

std::optional<at::Tensor> SmallRowsLinear(const at::Tensor& x, const at::Tensor& w,
                                          const at::Tensor& b) {
  if (!internal::HaveAvx2Fma() || !x.device().is_cpu() || !w.device().is_cpu() ||
      x.scalar_type() != at::kFloat || w.scalar_type() != at::kFloat || w.dim() != 2 ||
      x.dim() < 1 || x.size(-1) != w.size(1) || !w.is_contiguous()) {
    return std::nullopt;
  }
  // Inference only (the KV-cache path runs without autograd): where autograd
  // is on, at::linear keeps training and evaluation exactly as they were.
  if (at::GradMode::is_enabled()) return std::nullopt;
  const int64_t K = w.size(1), N = w.size(0);
  if (K == 0 || x.numel() == 0) return std::nullopt;
  const int64_t M = x.numel() / K;
  // One row: OpenBLAS's GEMV reads the weights as fast as the memory allows.
  if (M < 2 || M > kSmallRowsMax || !g_enabled.load(std::memory_order_relaxed)) return std::nullopt;
  const at::Tensor xc = x.contiguous();
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = N;
  at::Tensor y = at::empty(shape, x.options());
#if defined(__x86_64__)
  const float* xp = xc.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  // Blocks of 64 output rows split between libtorch's threads.
  const int64_t blocks = (N + 63) / 64;
  at::parallel_for(0, blocks, 4, [&](int64_t begin, int64_t end) {
    Rows(xp, M, K, wp, N, begin * 64, std::min(N, end * 64), yp);
  });
#endif
  if (b.defined()) y.add_(b);
  return y;
}

}  // namespace tunefleet::model
