// tunefleet.v1.DatasetService over the FileRegistry, and the internal
// ShardService. Thin: authenticate, convert protos, call the core. Disk work
// runs on an executor, never on a gRPC reaction thread.
#pragma once

#include "common/rpc/auth.h"
#include "common/rpc/service_util.h"
#include "services/dataset/analyzer.h"
#include "services/dataset/file_registry.h"
#include "tunefleet/internal/v1/shards.grpc.pb.h"
#include "tunefleet/v1/files.grpc.pb.h"

namespace tunefleet::dataset {

// Where token statistics come from: a base model's tokenizer and chat
// template. Thread-safe.
class TokenizerProvider {
 public:
  virtual ~TokenizerProvider() = default;
  // INVALID_ARGUMENT naming `base_model` when it is unknown.
  virtual absl::StatusOr<TokenCounter> CounterFor(const std::string& base_model) = 0;
};

// Validates every uploaded file in the background (uploaded -> processing ->
// processed | error), and on start-up the files a restart interrupted.
// Thread-safe.
class FileProcessor {
 public:
  FileProcessor(FileRegistry* registry, rpc::Executor* executor)
      : registry_(registry), executor_(executor) {}
  void Enqueue(const FileRecord& file);
  // Re-enqueues files left unprocessed by a previous run.
  absl::Status RecoverPending();
  // Validates synchronously (runs on the caller's thread).
  absl::Status Process(const FileRecord& file);

 private:
  FileRegistry* registry_;
  rpc::Executor* executor_;
};

class DatasetServiceImpl final : public v1::DatasetService::CallbackService {
 public:
  DatasetServiceImpl(const rpc::Authenticator* auth, FileRegistry* registry,
                     rpc::Executor* executor, FileProcessor* processor = nullptr,
                     TokenizerProvider* tokenizers = nullptr)
      : auth_(*auth),
        registry_(registry),
        executor_(executor),
        processor_(processor),
        tokenizers_(tokenizers) {}

  grpc::ServerReadReactor<v1::UploadFileRequest>* UploadFile(grpc::CallbackServerContext* context,
                                                             v1::File* response) override;
  grpc::ServerUnaryReactor* GetFile(grpc::CallbackServerContext* context,
                                    const v1::GetFileRequest* request,
                                    v1::File* response) override;
  grpc::ServerUnaryReactor* ListFiles(grpc::CallbackServerContext* context,
                                      const v1::ListFilesRequest* request,
                                      v1::ListFilesResponse* response) override;
  grpc::ServerUnaryReactor* DeleteFile(grpc::CallbackServerContext* context,
                                       const v1::DeleteFileRequest* request,
                                       v1::DeleteFileResponse* response) override;
  grpc::ServerWriteReactor<v1::FileChunk>* GetFileContent(
      grpc::CallbackServerContext* context, const v1::GetFileContentRequest* request) override;

  grpc::ServerUnaryReactor* ValidateFile(grpc::CallbackServerContext* context,
                                         const v1::ValidateFileRequest* request,
                                         v1::ValidationReport* response) override;
  grpc::ServerUnaryReactor* SplitFile(grpc::CallbackServerContext* context,
                                      const v1::SplitFileRequest* request,
                                      v1::SplitFileResponse* response) override;

 private:
  // Runs `work` on the executor and finishes the unary call with its status.
  grpc::ServerUnaryReactor* RunUnary(grpc::CallbackServerContext* context,
                                     std::function<absl::Status(const rpc::Principal&)> work);

  const rpc::Authenticator& auth_;
  FileRegistry* registry_;
  rpc::Executor* executor_;
  FileProcessor* processor_;
  TokenizerProvider* tokenizers_;
};

class ShardServiceImpl final : public internal::v1::ShardService::CallbackService {
 public:
  explicit ShardServiceImpl(const rpc::Authenticator* auth) : auth_(*auth) {}
  TF_NOT_IMPLEMENTED_UNARY(PrepareShards, internal::v1::PrepareShardsRequest,
                           internal::v1::ShardManifest, rpc::Audience::kInternal)
  TF_NOT_IMPLEMENTED_SERVER_STREAM(StreamShard, internal::v1::StreamShardRequest,
                                   internal::v1::ShardChunk, rpc::Audience::kInternal)

 private:
  const rpc::Authenticator& auth_;
};

// Proto conversion.
void ToProto(const FileRecord& record, v1::File* out);
void ToProto(const Analysis& analysis, v1::ValidationReport* out);

}  // namespace tunefleet::dataset
