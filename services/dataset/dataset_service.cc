#include "services/dataset/dataset_service.h"

#include <google/protobuf/util/time_util.h>
#include <spdlog/spdlog.h>

#include <atomic>

#include "common/errors/error_details.h"
#include "absl/strings/str_cat.h"
#include "common/base/ids.h"
#include "common/base/status_macros.h"
#include "common/rpc/stream_reactor.h"
#include "services/dataset/splitter.h"

namespace tunefleet::dataset {
namespace {

constexpr size_t kDownloadChunkBytes = 1 << 20;

// Client-streaming upload: metadata first, then chunks. Each chunk is
// written on the executor; the next read starts only when it is stored, so
// memory stays at one chunk per upload whatever the file size.
class UploadReactor final : public grpc::ServerReadReactor<v1::UploadFileRequest> {
 public:
  UploadReactor(grpc::CallbackServerContext* context, const rpc::Principal& caller,
                FileRegistry* registry, rpc::Executor* executor, FileProcessor* processor,
                v1::File* response)
      : context_(context),
        caller_(caller),
        registry_(registry),
        executor_(executor),
        processor_(processor),
        response_(response) {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // The client half-closed (WritesDone) or the call was cancelled (the
      // client went away or its deadline passed). Only a half-close commits:
      // a cancelled upload is discarded with its Upload.
      if (context_->IsCancelled()) {
        Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the upload was cancelled"));
        return;
      }
      if (upload_ == nullptr) {
        Finish(rpc::ToGrpcStatus(
            absl::InvalidArgumentError("the stream ended before the first message with metadata")));
        return;
      }
      executor_->Submit([this] {
        if (context_->IsCancelled()) {
          Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the upload was cancelled"));
          return;
        }
        absl::StatusOr<FileRecord> record = upload_->Commit();
        if (record.ok()) {
          ToProto(*record, response_);
          // A retried upload (same request_id) returns a file already queued.
          if (processor_ != nullptr && record->status == FileStatus::kUploaded)
            processor_->Enqueue(*record);
          spdlog::info("file={} tenant={} bytes={} uploaded", record->id, record->tenant,
                       record->bytes);
        }
        Finish(rpc::ToGrpcStatus(record.status()));
      });
      return;
    }
    executor_->Submit([this] {
      absl::Status s = Handle();
      if (!s.ok()) {
        Finish(rpc::ToGrpcStatus(s));
        return;
      }
      StartRead(&request_);
    });
  }

  void OnDone() override { delete this; }

 private:
  absl::Status Handle() {
    if (request_.has_metadata()) {
      if (upload_ != nullptr) {
        return absl::InvalidArgumentError("metadata may only be sent in the first message");
      }
      const auto& m = request_.metadata();
      UploadRequest req;
      req.filename = m.filename();
      req.purpose = static_cast<Purpose>(m.purpose());
      req.format = m.format();
      req.expected_bytes = m.expected_bytes();
      req.expected_sha256 = m.expected_sha256();
      req.labels = errors::ToLabels(m.labels());
      req.description = m.description();
      req.request_id = m.request_id();
      absl::StatusOr<std::unique_ptr<Upload>> upload =
          registry_->BeginUpload(caller_.tenant, std::move(req));
      if (!upload.ok()) return upload.status();
      upload_ = std::move(*upload);
      return absl::OkStatus();
    }
    if (upload_ == nullptr) {
      return absl::InvalidArgumentError("the first message must carry metadata, not a chunk");
    }
    if (!request_.has_chunk())
      return absl::InvalidArgumentError("a message carries neither metadata nor chunk");
    return upload_->Append(request_.chunk());
  }

  grpc::CallbackServerContext* const context_;
  const rpc::Principal caller_;
  FileRegistry* registry_;
  rpc::Executor* executor_;
  FileProcessor* processor_;
  v1::File* response_;
  v1::UploadFileRequest request_;
  std::unique_ptr<Upload> upload_;
};

// Server-streaming download in 1 MiB chunks, read on the executor (the
// shared pull reactor: one chunk in memory per download).
class DownloadReactor final : public rpc::PullWriteReactor<v1::FileChunk> {
 public:
  DownloadReactor(std::unique_ptr<store::ArtifactReader> reader, int64_t offset,
                  rpc::Executor* executor)
      : PullWriteReactor(executor), reader_(std::move(reader)), offset_(offset) {
    Start();
  }

