// DecodeAttention: softmax(q·kᵀ/√D)·v of each row's query against its cache
// row's keys up to its position (within the window), equal to the same
// attention written with libtorch operators, for grouped-query heads, cache
// rows given or implied, one row and several; a row's result is the same bits
// alone or in a batch, with 1 or 2 threads (heads are grouped per thread
// differently, each head's arithmetic is not).
#include "common/model/decode_attention.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <optional>
#include <vector>

namespace tunefleet::model {
namespace {

// The row's attention with libtorch: q [H,D], cache k/v [cap,KV,D].
at::Tensor Reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t pos,
                     std::optional<int64_t> window) {
  const int64_t H = q.size(0), KV = k.size(1), D = q.size(1);
  const int64_t lo = window ? std::max<int64_t>(0, pos - *window + 1) : 0;
  at::Tensor ks = k.narrow(0, lo, pos - lo + 1).repeat_interleave(H / KV, 1).transpose(0, 1);  // [H,n,D]
  at::Tensor vs = v.narrow(0, lo, pos - lo + 1).repeat_interleave(H / KV, 1).transpose(0, 1);
  at::Tensor scores = at::matmul(ks, q.unsqueeze(-1)).squeeze(-1) / std::sqrt(static_cast<double>(D));
  return at::matmul(at::softmax(scores, -1).unsqueeze(1), vs).reshape({H * D});
}

TEST(DecodeAttentionTest, EqualsLibtorchAndARowIsTheSameAloneOrInABatch) {
  if (!DecodeAttentionAvailable()) GTEST_SKIP() << "no AVX2+FMA";
  at::NoGradGuard no_grad;
  at::manual_seed(5);
  const int before = at::get_num_threads();
  struct Case {
    int64_t H, KV, D;
    std::optional<int64_t> window;
  };
  for (const Case& c : {Case{12, 12, 64, std::nullopt}, Case{6, 2, 32, std::nullopt}, Case{4, 1, 16, 5}}) {
    const int64_t R = 4, cap = 40;
    at::Tensor k = at::randn({R, cap, c.KV, c.D}), v = at::randn({R, cap, c.KV, c.D});
    const std::vector<int64_t> rows = {2, 0, 3, 2, 1}, pos = {7, 39, 0, 20, 13};
    const int64_t B = static_cast<int64_t>(rows.size());
    at::Tensor q = at::randn({B, c.H, 1, c.D});
    at::Tensor rows_t = at::tensor(rows, at::kLong), pos_t = at::tensor(pos, at::kLong).view({B, 1});
    for (int threads : {1, 2}) {
      at::set_num_threads(threads);
      std::optional<at::Tensor> all = DecodeAttention(q, k, v, pos_t, c.window, rows_t);
      ASSERT_TRUE(all.has_value());
      ASSERT_EQ(all->sizes(), (std::vector<int64_t>{B, 1, c.H * c.D}));
      for (int64_t b = 0; b < B; ++b) {
        at::Tensor want = Reference(q[b].squeeze(1), k[rows[b]], v[rows[b]], pos[b], c.window);
        EXPECT_TRUE(at::allclose((*all)[b][0], want, 1e-5, 1e-5))
            << "row " << b << " H=" << c.H << ": max diff " << ((*all)[b][0] - want).abs().max().item<float>();
        // Alone (one row: its heads split across the threads), same bits.
        std::optional<at::Tensor> alone = DecodeAttention(q.narrow(0, b, 1), k, v, pos_t.narrow(0, b, 1),
                                                          c.window, rows_t.narrow(0, b, 1));
        ASSERT_TRUE(alone.has_value());
        EXPECT_TRUE(at::equal((*alone)[0], (*all)[b])) << "row " << b << " threads " << threads;
      }
    }
  }
  at::set_num_threads(before);
  // A position outside the cache is declined.
  at::Tensor k = at::randn({1, 8, 2, 16});
  EXPECT_FALSE(DecodeAttention(at::randn({1, 2, 1, 16}), k, k, at::full({1, 1}, 8, at::kLong), std::nullopt)
                   .has_value());
}

}  // namespace
}  // namespace tunefleet::model
