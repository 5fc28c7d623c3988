#include "services/scheduler/scheduler_service.h"

#include "absl/strings/str_cat.h"

namespace tunefleet::scheduler {
namespace {

constexpr size_t kContentChunkBytes = 1 << 20;

// Streams a model's archive (the pull pattern of the dataset service's
// GetFileContent): one write in flight; each piece is read on the executor
// when the previous one is written, so a slow client holds one chunk here.
class ModelContentReactor final : public grpc::ServerWriteReactor<v1::ModelContentChunk> {
 public:
  ModelContentReactor(Scheduler* scheduler, std::string tenant, std::string model_id,
                      rpc::Executor* executor)
      : executor_(executor) {
    executor_->Submit([this, scheduler, tenant = std::move(tenant),
                       model_id = std::move(model_id)] {
      auto stream = scheduler->OpenModelContent(tenant, model_id);
      if (!stream.ok()) {
        Finish(rpc::ToGrpcStatus(stream.status()));
        return;
      }
      stream_ = *std::move(stream);
      filename_ = absl::StrCat(model_id, ".tar");
      for (char& c : filename_) {
        if (c == ':' || c == '/') c = '_';
      }
      Next();
    });
  }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
      return;
    }
    if (stream_->done()) {
      Finish(grpc::Status::OK);
      return;
    }
    executor_->Submit([this] { Next(); });
  }
  void OnDone() override { delete this; }

 private:
  // On the executor.
  void Next() {
    absl::StatusOr<std::string> data = stream_->Next(kContentChunkBytes);
    if (!data.ok()) {
      Finish(rpc::ToGrpcStatus(data.status()));
      return;
    }
    chunk_.Clear();
    if (offset_ == 0) chunk_.set_filename(filename_);
    chunk_.set_offset(offset_);
    chunk_.set_total_bytes(stream_->total_bytes());
    offset_ += static_cast<int64_t>(data->size());
    *chunk_.mutable_data() = *std::move(data);
    if (stream_->done()) chunk_.set_sha256(stream_->sha256());
    StartWrite(&chunk_);
  }
  rpc::Executor* executor_;
  std::unique_ptr<TarStream> stream_;
  std::string filename_;
  int64_t offset_ = 0;
  v1::ModelContentChunk chunk_;
};

}  // namespace

grpc::ServerUnaryReactor* ModelServiceImpl::ListModels(grpc::CallbackServerContext* context,
                                                       const v1::ListModelsRequest* request,
                                                       v1::ListModelsResponse* response) {
  return Unary(context, auth_.AuthenticateTenant(*context), executor_, response,
               [this, request](const rpc::Principal& p) {
                 return scheduler_->ListModels(p.tenant, *request);
               });
}

grpc::ServerUnaryReactor* ModelServiceImpl::GetModel(grpc::CallbackServerContext* context,
                                                     const v1::GetModelRequest* request,
                                                     v1::Model* response) {
  return Unary(context, auth_.AuthenticateTenant(*context), executor_, response,
               [this, request](const rpc::Principal& p) {
                 return scheduler_->GetModel(p.tenant, request->model_id());
               });
}

grpc::ServerUnaryReactor* ModelServiceImpl::DeleteModel(grpc::CallbackServerContext* context,
                                                        const v1::DeleteModelRequest* request,
                                                        v1::DeleteModelResponse* response) {
  return Unary(context, auth_.AuthenticateTenant(*context), executor_, response,
               [this, request](const rpc::Principal& p) {
                 return scheduler_->DeleteModel(p.tenant, request->model_id());
               });
}

grpc::ServerWriteReactor<v1::ModelContentChunk>* ModelServiceImpl::GetModelContent(
    grpc::CallbackServerContext* context, const v1::GetModelContentRequest* request) {
  absl::StatusOr<rpc::Principal> caller = auth_.AuthenticateTenant(*context);
  if (!caller.ok()) {
    return new rpc::RejectedWriteReactor<v1::ModelContentChunk>(caller.status());
  }
  return new ModelContentReactor(scheduler_, caller->tenant, request->model_id(), executor_);
}

}  // namespace tunefleet::scheduler