 private:
  absl::StatusOr<rpc::Pulled> Pull(v1::FileChunk* chunk) override {
    TF_ASSIGN_OR_RETURN(std::string data, reader_->Read(kDownloadChunkBytes));
    if (data.empty()) return rpc::Pulled::kEnd;
    chunk->set_offset(offset_);
    offset_ += static_cast<int64_t>(data.size());
    *chunk->mutable_data() = std::move(data);
    return rpc::Pulled::kMessage;
  }
  std::unique_ptr<store::ArtifactReader> reader_;
  int64_t offset_;
};

}  // namespace

grpc::ServerReadReactor<v1::UploadFileRequest>* DatasetServiceImpl::UploadFile(
    grpc::CallbackServerContext* context, v1::File* response) {
  absl::StatusOr<rpc::Principal> caller = auth_.AuthenticateTenant(*context);
  if (!caller.ok()) return new rpc::RejectedReadReactor<v1::UploadFileRequest>(caller.status());
  return new UploadReactor(context, *caller, registry_, executor_, processor_, response);
}

grpc::ServerUnaryReactor* DatasetServiceImpl::GetFile(grpc::CallbackServerContext* context,
                                                      const v1::GetFileRequest* request,
                                                      v1::File* response) {
  return rpc::RunOnExecutor(context, auth_.AuthenticateTenant(*context), executor_,
                            [this, request, response](const rpc::Principal& caller) {
                              absl::StatusOr<FileRecord> f =
                                  registry_->Get(caller.scope(), request->file_id());
                              if (f.ok()) ToProto(*f, response);
                              return f.status();
                            });
}

grpc::ServerUnaryReactor* DatasetServiceImpl::ListFiles(grpc::CallbackServerContext* context,
                                                        const v1::ListFilesRequest* request,
                                                        v1::ListFilesResponse* response) {
  return rpc::RunOnExecutor(context, auth_.AuthenticateTenant(*context), executor_,
                            [this, request, response](const rpc::Principal& caller) {
                              if (!v1::FileView_IsValid(request->view()))
                                return errors::FieldError("view", "unknown value");
                              absl::StatusOr<FilePage> page = registry_->List(
                                  caller.tenant, request->page_size(), request->page_token(),
                                  static_cast<Purpose>(request->purpose()),
                                  errors::ToLabels(request->labels()));
                              if (!page.ok()) return page.status();
                              // The basic view leaves the validation report
                              // out (GetFile has it).
                              const bool full = request->view() == v1::FILE_VIEW_FULL;
                              for (FileRecord& f : page->files) {
                                if (!full) f.validation.clear();
                                ToProto(f, response->add_files());
                              }
                              response->set_next_page_token(page->next_page_token);
                              return absl::OkStatus();
                            });
}

grpc::ServerUnaryReactor* DatasetServiceImpl::DeleteFile(grpc::CallbackServerContext* context,
                                                         const v1::DeleteFileRequest* request,
                                                         v1::DeleteFileResponse* response) {
  return rpc::RunOnExecutor(context, auth_.AuthenticateTenant(*context), executor_,
                            [this, request, response](const rpc::Principal& caller) {
                              absl::Status s = registry_->Delete(caller.tenant, request->file_id());
                              if (s.ok()) {
                                response->set_file_id(request->file_id());
                                response->set_deleted(true);
                                spdlog::info("file={} tenant={} deleted", request->file_id(),
                                             caller.tenant);
                              }
                              return s;
                            });
}

