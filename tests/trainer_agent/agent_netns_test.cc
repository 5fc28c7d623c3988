// Across hosts: two agents, each in its own network namespace, run one W=2
// job. Namespace A (10.x.y.2) and B (10.x.y.3) share a veth link; each has
// another veth to the root namespace (10.x.y.17 / 10.x.y.33), where the
// dataset service and the scheduler listen. The scheduler gang-places the
// job on the two one-slot nodes; rank 0's node's advertised address is the
// rendezvous; the TCPStore and Gloo cross the A-B link. The result equals a
// one-rank run of the same job (fp32 tolerance).
//
// Needs root and iproute2 (`ip netns`); skipped, saying why, without them.
#include <unistd.h>

#include <ATen/ATen.h>

#include "absl/strings/str_join.h"
#include "common/base/status_macros.h"
#include "common/model/safetensors.h"
#include "tests/trainer_agent/fleet.h"

namespace tunefleet {
namespace {

using ::tunefleet::testing::IsOk;
using namespace ::tunefleet::fleet_testing;  // NOLINT

namespace fs = std::filesystem;

// iproute2's `ip` (Subprocess does not search PATH).
std::string IpBinary() {
  for (const char* p : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"}) {
    if (::access(p, X_OK) == 0) return p;
  }
  return "ip";
}

// Runs `ip args...`; its output goes to `log`.
absl::Status Ip(const std::vector<std::string>& args, const std::string& log) {
  std::vector<std::string> argv = {IpBinary()};
  argv.insert(argv.end(), args.begin(), args.end());
  auto p = Subprocess::Start(argv, Subprocess::Options{log, {}});
  if (!p.ok()) return p.status();
  auto rc = p->Wait(absl::Seconds(20));
  if (!rc.ok()) return rc.status();
  if (*rc != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("`", absl::StrJoin(argv, " "), "` exited ", *rc, ": ", ReadAll(log)));
  }
  return absl::OkStatus();
}

// Two namespaces and three veth pairs, named after this process (so that
// parallel runs do not meet); everything is deleted by the destructor,
// whatever happened in between.
class NetnsLab {
 public:
  explicit NetnsLab(std::string log) : log_(std::move(log)) {
    const int pid = static_cast<int>(::getpid());
    suffix_ = std::to_string(pid);
    ns_a_ = "tfA" + suffix_;
    ns_b_ = "tfB" + suffix_;
    prefix_ = absl::StrCat("10.", 64 + (pid >> 8) % 64, ".", pid & 0xff, ".");
  }
  ~NetnsLab() {
    // Deleting a namespace deletes the veths in it and so their peers.
    for (const std::string& ns : created_) Ip({"netns", "del", ns}, log_).IgnoreError();
    for (const char* l : {"tfra", "tfrb"}) Ip({"link", "del", l + suffix_}, log_).IgnoreError();
  }
  NetnsLab(const NetnsLab&) = delete;
  NetnsLab& operator=(const NetnsLab&) = delete;

  absl::Status Create() {
    for (const std::string& ns : {ns_a_, ns_b_}) {
      TF_RETURN_IF_ERROR(Ip({"netns", "add", ns}, log_));
      created_.push_back(ns);
      TF_RETURN_IF_ERROR(Ip({"-n", ns, "link", "set", "lo", "up"}, log_));
    }
    // A <-> B: the link the ranks talk over.
    TF_RETURN_IF_ERROR(Veth("tfab", ns_a_, A(), "tfba", ns_b_, B()));
    // root <-> A and root <-> B: the services.
    TF_RETURN_IF_ERROR(Veth("tfra", "", RootForA(), "tfar", ns_a_, prefix_ + "18"));
    TF_RETURN_IF_ERROR(Veth("tfrb", "", RootForB(), "tfbr", ns_b_, prefix_ + "34"));
    return absl::OkStatus();
  }

