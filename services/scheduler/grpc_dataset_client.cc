#include "services/scheduler/grpc_dataset_client.h"

#include <algorithm>
#include <cmath>

#include "common/base/status_macros.h"

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
  d.labels = f.validation().statistics().label_counts_size();
  d.longest_example = static_cast<int64_t>(std::ceil(f.validation().statistics().tokens_per_example().max()));
  d.bytes = f.bytes();
  return d;
}

rpc::CallOptions Defaults(std::string internal_key, absl::Duration timeout) {
  rpc::CallOptions o;
  o.api_key = std::move(internal_key);
  o.timeout = timeout;
  o.max_attempts = 3;
  return o;
}

}  // namespace

GrpcDatasetClient::GrpcDatasetClient(std::shared_ptr<grpc::Channel> channel,
                                     std::string internal_key, absl::Duration timeout)
    : files_(channel, Defaults(internal_key, timeout)),
      control_(channel, Defaults(internal_key, timeout)) {}

rpc::CallOptions GrpcDatasetClient::Options(const std::string& tenant) const {
  rpc::CallOptions o = files_.defaults();
  o.on_behalf_of = tenant;
  return o;
}

absl::StatusOr<DatasetFile> GrpcDatasetClient::GetFile(const std::string& tenant,
                                                       const std::string& file_id) {
  v1::GetFileRequest req;
  req.set_file_id(file_id);
  rpc::CallOptions o = Options(tenant);
  o.retry_deadline_exceeded = true;  // a read
  TF_ASSIGN_OR_RETURN(v1::File file, files_.Call(&v1::DatasetService::Stub::GetFile, req, o));
  return FromProto(file);
}

absl::StatusOr<TokenCounts> GrpcDatasetClient::CountTokens(const std::string& tenant,
                                                           const std::string& file_id,
                                                           const std::string& base_model,
                                                           absl::Duration timeout) {
  v1::ValidateFileRequest req;
  req.set_file_id(file_id);
  req.set_base_model(base_model);
  req.set_max_issues(1);
  rpc::CallOptions o = Options(tenant);
  o.max_attempts = 1;  // a pass over the whole file: not repeated on a timeout
  o.timeout = std::min(o.timeout, timeout);
  o.overall_timeout = o.timeout;
  TF_ASSIGN_OR_RETURN(v1::ValidationReport report,
                      files_.Call(&v1::DatasetService::Stub::ValidateFile, req, o));
  TokenCounts c;
  c.trained_tokens = report.statistics().trained_tokens();
  c.longest_example =
      static_cast<int64_t>(std::ceil(report.statistics().tokens_per_example().max()));
  return c;
}

absl::StatusOr<std::pair<DatasetFile, DatasetFile>> GrpcDatasetClient::SplitFile(
    const std::string& tenant, const std::string& file_id, double validation_ratio,
    int64_t seed) {
  v1::SplitFileRequest req;
  req.set_file_id(file_id);
  req.set_validation_ratio(validation_ratio);
  req.set_seed(seed);
  TF_ASSIGN_OR_RETURN(v1::SplitFileResponse resp,
                      files_.Call(&v1::DatasetService::Stub::SplitFile, req, Options(tenant)));
  return std::make_pair(FromProto(resp.training_file()), FromProto(resp.validation_file()));
}

absl::Status GrpcDatasetClient::HoldFile(const std::string& tenant, const std::string& file_id,
                                         const std::string& holder) {
  internal::v1::HoldFileRequest req;
  req.set_file_id(file_id);
  req.set_holder(holder);
  req.set_tenant(tenant);
  return control_.Call(&internal::v1::DatasetControlService::Stub::HoldFile, req).status();
}

absl::Status GrpcDatasetClient::ReleaseFile(const std::string& file_id,
                                            const std::string& holder) {
  internal::v1::ReleaseFileRequest req;
  req.set_file_id(file_id);
  req.set_holder(holder);
  return control_.Call(&internal::v1::DatasetControlService::Stub::ReleaseFile, req).status();
}

}  // namespace tunefleet::scheduler