grpc::ServerUnaryReactor* DatasetServiceImpl::ValidateFile(grpc::CallbackServerContext* context,
                                                           const v1::ValidateFileRequest* request,
                                                           v1::ValidationReport* response) {
  return rpc::RunOnExecutor(
      context, auth_.AuthenticateTenant(*context), executor_,
      [this, context, request, response](const rpc::Principal& caller) {
        ValidateRequest req;
        req.file_id = request->file_id();
        // A pass over a large file outlives a caller that gave up (CreateJob
        // counts with a deadline): stop then.
        req.cancelled = [context] { return context->IsCancelled(); };
        req.base_model = request->base_model();
        req.max_sequence_length = request->max_sequence_length();
        if (request->format() != v1::DATA_FORMAT_UNSPECIFIED) {
          req.format = static_cast<DataFormat>(request->format());
        }
        req.max_issues = request->max_issues();
        req.epochs = request->epochs();
        TF_ASSIGN_OR_RETURN(ValidateResult r,
                            ValidateStoredFile(*registry_, tokenizers_, caller.scope(), req));
        response->set_file_id(r.file.id);
        response->set_base_model(request->base_model());
        response->set_max_sequence_length(request->max_sequence_length());
        ToProto(r.analysis, response);
        response->set_epochs(static_cast<int32_t>(r.epochs));
        response->set_estimated_trained_tokens(r.estimated_trained_tokens);
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* DatasetServiceImpl::SplitFile(grpc::CallbackServerContext* context,
                                                        const v1::SplitFileRequest* request,
                                                        v1::SplitFileResponse* response) {
  return rpc::RunOnExecutor(context, auth_.AuthenticateTenant(*context), executor_,
                            [this, request, response](const rpc::Principal& caller) {
                              absl::StatusOr<SplitResult> split =
                                  dataset::SplitFile(*registry_, caller.tenant, request->file_id(),
                                                     request->validation_ratio(), request->seed(),
                                                     request->request_id());
                              if (!split.ok()) return split.status();
                              ToProto(split->training, response->mutable_training_file());
                              ToProto(split->validation, response->mutable_validation_file());
                              if (processor_ != nullptr) {
                                for (const FileRecord* f : {&split->training, &split->validation})
                                  if (f->status == FileStatus::kUploaded) processor_->Enqueue(*f);
                              }
                              spdlog::info("file={} split into {} and {}", request->file_id(),
                                           split->training.id, split->validation.id);
                              return absl::OkStatus();
                            });
}

grpc::ServerWriteReactor<v1::FileChunk>* DatasetServiceImpl::GetFileContent(
    grpc::CallbackServerContext* context, const v1::GetFileContentRequest* request) {
  absl::StatusOr<rpc::Principal> caller = auth_.AuthenticateTenant(*context);
  if (!caller.ok()) return new rpc::RejectedWriteReactor<v1::FileChunk>(caller.status());
  // Opening is a quick metadata lookup plus open(2); the reads go to the
  // executor.
  auto reader = registry_->OpenContent(caller->scope(), request->file_id(), request->offset());
  if (!reader.ok()) return new rpc::RejectedWriteReactor<v1::FileChunk>(reader.status());
  return new DownloadReactor(std::move(*reader), request->offset(), executor_);
}


namespace {

// Streams a rank's part of a shard set on the shared pull reactor. Opening
// (the manifest and three positioned readers; resuming at an offset hashes
// the skipped examples) happens in the first pull, on the executor like
// every batch read.
class ShardReactor final : public rpc::PullWriteReactor<internal::v1::ShardChunk> {
 public:
  ShardReactor(store::ArtifactStore* store, internal::v1::StreamShardRequest request,
               int64_t batch_tokens, rpc::Executor* executor)
      : PullWriteReactor(executor),
        store_(store),
        request_(std::move(request)),
        batch_tokens_(batch_tokens) {
    Start();
  }

 private:
  absl::StatusOr<rpc::Pulled> Pull(internal::v1::ShardChunk* chunk) override {
    if (last_) return rpc::Pulled::kEnd;
    if (streamer_ == nullptr) {
      TF_ASSIGN_OR_RETURN(streamer_,
                          ShardStreamer::Open(*store_, request_.shard_set_id(), request_.rank(),
                                              request_.world_size(), request_.example_offset(),
                                              batch_tokens_));
    }
    TF_ASSIGN_OR_RETURN(ShardBatch batch, streamer_->Next());
    chunk->Clear();
    chunk->set_first_example(batch.first_example);
    *chunk->mutable_token_ids() = {batch.token_ids.begin(), batch.token_ids.end()};
    chunk->set_loss_mask(std::move(batch.loss_mask));
    *chunk->mutable_example_lengths() = {batch.example_lengths.begin(),
                                         batch.example_lengths.end()};
    chunk->set_running_sha256(batch.running_sha256);
    chunk->set_last(batch.last);
    chunk->set_pairs(batch.pairs);
    *chunk->mutable_labels() = {batch.labels.begin(), batch.labels.end()};
    last_ = batch.last;
    return rpc::Pulled::kMessage;
  }

  store::ArtifactStore* const store_;
  const internal::v1::StreamShardRequest request_;
  const int64_t batch_tokens_;
  std::unique_ptr<ShardStreamer> streamer_;
  bool last_ = false;
};

}  // namespace

grpc::ServerUnaryReactor* ShardServiceImpl::PrepareShards(
    grpc::CallbackServerContext* context, const internal::v1::PrepareShardsRequest* request,
    internal::v1::ShardManifest* response) {
  return rpc::RunOnExecutor(
      context, auth_.AuthenticateInternal(*context), executor_,
      [this, request, response](const rpc::Principal&) -> absl::Status {
        if (request->max_sequence_length() <= 0) {
          return errors::InvalidField("max_sequence_length", "max_sequence_length must be positive");
        }
        if (tokenizers_ == nullptr) {
          return absl::FailedPreconditionError(
              "this dataset service has no models configured to tokenize with");
        }
        TF_ASSIGN_OR_RETURN(ModelTokenizer tokenizer, tokenizers_->Get(request->base_model()));
        // The tenant named in the request owns the file; a request naming
        // none is the platform's (an internal call, checked above).
        const Scope scope = request->tenant().empty() ? Scope::Platform()
                                                      : Scope::Tenant(request->tenant());
        TF_ASSIGN_OR_RETURN(FileRecord file, registry_->Get(scope, request->file_id()));
        std::string id = ShardSetId(file.sha256, tokenizer.id, request->max_sequence_length());
        TF_ASSIGN_OR_RETURN(auto content, registry_->OpenContent(Scope::Platform(), file.id, 0));
        TF_ASSIGN_OR_RETURN(ShardManifest m,
                            PrepareShardSet(registry_->artifacts(), *content, id,
                                            tokenizer.tokenize, request->max_sequence_length(),
                                            file.format != 0
                                                ? std::optional<DataFormat>(
                                                      static_cast<DataFormat>(file.format))
                                                : std::nullopt));
        response->set_shard_set_id(m.shard_set_id);
        response->set_examples(m.examples);
        response->set_tokens(m.tokens);
        response->set_trained_tokens(m.trained_tokens);
        response->set_sha256(m.sha256);
        response->set_pairs(m.pairs);
        *response->mutable_label_names() = {m.label_names.begin(), m.label_names.end()};
        spdlog::info("file={} shards={} examples={} tokens={}", file.id, m.shard_set_id, m.examples,
                     m.tokens);
        return absl::OkStatus();
      });
}

grpc::ServerWriteReactor<internal::v1::ShardChunk>* ShardServiceImpl::StreamShard(
    grpc::CallbackServerContext* context, const internal::v1::StreamShardRequest* request) {
  using Rejected = rpc::RejectedWriteReactor<internal::v1::ShardChunk>;
  absl::StatusOr<rpc::Principal> caller = auth_.AuthenticateInternal(*context);
  if (!caller.ok()) return new Rejected(caller.status());
  if (!HasIdPrefix(request->shard_set_id(), "shard")) {
    return new Rejected(errors::InvalidField(
        "shard_set_id", absl::StrCat("shard_set_id '", request->shard_set_id(), "' is not a shard set id")));
  }
  return new ShardReactor(&registry_->artifacts(), *request, batch_tokens_, executor_);
}

grpc::ServerUnaryReactor* DatasetControlServiceImpl::HoldFile(
    grpc::CallbackServerContext* context, const internal::v1::HoldFileRequest* request,
    internal::v1::HoldFileResponse* response) {
  return rpc::RunOnExecutor(context, auth_.AuthenticateInternal(*context), executor_,
                            [this, request](const rpc::Principal&) {
                              return registry_->Hold(request->tenant(), request->file_id(),
                                                     request->holder());
                            });
}

grpc::ServerUnaryReactor* DatasetControlServiceImpl::ReleaseFile(
    grpc::CallbackServerContext* context, const internal::v1::ReleaseFileRequest* request,
    internal::v1::ReleaseFileResponse* response) {
  return rpc::RunOnExecutor(context, auth_.AuthenticateInternal(*context), executor_,
                            [this, request](const rpc::Principal&) {
                              return registry_->Release(request->file_id(), request->holder());
                            });
}

}  // namespace tunefleet::dataset
