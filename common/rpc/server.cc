#include "common/rpc/server.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/impl/server_builder_option.h>
#include <grpcpp/impl/server_builder_plugin.h>
#include <grpcpp/impl/server_initializer.h>
#include <grpcpp/server_builder.h>
#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"

namespace tunefleet::rpc {

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

// Captures the names of the services registered on a builder, so that health
// can report each of them (the default health service only knows names it
// is told).
class ServiceNamesPlugin final : public grpc::ServerBuilderPlugin {
 public:
  explicit ServiceNamesPlugin(std::vector<std::string>* out) : out_(out) {}
  std::string name() override { return "tunefleet_service_names"; }
  void InitServer(grpc::ServerInitializer* si) override { *out_ = *si->GetServiceList(); }
  void Finish(grpc::ServerInitializer*) override {}
  void ChangeArguments(const std::string&, void*) override {}
  bool has_async_methods() const override { return false; }
  bool has_sync_methods() const override { return false; }

 private:
  std::vector<std::string>* out_;
};

class ServiceNamesOption final : public grpc::ServerBuilderOption {
 public:
  explicit ServiceNamesOption(std::vector<std::string>* out) : out_(out) {}
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->push_back(std::make_unique<ServiceNamesPlugin>(out_));
  }

 private:
  std::vector<std::string>* out_;
};

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
  // Two servers must never share a port silently (gRPC enables SO_REUSEPORT
  // by default): a second instance fails to start instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  for (grpc::Service* s : services_) builder.RegisterService(s);
  builder.SetMaxReceiveMessageSize(options_.max_receive_message_bytes);
  if (options_.stream_window_bytes > 0) {
    builder.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES,
                               options_.stream_window_bytes);
  }
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

  builder.SetOption(std::make_unique<ServiceNamesOption>(&service_names_));

  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port_ == 0) {
    server_.reset();
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options_.listen_address, " (address in use?)"));
  }
  if (!options_.health_address.empty()) {
    grpc::ServerBuilder health_builder;
    health_builder.AddListeningPort(options_.health_address, grpc::InsecureServerCredentials(),
                                    &health_port_);
    health_builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    health_server_ = health_builder.BuildAndStart();
    if (health_server_ == nullptr || health_port_ == 0) {
      health_server_.reset();
      server_->Shutdown();
      server_.reset();
      return absl::UnavailableError(
          absl::StrCat("cannot listen on ", options_.health_address, " (health port)"));
    }
  }
  SetServing(false);

  if (!options_.metrics_address.empty()) {
    metrics_http_ = std::make_unique<MetricsHttpServer>(registry_);
    auto port = metrics_http_->Start(options_.metrics_address);
    if (!port.ok()) {
      metrics_http_.reset();
      server_->Shutdown();
      server_.reset();
      return port.status();
    }
    metrics_port_ = *port;
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
  for (grpc::Server* s : {server_.get(), health_server_.get()}) {
    if (s == nullptr) continue;
    grpc::HealthCheckServiceInterface* health = s->GetHealthCheckService();
    health->SetServingStatus("", serving);
    for (const std::string& name : service_names_) health->SetServingStatus(name, serving);
  }
  spdlog::info("{} health: {}", options_.service_name, serving ? "SERVING" : "NOT_SERVING");
}

void Server::Shutdown() {
  if (server_ == nullptr || shut_down_) return;
  shut_down_ = true;
  SetServing(false);
  spdlog::info("{} draining (up to {})", options_.service_name,
               absl::FormatDuration(options_.drain_timeout));
  server_->Shutdown(absl::ToChronoTime(absl::Now() + options_.drain_timeout));
  // Probes see NOT_SERVING on the health port until the drain is over.
  if (health_server_ != nullptr) health_server_->Shutdown(absl::ToChronoTime(absl::Now()));
  if (metrics_http_ != nullptr) metrics_http_->Stop();
  spdlog::info("{} stopped", options_.service_name);
}

void Server::Wait() {
  if (server_ != nullptr) server_->Wait();
  if (health_server_ != nullptr) health_server_->Wait();
}

}  // namespace tunefleet::rpc
