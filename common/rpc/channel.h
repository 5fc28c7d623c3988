// Client side of the runtime: channels with optional TLS/mTLS and keepalive,
// and contexts that carry the API key and a deadline (every call sets one).
#pragma once

#include <memory>
#include <string>

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tunefleet::rpc {

struct ChannelOptions {
  std::string target;  // host:port
  // PEM CA that signed the server certificate; empty: plaintext.
  std::string tls_ca_file;
  // Client certificate and key for mTLS.
  std::string tls_cert_file;
  std::string tls_key_file;
  // Overrides the name checked against the server certificate.
  std::string tls_server_name;
  absl::Duration keepalive_time = absl::Seconds(30);
};

// Reads a whole (PEM or key) file.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

// Channels are expensive: make one per target and reuse it.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ChannelOptions& options);

// Sets the deadline and `authorization: Bearer <api_key>`; an internal caller
// acting for a tenant also names it.
void PrepareContext(grpc::ClientContext* context, const std::string& api_key,
                    absl::Duration timeout, const std::string& on_behalf_of = "");

}  // namespace tunefleet::rpc
