#include "common/model/small_gemm.h"

#include "common/model/torch_compat.h"

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <atomic>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>


#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace tunefleet::model {
namespace {

// The largest rank InferenceLoraRows takes (its per-row scratch).
constexpr int64_t kLoraRankMax = 256;

// Under the CPU's autocast (DecoderOptions::autocast_dtype) products belong to
// the dispatcher, in autocast's dtype: the fp32 kernels here decline, so that
// a forward computes the same with and without autograd (a checkpointed
// layer's two runs).
bool CpuAutocast() { return compat::AutocastEnabled(at::kCPU); }

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


#define TF_AVX512 __attribute__((target("avx512f,avx2,fma")))

// The sum of the 16 lanes, through the AVX2 one (GCC 12's AVX-512 shuffles
// and extracts trip -Werror=uninitialized in its own headers).
TF_AVX512 inline float HorizontalSum512(__m512 v) {
  alignas(64) float t[16];
  _mm512_store_ps(t, v);
  return HorizontalSum(_mm256_add_ps(_mm256_load_ps(t), _mm256_load_ps(t + 8)));
}

// AVX-512, few rows: an R x C tile of y (R weight rows, C input rows) as dot
// products along K, 16 lanes at a time; the R weight vectors of a step sit in
// registers while the C input rows pass.
template <int R, int C>
TF_AVX512 inline void DotTile(const float* x, int64_t K, const float* w, int64_t N, float* y) {
  __m512 acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  const int64_t K16 = K / 16 * 16;
  for (int64_t k = 0; k < K16; k += 16) {
    __m512 xv[C];
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) xv[c] = _mm512_loadu_ps(x + c * K + k);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 wv = _mm512_loadu_ps(w + r * K + k);
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_fmadd_ps(wv, xv[c], acc[r][c]);
    }
  }
  if (K16 < K) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (K - K16)) - 1);
    __m512 xv[C];
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) xv[c] = _mm512_maskz_loadu_ps(mask, x + c * K + K16);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 wv = _mm512_maskz_loadu_ps(mask, w + r * K + K16);
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_fmadd_ps(wv, xv[c], acc[r][c]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) y[c * N + r] = HorizontalSum512(acc[r][c]);
}

// Columns [n, n + R) of y[M, N]: the input rows two at a time.
template <int R>
TF_AVX512 void DotColumns(const float* x, int64_t M, int64_t K, const float* w, int64_t N,
                          int64_t n, float* y) {
  int64_t m = 0;
  for (; m + 2 <= M; m += 2) DotTile<R, 2>(x + m * K, K, w + n * K, N, y + m * N + n);
  if (m < M) DotTile<R, 1>(x + m * K, K, w + n * K, N, y + m * N + n);
}

// Output columns [n0, n1) of y[M, N] for M up to kDotRowsMax: 8 weight rows
// by 2 input rows.
TF_AVX512 void DotRows(const float* x, int64_t M, int64_t K, const float* w, int64_t N,
                       int64_t n0, int64_t n1, float* y) {
  int64_t n = n0;
  for (; n + 8 <= n1; n += 8) DotColumns<8>(x, M, K, w, N, n, y);
  for (; n < n1; ++n) DotColumns<1>(x, M, K, w, N, n, y);
}

// Output columns per unit of work between threads (a multiple of every MR).
constexpr int64_t kColumnsPerTask = 48;
// Reduction steps per pass of the broadcast kernel over a group of columns:
// the weights of a task's 48 columns over this many steps (48 KB) and the
// transposed input over them (up to 64 KB) stay in L1/L2 while every column
// group of the task passes, whichever way the weight is laid out.
constexpr int64_t kReductionChunk = 256;

