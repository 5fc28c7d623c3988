// InferenceLinear: x·Wᵀ (+ b) on the CPU without autograd equals at::linear
// for every kernel (AVX-512 dot products for 1-8 rows, AVX-512 broadcasts in
// blocks of 64 rows beyond, AVX2 dot products for 1-16 rows), over shapes that
// exercise every remainder (input rows against the 2-row and 16-row steps and
// the 64-row blocks, weight rows against the 8, 12, 16, 6 and 48-column
// steps, K against the 16- and 8-lane steps), and is declined where it does
// not apply. The same kernel with the weight read down its columns gives
// the gradient toward the input of a frozen weight's product (LoRA training).
#include "common/model/small_gemm.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <limits>

namespace tunefleet::model {
namespace {

void ExpectEqualsLinear(const std::vector<int64_t>& rows_list) {
  for (int64_t M : rows_list) {
    for (int64_t K : {1, 7, 16, 100, 768}) {
      for (int64_t N : {1, 3, 8, 13, 67, 130}) {
        at::Tensor x = at::randn({M, K}), w = at::randn({N, K}), b = at::randn({N});
        std::optional<at::Tensor> y = InferenceLinear(x, w, b);
        ASSERT_TRUE(y.has_value()) << M << "x" << K << " by " << N;
        at::Tensor want = at::linear(x, w, b);
        EXPECT_TRUE(at::allclose(*y, want, 1e-4, 1e-4)) << M << "x" << K << " by " << N << ": max diff "
                                                          << (*y - want).abs().max().item<float>();
        EXPECT_TRUE(at::allclose(*InferenceLinear(x, w, at::Tensor()), at::linear(x, w), 1e-4, 1e-4));
      }
    }
  }
  // Leading dimensions are kept: [2, 3, K] is 6 rows.
  at::Tensor x = at::randn({2, 3, 40}), w = at::randn({9, 40});
  std::optional<at::Tensor> y = InferenceLinear(x, w, at::Tensor());
  ASSERT_TRUE(y.has_value());
  EXPECT_EQ(y->sizes(), (std::vector<int64_t>{2, 3, 9}));
  EXPECT_TRUE(at::allclose(*y, at::linear(x, w), 1e-4, 1e-4));
  // A non-contiguous input (a transposed view) is read correctly.
  at::Tensor xt = at::randn({40, 5}).t();  // 5 rows
  EXPECT_TRUE(at::allclose(*InferenceLinear(xt, w, at::Tensor()), at::linear(xt, w), 1e-4, 1e-4));
}

TEST(SmallGemmTest, Avx512KernelsEqualLinearForEveryRemainder) {
  at::NoGradGuard no_grad;
  at::manual_seed(7);
  if (!internal::HaveAvx512()) GTEST_SKIP() << "no AVX-512 on this CPU";
  EXPECT_EQ(InferenceLinearMaxRows(), std::numeric_limits<int64_t>::max());
  ExpectEqualsLinear({1, 2, 3, 8, 9, 16, 17, 32, 33, 48, 49, 64, 65, 130});
  // Enough output columns for every thread to take groups of them through
  // several blocks of rows (more than four blocks: the blocks taken together
  // and the last partial group).
  for (int64_t M : {130, 300}) {
    for (int64_t K : {100, 768}) {
      at::Tensor x = at::randn({M, K}), w = at::randn({300, K}), b = at::randn({300});
      at::Tensor want = at::linear(x, w, b);
      std::optional<at::Tensor> y = InferenceLinear(x, w, b);
      ASSERT_TRUE(y.has_value());
      EXPECT_TRUE(at::allclose(*y, want, 1e-4, 1e-4)) << M << "x" << K << ": max diff "
                                                        << (*y - want).abs().max().item<float>();
    }
  }
}

TEST(SmallGemmTest, Avx2KernelEqualsLinearForEveryRemainder) {
  at::NoGradGuard no_grad;
  at::manual_seed(8);
  if (!internal::HaveAvx2Fma()) GTEST_SKIP() << "no AVX2+FMA on this CPU: the decoder uses at::linear";
  internal::ForceAvx2ForTesting(true);
  EXPECT_EQ(InferenceLinearMaxRows(), 16);
  ExpectEqualsLinear({1, 2, 3, 7, 16});
  EXPECT_FALSE(InferenceLinear(at::randn({17, 16}), at::randn({8, 16}), at::Tensor()));  // many rows
  internal::ForceAvx2ForTesting(false);
}

// A row's result does not depend on the number of threads (each output is
// one thread's, in a fixed order): bit for bit.
TEST(SmallGemmTest, ResultsDoNotDependOnThreads) {
  at::NoGradGuard no_grad;
  at::manual_seed(9);
  if (InferenceLinearMaxRows() == 0) GTEST_SKIP() << "no kernel on this CPU";
  const int threads = at::get_num_threads();
  at::Tensor w = at::randn({300, 200});
  for (int64_t M : {1, 4, 40, 100}) {
    if (M > InferenceLinearMaxRows()) continue;
    at::Tensor x = at::randn({M, 200});
    at::set_num_threads(1);
    at::Tensor one = *InferenceLinear(x, w, at::Tensor());
    at::set_num_threads(2);
    at::Tensor two = *InferenceLinear(x, w, at::Tensor());
    EXPECT_TRUE(at::equal(one, two)) << M << " rows";
  }
  at::set_num_threads(threads);
}

// Per-row LoRA deltas (a decode step over many adapters) equal
// scale·B·(A·x) row by row, for rank 8 (the folded path) and other ranks, and
// for output sizes that are not a multiple of 8.
TEST(SmallGemmTest, LoraRowsEqualEachRowsOwnProduct) {
  at::NoGradGuard no_grad;
  at::manual_seed(10);
  if (!internal::HaveAvx2Fma()) GTEST_SKIP() << "no AVX2+FMA on this CPU";
  for (int64_t rank : {8, 4, 16}) {
    for (int64_t in : {7, 64, 768}) {
      for (int64_t out : {5, 8, 130}) {
        const int64_t n = 5;
        at::Tensor x = at::randn({n, in});
        std::vector<at::Tensor> a, b;
        std::vector<float> scale;
        for (int64_t t = 0; t < n; ++t) {
          a.push_back(at::randn({rank, in}));
          b.push_back(at::randn({out, rank}));
          scale.push_back(0.5f + static_cast<float>(t));
        }
        std::optional<at::Tensor> d = InferenceLoraRows(x, a, b, scale);
        ASSERT_TRUE(d.has_value()) << rank << " " << in << " " << out;
        ASSERT_EQ(d->sizes(), (std::vector<int64_t>{n, out}));
        for (int64_t t = 0; t < n; ++t) {
          at::Tensor want = at::mv(b[t], at::mv(a[t], x[t])) * scale[t];
          EXPECT_TRUE(at::allclose((*d)[t], want, 1e-4, 1e-3))
              << "rank " << rank << " in " << in << " out " << out << " row " << t << ": max diff "
              << ((*d)[t] - want).abs().max().item<float>();
        }
      }
    }
  }
  // Declined: ranks or shapes that differ between rows, and autograd on.
  at::Tensor x = at::randn({2, 16});
  std::vector<at::Tensor> a = {at::randn({8, 16}), at::randn({4, 16})};
  std::vector<at::Tensor> b = {at::randn({8, 8}), at::randn({8, 4})};
  EXPECT_FALSE(InferenceLoraRows(x, a, b, {1.0f, 1.0f}));
  a[1] = at::randn({8, 16});
  b[1] = at::randn({8, 8});
  EXPECT_TRUE(InferenceLoraRows(x, a, b, {1.0f, 1.0f}));
  {
    at::AutoGradMode grad(true);
    EXPECT_FALSE(InferenceLoraRows(x, a, b, {1.0f, 1.0f}));
  }
}

// g·w (the gradient toward the input of x·wᵀ) equals at::matmul for every
// remainder of the broadcast kernel with the weight read down its columns.
TEST(SmallGemmTest, InputGradEqualsMatmulForEveryRemainder) {
  at::NoGradGuard no_grad;
  at::manual_seed(11);
  if (!internal::HaveAvx512()) GTEST_SKIP() << "no AVX-512 on this CPU";
  for (int64_t M : {9, 16, 17, 33, 64, 65, 130, 300}) {
    for (int64_t N : {1, 7, 16, 100, 768}) {
      for (int64_t K : {1, 3, 8, 13, 67, 130, 300}) {
        at::Tensor g = at::randn({M, N}), w = at::randn({N, K});
        std::optional<at::Tensor> y = InferenceLinearInputGrad(g, w);
        ASSERT_TRUE(y.has_value()) << M << "x" << N << " by " << K;
        at::Tensor want = at::matmul(g, w);
        EXPECT_TRUE(at::allclose(*y, want, 1e-4, 1e-4)) << M << "x" << N << " by " << K
                                                          << ": max diff "
                                                          << (*y - want).abs().max().item<float>();
      }
    }
  }
  at::Tensor g = at::randn({2, 7, 40}), w = at::randn({40, 9});
  std::optional<at::Tensor> y = InferenceLinearInputGrad(g, w);
  ASSERT_TRUE(y.has_value());
  EXPECT_EQ(y->sizes(), (std::vector<int64_t>{2, 7, 9}));
  EXPECT_TRUE(at::allclose(*y, at::matmul(g, w), 1e-4, 1e-4));
  // Bit for bit on one thread and on two.
  const int threads = at::get_num_threads();
  g = at::randn({100, 300});
  w = at::randn({300, 200});
  at::set_num_threads(1);
  at::Tensor one = *InferenceLinearInputGrad(g, w);
  at::set_num_threads(2);
  EXPECT_TRUE(at::equal(one, *InferenceLinearInputGrad(g, w)));
  at::set_num_threads(threads);
  // Declined: 8 rows or fewer, a size mismatch, autograd on.
  EXPECT_FALSE(InferenceLinearInputGrad(at::randn({8, 300}), w));
  EXPECT_FALSE(InferenceLinearInputGrad(at::randn({20, 299}), w));
  at::AutoGradMode grad(true);
  EXPECT_FALSE(InferenceLinearInputGrad(at::randn({20, 300}), w));
}

// LoRA training's frozen base: the output and the gradient toward the input
// equal at::linear's under autograd; a trained weight or bias, or too few
// rows, is declined; an input without a gradient gives an output without one.
TEST(SmallGemmTest, FrozenWeightLinearMatchesLinearUnderAutograd) {
  at::manual_seed(12);
  if (!internal::HaveAvx512()) GTEST_SKIP() << "no AVX-512 on this CPU";
  for (int64_t T : {5, 40, 130}) {
    at::Tensor w = at::randn({96, 64}), b = at::randn({96});
    at::Tensor x0 = at::randn({3, T, 64});
    at::Tensor r = at::randn({3, T, 96});
    at::Tensor xa = x0.clone().requires_grad_(true), xb = x0.clone().requires_grad_(true);
    std::optional<at::Tensor> ya = FrozenWeightLinear(xa, w, b);
    ASSERT_TRUE(ya.has_value()) << T;
    ASSERT_TRUE(ya->requires_grad());
    at::Tensor yb = at::linear(xb, w, b);
    EXPECT_TRUE(at::allclose(*ya, yb, 1e-4, 1e-4));
    // A second use of the output, so the gradient arriving is not contiguous-simple.
    ((*ya * r).sum() + ya->pow(2).mean()).backward();
    ((yb * r).sum() + yb.pow(2).mean()).backward();
    EXPECT_TRUE(at::allclose(xa.grad(), xb.grad(), 1e-4, 1e-4))
        << T << ": max diff " << (xa.grad() - xb.grad()).abs().max().item<float>();
  }
  // Without a bias (the decoder's projections).
  at::Tensor wn = at::randn({96, 64});
  at::Tensor xa = at::randn({50, 64}).requires_grad_(true);
  at::Tensor xb = xa.detach().clone().requires_grad_(true);
  std::optional<at::Tensor> ya = FrozenWeightLinear(xa, wn, at::Tensor());
  ASSERT_TRUE(ya.has_value());
  ya->pow(2).sum().backward();
  at::linear(xb, wn).pow(2).sum().backward();
  EXPECT_TRUE(at::allclose(xa.grad(), xb.grad(), 1e-4, 1e-3));
  at::Tensor w = at::randn({96, 64});
  at::Tensor x = at::randn({20, 64});
  std::optional<at::Tensor> y = FrozenWeightLinear(x, w, at::Tensor());
  ASSERT_TRUE(y.has_value());
  EXPECT_FALSE(y->requires_grad());
  EXPECT_TRUE(at::allclose(*y, at::linear(x, w), 1e-4, 1e-4));
  EXPECT_FALSE(FrozenWeightLinear(x, at::randn({96, 64}).requires_grad_(true), at::Tensor()));
  EXPECT_FALSE(FrozenWeightLinear(x, w, at::randn({96}).requires_grad_(true)));
  EXPECT_FALSE(FrozenWeightLinear(at::randn({8, 64}), w, at::Tensor()));
  {
    at::NoGradGuard no_grad;  // inference goes through InferenceLinear itself
    EXPECT_FALSE(FrozenWeightLinear(x, w, at::Tensor()));
  }
  EnableInferenceLinear(false);
  EXPECT_FALSE(FrozenWeightLinear(x, w, at::Tensor()));
  EnableInferenceLinear(true);
}

// A LoRA projection in one pass: x·Wᵀ + h·Bᵀ and its gradients toward x, h
// and B equal the two products added (autograd on), and the output without
// autograd too; ranks 8 and 16, rows across the 64-row blocks.
TEST(SmallGemmTest, LowRankTermJoinsTheFrozenProduct) {
  at::manual_seed(13);
  if (!internal::HaveAvx512()) GTEST_SKIP() << "no AVX-512 on this CPU";
  for (int64_t r : {8, 16}) {
    for (int64_t M : {9, 40, 130}) {
      at::Tensor w = at::randn({100, 64});
      at::Tensor x0 = at::randn({M, 64}), h0 = at::randn({M, r}), b0 = at::randn({100, r});
      at::Tensor rw = at::randn({M, 100});
      at::Tensor xa = x0.clone().requires_grad_(true), ha = h0.clone().requires_grad_(true),
                 ba = b0.clone().requires_grad_(true);
      at::Tensor xb = x0.clone().requires_grad_(true), hb = h0.clone().requires_grad_(true),
                 bb = b0.clone().requires_grad_(true);
      std::optional<at::Tensor> ya = FrozenLinearPlusLowRank(xa, w, ha, ba);
      ASSERT_TRUE(ya.has_value()) << r << " " << M;
      at::Tensor yb = at::linear(xb, w) + at::linear(hb, bb);
      EXPECT_TRUE(at::allclose(*ya, yb, 1e-4, 1e-4))
          << r << " " << M << ": max diff " << (*ya - yb).abs().max().item<float>();
      (*ya * rw).sum().backward();
      (yb * rw).sum().backward();
      EXPECT_TRUE(at::allclose(xa.grad(), xb.grad(), 1e-4, 1e-4)) << r << " " << M;
      EXPECT_TRUE(at::allclose(ha.grad(), hb.grad(), 1e-4, 1e-4)) << r << " " << M;
      EXPECT_TRUE(at::allclose(ba.grad(), bb.grad(), 1e-4, 1e-3)) << r << " " << M;
      at::NoGradGuard no_grad;
      std::optional<at::Tensor> yn = FrozenLinearPlusLowRank(x0, w, h0, b0);
      ASSERT_TRUE(yn.has_value());
      EXPECT_TRUE(at::allclose(*yn, yb, 1e-4, 1e-4));
    }
  }
  // Declined: h's rows or rank not matching, a trained base weight.
  at::Tensor w = at::randn({100, 64}), x = at::randn({20, 64});
  EXPECT_FALSE(FrozenLinearPlusLowRank(x, w, at::randn({19, 8}), at::randn({100, 8})));
  EXPECT_FALSE(FrozenLinearPlusLowRank(x, w, at::randn({20, 8}), at::randn({100, 4})));
  EXPECT_FALSE(FrozenLinearPlusLowRank(x, w, at::randn({20, 8}), at::randn({99, 8})));
  EXPECT_FALSE(FrozenLinearPlusLowRank(x, w.clone().requires_grad_(true), at::randn({20, 8}),
                                       at::randn({100, 8})));
}

TEST(SmallGemmTest, DeclinesWhatItDoesNotCover) {
  at::Tensor w = at::randn({8, 16});
  {
    at::NoGradGuard no_grad;
    EXPECT_FALSE(InferenceLinear(at::randn({2, 16}, at::kDouble), w.to(at::kDouble), at::Tensor()));
    EXPECT_FALSE(InferenceLinear(at::randn({2, 16}), w.t().contiguous().t(), at::Tensor()));
    EXPECT_FALSE(InferenceLinear(at::randn({2, 15}), w, at::Tensor()));  // K mismatch
    EnableInferenceLinear(false);  // benchmarks' baseline
    EXPECT_FALSE(InferenceLinear(at::randn({2, 16}), w, at::Tensor()));
    EXPECT_EQ(InferenceLinearMaxRows(), 0);
    EnableInferenceLinear(true);
  }
  // Autograd on (training, and any forward outside the KV-cache path):
  // at::linear, whatever requires grad.
  EXPECT_FALSE(InferenceLinear(at::randn({2, 16}), w, at::Tensor()));
  EXPECT_FALSE(InferenceLinear(at::randn({1, 16}), w, at::Tensor()));
  EXPECT_FALSE(InferenceLinear(at::randn({2, 16}), at::randn({8, 16}).requires_grad_(true),
                               at::Tensor()));
}

}  // namespace
}  // namespace tunefleet::model
