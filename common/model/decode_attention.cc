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

// Heads [h0, h1) of one row: keys and values at slots [lo, hi], a slot's
// heads side by side (`stride` floats a slot, head h's KV head at
// (h / group)·D). The cache is walked slot by slot, every head of the group
// at each slot, so each pass reads one contiguous run a slot (a head alone
// would read 256 bytes every 3 KB, a stride the prefetchers do not follow).
// Each head's arithmetic is that of a head alone, in the same order: scores
// by slot, softmax, values by slot.
TF_AVX2 void HeadGroup(const float* q, const float* k, const float* v, int64_t stride, int64_t lo,
                       int64_t hi, int64_t h0, int64_t h1, int64_t group, int64_t D, float scale,
                       std::vector<float>& scores, float* out) {
  const int64_t n = hi - lo + 1, heads = h1 - h0;
  scores.resize(static_cast<size_t>(n * heads));
  // The cache is cold (a step streams the weights between layers): the group's
  // part of a slot a few slots ahead is asked for while this one is used.
  constexpr int64_t kAhead = 4;
  const int64_t first = (h0 / group) * D, last = ((h1 - 1) / group + 1) * D;  // floats of a slot
  auto prefetch = [&](const float* slot) {
    for (int64_t f = first; f < last; f += 16) _mm_prefetch(reinterpret_cast<const char*>(slot + f), _MM_HINT_T0);
  };
  for (int64_t s = 0; s < n; ++s) {
    const float* ks = k + (lo + s) * stride;
    if (s + kAhead < n) prefetch(ks + kAhead * stride);
    for (int64_t h = h0; h < h1; ++h) {
      scores[(h - h0) * n + s] = Dot(q + h * D, ks + (h / group) * D, D) * scale;
    }
  }
  for (int64_t h = 0; h < heads; ++h) {
    float* sc = scores.data() + h * n;
    float max = -std::numeric_limits<float>::infinity();
    for (int64_t s = 0; s < n; ++s) max = std::max(max, sc[s]);
    float sum = 0;
    for (int64_t s = 0; s < n; ++s) {
      sc[s] = std::exp(sc[s] - max);
      sum += sc[s];
    }
    const float inv = 1.0f / sum;
    for (int64_t s = 0; s < n; ++s) sc[s] *= inv;
  }
  std::fill(out + h0 * D, out + h1 * D, 0.0f);
  for (int64_t s = 0; s < kAhead && s < n; ++s) prefetch(v + (lo + s) * stride);
  for (int64_t s = 0; s < n; ++s) {
    const float* vs = v + (lo + s) * stride;
    if (s + kAhead < n) prefetch(vs + kAhead * stride);
    for (int64_t h = h0; h < h1; ++h) {
      Axpy(scores[(h - h0) * n + s], vs + (h / group) * D, out + h * D, D);
    }
  }
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
  // Tasks are (row, group of heads): a row's heads in one group when there
  // are rows for every thread, else split so that every thread has a group
  // (one stream: half its heads on each of two threads).
  const int64_t threads = at::get_num_threads();
  const int64_t per_group = (H + std::clamp<int64_t>((threads + B - 1) / B, 1, H) - 1) /
                            std::clamp<int64_t>((threads + B - 1) / B, 1, H);
  const int64_t groups = (H + per_group - 1) / per_group;
  at::parallel_for(0, B * groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / groups, h0 = (i % groups) * per_group;
      const int64_t h1 = std::min(H, h0 + per_group);
      const int64_t hi = pp[b];
      const int64_t lo = window ? std::max<int64_t>(0, hi - *window + 1) : 0;
      const int64_t base = (rp ? rp[b] : b) * cap * stride;
      HeadGroup(qp + b * H * D, kp + base, vp + base, stride, lo, hi, h0, h1, group, D, scale, scores,
                op + b * H * D);
    }
  });
#endif
  return out;
}

}  // namespace tunefleet::model