// AVX-512, many rows: xt holds a block of up to 64 input rows transposed,
// xt[k * 16 * MV + m] (rows past the block's end are zero). For R output
// columns at a time, each weight is broadcast and multiplied with 16 input
// rows per FMA: R x MV accumulators hold a [R, 16 * MV] tile of yᵀ, over the
// reduction steps [k0, k1), starting from zero or from the tile as the
// previous steps left it (a stored and reloaded fp32 accumulator is exact, so
// the sum runs in the same order as in one pass). The weights are read in
// place: weight (output n, reduction k) lies at w[n * K + k] ([N, K],
// y = x·wᵀ), or with kWeightKN at w[k * N + n] ([K, N], y = x·w: the gradient
// toward the input of a product with a frozen weight).
template <int R, int MV, bool kWeightKN>
TF_AVX512 void BroadcastColumns(const float* xt, int64_t k0, int64_t k1, int64_t K, const float* w,
                                int64_t N, int64_t n, float* tile, bool first) {
  constexpr int MP = 16 * MV;
  __m512 acc[R][MV];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < MV; ++j) {
      acc[i][j] = first ? _mm512_setzero_ps() : _mm512_load_ps(tile + i * MP + 16 * j);
    }
  for (int64_t k = k0; k < k1; ++k) {
    __m512 xv[MV];
#pragma GCC unroll 4
    for (int j = 0; j < MV; ++j) xv[j] = _mm512_load_ps(xt + k * MP + 16 * j);
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const __m512 b =
          _mm512_set1_ps(kWeightKN ? w[k * N + n + i] : w[(n + i) * K + k]);
#pragma GCC unroll 4
      for (int j = 0; j < MV; ++j) acc[i][j] = _mm512_fmadd_ps(b, xv[j], acc[i][j]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < MV; ++j) _mm512_store_ps(tile + i * MP + 16 * j, acc[i][j]);
}

// Output columns [n0, n1) of a block of rows, kColumnsPerTask at a time:
// every column group of those passes over one chunk of the reduction before
// the next chunk.
// A low-rank term added to x·wᵀ in the same accumulators: h·bᵀ for
// h [M, r] (its transposed rows follow x's K rows in the block) and
// b [N, r] (a LoRA B). r == 0: none.
struct LowRank {
  const float* b = nullptr;
  int64_t r = 0;
};

template <int MR, int MV, bool kWeightKN>
TF_AVX512 void BroadcastRows(const float* xt, int64_t rows, int64_t K, const float* w, int64_t N,
                             int64_t n0, int64_t n1, float* y, LowRank low) {
  constexpr int MP = 16 * MV;
  alignas(64) float tile[kColumnsPerTask][MP];
  for (int64_t c0 = n0; c0 < n1; c0 += kColumnsPerTask) {
    const int64_t c1 = std::min(n1, c0 + kColumnsPerTask);
    for (int64_t k0 = 0; k0 < K; k0 += kReductionChunk) {
      const int64_t k1 = std::min(K, k0 + kReductionChunk);
      int64_t n = c0;
      for (; n + MR <= c1; n += MR) {
        BroadcastColumns<MR, MV, kWeightKN>(xt, k0, k1, K, w, N, n, tile[n - c0], k0 == 0);
      }
      for (; n < c1; ++n) {
        BroadcastColumns<1, MV, kWeightKN>(xt, k0, k1, K, w, N, n, tile[n - c0], k0 == 0);
      }
    }
    if (low.r > 0) {  // the low-rank rows, after x's: one more pass
      const float* ht = xt + K * MP;
      int64_t n = c0;
      for (; n + MR <= c1; n += MR) {
        BroadcastColumns<MR, MV, false>(ht, 0, low.r, low.r, low.b, N, n, tile[n - c0], K == 0);
      }
      for (; n < c1; ++n) {
        BroadcastColumns<1, MV, false>(ht, 0, low.r, low.r, low.b, N, n, tile[n - c0], K == 0);
      }
    }
    for (int64_t m = 0; m < rows; ++m) {
      for (int64_t c = c0; c < c1; ++c) y[m * N + c] = tile[c - c0][m];
    }
  }
}

// MR x MV accumulators stay at 16-24 of the 32 registers.
template <bool kWeightKN>
TF_AVX512 void BroadcastBlock(const float* xt, int64_t rows, int64_t K, const float* w, int64_t N,
                              int64_t n0, int64_t n1, float* y, LowRank low) {
  switch ((rows + 15) / 16) {
    case 1: BroadcastRows<16, 1, kWeightKN>(xt, rows, K, w, N, n0, n1, y, low); break;
    case 2: BroadcastRows<12, 2, kWeightKN>(xt, rows, K, w, N, n0, n1, y, low); break;
    case 3: BroadcastRows<8, 3, kWeightKN>(xt, rows, K, w, N, n0, n1, y, low); break;
    default: BroadcastRows<6, 4, kWeightKN>(xt, rows, K, w, N, n0, n1, y, low); break;
  }
}

