// Service-to-service mTLS with the real binaries as processes (the gpu
// overlay's production shape): servers require a client certificate from the
// fleet's CA (--tls_client_ca), and the services that dial them present one
// through the shared --client_tls_* flags. A call with the certificate goes
// through; without one, or with one from another CA, the server refuses it.
#include <filesystem>
#include <fstream>
#include <utility>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/base/subprocess.h"
#include "common/rpc/auth.h"
#include "common/rpc/channel.h"
#include "common/rpc/status.h"
#include "tests/testing/http_get.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/tls_certs.h"
#include "tunefleet/v1/files.grpc.pb.h"
#include "tunefleet/v1/jobs.grpc.pb.h"

namespace tunefleet {
namespace {

using ::tunefleet::testing::IsOk;
using ::tunefleet::testing::StatusIs;

template <typename Fn>
bool WaitFor(Fn fn, absl::Duration timeout = absl::Seconds(30)) {
  absl::Time end = absl::Now() + timeout;
  while (absl::Now() < end) {
    if (fn()) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return fn();
}

// One service binary on free loopback ports, found through its port file.
struct Service {
  std::unique_ptr<Subprocess> process;
  int port = 0;
  int metrics_port = 0;
  std::string target() const { return absl::StrCat("127.0.0.1:", port); }

  static absl::StatusOr<Service> Start(const std::string& binary, const std::string& name,
                                       const std::string& dir, const std::string& keys,
                                       std::vector<std::string> extra) {
    const std::string port_file = dir + "/" + name + ".ports.json";
    std::vector<std::string> argv = {std::string(TUNEFLEET_BIN_DIR) + "/tunefleet-" + binary,
                                     "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
                                     "--keys_file=" + keys, "--data_dir=" + dir + "/" + name,
                                     "--port_file=" + port_file, "--drain_timeout=1s",
                                     "--log_level=warn"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto proc = Subprocess::Start(argv, Subprocess::Options{dir + "/" + name + ".log", {}});
    if (!proc.ok()) return proc.status();
    Service s;
    s.process = std::make_unique<Subprocess>(std::move(*proc));
    if (!WaitFor([&] { return std::filesystem::exists(port_file); }))
      return absl::DeadlineExceededError(absl::StrCat(name, " did not start"));
    std::ifstream in(port_file);
    auto j = nlohmann::json::parse(in, nullptr, false);
    if (j.is_discarded()) return absl::InternalError("unreadable port file");
    s.port = j["port"].get<int>();
    s.metrics_port = j["metrics_port"].get<int>();
    return s;
  }

  // The value of an unlabelled sample on /metrics (-1 when absent).
  double Metric(const std::string& name) const {
    auto body = testing::HttpGet(metrics_port, "/metrics");
    if (!body.ok()) return -1;
    for (absl::string_view line : absl::StrSplit(*body, '\n')) {
      if (absl::StartsWith(line, name + " ")) {
        return std::stod(std::string(line.substr(name.size() + 1)));
      }
    }
    return -1;
  }
};

class MtlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto good = testing::MakeTestPki(dir_.path(), "fleet");
    ASSERT_THAT(good, IsOk());
    pki_ = *good;
    auto other = testing::MakeTestPki(dir_.path(), "other");
    ASSERT_THAT(other, IsOk());
    other_ = *other;
    tenant_ = rpc::GenerateKey("tenant-a", rpc::Role::kTenant, "a");
    internal_ = rpc::GenerateKey("", rpc::Role::kInternal, "svc");
    keys_ = dir_.Join("keys.txt");
    std::ofstream(keys_) << tenant_.line << "\n" << internal_.line << "\n";
    std::ofstream(dir_.Join("internal.key")) << internal_.key << "\n";
    std::filesystem::create_directories(dir_.Join("models/tiny-base"));
    std::ofstream(dir_.Join("models/tiny-base/config.json"))
        << R"({"model_type":"llama","hidden_size":64,"num_hidden_layers":2,)"
           R"("num_attention_heads":32,"intermediate_size":256,"vocab_size":300,)"
           R"("max_position_embeddings":512})";
  }

  // Server flags requiring a client certificate from the fleet's CA.
  std::vector<std::string> MtlsServer() const {
    return {"--tls_cert=" + pki_.server_cert, "--tls_key=" + pki_.server_key,
            "--tls_client_ca=" + pki_.ca_cert};
  }
  std::vector<std::string> ClientTls(const testing::TestPki& who) const {
    return {"--client_tls_ca_file=" + pki_.ca_cert, "--client_tls_cert_file=" + who.client_cert,
            "--client_tls_key_file=" + who.client_key};
  }
  std::shared_ptr<grpc::Channel> MtlsChannel(const Service& s) const {
    rpc::ChannelOptions o;
    o.target = s.target();
    o.tls_ca_file = pki_.ca_cert;
    o.tls_cert_file = pki_.client_cert;
    o.tls_key_file = pki_.client_key;
    return *rpc::MakeChannel(o);
  }
  static std::shared_ptr<grpc::Channel> PlainChannel(const Service& s) {
    rpc::ChannelOptions o;
    o.target = s.target();
    return *rpc::MakeChannel(o);
  }

  testing::TempDir dir_;
  testing::TestPki pki_, other_;
  rpc::NewKey tenant_, internal_;
  std::string keys_;
};

TEST_F(MtlsTest, SchedulerReachesAnMtlsDatasetServiceOnlyWithItsClientCertificate) {
  auto dataset = Service::Start("dataset", "dataset", dir_.path(), keys_, MtlsServer());
  ASSERT_THAT(dataset, IsOk());

  // A processed training file, uploaded over mTLS.
  auto files = v1::DatasetService::NewStub(MtlsChannel(*dataset));
  v1::File file;
  {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, tenant_.key, absl::Seconds(10));
    auto writer = files->UploadFile(&ctx, &file);
    v1::UploadFileRequest req;
    req.mutable_metadata()->set_filename("train.jsonl");
    req.mutable_metadata()->set_purpose(v1::FILE_PURPOSE_FINE_TUNE);
    writer->Write(req);
    std::string data;
    for (int i = 0; i < 20; ++i)
      absl::StrAppend(&data, R"({"messages":[{"role":"user","content":"q)", i,
                      R"("},{"role":"assistant","content":"a)", i, R"("}]})", "\n");
    req.set_chunk(data);
    writer->Write(req);
    writer->WritesDone();
    ASSERT_TRUE(writer->Finish().ok());
  }
  ASSERT_TRUE(WaitFor([&] {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, tenant_.key, absl::Seconds(10));
    v1::GetFileRequest req;
    req.set_file_id(file.id());
    v1::File f;
    return files->GetFile(&ctx, req, &f).ok() && f.status() == v1::FILE_STATUS_PROCESSED;
  }));

  // The dataset service refuses a plaintext caller outright.
  {
    auto plain = v1::DatasetService::NewStub(PlainChannel(*dataset));
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, tenant_.key, absl::Seconds(5));
    v1::GetFileRequest req;
    req.set_file_id(file.id());
    v1::File f;
    EXPECT_EQ(plain->GetFile(&ctx, req, &f).error_code(), grpc::StatusCode::UNAVAILABLE);
  }

  // Creating a job makes the scheduler call the dataset service (GetFile,
  // SplitFile, HoldFile) with the internal key, acting for the tenant.
  auto create_job = [&](const std::string& name, std::vector<std::string> client_flags) {
    std::vector<std::string> flags = {"--models_dir=" + dir_.Join("models"),
                                      "--artifacts_dir=" + dir_.Join("artifacts"),
                                      "--dataset_address=" + dataset->target(),
                                      "--internal_key_file=" + dir_.Join("internal.key")};
    flags.insert(flags.end(), client_flags.begin(), client_flags.end());
    auto scheduler = Service::Start("scheduler", name, dir_.path(), keys_, flags);
    if (!scheduler.ok()) return absl::StatusOr<v1::Job>(scheduler.status());
    auto jobs = v1::JobService::NewStub(PlainChannel(*scheduler));
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, tenant_.key, absl::Seconds(20));
    v1::CreateJobRequest req;
    req.set_base_model("tiny-base");
    req.set_training_file(file.id());
    req.set_suffix(name);
    v1::Job job;
    grpc::Status s = jobs->CreateJob(&ctx, req, &job);
    (void)scheduler->process->Signal(SIGTERM);
    (void)scheduler->process->Wait(absl::Seconds(10));
    if (!s.ok()) return absl::StatusOr<v1::Job>(rpc::FromGrpcStatus(s));
    return absl::StatusOr<v1::Job>(job);
  };

  auto with_cert = create_job("sched-mtls", ClientTls(pki_));
  ASSERT_THAT(with_cert, IsOk());
  EXPECT_EQ(with_cert->training_file(), file.id());

  // Server-authenticated TLS without a client certificate: refused.
  EXPECT_THAT(create_job("sched-no-cert", {"--client_tls_ca_file=" + pki_.ca_cert}),
              StatusIs(absl::StatusCode::kUnavailable));
  // A certificate from a CA the dataset service does not trust: refused.
  EXPECT_THAT(create_job("sched-other-ca", ClientTls(other_)),
              StatusIs(absl::StatusCode::kUnavailable));
  // No TLS at all: refused.
  EXPECT_THAT(create_job("sched-plain", {}), StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(MtlsTest, TrainerAgentRegistersWithAnMtlsSchedulerOnlyWithItsClientCertificate) {
  // The agent also dials the dataset service; its address needs no server here.
  std::vector<std::string> sched_flags = {"--models_dir=" + dir_.Join("models"),
                                          "--artifacts_dir=" + dir_.Join("artifacts"),
                                          "--dataset_address=127.0.0.1:1",
                                          "--internal_key_file=" + dir_.Join("internal.key")};
  for (const auto& f : MtlsServer()) sched_flags.push_back(f);
  auto scheduler = Service::Start("scheduler", "scheduler", dir_.path(), keys_, sched_flags);
  ASSERT_THAT(scheduler, IsOk());
  EXPECT_EQ(scheduler->Metric("tunefleet_scheduler_nodes"), 0);

  auto agent = [&](const std::string& name, std::vector<std::string> client_flags) {
    std::vector<std::string> flags = {"--scheduler_address=" + scheduler->target(),
                                      "--dataset_address=127.0.0.1:1",
                                      "--internal_key_file=" + dir_.Join("internal.key"),
                                      "--node_name=" + name, "--slots=1",
                                      "--models_dir=" + dir_.Join("models"),
                                      "--artifacts_dir=" + dir_.Join("artifacts")};
    flags.insert(flags.end(), client_flags.begin(), client_flags.end());
    return Service::Start("trainer", name, dir_.path(), keys_, flags);
  };

  // Without a client certificate the agent runs but cannot register: its
  // calls to the scheduler fail and the scheduler sees no node.
  auto refused = agent("node-no-cert", {"--client_tls_ca_file=" + pki_.ca_cert});
  ASSERT_THAT(refused, IsOk());
  EXPECT_TRUE(WaitFor(
      [&] { return refused->Metric("tunefleet_trainer_scheduler_call_failures_total") >= 1; }));
  EXPECT_EQ(refused->Metric("tunefleet_trainer_registrations_total"), 0);
  EXPECT_EQ(scheduler->Metric("tunefleet_scheduler_nodes"), 0);

  auto registered = agent("node-mtls", ClientTls(pki_));
  ASSERT_THAT(registered, IsOk());
  EXPECT_TRUE(WaitFor([&] { return scheduler->Metric("tunefleet_scheduler_nodes") == 1; }));
  EXPECT_TRUE(WaitFor(
      [&] { return registered->Metric("tunefleet_trainer_registrations_total") >= 1; }));
  EXPECT_EQ(refused->Metric("tunefleet_trainer_registrations_total"), 0);
}

}  // namespace
}  // namespace tunefleet
