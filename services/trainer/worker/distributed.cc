#include "services/trainer/worker/distributed.h"

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>
#include <torch/version.h>
#if TORCH_VERSION_MAJOR >= 2
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#endif
// CMake defines TUNEFLEET_WITH_NCCL (and USE_C10D_NCCL, which the header
// wants) for a CUDA libtorch 2.x where nccl.h is found.
#if defined(TUNEFLEET_WITH_NCCL)
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <type_traits>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace tunefleet::trainer {
namespace {

// The local address this host reaches `host` from: a UDP socket connected
// to it (no packet is sent) and asked for its own address. For rank 0 the
// master is itself, so this is the advertised address; on another node it
// is the interface on the route to rank 0, the one its peers can reach. A
// network namespace's address, not what the host name resolves to (that
// may be another namespace's, and Gloo would fall back to loopback).
absl::StatusOr<std::string> LocalAddressTowards(const std::string& host, int64_t port) {
  addrinfo hints = {};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port > 0 ? port : 9);
  if (int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &res); rc != 0) {
    return absl::UnavailableError(
        absl::StrCat("master_addr '", host, "' does not resolve: ", gai_strerror(rc)));
  }
  absl::Status last = absl::UnavailableError(absl::StrCat("master_addr '", host, "': no address"));
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    int fd = ::socket(a->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    sockaddr_storage local = {};
    socklen_t len = sizeof(local);
    char text[INET6_ADDRSTRLEN] = {};
    const bool ok = ::connect(fd, a->ai_addr, a->ai_addrlen) == 0 &&
                    ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0 &&
                    ::getnameinfo(reinterpret_cast<sockaddr*>(&local), len, text, sizeof(text),
                                  nullptr, 0, NI_NUMERICHOST) == 0;
    ::close(fd);
    if (ok) {
      ::freeaddrinfo(res);
      return std::string(text);
    }
    last = absl::UnavailableError(absl::StrCat("no route to master_addr '", host, "'"));
  }
  ::freeaddrinfo(res);
  return last;
}

// Gloo's transport device: GLOO_SOCKET_IFNAME (PyTorch's variable) names an
// interface when set; a loopback master keeps the job on loopback; otherwise
// the address on the route to the master.
// `where` says which, for the log.
std::shared_ptr<::gloo::transport::Device> GlooDevice(const WorkerSpec& spec, std::string* where) {
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname != nullptr && *ifname) {
    *where = absl::StrCat("interface ", ifname, " (GLOO_SOCKET_IFNAME)");
    return c10d::ProcessGroupGloo::createDeviceForInterface(ifname);
  }
  std::string host = "127.0.0.1";
  if (spec.master_addr != "127.0.0.1" && spec.master_addr != "localhost" &&
      spec.master_addr != "::1") {
    absl::StatusOr<std::string> local = LocalAddressTowards(spec.master_addr, spec.master_port);
    if (!local.ok()) throw std::runtime_error(std::string(local.status().message()));
    host = *local;
  }
  *where = host;
  return c10d::ProcessGroupGloo::createDeviceForHostname(host);
}

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

// c10d's Reducer, whose constructor grew two trailing flags in later 2.x
// releases (skip_all_reduce_unused_params, use_python_reducer; both false is
// what DDP passes by default): the form this libtorch has.
template <typename R, typename... A>
std::unique_ptr<R> NewReducer(A&&... a) {
  if constexpr (std::is_constructible_v<R, A...>) {
    return std::make_unique<R>(std::forward<A>(a)...);
  } else {
    return std::make_unique<R>(std::forward<A>(a)..., false, false);
  }
}

#if TORCH_VERSION_MAJOR >= 2
// 2.x: a ProcessGroup holds one backend per device type. Its constructor
// took ProcessGroup::Options until 2.5 and only (store, rank, size) since.
template <typename PG = c10d::ProcessGroup>
c10::intrusive_ptr<PG> EmptyGroup(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                  int world, std::chrono::milliseconds timeout) {
  if constexpr (std::is_constructible_v<PG, const c10::intrusive_ptr<c10d::Store>&, int, int>) {
    return c10::make_intrusive<PG>(store, rank, world);
  } else {
    return c10::make_intrusive<PG>(store, rank, world,
                                   c10::make_intrusive<typename PG::Options>("gloo", timeout));
  }
}
#endif

