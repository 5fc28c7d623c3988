// tunefleet.v1.DatasetService over the FileRegistry, and the internal
// ShardService. Thin: authenticate, convert protos, call the core. Disk work
// runs on an executor, never on a gRPC reaction thread.
#pragma once

#include "common/rpc/auth.h"
#include "common/rpc/service_util.h"
#include "services/dataset/analyzer.h"
#include "services/dataset/file_processor.h"
#include "services/dataset/file_registry.h"
#include "services/dataset/proto_convert.h"
#include "services/dataset/shards.h"
#include "services/dataset/tokenizer_provider.h"
#include "tunefleet/internal/v1/dataset_control.grpc.pb.h"
#include "tunefleet/internal/v1/shards.grpc.pb.h"
#include "tunefleet/v1/files.grpc.pb.h"

namespace tunefleet::dataset {

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
                                    const v1::GetFileRequest* request, v1::File* response) override;
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
  const rpc::Authenticator& auth_;
  FileRegistry* registry_;
  rpc::Executor* executor_;
  FileProcessor* processor_;
  TokenizerProvider* tokenizers_;
};

class ShardServiceImpl final : public internal::v1::ShardService::CallbackService {
 public:
  // `batch_tokens`: about how many tokens one streamed message carries.
  ShardServiceImpl(const rpc::Authenticator* auth, FileRegistry* registry, rpc::Executor* executor,
                   TokenizerProvider* tokenizers, int64_t batch_tokens = 1 << 18)
      : auth_(*auth),
        registry_(registry),
        executor_(executor),
        tokenizers_(tokenizers),
        batch_tokens_(batch_tokens) {}

  grpc::ServerUnaryReactor* PrepareShards(grpc::CallbackServerContext* context,
                                          const internal::v1::PrepareShardsRequest* request,
                                          internal::v1::ShardManifest* response) override;
  grpc::ServerWriteReactor<internal::v1::ShardChunk>* StreamShard(
      grpc::CallbackServerContext* context,
      const internal::v1::StreamShardRequest* request) override;

 private:
  const rpc::Authenticator& auth_;
  FileRegistry* registry_;
  rpc::Executor* executor_;
  TokenizerProvider* tokenizers_;
  const int64_t batch_tokens_;
};

class DatasetControlServiceImpl final
    : public internal::v1::DatasetControlService::CallbackService {
 public:
  DatasetControlServiceImpl(const rpc::Authenticator* auth, FileRegistry* registry,
                            rpc::Executor* executor)
      : auth_(*auth), registry_(registry), executor_(executor) {}
  grpc::ServerUnaryReactor* HoldFile(grpc::CallbackServerContext* context,
                                     const internal::v1::HoldFileRequest* request,
                                     internal::v1::HoldFileResponse* response) override;
  grpc::ServerUnaryReactor* ReleaseFile(grpc::CallbackServerContext* context,
                                        const internal::v1::ReleaseFileRequest* request,
                                        internal::v1::ReleaseFileResponse* response) override;

 private:
  const rpc::Authenticator& auth_;
  FileRegistry* registry_;
  rpc::Executor* executor_;
};

}  // namespace tunefleet::dataset
