#include "tests/scheduler/scheduler_fixture.h"

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>

#include <gmock/gmock.h>

#include "absl/strings/str_cat.h"
#include "tests/testing/status_matchers.h"

namespace tunefleet::scheduler {
namespace {

using ::tunefleet::testing::IsOk;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A loopback server on a free port, without a metrics endpoint.
rpc::ServerOptions LoopbackServer(absl::Duration drain_timeout) {
  rpc::ServerOptions so;
  so.listen_address = "127.0.0.1:0";
  so.metrics_address = "";
  so.drain_timeout = drain_timeout;
  return so;
}

std::shared_ptr<grpc::Channel> LoopbackChannel(const rpc::Server& server) {
  rpc::ChannelOptions co;
  co.target = absl::StrCat("127.0.0.1:", server.port());
  return *rpc::MakeChannel(co);
}

}  // namespace

std::string ChatJsonl(int n) {
  std::string out;
  for (int i = 0; i < n; ++i) {
    absl::StrAppend(&out, R"({"messages":[{"role":"user","content":"question )", i,
                    R"("},{"role":"assistant","content":"answer )", i, R"("}]})", "\n");
  }
  return out;
}

void SchedulerFixture::SetUp() {
  WriteBaseModel(kBase);
  auth_ = std::make_unique<rpc::Authenticator>(*rpc::KeyRing::Parse(
      absl::StrCat(a_.line, "\n", b_.line, "\n", internal_.line, "\n"), "test"));
  if (with_dataset_) {
    StartDataset();
    if (HasFatalFailure()) return;
  }
  StartScheduler();
}

void SchedulerFixture::TearDown() {
  StopScheduler();
  if (dataset_server_) dataset_server_->Shutdown();
  dataset_server_.reset();
  files_.reset();
  control_.reset();
  dataset_executor_.reset();
  processor_.reset();
  tokenizers_.reset();
  registry_.reset();
}

void SchedulerFixture::WriteBaseModel(const std::string& id, const std::string& config) {
  std::filesystem::create_directories(dir_.Join("models/") + id);
  std::ofstream(dir_.Join("models/") + id + "/config.json") << config;
}

void SchedulerFixture::StartDataset() {
  dataset::FileRegistryOptions options;
  auto registry = dataset::FileRegistry::Open(dir_.Join("dataset"), options);
  ASSERT_THAT(registry, IsOk());
  registry_ = std::move(*registry);
  dataset_executor_ = std::make_unique<rpc::Executor>(2);
  processor_ = std::make_unique<dataset::FileProcessor>(registry_.get(), &dataset::EncodeReport);
  tokenizers_ = std::make_unique<dataset::ModelDirTokenizerProvider>(dir_.Join("models"));
  files_ = std::make_unique<dataset::DatasetServiceImpl>(auth_.get(), registry_.get(),
                                                         dataset_executor_.get(), processor_.get(),
                                                         tokenizers_.get());
  control_ = std::make_unique<dataset::DatasetControlServiceImpl>(auth_.get(), registry_.get(),
                                                                  dataset_executor_.get());
  dataset_server_ = std::make_unique<rpc::Server>(LoopbackServer(absl::Seconds(1)));
  dataset_server_->AddService(files_.get());
  dataset_server_->AddService(control_.get());
  ASSERT_THAT(dataset_server_->Start(), IsOk());
  dataset_server_->SetServing(true);
  dataset_channel_ = LoopbackChannel(*dataset_server_);
  files_stub_ = v1::DatasetService::NewStub(dataset_channel_);
}

