// The real binaries together for the agent's fleet tests: tunefleet-dataset,
// tunefleet-scheduler and tunefleet-trainer agents (each spawning the libtorch
// tunefleet-train-worker) on a tiny Phi-3 written by `tunefleet-model
// init-tiny`. Each service is a process on a free port found through its
// port file.
#pragma once

#include <dirent.h>
#include <signal.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/base/subprocess.h"
#include "common/rpc/auth.h"
#include "common/rpc/channel.h"
#include "common/rpc/status.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tests/trainer_agent/dataset_server.h"
#include "tunefleet/v1/files.grpc.pb.h"
#include "tunefleet/v1/jobs.grpc.pb.h"

namespace tunefleet::fleet_testing {

using ::tunefleet::testing::IsOk;

template <typename Fn>
inline bool WaitFor(Fn fn, absl::Duration timeout = absl::Seconds(60)) {
  absl::Time end = absl::Now() + timeout;
  while (absl::Now() < end) {
    if (fn()) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return fn();
}

inline bool Dead(pid_t pid) {
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  if (!stat) return true;
  std::string content((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  size_t paren = content.rfind(')');
  return paren != std::string::npos && paren + 2 < content.size() &&
         (content[paren + 2] == 'Z' || content[paren + 2] == 'X');
}

// Live processes whose command line contains `needle`.
inline std::vector<pid_t> FindProcesses(const std::string& needle) {
  std::vector<pid_t> out;
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    int pid = 0;
    if (!absl::SimpleAtoi(e.path().filename().string(), &pid)) continue;
    std::ifstream in(e.path() / "cmdline", std::ios::binary);
    std::string cmd((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::replace(cmd.begin(), cmd.end(), '\0', ' ');
    if (absl::StrContains(cmd, needle) && !Dead(pid)) out.push_back(pid);
  }
  return out;
}

// How a Service process starts.
struct ServiceOptions {
  // --listen=<host>:0; the target dials `connect_host` (default: the
  // listen host, 127.0.0.1 for 0.0.0.0).
  std::string listen_host = "127.0.0.1";
  std::string connect_host;
  // Run under this command (e.g. {"ip", "netns", "exec", "<ns>"}).
  std::vector<std::string> prefix;
  // Names the data dir, log and port file (default: the binary's name).
  std::string instance;
};

// One service binary on a free port, found through its port file.
struct Service {
  std::unique_ptr<Subprocess> process;
  std::string target;
  int port = 0;

  using Options = ServiceOptions;

  static absl::StatusOr<Service> Start(const std::string& name, const std::string& dir,
                                       const std::string& keys, std::vector<std::string> extra,
                                       const Options& o = {}) {
    const std::string instance = o.instance.empty() ? name : o.instance;
    std::string port_file = dir + "/" + instance + ".ports.json";
    std::filesystem::remove(port_file);
    std::vector<std::string> argv = o.prefix;
    for (std::string a : {std::string(TUNEFLEET_BIN_DIR) + "/tunefleet-" + name,
                          "--listen=" + o.listen_host + ":0", std::string("--metrics_listen=off"),
                          "--keys_file=" + keys, "--data_dir=" + dir + "/" + instance,
                          "--port_file=" + port_file, std::string("--drain_timeout=2s"),
                          std::string("--log_level=info")}) {
      argv.push_back(a);
    }
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto proc = Subprocess::Start(argv, Subprocess::Options{dir + "/" + instance + ".log", {}});
    if (!proc.ok()) return proc.status();
    Service s;
    s.process = std::make_unique<Subprocess>(std::move(*proc));
    if (!WaitFor([&] { return std::filesystem::exists(port_file); }))
      return absl::DeadlineExceededError(absl::StrCat("tunefleet-", instance, " did not start"));
    std::ifstream in(port_file);
    auto j = nlohmann::json::parse(in, nullptr, false);
    if (j.is_discarded()) return absl::InternalError("unreadable port file");
    std::string host = o.connect_host;
    if (host.empty()) host = o.listen_host == "0.0.0.0" ? "127.0.0.1" : o.listen_host;
    s.port = j["port"].get<int>();
    s.target = absl::StrCat(host, ":", s.port);
    return s;
  }
  std::shared_ptr<grpc::Channel> Channel() const {
    rpc::ChannelOptions o;
    o.target = target;
    return *rpc::MakeChannel(o);
  }
};

inline std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// The fleet: dataset, scheduler and (unless `start_agent_` is false) one
// agent "node-a" with one slot, on a tiny Phi-3 under <dir>/models.
class FleetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(text::DefaultLlamaVocabSource())) {
      GTEST_SKIP() << "the npm vocabulary is not installed (scripts/install-deps)";
    }
    keys_ = dir_.Join("keys.txt");
    std::ofstream(keys_) << tenant_.line << "\n" << internal_.line << "\n";
    std::ofstream(dir_.Join("internal.key")) << internal_.key << "\n";
    // A tiny Phi-3 with the real Phi-3 tokenizer.
    auto init = Subprocess::Start({std::string(TUNEFLEET_BIN_DIR) + "/tunefleet-model", "init-tiny",
                                   "--out=" + dir_.Join("models/phi-3-tiny"), "--seed=3"},
                                  Subprocess::Options{dir_.Join("init.log"), {}});
    ASSERT_THAT(init, IsOk());
    auto st = init->Wait(absl::Seconds(120));
    ASSERT_THAT(st, IsOk());
    ASSERT_EQ(*st, 0) << ReadAll(dir_.Join("init.log"));

    Service::Options listen;
    listen.listen_host = services_listen_host_;
    auto dataset = Service::Start("dataset", dir_.path(), keys_,
                                  {"--models_dir=" + dir_.Join("models")}, listen);
    ASSERT_THAT(dataset, IsOk());
    dataset_ = std::move(*dataset);
    auto scheduler = Service::Start(
        "scheduler", dir_.path(), keys_,
        {"--models_dir=" + dir_.Join("models"), "--artifacts_dir=" + dir_.Join("artifacts"),
         "--dataset_address=" + dataset_.target, "--internal_key_file=" + dir_.Join("internal.key"),
         "--heartbeat_interval=100ms", "--lease=30s", "--tick_interval=20ms"},
        listen);
    ASSERT_THAT(scheduler, IsOk());
    scheduler_ = std::move(*scheduler);
    jobs_ = v1::JobService::NewStub(scheduler_.Channel());
    if (start_agent_) StartAgent();
  }

  void StartAgent(int slots = 1) {
    auto agent = StartAgentProcess("node-a", slots, scheduler_.target, dataset_.target);
    ASSERT_THAT(agent, IsOk());
    agent_ = std::move(*agent);
  }

  // An agent "node" (its data dir and log "trainer-<node>" unless it is
  // node-a) dialing the scheduler and dataset at the given addresses.
  absl::StatusOr<Service> StartAgentProcess(const std::string& node, int slots,
                                            const std::string& scheduler,
                                            const std::string& dataset,
                                            Service::Options o = {},
                                            std::vector<std::string> extra = {}) {
    if (o.instance.empty() && node != "node-a") o.instance = "trainer-" + node;
    std::vector<std::string> flags = {
        "--scheduler_address=" + scheduler, "--dataset_address=" + dataset,
        "--internal_key_file=" + dir_.Join("internal.key"), "--models_dir=" + dir_.Join("models"),
        "--artifacts_dir=" + dir_.Join("artifacts"), "--node_name=" + node,
        absl::StrCat("--slots=", slots)};
    flags.insert(flags.end(), extra.begin(), extra.end());
    return Service::Start("trainer", dir_.path(), keys_, flags, o);
  }

  absl::StatusOr<std::string> Upload(const std::string& content) {
    auto files = v1::DatasetService::NewStub(dataset_.Channel());
    v1::File file;
    {
      grpc::ClientContext ctx;
      rpc::PrepareContext(&ctx, tenant_.key, absl::Seconds(30));
      auto writer = files->UploadFile(&ctx, &file);
      v1::UploadFileRequest req;
      req.mutable_metadata()->set_filename("train.jsonl");
      req.mutable_metadata()->set_purpose(v1::FILE_PURPOSE_FINE_TUNE);
      writer->Write(req);
      req.set_chunk(content);
      writer->Write(req);
      writer->WritesDone();
      absl::Status s = rpc::FromGrpcStatus(writer->Finish());
      if (!s.ok()) return s;
    }
    v1::File f;
    bool processed = WaitFor([&] {
      grpc::ClientContext ctx;
      rpc::PrepareContext(&ctx, tenant_.key, absl::Seconds(10));
      v1::GetFileRequest req;
      req.set_file_id(file.id());
      return files->GetFile(&ctx, req, &f).ok() && (f.status() == v1::FILE_STATUS_PROCESSED ||
                                                     f.status() == v1::FILE_STATUS_ERROR);
    });
    if (f.status() == v1::FILE_STATUS_ERROR) {
      return absl::InvalidArgumentError(absl::StrCat("file rejected: ", f.status_details()));
    }
    if (!processed) return absl::DeadlineExceededError("file not processed");
    return file.id();
  }

  v1::CreateJobRequest JobRequest(const std::string& file, int epochs, int batch,
                                  const std::string& validation = "", int gpus = 1) {
    v1::CreateJobRequest req;
    req.set_base_model("phi-3-tiny");
    req.set_training_file(file);
    req.set_validation_file(validation);
    req.set_suffix("agent");
    req.set_gpus(gpus);
    req.mutable_hyperparameters()->set_epochs(epochs);
    req.mutable_hyperparameters()->set_batch_size(batch);
    req.mutable_hyperparameters()->set_max_sequence_length(128);
    req.mutable_hyperparameters()->set_learning_rate_multiplier(10);
    return req;
  }
  absl::StatusOr<v1::Job> CreateJob(const std::string& file, int epochs, int batch,
                                    const std::string& validation = "", int gpus = 1) {
    return CreateJob(JobRequest(file, epochs, batch, validation, gpus));
  }
  absl::StatusOr<v1::Job> CreateJob(const v1::CreateJobRequest& req) {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, tenant_.key, absl::Seconds(10));
    v1::Job job;
    absl::Status s = rpc::FromGrpcStatus(jobs_->CreateJob(&ctx, req, &job));
    if (!s.ok()) return s;
    return job;
  }
  absl::StatusOr<v1::Job> GetJob(const std::string& id) {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, tenant_.key, absl::Seconds(10));
    v1::GetJobRequest req;
    req.set_job_id(id);
    v1::Job job;
    absl::Status s = rpc::FromGrpcStatus(jobs_->GetJob(&ctx, req, &job));
    if (!s.ok()) return s;
    return job;
  }
  // Waits for one of `states`; the job as last seen.
  v1::Job WaitState(const std::string& id, std::vector<v1::JobState> states,
                    absl::Duration timeout = absl::Seconds(180)) {
    v1::Job now;
    WaitFor(
        [&] {
          auto j = GetJob(id);
          if (!j.ok()) return false;
          now = *j;
          return std::find(states.begin(), states.end(), now.state()) != states.end();
        },
        timeout);
    return now;
  }
  int Checkpoints(const std::string& id) {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, tenant_.key, absl::Seconds(10));
    v1::ListCheckpointsRequest req;
    req.set_job_id(id);
    v1::ListCheckpointsResponse resp;
    if (!jobs_->ListCheckpoints(&ctx, req, &resp).ok()) return -1;
    return resp.checkpoints_size();
  }
  // Every agent's log, then the scheduler's.
  std::string Logs() {
    std::string out;
    for (const auto& e : std::filesystem::directory_iterator(dir_.path())) {
      const std::string name = e.path().filename().string();
      if (absl::StartsWith(name, "trainer") && absl::EndsWith(name, ".log")) {
        absl::StrAppend(&out, "--- ", name, "\n", ReadAll(e.path().string()));
      }
    }
    return absl::StrCat(out, "--- scheduler.log\n", ReadAll(dir_.Join("scheduler.log")));
  }

  // Set in a subclass's constructor.
  std::string services_listen_host_ = "127.0.0.1";
  bool start_agent_ = true;

  tunefleet::testing::TempDir dir_;
  rpc::NewKey tenant_ = rpc::GenerateKey("tenant-a", rpc::Role::kTenant, "a");
  rpc::NewKey internal_ = rpc::GenerateKey("", rpc::Role::kInternal, "svc");
  std::string keys_;
  Service dataset_, scheduler_, agent_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
};


}  // namespace tunefleet::fleet_testing