// One row's LoRA delta: h = a·x (rank dot products), then
// delta[o] = scale·Σ_j b[o, j]·h[j], eight outputs at a time (eight
// products with h folded into one vector of eight sums).
TF_AVX2 void LoraRow(const float* x, int64_t in, const float* a, const float* b, float scale,
                     int64_t rank, int64_t out, float* delta) {
  float h[kLoraRankMax];
  const int64_t in8 = in / 8 * 8;
  for (int64_t j = 0; j < rank; ++j) {
    const float* aj = a + j * in;
    __m256 s0 = _mm256_setzero_ps(), s1 = s0;
    int64_t k = 0;
    for (; k + 16 <= in8; k += 16) {
      s0 = _mm256_fmadd_ps(_mm256_loadu_ps(aj + k), _mm256_loadu_ps(x + k), s0);
      s1 = _mm256_fmadd_ps(_mm256_loadu_ps(aj + k + 8), _mm256_loadu_ps(x + k + 8), s1);
    }
    for (; k < in8; k += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(aj + k), _mm256_loadu_ps(x + k), s0);
    float sum = HorizontalSum(_mm256_add_ps(s0, s1));
    for (; k < in; ++k) sum += aj[k] * x[k];
    h[j] = sum * scale;
  }
  if (rank == 8) {
    const __m256 hv = _mm256_loadu_ps(h);
    int64_t o = 0;
    for (; o + 8 <= out; o += 8) {
      const float* bo = b + o * 8;
      __m256 v[8];
      for (int i = 0; i < 8; ++i) v[i] = _mm256_mul_ps(_mm256_loadu_ps(bo + i * 8), hv);
      const __m256 t0 = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
      const __m256 t1 = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
      _mm256_storeu_ps(delta + o, _mm256_add_ps(_mm256_permute2f128_ps(t0, t1, 0x20),
                                                _mm256_permute2f128_ps(t0, t1, 0x31)));
    }
    for (; o < out; ++o) {
      float sum = 0;
      for (int j = 0; j < 8; ++j) sum += b[o * 8 + j] * h[j];
      delta[o] = sum;
    }
    return;
  }
  for (int64_t o = 0; o < out; ++o) {
    const float* bo = b + o * rank;
    float sum = 0;
    for (int64_t j = 0; j < rank; ++j) sum += bo[j] * h[j];
    delta[o] = sum;
  }
}
#endif

// Rows up to which the dot-product kernels run (AVX-512; AVX2 goes no further).
constexpr int64_t kDotRowsMax = 8;
constexpr int64_t kAvx2RowsMax = 16;
// Input rows per transposed block of the broadcast kernel.
constexpr int64_t kBlockRows = 64;
// Blocks of input rows a thread runs every column group through before the
// next ones (4 x 64 rows of K = 768: 786 KB).
constexpr int64_t kBlocksTogether = 4;
std::atomic<bool> g_force_avx2{false};

std::atomic<bool> g_enabled{true};

#if defined(__x86_64__)
// dst[j * ldd + i] = src[i * lds + j] for an 8 x 8 tile.
TF_AVX2 inline void Transpose8x8(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * lds);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ldd, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ldd, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}

// out[k * width + m] = src[m * n + k] for m < rows, zero for rows <= m <
// width: 8 x 8 tiles, the edges one by one.
TF_AVX2 void TransposeRows(const float* src, int64_t rows, int64_t n, float* out, int64_t width) {
  const int64_t rows8 = rows / 8 * 8, n8 = n / 8 * 8;
  for (int64_t k = 0; k < n8; k += 8) {
    for (int64_t m = 0; m < rows8; m += 8) Transpose8x8(src + m * n + k, n, out + k * width + m, width);
  }
  for (int64_t k = 0; k < n; ++k) {
    float* o = out + k * width;
    for (int64_t m = k < n8 ? rows8 : 0; m < rows; ++m) o[m] = src[m * n + k];
    for (int64_t m = rows; m < width; ++m) o[m] = 0.0f;
  }
}

