#include "common/rpc/status.h"

#include <string>

#include "absl/strings/match.h"
#include "common/errors/error_details.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace tunefleet::rpc {

// absl::StatusCode and grpc::StatusCode share their numeric values (both
// follow google.rpc.Code), so the code is a cast. Details attached by core
// code as payloads under a type URL become google.rpc.Status.details (Any)
// in the grpc-status-details-bin trailer; every error carries an ErrorInfo
// (its reason defaults to the code's name).
grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  google::rpc::Status wire;
  wire.set_code(static_cast<int>(status.code()));
  wire.set_message(std::string(status.message()));
  const std::string info_url =
      std::string(errors::kTypeUrlPrefix) + google::rpc::ErrorInfo::descriptor()->full_name();
  if (!status.GetPayload(info_url)) {
    google::rpc::ErrorInfo info;
    info.set_reason(errors::DefaultReason(status.code()));
    info.set_domain(std::string(errors::kDomain));
    auto* any = wire.add_details();
    any->set_type_url(info_url);
    any->set_value(info.SerializeAsString());
  }
  status.ForEachPayload([&](absl::string_view url, const absl::Cord& value) {
    if (!absl::StartsWith(url, errors::kTypeUrlPrefix)) return;
    auto* any = wire.add_details();
    any->set_type_url(std::string(url));
    any->set_value(std::string(value));
  });
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()), wire.SerializeAsString());
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  absl::Status out(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
  google::rpc::Status wire;
  if (!status.error_details().empty() && wire.ParseFromString(status.error_details())) {
    for (const auto& any : wire.details()) {
      out.SetPayload(any.type_url(), absl::Cord(any.value()));
    }
  }
  return out;
}

}  // namespace tunefleet::rpc