  const std::string& ns_a() const { return ns_a_; }
  const std::string& ns_b() const { return ns_b_; }
  std::string A() const { return prefix_ + "2"; }
  std::string B() const { return prefix_ + "3"; }
  std::string RootForA() const { return prefix_ + "17"; }
  std::string RootForB() const { return prefix_ + "33"; }

 private:
  // A veth pair: end 1 (in ns1, "" = root) and end 2 in ns2, each with its
  // address in a /28.
  absl::Status Veth(const std::string& name1, const std::string& ns1, const std::string& addr1,
                    const std::string& name2, const std::string& ns2, const std::string& addr2) {
    const std::string n1 = name1 + suffix_, n2 = name2 + suffix_;
    TF_RETURN_IF_ERROR(Ip({"link", "add", n1, "type", "veth", "peer", "name", n2}, log_));
    for (const auto& [n, ns, addr] :
         {std::tuple{n1, ns1, addr1}, std::tuple{n2, ns2, addr2}}) {
      if (!ns.empty()) TF_RETURN_IF_ERROR(Ip({"link", "set", n, "netns", ns}, log_));
      std::vector<std::string> in;
      if (!ns.empty()) in = {"-n", ns};
      auto cmd = [&](std::vector<std::string> rest) {
        std::vector<std::string> all = in;
        all.insert(all.end(), rest.begin(), rest.end());
        return all;
      };
      TF_RETURN_IF_ERROR(Ip(cmd({"addr", "add", addr + "/28", "dev", n}), log_));
      TF_RETURN_IF_ERROR(Ip(cmd({"link", "set", n, "up"}), log_));
    }
    return absl::OkStatus();
  }

  std::string log_, suffix_, ns_a_, ns_b_, prefix_;
  std::vector<std::string> created_;
};

class AgentNetnsTest : public FleetTest {
 protected:
  AgentNetnsTest() {
    services_listen_host_ = "0.0.0.0";  // reached from both namespaces
    start_agent_ = false;
  }
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root to create network namespaces (ip netns)";
    lab_ = std::make_unique<NetnsLab>(dir_.Join("ip.log"));
    if (absl::Status s = lab_->Create(); !s.ok()) {
      GTEST_SKIP() << "cannot build the network namespaces (iproute2 from scripts/install-deps, "
                      "CAP_NET_ADMIN): "
                   << s;
    }
    FleetTest::SetUp();
  }
  void TearDown() override {
    // The agents (and their workers) end before their namespaces go.
    for (Service* s : {&agent_a_, &agent_b_}) {
      if (s->process) {
        s->process->Signal(SIGTERM).IgnoreError();
        s->process->Wait(absl::Seconds(30)).IgnoreError();
      }
    }
  }

  absl::StatusOr<Service> StartIn(const std::string& node, const std::string& ns,
                                  const std::string& addr, const std::string& root) {
    Service::Options o;
    o.prefix = {IpBinary(), "netns", "exec", ns};
    o.listen_host = addr;  // advertised: rank 0 on this node is the rendezvous
    return StartAgentProcess(node, 1, absl::StrCat(root, ":", scheduler_.port),
                             absl::StrCat(root, ":", dataset_.port), o);
  }

  // The workers' log lines saying where Gloo bound (every agent's work dir).
  std::string WorkerLogs() {
    std::string out;
    for (const auto& e : fs::recursive_directory_iterator(dir_.path())) {
      if (e.path().filename() == "worker.log") absl::StrAppend(&out, ReadAll(e.path().string()));
    }
    return out;
  }

  std::unique_ptr<NetnsLab> lab_;
  Service agent_a_, agent_b_;
};

absl::StatusOr<model::NamedTensors> Adapter(const std::string& result) {
  TF_ASSIGN_OR_RETURN(auto f, model::SafetensorsFile::Open(result + "/adapter_model.safetensors"));
  return f->GetAll();
}