void SchedulerFixture::StartScheduler() {
  if (with_dataset_) {
    dataset_client_ = std::make_unique<GrpcDatasetClient>(dataset_channel_, internal_.key);
  }
  SchedulerOptions options;
  options.db_path = dir_.Join("scheduler.db");
  options.models_dir = dir_.Join("models");
  options.artifacts_dir = dir_.Join("artifacts");
  options.clock = &clock_;
  Configure(options);
  auto s = Scheduler::Open(options, dataset_client_.get());
  ASSERT_THAT(s, IsOk());
  scheduler_ = std::move(*s);
  executor_ = std::make_unique<rpc::Executor>(4);
  jobs_ = std::make_unique<JobServiceImpl>(auth_.get(), scheduler_.get(), executor_.get());
  models_ = std::make_unique<ModelServiceImpl>(auth_.get(), scheduler_.get(), executor_.get());
  deployments_ =
      std::make_unique<DeploymentServiceImpl>(auth_.get(), scheduler_.get(), executor_.get());
  trainer_ =
      std::make_unique<TrainerControlServiceImpl>(auth_.get(), scheduler_.get(), executor_.get());
  serving_ =
      std::make_unique<ServingControlServiceImpl>(auth_.get(), scheduler_.get(), executor_.get());
  usage_ = std::make_unique<UsageServiceImpl>(auth_.get(), scheduler_.get(), executor_.get());
  server_ = std::make_unique<rpc::Server>(LoopbackServer(absl::Milliseconds(500)));
  server_->AddService(jobs_.get());
  server_->AddService(models_.get());
  server_->AddService(deployments_.get());
  server_->AddService(trainer_.get());
  server_->AddService(serving_.get());
  server_->AddService(usage_.get());
  ASSERT_THAT(server_->Start(), IsOk());
  server_->SetServing(true);
  auto channel = LoopbackChannel(*server_);
  job_stub_ = v1::JobService::NewStub(channel);
  model_stub_ = v1::ModelService::NewStub(channel);
  dep_stub_ = v1::DeploymentService::NewStub(channel);
  trainer_stub_ = iv1::TrainerControlService::NewStub(channel);
  serving_stub_ = iv1::ServingControlService::NewStub(channel);
  usage_stub_ = v1::UsageService::NewStub(channel);
}

void SchedulerFixture::StopScheduler() {
  if (server_) server_->Shutdown();
  server_.reset();
  executor_.reset();
  jobs_.reset();
  models_.reset();
  deployments_.reset();
  trainer_.reset();
  serving_.reset();
  usage_.reset();
  scheduler_.reset();
}

absl::StatusOr<v1::File> SchedulerFixture::UploadProcessed(const std::string& key,
                                                           const std::string& content,
                                                           v1::DataFormat format) {
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, key, absl::Seconds(30));
  v1::File file;
  auto writer = files_stub_->UploadFile(&ctx, &file);
  v1::UploadFileRequest req;
  req.mutable_metadata()->set_filename("train.jsonl");
  req.mutable_metadata()->set_purpose(v1::FILE_PURPOSE_FINE_TUNE);
  req.mutable_metadata()->set_format(format);
  writer->Write(req);
  req.set_chunk(content);
  writer->Write(req);
  writer->WritesDone();
  grpc::Status s = writer->Finish();
  if (!s.ok()) return rpc::FromGrpcStatus(s);
  v1::GetFileRequest get;
  get.set_file_id(file.id());
  absl::StatusOr<v1::File> got;
  WaitFor([&] {
    got = Call(files_stub_.get(), &v1::DatasetService::Stub::GetFile, key, get);
    return got.ok() && (got->status() == v1::FILE_STATUS_PROCESSED ||
                        got->status() == v1::FILE_STATUS_ERROR);
  });
  return got;
}

v1::CreateJobRequest SchedulerFixture::JobRequest(const std::string& file_id, int gpus) {
  v1::CreateJobRequest req;
  req.set_base_model(kBase);
  req.set_training_file(file_id);
  req.set_suffix("mine");
  req.set_gpus(gpus);
  return req;
}

absl::StatusOr<v1::Job> SchedulerFixture::CreateJob(const std::string& key,
                                                    const v1::CreateJobRequest& req) {
  return Call(job_stub_.get(), &v1::JobService::Stub::CreateJob, key, req);
}

absl::StatusOr<v1::Job> SchedulerFixture::GetJob(const std::string& key, const std::string& id) {
  v1::GetJobRequest req;
  req.set_job_id(id);
  return Call(job_stub_.get(), &v1::JobService::Stub::GetJob, key, req);
}

absl::StatusOr<iv1::RegisterReplicaResponse> SchedulerFixture::RegisterReplica(
    const std::string& name, const std::string& address) {
  iv1::RegisterReplicaRequest req;
  req.set_replica_name(name);
  req.set_address(address);
  return Call(serving_stub_.get(), &iv1::ServingControlService::Stub::RegisterReplica,
              internal_.key, req);
}

int SchedulerFixture::RunCli(const std::string& args, const std::string& key, std::string* out,
                             std::string* err) {
  const std::string o = dir_.Join("cli.out"), e = dir_.Join("cli.err");
  int status = std::system(
      absl::StrCat("env -u TUNEFLEET_CONFIG ", TUNEFLEET_BIN_DIR, "/tunefleet ", args,
                   " --target 127.0.0.1:", server_->port(), " --api-key ", key, " >", o,
                   err == nullptr ? " 2>&1" : absl::StrCat(" 2>", e), " </dev/null")
          .c_str());
  *out = ReadAll(o);
  if (err != nullptr) *err = ReadAll(e);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace tunefleet::scheduler
