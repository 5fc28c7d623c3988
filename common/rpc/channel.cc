#include "common/rpc/channel.h"

#include <fstream>
#include <sstream>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "common/rpc/auth.h"

namespace tunefleet::rpc {

absl::StatusOr<std::string> ReadFileToString(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ChannelOptions& options) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS,
              static_cast<int>(absl::ToInt64Milliseconds(options.keepalive_time)));
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  args.SetMaxReceiveMessageSize(64 << 20);
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        "a client certificate and its key go together (tls_cert_file, tls_key_file)");
  }
  if (options.tls_ca_file.empty()) {
    if (!options.tls_cert_file.empty()) {
      return absl::InvalidArgumentError("a client certificate needs a CA file (tls_ca_file)");
    }
    creds = grpc::InsecureChannelCredentials();
  } else {
    grpc::SslCredentialsOptions ssl;
    TF_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadFileToString(options.tls_ca_file));
    if (!options.tls_cert_file.empty()) {
      TF_ASSIGN_OR_RETURN(ssl.pem_cert_chain, ReadFileToString(options.tls_cert_file));
      TF_ASSIGN_OR_RETURN(ssl.pem_private_key, ReadFileToString(options.tls_key_file));
    }
    creds = grpc::SslCredentials(ssl);
    if (!options.tls_server_name.empty()) {
      args.SetSslTargetNameOverride(options.tls_server_name);
    }
  }
  return grpc::CreateCustomChannel(options.target, creds, args);
}

void PrepareContext(grpc::ClientContext* context, const std::string& api_key,
                    absl::Duration timeout, const std::string& on_behalf_of) {
  context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  if (!api_key.empty()) context->AddMetadata("authorization", "Bearer " + api_key);
  if (!on_behalf_of.empty()) context->AddMetadata(kOnBehalfOfHeader, on_behalf_of);
}

}  // namespace tunefleet::rpc