TEST_F(AgentNetnsTest, TwoAgentsInTwoNamespacesRunOneJobThatEqualsOneRank) {
  TF_ASSERT_OK_AND_ASSIGN(agent_a_, StartIn("node-a", lab_->ns_a(), lab_->A(), lab_->RootForA()));
  TF_ASSERT_OK_AND_ASSIGN(agent_b_, StartIn("node-b", lab_->ns_b(), lab_->B(), lab_->RootForB()));
  TF_ASSERT_OK_AND_ASSIGN(std::string file, Upload(trainer::testing::ChatJsonl(12)));

  auto request = [&](int gpus) {
    v1::CreateJobRequest req = JobRequest(file, /*epochs=*/2, /*batch=*/4, "", gpus);
    // No dropout: the ranks' dropout masks could not match one rank's.
    req.mutable_hyperparameters()->set_lora_dropout(0);
    req.mutable_hyperparameters()->set_seed(11);
    return req;
  };
  // W=2: one rank on each one-slot node.
  TF_ASSERT_OK_AND_ASSIGN(v1::Job two, CreateJob(request(2)));
  v1::Job done2 = WaitState(two.id(), {v1::JOB_STATE_SUCCEEDED, v1::JOB_STATE_FAILED},
                            absl::Seconds(120));
  ASSERT_EQ(done2.state(), v1::JOB_STATE_SUCCEEDED) << done2.error().message() << "\n" << Logs();
  // Both ranks joined across the link: rank 0 bound one namespace's address
  // and rank 1 the other's, both meeting at rank 0's.
  const std::string logs = WorkerLogs();
  const bool a_is_master = absl::StrContains(logs, "rank 0 of 2: Gloo on " + lab_->A());
  const std::string master = a_is_master ? lab_->A() : lab_->B();
  const std::string other = a_is_master ? lab_->B() : lab_->A();
  EXPECT_THAT(logs, ::testing::HasSubstr(
                        absl::StrCat("rank 0 of 2: Gloo on ", master, ", rendezvous at ", master)))
      << logs;
  EXPECT_THAT(logs, ::testing::HasSubstr(
                        absl::StrCat("rank 1 of 2: Gloo on ", other, ", rendezvous at ", master)))
      << logs;

  // The same job on one rank.
  TF_ASSERT_OK_AND_ASSIGN(v1::Job one, CreateJob(request(1)));
  v1::Job done1 = WaitState(one.id(), {v1::JOB_STATE_SUCCEEDED, v1::JOB_STATE_FAILED},
                            absl::Seconds(120));
  ASSERT_EQ(done1.state(), v1::JOB_STATE_SUCCEEDED) << done1.error().message() << "\n" << Logs();
  EXPECT_EQ(done1.trained_tokens(), done2.trained_tokens());

  auto result = [&](const std::string& job) {
    return dir_.Join(absl::StrCat("artifacts/jobs/", job, "/result"));
  };
  TF_ASSERT_OK_AND_ASSIGN(model::NamedTensors w2, Adapter(result(two.id())));
  TF_ASSERT_OK_AND_ASSIGN(model::NamedTensors w1, Adapter(result(one.id())));
  ASSERT_EQ(w1.size(), w2.size());
  ASSERT_FALSE(w1.empty());
  double diff = 0, moved = 0;
  for (size_t i = 0; i < w1.size(); ++i) {
    ASSERT_EQ(w1[i].first, w2[i].first);
    diff = std::max(diff, (w1[i].second - w2[i].second).abs().max().item<double>());
    moved = std::max(moved, w1[i].second.abs().max().item<double>());
  }
  // As the worker's TwoGlooRanksEqualOneRank: Adam amplifies fp32
  // summation-order noise to ~1e-4; a lost or doubled rank's gradient
  // moves the weights by far more.
  EXPECT_LT(diff, 1e-3) << "max |w| " << moved;
  EXPECT_GT(moved, 0);
}

}  // namespace
}  // namespace tunefleet
