// DatasetClient over gRPC: DatasetService (GetFile, ValidateFile, SplitFile, acting for the
// tenant) and DatasetControlService (HoldFile, ReleaseFile) with the internal
// key. One channel, reused; every call has a deadline and UNAVAILABLE is
// retried (rpc::CallWithRetry; a few attempts, the caller is a handler).
#pragma once

#include <memory>
#include <string>

#include "absl/time/time.h"
#include "common/rpc/client.h"
#include "services/scheduler/dataset_client.h"
#include "tunefleet/internal/v1/dataset_control.grpc.pb.h"
#include "tunefleet/v1/files.grpc.pb.h"

namespace tunefleet::scheduler {

class GrpcDatasetClient final : public DatasetClient {
 public:
  GrpcDatasetClient(std::shared_ptr<grpc::Channel> channel, std::string internal_key,
                    absl::Duration timeout = absl::Seconds(30));
  absl::StatusOr<DatasetFile> GetFile(const std::string& tenant,
                                      const std::string& file_id) override;
  absl::StatusOr<TokenCounts> CountTokens(const std::string& tenant, const std::string& file_id,
                                          const std::string& base_model,
                                          absl::Duration timeout) override;
  absl::StatusOr<std::pair<DatasetFile, DatasetFile>> SplitFile(const std::string& tenant,
                                                                const std::string& file_id,
                                                                double validation_ratio,
                                                                int64_t seed) override;
  absl::Status HoldFile(const std::string& tenant, const std::string& file_id,
                        const std::string& holder) override;
  absl::Status ReleaseFile(const std::string& file_id, const std::string& holder) override;

 private:
  rpc::CallOptions Options(const std::string& tenant) const;

  rpc::TypedClient<v1::DatasetService> files_;
  rpc::TypedClient<internal::v1::DatasetControlService> control_;
};

}  // namespace tunefleet::scheduler