// An input [M, K] (and h [M, r] after it, when given) transposed block by
// block of kBlockRows rows: block j holds xt[j][k][m] with 16 * ceil(rows /
// 16) columns, zero past its rows; k runs over x's K values, then h's r.
struct TransposedInput {
  at::Tensor buffer;  // 64-byte aligned
  std::vector<int64_t> offset;
  int64_t M = 0, K = 0, r = 0, blocks = 0;
};

TransposedInput TransposeBlocks(const float* xp, int64_t M, int64_t K,
                                const at::TensorOptions& options, const float* hp = nullptr,
                                int64_t r = 0) {
  TransposedInput t;
  t.M = M;
  t.K = K;
  t.r = hp != nullptr ? r : 0;
  t.blocks = (M + kBlockRows - 1) / kBlockRows;
  t.offset.assign(static_cast<size_t>(t.blocks) + 1, 0);
  for (int64_t j = 0; j < t.blocks; ++j) {
    const int64_t rows = std::min(kBlockRows, M - j * kBlockRows);
    t.offset[j + 1] = t.offset[j] + (K + t.r) * ((rows + 15) / 16 * 16);
  }
  // Only the padding past a block's rows needs the zeros.
  t.buffer = at::empty({t.offset[t.blocks]}, options);
  float* tp = t.buffer.data_ptr<float>();
  at::parallel_for(0, t.blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const int64_t rows = std::min(kBlockRows, M - j * kBlockRows);
      const int64_t width = (rows + 15) / 16 * 16;
      float* out = tp + t.offset[j];
      for (const auto& [src, n] : {std::pair{xp + j * kBlockRows * K, K},
                                   std::pair{hp + j * kBlockRows * t.r, t.r}}) {
        TransposeRows(src, rows, n, out, width);
        out += n * width;
      }
    }
  });
  return t;
}

// y[M, N] = x·wᵀ for w [N, K], or x·w for w [K, N] (weight_kn), for x as
// transposed above; + h·low.bᵀ when the blocks hold h (not with weight_kn).
// The output columns are split between threads (or the blocks, when the
// columns are few).
void MultiplyBlocks(const TransposedInput& t, const float* wp, int64_t N, bool weight_kn,
                    float* yp, LowRank low = {}) {
  const int64_t M = t.M, K = t.K, blocks = t.blocks;
  const float* tp = t.buffer.data_ptr<float>();
  const std::vector<int64_t>& offset = t.offset;
  if (t.r == 0 || weight_kn) low = LowRank{};
  const int64_t tasks = (N + kColumnsPerTask - 1) / kColumnsPerTask;
  auto block = weight_kn ? &BroadcastBlock<true> : &BroadcastBlock<false>;
  auto columns = [&](int64_t task_begin, int64_t task_end) {
    return std::pair<int64_t, int64_t>(task_begin * kColumnsPerTask,
                                       std::min(N, task_end * kColumnsPerTask));
  };
  if (tasks >= 2 * at::get_num_threads() || blocks == 1) {
    // Each thread takes whole groups of output columns through every
    // block: its weights stay in its cache from one block to the next.
    // Blocks are taken kBlocksTogether at a time, so that the transposed
    // input a thread reads for every column group stays in its cache.
    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
      auto [n0, n1] = columns(begin, end);
      for (int64_t j0 = 0; j0 < blocks; j0 += kBlocksTogether) {
        const int64_t j1 = std::min(blocks, j0 + kBlocksTogether);
        for (int64_t c0 = n0; c0 < n1; c0 += kColumnsPerTask) {
          const int64_t c1 = std::min(n1, c0 + kColumnsPerTask);
          for (int64_t j = j0; j < j1; ++j) {
            const int64_t rows = std::min(kBlockRows, M - j * kBlockRows);
            block(tp + offset[j], rows, K, wp, N, c0, c1, yp + j * kBlockRows * N, low);
          }
        }
      }
    });
  } else {
    // Few output columns (a LoRA A product over a prompt): the blocks of
    // rows are split between the threads instead.
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        const int64_t rows = std::min(kBlockRows, M - j * kBlockRows);
        block(tp + offset[j], rows, K, wp, N, 0, N, yp + j * kBlockRows * N, low);
      }
    });
  }
}

