#include "services/scheduler/grpc_dataset_client.h"

#include "common/rpc/channel.h"
#include "common/rpc/status.h"

namespace tunefleet::scheduler {
namespace {

DatasetFile FromProto(const v1::File& f) {
  DatasetFile d;
  d.id = f.id();
  d.purpose = f.purpose();
  d.status = f.status();
  d.format = f.format();
  d.status_details = f.status_details();
  d.examples = f.validation().statistics().examples();
  d.trained_tokens = f.validation().statistics().trained_tokens();
  return d;
}

}  // namespace

GrpcDatasetClient::GrpcDatasetClient(std::shared_ptr<grpc::Channel> channel,
                                     std::string internal_key, absl::Duration timeout)
    : files_(v1::DatasetService::NewStub(channel)),
      control_(internal::v1::DatasetControlService::NewStub(channel)),
      key_(std::move(internal_key)),
      timeout_(timeout) {}

absl::StatusOr<DatasetFile> GrpcDatasetClient::GetFile(const std::string& tenant,
                                                       const std::string& file_id) {
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, key_, timeout_, tenant);
  v1::GetFileRequest req;
  req.set_file_id(file_id);
  v1::File file;
  grpc::Status s = files_->GetFile(&ctx, req, &file);
  if (!s.ok()) return rpc::FromGrpcStatus(s);
  return FromProto(file);
}

absl::StatusOr<std::pair<DatasetFile, DatasetFile>> GrpcDatasetClient::SplitFile(
    const std::string& tenant, const std::string& file_id, double validation_ratio,
    int64_t seed) {
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, key_, timeout_, tenant);
  v1::SplitFileRequest req;
  req.set_file_id(file_id);
  req.set_validation_ratio(validation_ratio);
  req.set_seed(seed);
  v1::SplitFileResponse resp;
  grpc::Status s = files_->SplitFile(&ctx, req, &resp);
  if (!s.ok()) return rpc::FromGrpcStatus(s);
  return std::make_pair(FromProto(resp.training_file()), FromProto(resp.validation_file()));
}

absl::Status GrpcDatasetClient::HoldFile(const std::string& tenant, const std::string& file_id,
                                         const std::string& holder) {
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, key_, timeout_);
  internal::v1::HoldFileRequest req;
  req.set_file_id(file_id);
  req.set_holder(holder);
  req.set_tenant(tenant);
  internal::v1::HoldFileResponse resp;
  return rpc::FromGrpcStatus(control_->HoldFile(&ctx, req, &resp));
}

absl::Status GrpcDatasetClient::ReleaseFile(const std::string& file_id,
                                            const std::string& holder) {
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, key_, timeout_);
  internal::v1::ReleaseFileRequest req;
  req.set_file_id(file_id);
  req.set_holder(holder);
  internal::v1::ReleaseFileResponse resp;
  return rpc::FromGrpcStatus(control_->ReleaseFile(&ctx, req, &resp));
}

}  // namespace tunefleet::scheduler
