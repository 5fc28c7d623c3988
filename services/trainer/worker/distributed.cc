#include "services/trainer/worker/distributed.h"

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>

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
    std::string where;
    opts->devices.push_back(GlooDevice(spec, &where));
    std::fprintf(stderr, "train-worker: rank %lld of %lld: Gloo on %s, rendezvous at %s:%lld\n",
                 static_cast<long long>(spec.rank), static_cast<long long>(spec.world_size),
                 where.c_str(), spec.master_addr.c_str(), static_cast<long long>(spec.master_port));
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, static_cast<int>(spec.rank),
                                                          static_cast<int>(spec.world_size), opts);
    out = std::make_unique<Gloo>(tcp, pg, spec.rank, spec.world_size, timeout);
  });
  if (!s.ok()) return s;
  return out;
}

}  // namespace tunefleet::trainer
