// A real dataset service on a loopback port for the agent tests: SQLite and
// blobs in a temporary directory, the Phi-3 tokenizer over a models
// directory (<models_dir>/phi-3-tiny), and an upload helper.
#pragma once

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "common/rpc/auth.h"
#include "common/rpc/channel.h"
#include "common/rpc/server.h"
#include "common/rpc/service_util.h"
#include "common/rpc/status.h"
#include "common/text/phi3_tokenizer_files.h"
#include "services/dataset/dataset_service.h"
#include "services/dataset/model_tokenizers.h"

namespace tunefleet::trainer::testing {

inline constexpr char kTinyModel[] = "phi-3-tiny";

// Writes the Phi-3 tokenizer files and a config.json naming the embedding
// size into <models_dir>/<name>. FAILED_PRECONDITION when the vocabulary
// source is not installed (tests skip).
inline absl::Status WriteTokenizerModel(const std::string& models_dir,
                                        const std::string& name = kTinyModel) {
  if (!std::filesystem::exists(text::DefaultLlamaVocabSource())) {
    return absl::FailedPreconditionError("the npm vocabulary is not installed (scripts/install-deps)");
  }
  std::string dir = absl::StrCat(models_dir, "/", name);
  std::filesystem::create_directories(dir);
  if (!std::filesystem::exists(dir + "/config.json")) {
    std::ofstream(dir + "/config.json") << R"({"model_type": "phi3", "vocab_size": 32064})";
  }
  return text::WritePhi3TokenizerFiles(dir);
}

class DatasetServer {
 public:
  // `keys` must hold `internal_key`'s line and `tenant_key`'s line.
  DatasetServer(const std::string& root, const std::string& models_dir,
                std::shared_ptr<const rpc::KeyRing> keys, int64_t batch_tokens = 64)
      : tokenizers_(models_dir) {
    auto registry = dataset::FileRegistry::Open(root, dataset::FileRegistryOptions{});
    EXPECT_TRUE(registry.ok()) << registry.status();
    registry_ = std::move(*registry);
    auth_ = std::make_unique<rpc::Authenticator>(keys);
    executor_ = std::make_unique<rpc::Executor>(2);
    processor_ = std::make_unique<dataset::FileProcessor>(registry_.get(), &dataset::EncodeReport);
    service_ = std::make_unique<dataset::DatasetServiceImpl>(
        auth_.get(), registry_.get(), executor_.get(), processor_.get(), &tokenizers_);
    shards_ = std::make_unique<dataset::ShardServiceImpl>(auth_.get(), registry_.get(),
                                                          executor_.get(), &tokenizers_,
                                                          batch_tokens);
    rpc::ServerOptions so;
    so.listen_address = "127.0.0.1:0";
    so.metrics_address = "";
    so.drain_timeout = absl::Seconds(1);
    server_ = std::make_unique<rpc::Server>(so);
    server_->AddService(service_.get());
    server_->AddService(shards_.get());
    absl::Status started = server_->Start();
    EXPECT_TRUE(started.ok()) << started;
    server_->SetServing(true);
    rpc::ChannelOptions co;
    co.target = address();
    channel_ = *rpc::MakeChannel(co);
    stub_ = v1::DatasetService::NewStub(channel_);
  }
  ~DatasetServer() {
    server_->Shutdown();
    server_.reset();
    service_.reset();
    shards_.reset();
    executor_.reset();
    processor_.reset();
    registry_.reset();
  }

  std::string address() const { return absl::StrCat("127.0.0.1:", server_->port()); }
  std::shared_ptr<grpc::Channel> channel() const { return channel_; }

  // Uploads `content` as a fine-tuning file and waits until it is processed.
  absl::StatusOr<std::string> Upload(const std::string& tenant_key, const std::string& content,
                                     const std::string& name = "train.jsonl") {
    v1::File file;
    {
      grpc::ClientContext ctx;
      rpc::PrepareContext(&ctx, tenant_key, absl::Seconds(30));
      auto writer = stub_->UploadFile(&ctx, &file);
      v1::UploadFileRequest req;
      req.mutable_metadata()->set_filename(name);
      req.mutable_metadata()->set_purpose(v1::FILE_PURPOSE_FINE_TUNE);
      writer->Write(req);
      req.set_chunk(content);
      writer->Write(req);
      writer->WritesDone();
      absl::Status s = rpc::FromGrpcStatus(writer->Finish());
      if (!s.ok()) return s;
    }
    absl::Time deadline = absl::Now() + absl::Seconds(30);
    for (;;) {
      grpc::ClientContext ctx;
      rpc::PrepareContext(&ctx, tenant_key, absl::Seconds(10));
      v1::GetFileRequest req;
      req.set_file_id(file.id());
      v1::File f;
      absl::Status s = rpc::FromGrpcStatus(stub_->GetFile(&ctx, req, &f));
      if (!s.ok()) return s;
      if (f.status() == v1::FILE_STATUS_PROCESSED) return f.id();
      if (f.status() == v1::FILE_STATUS_ERROR) {
        return absl::InvalidArgumentError(absl::StrCat("file ", f.id(), " failed validation"));
      }
      if (absl::Now() > deadline) return absl::DeadlineExceededError("file still processing");
      absl::SleepFor(absl::Milliseconds(10));
    }
  }

 private:
  dataset::ModelDirTokenizerProvider tokenizers_;
  std::unique_ptr<dataset::FileRegistry> registry_;
  std::unique_ptr<rpc::Authenticator> auth_;
  std::unique_ptr<rpc::Executor> executor_;
  std::unique_ptr<dataset::FileProcessor> processor_;
  std::unique_ptr<dataset::DatasetServiceImpl> service_;
  std::unique_ptr<dataset::ShardServiceImpl> shards_;
  std::unique_ptr<rpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::DatasetService::Stub> stub_;
};

// A small chat set: `n` examples with distinct answers.
inline std::string ChatJsonl(int n) {
  std::string out;
  for (int i = 0; i < n; ++i) {
    absl::StrAppend(&out, R"({"messages": [{"role": "user", "content": "What is )", i,
                    R"( plus one?"}, {"role": "assistant", "content": "It is )", i + 1,
                    R"(."}]})", "\n");
  }
  return out;
}

}  // namespace tunefleet::trainer::testing
