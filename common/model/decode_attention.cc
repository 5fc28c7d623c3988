#include "common/model/decode_attention.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "common/model/small_gemm.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace tunefleet::model {
namespace {

std::atomic<bool> g_enabled{true};

#if defined(__x86_64__)
#define TF_AVX2 __attribute__((target("avx2,fma")))

TF_AVX2 inline float Dot(const float* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = s0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  s0 = _mm256_add_ps(s0, s1);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(s0), _mm256_extractf128_ps(s0, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  float r = _mm_cvtss_f32(s);
  for (; i < n; ++i) r += a[i] * b[i];
  return r;
}

// out += p · x over n floats.
TF_AVX2 inline void Axpy(float p, const float* x, float* out, int64_t n) {
  const __m256 vp = _mm256_set1_ps(p);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(out + i, _mm256_fmadd_ps(vp, _mm256_loadu_ps(x + i), _mm256_loadu_ps(out + i)));
  }
  for (; i < n; ++i) out[i] += p * x[i];
}

// One (row, head): keys and values at slots [lo, hi], `stride` floats apart.
TF_AVX2 void OneHead(const float* q, const float* k, const float* v, int64_t stride, int64_t lo,
                     int64_t hi, int64_t D, float scale, std::vector<float>& scores, float* out) {
  const int64_t n = hi - lo + 1;
  scores.resize(static_cast<size_t>(n));
  float max = -std::numeric_limits<float>::infinity();
  for (int64_t s = 0; s < n; ++s) {
    scores[s] = Dot(q, k + (lo + s) * stride, D) * scale;
    max = std::max(max, scores[s]);
  }
  float sum = 0;
  for (int64_t s = 0; s < n; ++s) {
    scores[s] = std::exp(scores[s] - max);
    sum += scores[s];
  }
  std::fill(out, out + D, 0.0f);
  const float inv = 1.0f / sum;
  for (int64_t s = 0; s < n; ++s) Axpy(scores[s] * inv, v + (lo + s) * stride, out, D);
}
#endif

}  // namespace

void EnableDecodeAttention(bool on) { g_enabled.store(on); }

bool DecodeAttentionAvailable() {
  return g_enabled.load(std::memory_order_relaxed) && internal::HaveAvx2Fma();
}

std::optional<at::Tensor> DecodeAttention(const at::Tensor& q, const at::Tensor& k,
                                          const at::Tensor& v, const at::Tensor& positions,
                                          std::optional<int64_t> window, const at::Tensor& rows) {
  if (!DecodeAttentionAvailable()) return std::nullopt;
  if (q.dim() != 4 || k.dim() != 4 || v.sizes() != k.sizes() || q.size(2) != 1) return std::nullopt;
  const int64_t B = q.size(0), H = q.size(1), D = q.size(3);
  const int64_t cap = k.size(1), KV = k.size(2);
  const int64_t R = k.size(0);
  if ((rows.defined() ? rows.numel() != B : R != B) || k.size(3) != D || KV == 0 || H % KV != 0) {
    return std::nullopt;
  }
  for (const at::Tensor* t : {&q, &k, &v}) {
    if (!t->device().is_cpu() || t->scalar_type() != at::kFloat) return std::nullopt;
  }
  if (!k.is_contiguous() || !v.is_contiguous() || !positions.device().is_cpu() ||
      positions.scalar_type() != at::kLong || positions.numel() != B ||
      at::GradMode::is_enabled()) {
    return std::nullopt;
  }
  const at::Tensor qc = q.contiguous();  // [B,H,1,D]
  const at::Tensor pos = positions.contiguous();
  const int64_t* pp = pos.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    if (pp[b] < 0 || pp[b] >= cap) return std::nullopt;
  }
  at::Tensor row_of;
  if (rows.defined()) {
    if (!rows.device().is_cpu() || rows.scalar_type() != at::kLong) return std::nullopt;
    row_of = rows.contiguous();
    const int64_t* rp = row_of.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
      if (rp[b] < 0 || rp[b] >= R) return std::nullopt;
    }
  }
  const int64_t* rp = row_of.defined() ? row_of.data_ptr<int64_t>() : nullptr;
  at::Tensor out = at::empty({B, 1, H * D}, q.options());
#if defined(__x86_64__)
  const float* qp = qc.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t group = H / KV, stride = KV * D;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  at::parallel_for(0, B * H, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / H, h = i % H, kvh = h / group;
      const int64_t hi = pp[b];
      const int64_t lo = window ? std::max<int64_t>(0, hi - *window + 1) : 0;
      const int64_t base = (rp ? rp[b] : b) * cap * stride + kvh * D;
      OneHead(qp + i * D, kp + base, vp + base, stride, lo, hi, D, scale, scores, op + i * D);
    }
  });
#endif
  return out;
}

}  // namespace tunefleet::model
