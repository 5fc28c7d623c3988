#include "common/model/fused_ops.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

namespace tunefleet::model {
namespace {

// About this many floats of work before a loop is split across threads.
constexpr int64_t kGrainFloats = 16384;

bool Usable(const at::Tensor& t) {
  return t.defined() && t.device().is_cpu() && t.scalar_type() == at::kFloat &&
         !(at::GradMode::is_enabled() && t.requires_grad());
}

// A tensor [..., n] as `count` rows of n floats `stride` apart, where its
// leading dimensions collapse into one (views of a wider product do).
struct RowLayout {
  int64_t count = 0, n = 0, stride = 0;
};

std::optional<RowLayout> AsRows(const at::Tensor& t) {
  if (t.dim() < 1 || t.numel() == 0 || (t.size(-1) > 1 && t.stride(-1) != 1)) return std::nullopt;
  RowLayout r;
  r.n = t.size(-1);
  r.count = t.numel() / r.n;
  r.stride = r.n;
  bool first = true;
  int64_t expected = 0;
  for (int64_t d = t.dim() - 2; d >= 0; --d) {
    if (t.size(d) == 1) continue;
    if (first) {
      r.stride = t.stride(d);
      first = false;
    } else if (t.stride(d) != expected) {
      return std::nullopt;
    }
    expected = t.stride(d) * t.size(d);
  }
  return r;
}

int64_t Grain(int64_t floats_per_item) {
  return std::max<int64_t>(1, kGrainFloats / std::max<int64_t>(1, floats_per_item));
}

// Element (b, t) of a [B or 1, T or 1] index tensor, by its strides.
inline int64_t At2(const int64_t* p, const at::Tensor& t, int64_t b, int64_t i) {
  return p[(t.size(0) == 1 ? 0 : b * t.stride(0)) + (t.size(1) == 1 ? 0 : i * t.stride(1))];
}

// x rotated by (c, s) over its first r dims (rotate_half pairs j with j ± r/2).
inline void Rotate(const float* x, const float* c, const float* s, int64_t r, int64_t d,
                   float* out) {
  const int64_t half = r / 2;
  for (int64_t j = 0; j < half; ++j) out[j] = x[j] * c[j] - x[j + half] * s[j];
  for (int64_t j = half; j < r; ++j) out[j] = x[j] * c[j] + x[j - half] * s[j];
  std::copy(x + r, x + d, out + r);
}

}  // namespace

std::optional<at::Tensor> FusedRmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  if (!Usable(x) || !Usable(weight) || weight.dim() != 1 || !weight.is_contiguous()) {
    return std::nullopt;
  }
  const std::optional<RowLayout> rows = AsRows(x);
  if (!rows || rows->n != weight.size(0)) return std::nullopt;
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t n = rows->n, stride = rows->stride;
  const float feps = static_cast<float>(eps);
  at::parallel_for(0, rows->count, Grain(n), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* in = xp + r * stride;
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int64_t j = 0;
      for (; j + 8 <= n; j += 8) {
        for (int l = 0; l < 8; ++l) acc[l] += in[j + l] * in[j + l];
      }
      float ss = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
      for (; j < n; ++j) ss += in[j] * in[j];
      const float inv = 1.0f / std::sqrt(ss / static_cast<float>(n) + feps);
      float* o = op + r * n;
      for (j = 0; j < n; ++j) o[j] = wp[j] * (in[j] * inv);
    }
  });
  return out;
}

std::optional<at::Tensor> FusedSiluMul(const at::Tensor& gate, const at::Tensor& up) {
  if (!Usable(gate) || !Usable(up) || gate.sizes() != up.sizes()) return std::nullopt;
  const std::optional<RowLayout> g = AsRows(gate), u = AsRows(up);
  if (!g || !u) return std::nullopt;
  at::Tensor out = at::empty(gate.sizes(), gate.options().memory_format(at::MemoryFormat::Contiguous));
  const float* gp = gate.data_ptr<float>();
  const float* upp = up.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t n = g->n;
  at::parallel_for(0, g->count, Grain(n), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* gr = gp + r * g->stride;
      const float* ur = upp + r * u->stride;
      float* o = op + r * n;
      for (int64_t j = 0; j < n; ++j) o[j] = ur[j] * (gr[j] / (1.0f + std::exp(-gr[j])));
    }
  });
  return out;
}

