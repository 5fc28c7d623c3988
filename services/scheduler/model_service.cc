#include "services/scheduler/scheduler_service.h"

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "common/rpc/stream_reactor.h"

namespace tunefleet::scheduler {
namespace {

constexpr size_t kContentChunkBytes = 1 << 20;

// Streams a model's archive on the shared pull reactor: one write in
// flight; opening and every piece run on the executor, so a slow client
// holds one chunk here.
class ModelContentReactor final : public rpc::PullWriteReactor<v1::ModelContentChunk> {
 public:
  ModelContentReactor(Scheduler* scheduler, std::string tenant, std::string model_id,
                      rpc::Executor* executor)
      : PullWriteReactor(executor),
        scheduler_(scheduler),
        tenant_(std::move(tenant)),
        model_id_(std::move(model_id)) {
    Start();
  }

 private:
  absl::StatusOr<rpc::Pulled> Pull(v1::ModelContentChunk* chunk) override {
    if (stream_ == nullptr) {
      TF_ASSIGN_OR_RETURN(stream_, scheduler_->OpenModelContent(tenant_, model_id_));
    } else if (stream_->done()) {
      return rpc::Pulled::kEnd;
    }
    TF_ASSIGN_OR_RETURN(std::string data, stream_->Next(kContentChunkBytes));
    chunk->Clear();
    if (offset_ == 0) {
      std::string filename = absl::StrCat(model_id_, ".tar");
      for (char& c : filename) {
        if (c == ':' || c == '/') c = '_';
      }
      chunk->set_filename(filename);
    }
    chunk->set_offset(offset_);
    chunk->set_total_bytes(stream_->total_bytes());
    offset_ += static_cast<int64_t>(data.size());
    *chunk->mutable_data() = std::move(data);
    if (stream_->done()) chunk->set_sha256(stream_->sha256());
    return rpc::Pulled::kMessage;
  }

  Scheduler* const scheduler_;
  const std::string tenant_;
  const std::string model_id_;
  std::unique_ptr<TarStream> stream_;
  int64_t offset_ = 0;
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
