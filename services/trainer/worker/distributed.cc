#include "services/trainer/worker/distributed.h"

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>

#include <chrono>

#include "absl/strings/str_cat.h"

namespace tunefleet::trainer {
namespace {

class Single final : public Collectives {
 public:
  int64_t rank() const override { return 0; }
  int64_t world_size() const override { return 1; }
  absl::Status AllReduceSum(at::Tensor&) override { return absl::OkStatus(); }
  absl::Status Barrier() override { return absl::OkStatus(); }
  absl::Status AttachGradients(const std::vector<at::Tensor>&) override { return absl::OkStatus(); }
  absl::Status PrepareSyncedBackward(const at::Tensor&) override { return absl::OkStatus(); }
};

template <typename Fn>
absl::Status Guard(absl::string_view what, Fn&& fn) {
  try {
    fn();
    return absl::OkStatus();
  } catch (const c10::Error& e) {
    return absl::UnavailableError(absl::StrCat(what, ": ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat(what, ": ", e.what()));
  }
}

class Gloo final : public Collectives {
 public:
  Gloo(c10::intrusive_ptr<c10d::Store> store, c10::intrusive_ptr<c10d::ProcessGroupGloo> pg,
       int64_t rank, int64_t world, std::chrono::milliseconds timeout)
      : store_(std::move(store)), pg_(std::move(pg)), rank_(rank), world_(world), timeout_(timeout) {}
  int64_t rank() const override { return rank_; }
  int64_t world_size() const override { return world_; }
  absl::Status AllReduceSum(at::Tensor& t) override {
    return Guard("all-reduce with the other ranks", [&] {
      std::vector<at::Tensor> v{t};
      c10d::AllreduceOptions o;
      o.reduceOp = c10d::ReduceOp::SUM;
      o.timeout = timeout_;
      pg_->allreduce(v, o)->wait(timeout_);
    });
  }
  absl::Status Barrier() override {
    at::Tensor t = at::zeros({1});
    return AllReduceSum(t);
  }
  absl::Status AttachGradients(const std::vector<at::Tensor>& params) override {
    return Guard("creating the DDP reducer", [&] {
      std::vector<bool> sparse(params.size(), false);
      auto [buckets, limits] = c10d::compute_bucket_assignment_by_size(
          params, {static_cast<size_t>(c10d::kDefaultFirstBucketBytes),
                   static_cast<size_t>(c10d::kDefaultBucketBytesCap)},
          sparse);
      std::unordered_map<size_t, std::string> names;
      for (size_t i = 0; i < params.size(); ++i) names[i] = "param." + std::to_string(i);
      reducer_ = std::make_unique<c10d::Reducer>(
          params, buckets, limits, pg_, sparse, c10d::kDefaultBucketBytesCap,
          /*find_unused_parameters=*/false, /*gradient_as_bucket_view=*/false, names,
          c10d::kDefaultFirstBucketBytes);
    });
  }
  absl::Status PrepareSyncedBackward(const at::Tensor& loss) override {
    if (!reducer_) return absl::FailedPreconditionError("AttachGradients was not called");
    return Guard("preparing the DDP reducer", [&] { reducer_->prepare_for_backward({loss}); });
  }

 private:
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg_;
  std::unique_ptr<c10d::Reducer> reducer_;
  int64_t rank_, world_;
  std::chrono::milliseconds timeout_;
};

}  // namespace

std::unique_ptr<Collectives> SingleProcess() { return std::make_unique<Single>(); }

absl::StatusOr<std::unique_ptr<Collectives>> JoinProcessGroup(const WorkerSpec& spec) {
  if (spec.world_size == 1) return SingleProcess();
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(spec.collective_timeout_s * 1000));
  std::unique_ptr<Collectives> out;
  absl::Status s = Guard(absl::StrCat("rendezvous at ", spec.master_addr, ":", spec.master_port), [&] {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(spec.master_port);
    so.isServer = spec.rank == 0;
    so.numWorkers = static_cast<size_t>(spec.world_size);
    so.waitWorkers = true;
    so.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(spec.master_addr, so);
    // One job's keys apart from another's on a reused port.
    auto store = c10::make_intrusive<c10d::PrefixStore>(absl::StrCat("tunefleet/", spec.job_id), tcp);
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    // Loopback jobs bind to loopback; others to this host's own address.
    const bool loopback = spec.master_addr == "127.0.0.1" || spec.master_addr == "localhost";
    opts->devices.push_back(loopback ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                                     : c10d::ProcessGroupGloo::createDefaultDevice());
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, static_cast<int>(spec.rank),
                                                          static_cast<int>(spec.world_size), opts);
    out = std::make_unique<Gloo>(tcp, pg, spec.rank, spec.world_size, timeout);
  });
  if (!s.ok()) return s;
  return out;
}

}  // namespace tunefleet::trainer
