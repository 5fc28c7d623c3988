// The one place where absl::Status and grpc::Status meet. Only service
// classes and clients use it; core code speaks absl::Status.
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace tunefleet::rpc {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace tunefleet::rpc