// The job's process group: Gloo for CPU tensors (the gathered batches, the
// metrics, and the gradients of a CPU job), NCCL for CUDA tensors (a GPU
// job's gradient buckets) where this build has it. 1.x has no per-device
// backends: there Gloo's group is the ProcessGroup itself, CPU only.
c10::intrusive_ptr<c10d::ProcessGroup> NewGroup(const c10::intrusive_ptr<c10d::Store>& store,
                                                int rank, int world, bool cuda,
                                                std::chrono::milliseconds timeout,
                                                c10::intrusive_ptr<c10d::ProcessGroupGloo::Options> gloo_opts) {
  auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, std::move(gloo_opts));
#if TORCH_VERSION_MAJOR >= 2
  auto pg = EmptyGroup(store, rank, world, timeout);
  pg->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO,
                 c10::static_intrusive_pointer_cast<c10d::Backend>(gloo));
  pg->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
#if defined(TUNEFLEET_WITH_NCCL)
  if (cuda) {
    auto nopts = c10d::ProcessGroupNCCL::Options::create();
    nopts->timeout = timeout;
    auto nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, nopts);
    pg->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::NCCL,
                   c10::static_intrusive_pointer_cast<c10d::Backend>(nccl));
  }
#endif
  return pg;
#else
  (void)cuda;
  (void)timeout;
  return gloo;
#endif
}

// Whether gradients on CUDA can be reduced in this build.
constexpr bool kHaveNccl =
#if defined(TUNEFLEET_WITH_NCCL)
    true;
#else
    false;
#endif

class Group final : public Collectives {
 public:
  Group(c10::intrusive_ptr<c10d::Store> store, c10::intrusive_ptr<c10d::ProcessGroup> pg,
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
      reducer_ = NewReducer<c10d::Reducer>(
          params, buckets, limits, pg_, sparse, int64_t{c10d::kDefaultBucketBytesCap},
          /*find_unused_parameters=*/false, /*gradient_as_bucket_view=*/false, names,
          int64_t{c10d::kDefaultFirstBucketBytes});
    });
  }
  absl::Status PrepareSyncedBackward(const at::Tensor& loss) override {
    if (!reducer_) return absl::FailedPreconditionError("AttachGradients was not called");
    return Guard("preparing the DDP reducer", [&] { reducer_->prepare_for_backward({loss}); });
  }

 private:
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::ProcessGroup> pg_;
  std::unique_ptr<c10d::Reducer> reducer_;
  int64_t rank_, world_;
  std::chrono::milliseconds timeout_;
};

}  // namespace

bool HaveNccl() { return kHaveNccl; }

std::unique_ptr<Collectives> SingleProcess() { return std::make_unique<Single>(); }

absl::StatusOr<std::unique_ptr<Collectives>> JoinProcessGroup(const WorkerSpec& spec,
                                                               bool group_of_one) {
  if (spec.world_size == 1 && !group_of_one) return SingleProcess();
  const bool cuda = absl::StartsWith(spec.device, "cuda");
  if (cuda && !kHaveNccl) {
    return absl::FailedPreconditionError(absl::StrCat(
        "device ", spec.device, " with world_size ", spec.world_size,
        ": this worker was built without NCCL (a CUDA libtorch 2.x and nccl.h are needed)"));
  }
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
    std::string where;
    opts->devices.push_back(GlooDevice(spec, &where));
    std::fprintf(stderr, "train-worker: rank %lld of %lld: Gloo on %s%s, rendezvous at %s:%lld\n",
                 static_cast<long long>(spec.rank), static_cast<long long>(spec.world_size),
                 where.c_str(), cuda ? ", NCCL for CUDA tensors" : "", spec.master_addr.c_str(),
                 static_cast<long long>(spec.master_port));
    auto pg = NewGroup(store, static_cast<int>(spec.rank), static_cast<int>(spec.world_size), cuda,
                       timeout, opts);
    out = std::make_unique<Group>(tcp, pg, spec.rank, spec.world_size, timeout);
  });
  if (!s.ok()) return s;
  return out;
}

}  // namespace tunefleet::trainer
