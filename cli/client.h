// Client calls the CLI makes, and how it finds a fleet: flags, then the
// environment (TUNEFLEET_DATASET, TUNEFLEET_API_KEY), then the fleet.json and
// credentials.json that `tunefleet local` wrote.
#pragma once

#include <string>

#include <memory>

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>

#include "absl/status/statusor.h"
#include "common/rpc/channel.h"
#include "common/rpc/status.h"
#include "tunefleet/v1/files.grpc.pb.h"

namespace tunefleet::cli {

struct Endpoint {
  rpc::ChannelOptions channel;
  std::string api_key;
  // Made on first use and reused by every call through this endpoint.
  std::shared_ptr<grpc::Channel> grpc_channel;
};

// The endpoint's channel, made once.
absl::StatusOr<std::shared_ptr<grpc::Channel>> ChannelOf(Endpoint& endpoint);

// One unary call with the endpoint's key and a deadline:
//   Call<v1::JobService>(endpoint, &v1::JobService::Stub::GetJob, request)
template <typename Service, typename Request, typename Response>
absl::StatusOr<Response> Call(
    Endpoint& endpoint,
    grpc::Status (Service::Stub::*method)(grpc::ClientContext*, const Request&, Response*),
    const Request& request, absl::Duration timeout = absl::Seconds(30)) {
  auto channel = ChannelOf(endpoint);
  if (!channel.ok()) return channel.status();
  auto stub = Service::NewStub(*channel);
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, endpoint.api_key, timeout);
  Response response;
  grpc::Status status = ((*stub).*method)(&ctx, request, &response);
  if (!status.ok()) return rpc::FromGrpcStatus(status);
  return response;
}

// Resolves the dataset service endpoint. `fleet_dir` is a `tunefleet local`
// data dir (may be empty).
absl::StatusOr<Endpoint> ResolveEndpoint(const std::string& service,
                                         const std::string& fleet_dir,
                                         const std::string& target_flag,
                                         const std::string& key_flag);

// Streams a local file to DatasetService.UploadFile in 1 MiB chunks.
absl::StatusOr<v1::File> UploadFile(const Endpoint& endpoint, const std::string& path,
                                    v1::FilePurpose purpose);
absl::StatusOr<v1::File> GetFile(const Endpoint& endpoint, const std::string& id);
absl::StatusOr<v1::ListFilesResponse> ListFiles(const Endpoint& endpoint,
                                                const std::string& page_token);
absl::Status DeleteFile(const Endpoint& endpoint, const std::string& id);

// Polls GetFile until the automatic validation is done (processed or error).
absl::StatusOr<v1::File> WaitForValidation(const Endpoint& endpoint, const std::string& id,
                                           absl::Duration timeout);
absl::StatusOr<v1::ValidationReport> ValidateFile(const Endpoint& endpoint,
                                                  const v1::ValidateFileRequest& request);
absl::StatusOr<v1::SplitFileResponse> SplitFile(const Endpoint& endpoint, const std::string& id,
                                                double ratio, int64_t seed);
// Human-readable report: issues, then statistics.
std::string FormatReport(const v1::ValidationReport& report);

// "fine-tune" | "validation".
absl::StatusOr<v1::FilePurpose> ParsePurpose(const std::string& purpose);

}  // namespace tunefleet::cli