void BroadcastProduct(const float* xp, int64_t M, int64_t K, const float* wp, int64_t N,
                      bool weight_kn, float* yp, const at::TensorOptions& options) {
  MultiplyBlocks(TransposeBlocks(xp, M, K, options), wp, N, weight_kn, yp);
}
#endif

}  // namespace

bool internal::HaveAvx2Fma() {
#if defined(__x86_64__)
  static const bool have = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return have;
#else
  return false;
#endif
}

bool internal::HaveAvx512() {
#if defined(__x86_64__)
  // GCC's check includes the OS saving the AVX-512 registers (XCR0).
  static const bool have = HaveAvx2Fma() && __builtin_cpu_supports("avx512f");
  return have && !g_force_avx2.load(std::memory_order_relaxed);
#else
  return false;
#endif
}

void internal::ForceAvx2ForTesting(bool on) { g_force_avx2.store(on); }

void EnableInferenceLinear(bool on) { g_enabled.store(on); }

int64_t InferenceLinearMaxRows() {
  if (!internal::HaveAvx2Fma() || !g_enabled.load(std::memory_order_relaxed)) return 0;
  return internal::HaveAvx512() ? std::numeric_limits<int64_t>::max() : kAvx2RowsMax;
}

std::optional<at::Tensor> InferenceLinear(const at::Tensor& x, const at::Tensor& w,
                                          const at::Tensor& b) {
  if (!internal::HaveAvx2Fma() || CpuAutocast() || !x.device().is_cpu() || !w.device().is_cpu() ||
      x.scalar_type() != at::kFloat || w.scalar_type() != at::kFloat || w.dim() != 2 ||
      x.dim() < 1 || x.size(-1) != w.size(1) || !w.is_contiguous()) {
    return std::nullopt;
  }
  // Inference only (the KV-cache path runs without autograd): where autograd
  // is on, at::linear keeps training exactly as it was.
  if (at::GradMode::is_enabled()) return std::nullopt;
  const int64_t K = w.size(1), N = w.size(0);
  if (K == 0 || N == 0 || x.numel() == 0) return std::nullopt;
  const int64_t M = x.numel() / K;
  // One row: OpenBLAS's GEMV reads the weights as fast as the memory allows.
  if (M < 1 || M > InferenceLinearMaxRows()) return std::nullopt;
  const at::Tensor xc = x.contiguous();
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = N;
  at::Tensor y = at::empty(shape, x.options());
#if defined(__x86_64__)
  const float* xp = xc.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t tasks = (N + kColumnsPerTask - 1) / kColumnsPerTask;
  auto columns = [&](int64_t task_begin, int64_t task_end) {
    return std::pair<int64_t, int64_t>(task_begin * kColumnsPerTask,
                                       std::min(N, task_end * kColumnsPerTask));
  };
  if (!internal::HaveAvx512()) {
    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
      auto [n0, n1] = columns(begin, end);
      Rows(xp, M, K, wp, N, n0, n1, yp);
    });
  } else if (M <= kDotRowsMax) {
    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
      auto [n0, n1] = columns(begin, end);
      DotRows(xp, M, K, wp, N, n0, n1, yp);
    });
  } else {
    BroadcastProduct(xp, M, K, wp, N, /*weight_kn=*/false, yp, x.options());
  }
#endif
  if (b.defined()) y.add_(b);
  return y;
}

std::optional<at::Tensor> InferenceLinearInputGrad(const at::Tensor& g, const at::Tensor& w) {
  if (!internal::HaveAvx512() || !g_enabled.load(std::memory_order_relaxed) || CpuAutocast() ||
      at::GradMode::is_enabled() || !g.device().is_cpu() || !w.device().is_cpu() ||
      g.scalar_type() != at::kFloat || w.scalar_type() != at::kFloat || w.dim() != 2 ||
      g.dim() < 1 || g.size(-1) != w.size(0) || !w.is_contiguous()) {
    return std::nullopt;
  }
  const int64_t N = w.size(0), K = w.size(1);
  if (K == 0 || N == 0 || g.numel() == 0) return std::nullopt;
  const int64_t M = g.numel() / N;
  if (M <= kDotRowsMax) return std::nullopt;
  const at::Tensor gc = g.contiguous();
  std::vector<int64_t> shape = g.sizes().vec();
  shape.back() = K;
  at::Tensor y = at::empty(shape, g.options());
#if defined(__x86_64__)
  BroadcastProduct(gc.data_ptr<float>(), M, N, w.data_ptr<float>(), K, /*weight_kn=*/true,
                   y.data_ptr<float>(), g.options());
#endif
  return y;
}

