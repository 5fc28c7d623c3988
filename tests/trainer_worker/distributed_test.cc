// The worker's process group in-process: a group of one rank (Gloo on the
// CPU; NCCL beside it on a GPU node) through c10d's Reducer, and the refusal
// of a multi-rank CUDA job where the build has no NCCL. The multi-rank runs
// (real processes) are worker_test's and classify_test's. Also the device
// memory count the worker reports on a GPU.
#include "services/trainer/worker/distributed.h"

#include "services/trainer/worker/device_memory.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/testing/status_matchers.h"
#include "tests/trainer_worker/worker_harness.h"

namespace tunefleet::trainer {
namespace {

using ::testing::HasSubstr;
using ::tunefleet::testing::StatusIs;

WorkerSpec GroupSpec(const std::string& device) {
  WorkerSpec s;
  s.job_id = "ftjob-group-" + device;
  s.device = device;
  s.world_size = 1;
  s.rank = 0;
  s.master_addr = "127.0.0.1";
  s.master_port = worker_testing::FreePort();
  s.collective_timeout_s = 30;
  return s;
}

// Trains nothing: checks that a synced backward leaves each gradient as the
// mean over one rank (itself), and that a sum over the group of a CPU tensor
// (the batches and metrics) is the tensor.
void ExpectGroupOfOneReduces(const at::Device& device) {
  auto coll = JoinProcessGroup(GroupSpec(device.str()), /*group_of_one=*/true);
  ASSERT_TRUE(coll.ok()) << coll.status();
  EXPECT_EQ((*coll)->world_size(), 1);
  at::Tensor w = at::arange(6, at::TensorOptions().dtype(at::kFloat).device(device)).view({2, 3});
  at::Tensor b = at::ones({3}, at::TensorOptions().dtype(at::kFloat).device(device));
  w.set_requires_grad(true);
  b.set_requires_grad(true);
  TF_ASSERT_OK((*coll)->AttachGradients({w, b}));
  for (int step = 0; step < 2; ++step) {  // the Reducer's first and rebuilt buckets
    w.mutable_grad() = at::Tensor();
    b.mutable_grad() = at::Tensor();
    at::Tensor x = at::full({4, 2}, 1.0 + step, w.options().requires_grad(false));
    at::Tensor loss = (at::matmul(x, w) + b).square().sum();
    TF_ASSERT_OK((*coll)->PrepareSyncedBackward(loss));
    loss.backward();
    at::Tensor y = (at::matmul(x, w) + b).detach();
    EXPECT_TRUE(at::allclose(w.grad().cpu(), (2 * at::matmul(x.t(), y)).cpu()));
    EXPECT_TRUE(at::allclose(b.grad().cpu(), (2 * y.sum(0)).cpu()));
  }
  at::Tensor counts = at::tensor({3, 4, 5}, at::kLong);
  TF_ASSERT_OK((*coll)->AllReduceSum(counts));
  EXPECT_TRUE(at::equal(counts, at::tensor({3, 4, 5}, at::kLong)));
  TF_EXPECT_OK((*coll)->Barrier());
}

TEST(ProcessGroupTest, GroupOfOneReducesOnTheCpu) { ExpectGroupOfOneReduces(at::kCPU); }

// GPU.md's NCCL check: one GPU cannot host two NCCL ranks; a group of one
// still runs the Reducer's buckets through NCCL.
TEST(ProcessGroupTest, GroupOfOneReducesThroughNcclOnTheGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  if (!HaveNccl()) GTEST_SKIP() << "this build has no NCCL";
  ExpectGroupOfOneReduces(at::Device(at::kCUDA, 0));
}

TEST(ProcessGroupTest, MultiRankCudaJobWithoutNcclIsRefused) {
  if (HaveNccl()) GTEST_SKIP() << "this build has NCCL";
  WorkerSpec s = GroupSpec("cuda:0");
  s.world_size = 2;
  EXPECT_THAT(JoinProcessGroup(s).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("device cuda:0 with world_size 2: this worker was built without "
                                 "NCCL")));
}

TEST(DeviceMemoryTest, CountsWhatTheGpuHolds) {
  if (!at::hasCUDA()) {
    // No GPU: nothing is reported (never a guess).
    EXPECT_FALSE(CudaBytesInUse(0).has_value());
    return;
  }
  at::Tensor context = at::zeros({1}, at::TensorOptions().device(at::kCUDA, 0));
  std::optional<int64_t> before = CudaBytesInUse(0);
  ASSERT_TRUE(before.has_value());
  at::Tensor gib = at::ones({int64_t{256} << 20}, at::TensorOptions().device(at::kCUDA, 0));
  std::optional<int64_t> after = CudaBytesInUse(0);
  ASSERT_TRUE(after.has_value());
  EXPECT_GE(*after - *before, (int64_t{1} << 30) - (int64_t{64} << 20));
  EXPECT_FALSE(CudaBytesInUse(-1).has_value());
}

}  // namespace
}  // namespace tunefleet::trainer
