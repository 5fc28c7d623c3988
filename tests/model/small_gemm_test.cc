// SmallRowsLinear: x·Wᵀ (+ b) for the few rows of a decode step equals
// at::linear, over shapes that exercise every remainder (rows not a multiple
// of 2, weight rows not a multiple of 4, K not a multiple of 8), and is
// declined where it does not apply.
#include "common/model/small_gemm.h"

#include <gtest/gtest.h>

namespace tunefleet::model {
namespace {

TEST(SmallGemmTest, EqualsLinearForEveryRemainder) {
  at::NoGradGuard no_grad;
  at::manual_seed(7);
  const bool available = SmallRowsLinear(at::ones({2, 8}), at::ones({4, 8}), at::Tensor()).has_value();
  if (!available) GTEST_SKIP() << "no AVX2+FMA on this CPU: the decoder uses at::linear";
  for (int64_t M : {2, 3, 7, 16}) {
    for (int64_t K : {1, 7, 8, 100, 768}) {
      for (int64_t N : {1, 3, 4, 5, 67, 130}) {
        at::Tensor x = at::randn({M, K}), w = at::randn({N, K}), b = at::randn({N});
        std::optional<at::Tensor> y = SmallRowsLinear(x, w, b);
        ASSERT_TRUE(y.has_value()) << M << "x" << K << " by " << N;
        at::Tensor want = at::linear(x, w, b);
        EXPECT_TRUE(at::allclose(*y, want, 1e-4, 1e-4)) << M << "x" << K << " by " << N << ": max diff "
                                                          << (*y - want).abs().max().item<float>();
        EXPECT_TRUE(at::allclose(*SmallRowsLinear(x, w, at::Tensor()), at::linear(x, w), 1e-4, 1e-4));
      }
    }
  }
  // Leading dimensions are kept: [2, 3, K] is 6 rows.
  at::Tensor x = at::randn({2, 3, 40}), w = at::randn({9, 40});
  std::optional<at::Tensor> y = SmallRowsLinear(x, w, at::Tensor());
  ASSERT_TRUE(y.has_value());
  EXPECT_EQ(y->sizes(), (std::vector<int64_t>{2, 3, 9}));
  EXPECT_TRUE(at::allclose(*y, at::linear(x, w), 1e-4, 1e-4));
  // A non-contiguous input (a transposed view) is read correctly.
  at::Tensor xt = at::randn({40, 5}).t();  // 5 rows
  EXPECT_TRUE(at::allclose(*SmallRowsLinear(xt, w, at::Tensor()), at::linear(xt, w), 1e-4, 1e-4));
}

TEST(SmallGemmTest, DeclinesWhatItDoesNotCover) {
  at::Tensor w = at::randn({8, 16});
  {
    at::NoGradGuard no_grad;
    EXPECT_FALSE(SmallRowsLinear(at::randn({kSmallRowsMax + 1, 16}), w, at::Tensor()));  // many rows
    EXPECT_FALSE(SmallRowsLinear(at::randn({1, 16}), w, at::Tensor()));  // one row: GEMV
    EXPECT_FALSE(SmallRowsLinear(at::randn({2, 16}, at::kDouble), w.to(at::kDouble), at::Tensor()));
    EXPECT_FALSE(SmallRowsLinear(at::randn({2, 16}), w.t().contiguous().t(), at::Tensor()));
    EXPECT_FALSE(SmallRowsLinear(at::randn({2, 15}), w, at::Tensor()));  // K mismatch
  }
  // Autograd on (training, and any forward outside the KV-cache path):
  // at::linear, whatever requires grad.
  EXPECT_FALSE(SmallRowsLinear(at::randn({2, 16}), w, at::Tensor()));
  EXPECT_FALSE(SmallRowsLinear(at::randn({2, 16}), at::randn({8, 16}).requires_grad_(true),
                               at::Tensor()));
}

}  // namespace
}  // namespace tunefleet::model
