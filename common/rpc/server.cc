#include "common/rpc/server.h"

#include <signal.h>

#include <fstream>
#include <sstream>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>
#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"

namespace tunefleet::rpc {

absl::StatusOr<std::string> ReadFileToString(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

namespace {

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeCredentials(const TlsOptions& tls) {
  if (!tls.enabled()) return grpc::InsecureServerCredentials();
  if (tls.cert_file.empty() || tls.key_file.empty()) {
    return absl::InvalidArgumentError("TLS needs both a certificate and a key file");
  }
  TF_ASSIGN_OR_RETURN(std::string cert, ReadFileToString(tls.cert_file));
  TF_ASSIGN_OR_RETURN(std::string key, ReadFileToString(tls.key_file));
  grpc::SslServerCredentialsOptions opts(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  if (!tls.client_ca_file.empty()) {
    TF_ASSIGN_OR_RETURN(opts.pem_root_certs, ReadFileToString(tls.client_ca_file));
    opts.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  opts.pem_key_cert_pairs.push_back({key, cert});
  return grpc::SslServerCredentials(opts);
}

}  // namespace

Server::Server(ServerOptions options)
    : options_(std::move(options)),
      registry_(std::make_shared<prometheus::Registry>()),
      rpc_metrics_(options_.service_name, *registry_) {}

Server::~Server() { Shutdown(); }

void Server::AddService(grpc::Service* service) { services_.push_back(service); }

absl::Status Server::Start() {
  TF_ASSIGN_OR_RETURN(auto creds, MakeCredentials(options_.tls));
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();

  grpc::ServerBuilder builder;
  builder.AddListeningPort(options_.listen_address, creds, &port_);
  for (grpc::Service* s : services_) builder.RegisterService(s);
  builder.SetMaxReceiveMessageSize(options_.max_receive_message_bytes);
  builder.SetMaxSendMessageSize(options_.max_send_message_bytes);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS,
                             static_cast<int>(absl::ToInt64Milliseconds(options_.keepalive_time)));
  builder.AddChannelArgument(
      GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
      static_cast<int>(absl::ToInt64Milliseconds(options_.keepalive_timeout)));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // Clients may ping as often as every 10 s without being told to go away.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> creators;
  creators.push_back(rpc_metrics_.InterceptorFactory());
  builder.experimental().SetInterceptorCreators(std::move(creators));

  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port_ == 0) {
    server_.reset();
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options_.listen_address, " (address in use?)"));
  }
  server_->GetHealthCheckService()->SetServingStatus(false);

  if (!options_.metrics_address.empty()) {
    try {
      exposer_ = std::make_unique<prometheus::Exposer>(options_.metrics_address);
      exposer_->RegisterCollectable(registry_);
      auto ports = exposer_->GetListeningPorts();
      metrics_port_ = ports.empty() ? 0 : ports.front();
    } catch (const std::exception& e) {
      server_->Shutdown();
      server_.reset();
      return absl::UnavailableError(absl::StrCat("cannot serve metrics on ",
                                                 options_.metrics_address, ": ", e.what()));
    }
  }
  spdlog::info("{} listening on port {} ({}), metrics port {}", options_.service_name, port_,
               options_.tls.enabled()
                   ? (options_.tls.client_ca_file.empty() ? "tls" : "mtls")
                   : "plaintext",
               metrics_port_);
  return absl::OkStatus();
}

void Server::SetServing(bool serving) {
  if (server_ == nullptr) return;
  server_->GetHealthCheckService()->SetServingStatus(serving);
  spdlog::info("{} health: {}", options_.service_name, serving ? "SERVING" : "NOT_SERVING");
}

void Server::Shutdown() {
  if (server_ == nullptr || shut_down_) return;
  shut_down_ = true;
  SetServing(false);
  spdlog::info("{} draining (up to {})", options_.service_name,
               absl::FormatDuration(options_.drain_timeout));
  server_->Shutdown(absl::ToChronoTime(absl::Now() + options_.drain_timeout));
  exposer_.reset();
  spdlog::info("{} stopped", options_.service_name);
}

void Server::Wait() {
  if (server_ != nullptr) server_->Wait();
}

void BlockShutdownSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int WaitForShutdownSignal() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  int sig = 0;
  while (sigwait(&set, &sig) != 0) {
  }
  return sig;
}

}  // namespace tunefleet::rpc