namespace {

// x·wᵀ (+ b) under autograd with w and b frozen: the gradient flows to x
// alone, as g·w. Nothing but w is kept for backward (at::linear would keep
// x for a weight gradient that is never asked for).
struct FrozenLinearFunction : torch::autograd::Function<FrozenLinearFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& w) {
    ctx->save_for_backward({w});
    std::optional<at::Tensor> y = InferenceLinear(x, w, at::Tensor());
    return y ? *std::move(y) : at::linear(x, w);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    const at::Tensor w = ctx->get_saved_variables()[0];
    const at::Tensor& g = grad_out[0];
    at::Tensor grad_x;
    if (g.defined()) {
      std::optional<at::Tensor> d = InferenceLinearInputGrad(g, w);
      grad_x = d ? *std::move(d) : at::matmul(g, w);
    }
    return {grad_x, at::Tensor()};
  }
};

}  // namespace

namespace {

// Whether the many-rows kernel covers x·wᵀ for a frozen w (whatever the
// grad mode): AVX-512, fp32 on the CPU, more than kDotRowsMax rows.
bool CoversFrozen(const at::Tensor& x, const at::Tensor& w) {
  return internal::HaveAvx512() && g_enabled.load(std::memory_order_relaxed) && !CpuAutocast() &&
         !w.requires_grad() && x.device().is_cpu() && w.device().is_cpu() &&
         x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat && w.dim() == 2 &&
         x.dim() >= 1 && x.size(-1) == w.size(1) && w.is_contiguous() && w.numel() > 0 &&
         x.numel() / w.size(1) > kDotRowsMax;
}

// x·wᵀ + h·bᵀ without autograd (CoversFrozen(x, w) and h, b checked).
at::Tensor LinearPlusLowRank(const at::Tensor& x, const at::Tensor& w, const at::Tensor& h,
                             const at::Tensor& b) {
  const int64_t K = w.size(1), N = w.size(0), r = b.size(1);
  const int64_t M = x.numel() / K;
  const at::Tensor xc = x.contiguous(), hc = h.contiguous();
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = N;
  at::Tensor y = at::empty(shape, x.options());
#if defined(__x86_64__)
  MultiplyBlocks(TransposeBlocks(xc.data_ptr<float>(), M, K, x.options(), hc.data_ptr<float>(), r),
                 w.data_ptr<float>(), N, /*weight_kn=*/false, y.data_ptr<float>(),
                 LowRank{b.data_ptr<float>(), r});
#endif
  return y;
}

// x·wᵀ + h·bᵀ under autograd with w frozen: g·w toward x, g·b toward h,
// gᵀ·h toward b.
struct LinearPlusLowRankFunction : torch::autograd::Function<LinearPlusLowRankFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& w, const at::Tensor& h, const at::Tensor& b) {
    ctx->save_for_backward({w, h, b});
    return LinearPlusLowRank(x, w, h, b);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const at::Tensor &w = saved[0], &h = saved[1], &b = saved[2];
    const at::Tensor& g = grad_out[0];
    at::Tensor grad_x, grad_h, grad_b;
#if defined(__x86_64__)
    if (g.defined()) {
      // g transposed once for both g·w and g·b (the forward covered w, so
      // the kernel covers these: more than kDotRowsMax rows, fp32).
      const at::Tensor gc = g.contiguous();
      const int64_t N = w.size(0), M = gc.numel() / N;
      const TransposedInput gt = TransposeBlocks(gc.data_ptr<float>(), M, N, g.options());
      auto times = [&](const at::Tensor& m) {  // g·m for m [N, k]
        std::vector<int64_t> shape = g.sizes().vec();
        shape.back() = m.size(1);
        at::Tensor out = at::empty(shape, g.options());
        MultiplyBlocks(gt, m.data_ptr<float>(), m.size(1), /*weight_kn=*/true, out.data_ptr<float>());
        return out;
      };
      if (ctx->needs_input_grad(0)) grad_x = times(w);
      if (ctx->needs_input_grad(2)) grad_h = times(b);
      if (ctx->needs_input_grad(3)) {
        grad_b = at::mm(g.reshape({-1, g.size(-1)}).t(), h.reshape({-1, h.size(-1)}));
      }
    }
#endif
    return {grad_x, at::Tensor(), grad_h, grad_b};
  }
};

}  // namespace