std::optional<at::Tensor> FusedRotaryIntoCache(const at::Tensor& q, const at::Tensor& k,
                                               const at::Tensor& v, const at::Tensor& cos,
                                               const at::Tensor& sin, at::Tensor& cache_k,
                                               at::Tensor& cache_v, const at::Tensor& rows,
                                               const at::Tensor& cols, int64_t heads,
                                               int64_t kv_heads) {
  for (const at::Tensor* t : {&q, &k, &v, &cos, &sin, static_cast<const at::Tensor*>(&cache_k),
                              static_cast<const at::Tensor*>(&cache_v)}) {
    if (!Usable(*t)) return std::nullopt;
  }
  if (q.dim() != 3 || k.dim() != 3 || v.dim() != 3 || heads <= 0 || kv_heads <= 0 ||
      q.size(2) % heads != 0) {
    return std::nullopt;
  }
  const int64_t B = q.size(0), T = q.size(1), D = q.size(2) / heads;
  if (k.sizes() != v.sizes() || k.size(0) != B || k.size(1) != T || k.size(2) != kv_heads * D ||
      q.stride(2) != 1 || k.stride(2) != 1 || v.stride(2) != 1) {
    return std::nullopt;
  }
  if (cache_k.dim() != 4 || cache_k.sizes() != cache_v.sizes() || cache_k.size(2) != kv_heads ||
      cache_k.size(3) != D || !cache_k.is_contiguous() || !cache_v.is_contiguous()) {
    return std::nullopt;
  }
  const int64_t R = cache_k.size(0), cap = cache_k.size(1);
  for (const at::Tensor* t : {&cos, &sin}) {
    if (t->dim() != 4 || (t->size(0) != B && t->size(0) != 1) || t->size(1) != 1 ||
        t->size(2) != T || t->size(3) > D || t->size(3) % 2 != 0 || t->stride(3) != 1) {
      return std::nullopt;
    }
  }
  const int64_t rot = cos.size(3);
  if (sin.size(3) != rot) return std::nullopt;
  for (const at::Tensor* t : {&rows, &cols}) {
    if (!t->defined() || !t->device().is_cpu() || t->scalar_type() != at::kLong || t->dim() != 2 ||
        (t->size(0) != B && t->size(0) != 1) || (t->size(1) != T && t->size(1) != 1)) {
      return std::nullopt;
    }
  }
  const int64_t* rp = rows.data_ptr<int64_t>();
  const int64_t* cp = cols.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      const int64_t r = At2(rp, rows, b, t), c = At2(cp, cols, b, t);
      if (r < 0 || r >= R || c < 0 || c >= cap) return std::nullopt;
    }
  }
  at::Tensor out = at::empty({B, heads, T, D}, q.options().memory_format(at::MemoryFormat::Contiguous));
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  const float* cosp = cos.data_ptr<float>();
  const float* sinp = sin.data_ptr<float>();
  float* op = out.data_ptr<float>();
  float* ckp = cache_k.data_ptr<float>();
  float* cvp = cache_v.data_ptr<float>();
  const int64_t kv_row = kv_heads * D;
  at::parallel_for(0, B * T, Grain((heads + 2 * kv_heads) * D), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / T, t = i % T;
      const float* c = cosp + (cos.size(0) == 1 ? 0 : b * cos.stride(0)) + t * cos.stride(2);
      const float* s = sinp + (sin.size(0) == 1 ? 0 : b * sin.stride(0)) + t * sin.stride(2);
      const float* qi = qp + b * q.stride(0) + t * q.stride(1);
      for (int64_t h = 0; h < heads; ++h) {
        Rotate(qi + h * D, c, s, rot, D, op + ((b * heads + h) * T + t) * D);
      }
      const int64_t slot = (At2(rp, rows, b, t) * cap + At2(cp, cols, b, t)) * kv_row;
      const float* ki = kp + b * k.stride(0) + t * k.stride(1);
      for (int64_t h = 0; h < kv_heads; ++h) Rotate(ki + h * D, c, s, rot, D, ckp + slot + h * D);
      const float* vi = vp + b * v.stride(0) + t * v.stride(1);
      std::copy(vi, vi + kv_row, cvp + slot);
    }
  });
  return out;
}

}  // namespace tunefleet::model
