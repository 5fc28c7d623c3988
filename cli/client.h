// Client calls the CLI makes, and how it finds a fleet. Each setting (the
// service's address, the API key, each TLS file) is taken from the first
// place that has it:
//   1. flags: --target, --api-key, --tls-ca, --tls-cert, --tls-key,
//      --tls-server-name;
//   2. environment: TUNEFLEET_DATASET / TUNEFLEET_SCHEDULER /
//      TUNEFLEET_SERVING, TUNEFLEET_API_KEY, TUNEFLEET_TLS_CA,
//      TUNEFLEET_TLS_CERT, TUNEFLEET_TLS_KEY, TUNEFLEET_TLS_SERVER_NAME;
//   3. one config file, the first of: --config FILE; $TUNEFLEET_CONFIG;
//      <--fleet dir>/config.json (what `tunefleet local` writes; a fleet dir
//      from before it has fleet.json and credentials.json, read instead);
//      $XDG_CONFIG_HOME/tunefleet/config.json (~/.config/tunefleet/...).
// A config file is one JSON object:
//   {"dataset": "host:port", "scheduler": "host:port", "serving": "host:port",
//    "api_key": "tf-...", "tls_ca": "ca.pem", "tls_cert": "client.pem",
//    "tls_key": "client.key", "tls_server_name": "tunefleet.example"}
// (every field optional; relative TLS paths are relative to the file).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>

#include "absl/status/statusor.h"
#include "common/rpc/channel.h"
#include "common/rpc/client.h"
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

// One unary call with the endpoint's key and a deadline, through the shared
// client (common/rpc/client.h): a server that is not reachable (UNAVAILABLE)
// is tried 3 times with a short backoff before the CLI gives up; every other
// answer is final.
//   Call<v1::JobService>(endpoint, &v1::JobService::Stub::GetJob, request)
template <typename Service, typename Request, typename Response>
absl::StatusOr<Response> Call(
    Endpoint& endpoint,
    grpc::Status (Service::Stub::*method)(grpc::ClientContext*, const Request&, Response*),
    const Request& request, absl::Duration timeout = absl::Seconds(30)) {
  auto channel = ChannelOf(endpoint);
  if (!channel.ok()) return channel.status();
  auto stub = Service::NewStub(*channel);
  rpc::CallOptions options;
  options.api_key = endpoint.api_key;
  options.timeout = timeout;
  options.overall_timeout = timeout;
  options.max_attempts = 3;
  options.initial_backoff = absl::Milliseconds(50);
  return rpc::CallUnary(stub.get(), method, request, options);
}

// What the flags say (empty: not given).
struct EndpointFlags {
  std::string target;
  std::string api_key;
  rpc::ChannelOptions tls;  // the tls_* fields
  std::string config_file;  // --config
  std::string fleet_dir;    // --fleet: a `tunefleet local` data dir
};

// A config file's contents; `path` is where it was read from.
struct ClientConfig {
  std::string path;
  std::map<std::string, std::string> addresses;  // "scheduler" -> host:port
  std::string api_key;
  rpc::ChannelOptions tls;
};
absl::StatusOr<ClientConfig> ReadClientConfig(const std::string& path);
// Writes atomically, readable by the owner only (it holds a key).
absl::Status WriteClientConfig(const std::string& path, const ClientConfig& config);
// $XDG_CONFIG_HOME/tunefleet/config.json, else $HOME/.config/tunefleet/config.json.
std::string DefaultConfigPath();

// Resolves `service` ("dataset", "scheduler", "serving") in the order above.
absl::StatusOr<Endpoint> ResolveEndpoint(const std::string& service, const EndpointFlags& flags);
// The same with only --fleet, --target and --api-key.
absl::StatusOr<Endpoint> ResolveEndpoint(const std::string& service,
                                         const std::string& fleet_dir,
                                         const std::string& target_flag,
                                         const std::string& key_flag);

// Streams a local file to DatasetService.UploadFile in 1 MiB chunks;
// `on_progress` (if set) is told the bytes sent after each.
absl::StatusOr<v1::File> UploadFile(const Endpoint& endpoint, const std::string& path,
                                    v1::FilePurpose purpose,
                                    const std::function<void(int64_t)>& on_progress = nullptr);
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
