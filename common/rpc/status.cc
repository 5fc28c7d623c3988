#include "common/rpc/status.h"

#include <string>

namespace tunefleet::rpc {

// absl::StatusCode and grpc::StatusCode share their numeric values (both
// follow google.rpc.Code), so the conversion is a cast plus the message.
grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      status.error_message());
}

}  // namespace tunefleet::rpc