std::optional<at::Tensor> FrozenWeightLinear(const at::Tensor& x, const at::Tensor& w,
                                             const at::Tensor& b) {
  if (!at::GradMode::is_enabled() || !CoversFrozen(x, w) || (b.defined() && b.requires_grad())) {
    return std::nullopt;
  }
  if (!x.requires_grad()) {
    at::NoGradGuard no_grad;
    return InferenceLinear(x, w, b);
  }
  // The bias (frozen too) is added outside: the function's inputs are
  // tensors autograd can track, an undefined one is not.
  at::Tensor y = FrozenLinearFunction::apply(x, w);
  return b.defined() ? y + b : y;
}

std::optional<at::Tensor> FrozenLinearPlusLowRank(const at::Tensor& x, const at::Tensor& w,
                                                  const at::Tensor& h, const at::Tensor& b) {
  if (!CoversFrozen(x, w) || !h.defined() || !b.defined() || !h.device().is_cpu() ||
      !b.device().is_cpu() || h.scalar_type() != at::kFloat || b.scalar_type() != at::kFloat ||
      b.dim() != 2 || !b.is_contiguous() || b.size(0) != w.size(0) || b.size(1) == 0 ||
      b.size(1) > kLoraRankMax || h.dim() < 1 || h.size(-1) != b.size(1) ||
      h.numel() / b.size(1) != x.numel() / w.size(1)) {
    return std::nullopt;
  }
  if (!at::GradMode::is_enabled()) return LinearPlusLowRank(x, w, h, b);
  return LinearPlusLowRankFunction::apply(x, w, h, b);
}

std::optional<at::Tensor> InferenceLoraRows(const at::Tensor& x, const std::vector<at::Tensor>& a,
                                            const std::vector<at::Tensor>& b,
                                            const std::vector<float>& scale) {
  const size_t n = a.size();
  if (!internal::HaveAvx2Fma() || CpuAutocast() || at::GradMode::is_enabled() || n == 0 || b.size() != n ||
      scale.size() != n || !x.device().is_cpu() || x.scalar_type() != at::kFloat || x.dim() != 2 ||
      x.size(0) != static_cast<int64_t>(n)) {
    return std::nullopt;
  }
  const int64_t in = x.size(1);
  const int64_t rank = a[0].dim() == 2 ? a[0].size(0) : 0;
  const int64_t out = b[0].dim() == 2 ? b[0].size(0) : 0;
  if (rank == 0 || rank > kLoraRankMax || out == 0) return std::nullopt;
  for (size_t t = 0; t < n; ++t) {
    for (const at::Tensor* m : {&a[t], &b[t]}) {
      if (!m->device().is_cpu() || m->scalar_type() != at::kFloat || !m->is_contiguous() ||
          m->dim() != 2) {
        return std::nullopt;
      }
    }
    if (a[t].size(0) != rank || a[t].size(1) != in || b[t].size(0) != out || b[t].size(1) != rank) {
      return std::nullopt;
    }
  }
  const at::Tensor xc = x.contiguous();
  at::Tensor delta = at::empty({static_cast<int64_t>(n), out}, x.options());
#if defined(__x86_64__)
  const float* xp = xc.data_ptr<float>();
  float* dp = delta.data_ptr<float>();
  at::parallel_for(0, static_cast<int64_t>(n), 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      LoraRow(xp + t * in, in, a[t].data_ptr<float>(), b[t].data_ptr<float>(), scale[t], rank, out,
              dp + t * out);
    }
  });
#endif
  return delta;
}

}  // namespace tunefleet::model
