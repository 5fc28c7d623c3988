// The scheduler as its service tests meet it: every public and internal gRPC
// service on one loopback server, its SQLite file and a base model folder in a
// fresh temporary directory, a manual clock, three keys (tenant-a, tenant-b,
// internal) and, unless a test turns it off, a real dataset server beside it.
// A test derives from SchedulerFixture, sets its own options in Configure, and
// restarts the scheduler over the same directory with StopScheduler and
// StartScheduler. Not thread-safe: the test thread drives it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <gtest/gtest.h>

#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/base/clock.h"
#include "common/rpc/channel.h"
#include "common/rpc/server.h"
#include "common/rpc/status.h"
#include "services/dataset/dataset_service.h"
#include "services/dataset/model_tokenizers.h"
#include "services/scheduler/grpc_dataset_client.h"
#include "services/scheduler/scheduler_service.h"
#include "tests/testing/temp_dir.h"

namespace tunefleet::scheduler {

// The base model every fixture offers.
inline constexpr char kBase[] = "tiny-base";
// A config.json the model library accepts for a small llama.
inline constexpr char kTinyLlamaConfig[] =
    R"({"model_type":"llama","hidden_size":64,"num_hidden_layers":2,)"
    R"("num_attention_heads":32,"intermediate_size":128,"vocab_size":300,)"
    R"("max_position_embeddings":512})";

// Polls `fn` until it holds or `timeout` passes; the condition tests wait on.
template <typename Fn>
bool WaitFor(Fn fn, absl::Duration timeout = absl::Seconds(20)) {
  absl::Time end = absl::Now() + timeout;
  while (absl::Now() < end) {
    if (fn()) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return fn();
}

// `n` chat examples, one JSON line each.
std::string ChatJsonl(int n);

class SchedulerFixture : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;

  // The test's own scheduler options, applied at every start after the
  // fixture's (db_path, models_dir, artifacts_dir, clock).
  virtual void Configure(SchedulerOptions& /*options*/) {}

  void StartScheduler();
  void StopScheduler();
  // A base model folder under models/ (the scheduler reads only config.json).
  void WriteBaseModel(const std::string& id, const std::string& config = kTinyLlamaConfig);

  // One unary call with the given key.
  template <typename Stub, typename Req, typename Resp>
  absl::StatusOr<Resp> Call(Stub* stub,
                            grpc::Status (Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
                            const std::string& key, const Req& req) {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, key, absl::Seconds(30));
    Resp resp;
    grpc::Status s = (stub->*method)(&ctx, req, &resp);
    if (!s.ok()) return rpc::FromGrpcStatus(s);
    return resp;
  }

  // Uploads a training file and waits until the dataset service has
  // processed it (or refused it).
  absl::StatusOr<v1::File> UploadProcessed(const std::string& key, const std::string& content,
                                           v1::DataFormat format = v1::DATA_FORMAT_UNSPECIFIED);
  // A job on kBase with suffix "mine".
  v1::CreateJobRequest JobRequest(const std::string& file_id, int gpus = 1);
  absl::StatusOr<v1::Job> CreateJob(const std::string& key, const v1::CreateJobRequest& req);
  absl::StatusOr<v1::Job> GetJob(const std::string& key, const std::string& id);
  // The test-side serving replica registers itself.
  absl::StatusOr<iv1::RegisterReplicaResponse> RegisterReplica(
      const std::string& name = "replica-a", const std::string& address = "");

  // Runs the tunefleet CLI (`args`, then --target this scheduler and
  // --api-key `key`) with no config file and no terminal; returns its exit
  // code (-1 when it did not exit) with stdout in `out` and stderr in `err`,
  // or stderr after stdout in `out` when `err` is null.
  int RunCli(const std::string& args, const std::string& key, std::string* out,
             std::string* err = nullptr);

  // Set in the test's constructor: false leaves the dataset server out and
  // opens the scheduler without a dataset client.
  bool with_dataset_ = true;

  tunefleet::testing::TempDir dir_;
  ManualClock clock_;
  rpc::NewKey a_ = rpc::GenerateKey("tenant-a", rpc::Role::kTenant, "a");
  rpc::NewKey b_ = rpc::GenerateKey("tenant-b", rpc::Role::kTenant, "b");
  rpc::NewKey internal_ = rpc::GenerateKey("", rpc::Role::kInternal, "svc");
  std::unique_ptr<rpc::Authenticator> auth_;
  // dataset
  std::unique_ptr<dataset::FileRegistry> registry_;
  // Tokenizers of the models/ folder (a base with tokenizer files gets its
  // tokens counted; kBase has only a config.json).
  std::unique_ptr<dataset::ModelDirTokenizerProvider> tokenizers_;
  std::unique_ptr<rpc::Executor> dataset_executor_;
  std::unique_ptr<dataset::FileProcessor> processor_;
  std::unique_ptr<dataset::DatasetServiceImpl> files_;
  std::unique_ptr<dataset::DatasetControlServiceImpl> control_;
  std::unique_ptr<rpc::Server> dataset_server_;
  std::shared_ptr<grpc::Channel> dataset_channel_;
  std::unique_ptr<v1::DatasetService::Stub> files_stub_;
  // scheduler
  std::unique_ptr<GrpcDatasetClient> dataset_client_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<rpc::Executor> executor_;
  std::unique_ptr<JobServiceImpl> jobs_;
  std::unique_ptr<ModelServiceImpl> models_;
  std::unique_ptr<DeploymentServiceImpl> deployments_;
  std::unique_ptr<TrainerControlServiceImpl> trainer_;
  std::unique_ptr<ServingControlServiceImpl> serving_;
  std::unique_ptr<UsageServiceImpl> usage_;
  std::unique_ptr<rpc::Server> server_;
  std::unique_ptr<v1::JobService::Stub> job_stub_;
  std::unique_ptr<v1::ModelService::Stub> model_stub_;
  std::unique_ptr<v1::DeploymentService::Stub> dep_stub_;
  std::unique_ptr<iv1::TrainerControlService::Stub> trainer_stub_;
  std::unique_ptr<iv1::ServingControlService::Stub> serving_stub_;
  std::unique_ptr<v1::UsageService::Stub> usage_stub_;

 private:
  void StartDataset();
};

}  // namespace tunefleet::scheduler
