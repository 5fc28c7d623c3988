// fused_ops.h: each fused pass equals the libtorch operators it replaces
// (within float rounding), on contiguous tensors and on the views the decoder
// hands it (narrows of a fused product, broadcast cos/sin and cache indices),
// gives the same bits with 1 and 2 threads, and declines where it does not
// apply (autograd, other dtypes, a non-contiguous last dimension, an index
// out of range) without touching its outputs.
#include "common/model/fused_ops.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <vector>

namespace tunefleet::model {
namespace {

at::Tensor RmsNormReference(const at::Tensor& x, const at::Tensor& w, double eps) {
  return w * (x * at::rsqrt(x.pow(2).mean(-1, true) + eps));
}

at::Tensor RotaryReference(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  // x [B,H,T,D]; cos/sin [B,1,T,R].
  const int64_t r = cos.size(-1), half = r / 2;
  at::Tensor rot = x.narrow(-1, 0, r);
  at::Tensor turned = at::cat({rot.narrow(-1, half, half).neg(), rot.narrow(-1, 0, half)}, -1);
  return at::cat({rot * cos + turned * sin, x.narrow(-1, r, x.size(-1) - r)}, -1);
}

void ExpectClose(const at::Tensor& got, const at::Tensor& want, double tol = 1e-5) {
  ASSERT_EQ(got.sizes(), want.sizes());
  EXPECT_TRUE(at::allclose(got, want, tol, tol))
      << "max diff " << (got - want).abs().max().item<float>();
}

TEST(FusedOpsTest, RmsNormEqualsLibtorch) {
  at::manual_seed(1);
  for (const std::vector<int64_t>& shape :
       std::vector<std::vector<int64_t>>{{1, 768}, {3, 5, 33}, {7}, {2, 1, 9}, {64, 3072}}) {
    at::Tensor x = at::randn(shape), w = at::randn({shape.back()});
    std::optional<at::Tensor> y = FusedRmsNorm(x, w, 1e-5);
    ASSERT_TRUE(y.has_value());
    ExpectClose(*y, RmsNormReference(x, w, 1e-5));
  }
  // A view into a wider tensor (rows 40 floats apart).
  at::Tensor wide = at::randn({4, 3, 40}), w = at::randn({17});
  at::Tensor view = wide.narrow(-1, 5, 17);
  ExpectClose(*FusedRmsNorm(view, w, 1e-6), RmsNormReference(view, w, 1e-6));
}

TEST(FusedOpsTest, SiluMulEqualsLibtorchOnViewsOfAFusedProduct) {
  at::manual_seed(2);
  for (int64_t rows : {1, 3, 40}) {
    at::Tensor gu = at::randn({rows, 1, 2 * 300}) * 4;
    at::Tensor gate = gu.narrow(-1, 0, 300), up = gu.narrow(-1, 300, 300);
    std::optional<at::Tensor> y = FusedSiluMul(gate, up);
    ASSERT_TRUE(y.has_value());
    EXPECT_TRUE(y->is_contiguous());
    ExpectClose(*y, up * at::silu(gate));
  }
}

struct RotaryCase {
  int64_t B, T, H, KV, D, R, rows, capacity;
  bool broadcast_cos;  // cos/sin [1,1,T,R] (positions shared by the batch)
};

TEST(FusedOpsTest, RotaryIntoCacheEqualsRotaryAndIndexPut) {
  at::manual_seed(3);
  for (const RotaryCase& c : {RotaryCase{1, 1, 4, 4, 16, 16, 32, 10, false},   // one decode row
                              RotaryCase{5, 1, 4, 2, 16, 8, 6, 9, false},      // GQA, partial rotary
                              RotaryCase{2, 7, 3, 3, 8, 8, 2, 12, true},       // a padded chunk
                              RotaryCase{3, 4, 6, 1, 32, 16, 3, 8, false}}) {  // one KV head
    const int64_t q_size = c.H * c.D, kv_size = c.KV * c.D;
    at::Tensor qkv = at::randn({c.B, c.T, q_size + 2 * kv_size});
    at::Tensor q = qkv.narrow(-1, 0, q_size), k = qkv.narrow(-1, q_size, kv_size),
               v = qkv.narrow(-1, q_size + kv_size, kv_size);
    at::Tensor cos = at::randn({c.broadcast_cos ? 1 : c.B, 1, c.T, c.R});
    at::Tensor sin = at::randn({c.broadcast_cos ? 1 : c.B, 1, c.T, c.R});
    if (c.broadcast_cos) {
      cos = cos.expand({c.B, 1, c.T, c.R});
      sin = sin.expand({c.B, 1, c.T, c.R});
    }
    // Distinct (row, slot) pairs: one token a row (rows taken from the end), or
    // row b for a chunk; token (b,t) at slot t + b % 2.
    at::Tensor rows, cols = at::empty({c.B, c.T}, at::kLong);
    if (c.T == 1) {
      rows = at::empty({c.B, 1}, at::kLong);
      for (int64_t b = 0; b < c.B; ++b) rows[b][0] = (c.rows - 1 - b) % c.rows;
    } else {
      rows = at::arange(c.B, at::kLong).view({c.B, 1}).expand({c.B, c.T});
    }
    for (int64_t b = 0; b < c.B; ++b) {
      for (int64_t t = 0; t < c.T; ++t) cols[b][t] = t + b % 2;
    }
    at::Tensor ck = at::randn({c.rows, c.capacity, c.KV, c.D}), cv = at::randn_like(ck);
    at::Tensor want_k = ck.clone(), want_v = cv.clone();
    at::Tensor qr = RotaryReference(q.reshape({c.B, c.T, c.H, c.D}).transpose(1, 2), cos, sin);
    at::Tensor kr = RotaryReference(k.reshape({c.B, c.T, c.KV, c.D}).transpose(1, 2), cos, sin);
    want_k.index_put_({rows, cols}, kr.transpose(1, 2));
    want_v.index_put_({rows, cols}, v.reshape({c.B, c.T, c.KV, c.D}));

    std::optional<at::Tensor> got = FusedRotaryIntoCache(q, k, v, cos, sin, ck, cv, rows, cols, c.H, c.KV);
    ASSERT_TRUE(got.has_value()) << c.B << "x" << c.T;
    ExpectClose(*got, qr);
    ExpectClose(ck, want_k);
    EXPECT_TRUE(at::equal(cv, want_v));  // values are copied, not computed
  }
}

TEST(FusedOpsTest, SameBitsWithOneAndTwoThreads) {
  at::manual_seed(4);
  const int before = at::get_num_threads();
  at::Tensor x = at::randn({200, 500}), w = at::randn({500});
  at::Tensor gu = at::randn({200, 1000});
  std::vector<at::Tensor> got;
  for (int threads : {1, 2}) {
    at::set_num_threads(threads);
    got.push_back(*FusedRmsNorm(x, w, 1e-5));
    got.push_back(*FusedSiluMul(gu.narrow(1, 0, 500), gu.narrow(1, 500, 500)));
  }
  at::set_num_threads(before);
  EXPECT_TRUE(at::equal(got[0], got[2]));
  EXPECT_TRUE(at::equal(got[1], got[3]));
}

TEST(FusedOpsTest, DeclinesWhereItDoesNotApply) {
  at::Tensor x = at::randn({3, 8}), w = at::randn({8});
  EXPECT_FALSE(FusedRmsNorm(x.to(at::kDouble), w.to(at::kDouble), 1e-5).has_value());
  EXPECT_FALSE(FusedRmsNorm(at::randn({8, 3}).t(), w, 1e-5).has_value());  // last dim strided
  EXPECT_FALSE(FusedRmsNorm(x, at::randn({7}), 1e-5).has_value());
  {
    // Under autograd, a tensor that needs a gradient goes to libtorch...
    at::Tensor xg = x.clone().requires_grad_(true);
    EXPECT_FALSE(FusedRmsNorm(xg, w, 1e-5).has_value());
    EXPECT_FALSE(FusedSiluMul(xg, x).has_value());
    // ...and with autograd off it does not need one.
    at::NoGradGuard no_grad;
    EXPECT_TRUE(FusedRmsNorm(xg, w, 1e-5).has_value());
  }
  EXPECT_FALSE(FusedSiluMul(x, at::randn({3, 9})).has_value());

  // An index out of range: nothing is written.
  at::Tensor qkv = at::randn({1, 1, 3 * 8});
  at::Tensor cos = at::randn({1, 1, 1, 8}), sin = at::randn({1, 1, 1, 8});
  at::Tensor ck = at::zeros({2, 4, 1, 8}), cv = at::zeros({2, 4, 1, 8});
  at::Tensor row = at::full({1, 1}, 0, at::kLong), bad_row = at::full({1, 1}, 2, at::kLong);
  at::Tensor bad_col = at::full({1, 1}, 4, at::kLong);
  at::Tensor q = qkv.narrow(-1, 0, 8), k = qkv.narrow(-1, 8, 8), v = qkv.narrow(-1, 16, 8);
  EXPECT_FALSE(FusedRotaryIntoCache(q, k, v, cos, sin, ck, cv, bad_row, row, 1, 1).has_value());
  EXPECT_FALSE(FusedRotaryIntoCache(q, k, v, cos, sin, ck, cv, row, bad_col, 1, 1).has_value());
  EXPECT_FALSE(FusedRotaryIntoCache(q, k, v, cos, sin, ck, cv, row, row, 3, 1).has_value());
  EXPECT_EQ(ck.abs().sum().item<float>(), 0.0f);
  EXPECT_EQ(cv.abs().sum().item<float>(), 0.0f);
  EXPECT_TRUE(FusedRotaryIntoCache(q, k, v, cos, sin, ck, cv, row, row, 1, 1).has_value());
  EXPECT_GT(cv.abs().sum().item<float>(), 0.0f);
}

}  // namespace
}  // namespace tunefleet::model
