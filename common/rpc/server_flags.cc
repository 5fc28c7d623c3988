#include "common/rpc/server_flags.h"

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include <cstdio>
#include <fstream>

#include <grpc/support/log.h>
#include <spdlog/spdlog.h>

#include "common/base/logging.h"

ABSL_FLAG(std::string, listen, "", "gRPC listen address host:port (default 0.0.0.0:<service port>)");
ABSL_FLAG(std::string, metrics_listen, "",
          "Prometheus /metrics address host:port (default 0.0.0.0:<metrics port>; 'off' disables)");
ABSL_FLAG(std::string, health_listen, "",
          "Optional plaintext host:port serving only grpc.health.v1 (for probes that cannot "
          "speak TLS)");
ABSL_FLAG(std::string, tls_cert, "", "PEM server certificate (enables TLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM server private key");
ABSL_FLAG(std::string, tls_client_ca, "", "PEM CA for client certificates (enables mTLS)");
ABSL_FLAG(std::string, client_tls_ca_file, "",
          "PEM CA of the certificates of the services this one dials (enables TLS on its "
          "outgoing calls)");
ABSL_FLAG(std::string, client_tls_cert_file, "",
          "PEM client certificate presented to the services this one dials (mTLS)");
ABSL_FLAG(std::string, client_tls_key_file, "", "PEM private key of --client_tls_cert_file");
ABSL_FLAG(std::string, client_tls_server_name, "",
          "Name checked against the dialled services' certificates instead of the host of "
          "each address");
ABSL_FLAG(std::string, keys_file, "", "API keys file: '<sha256> <tenant> [tenant|internal] [name]' lines");
ABSL_FLAG(std::string, data_dir, "./tunefleet-data", "Directory for this service's database and artifacts");
ABSL_FLAG(absl::Duration, drain_timeout, absl::Seconds(30),
          "How long in-flight calls may finish after SIGTERM");
ABSL_FLAG(bool, mutex_deadlock_detection, false,
          "Check every absl::Mutex acquisition for lock-order cycles (a debugging aid: it "
          "records a graph of all locks held and costs a few per cent of the CPU of a busy "
          "service; the tests run with it on)");
ABSL_FLAG(std::string, log_level, "info", "trace, debug, info, warn, error");
ABSL_FLAG(tunefleet::LogFormat, log_format, tunefleet::LogFormat::kText,
          "text, or json: one JSON object per line (time, level, logger, message) for log "
          "collectors; gRPC's own messages go through it too");
ABSL_FLAG(std::string, port_file, "", "Write the bound ports here as JSON once listening");

namespace tunefleet::rpc {

namespace {

// gRPC's own log lines (gpr_log) through spdlog, so that a JSON log holds
// only JSON lines.
void GrpcLogToSpdlog(gpr_log_func_args* args) {
  spdlog::level::level_enum level = spdlog::level::info;
  if (args->severity == GPR_LOG_SEVERITY_ERROR) level = spdlog::level::err;
  if (args->severity == GPR_LOG_SEVERITY_DEBUG) level = spdlog::level::debug;
  spdlog::log(level, "grpc: {} ({}:{})", args->message, args->file, args->line);
}

}  // namespace

CommonFlags ParseCommonFlags(int argc, char** argv, const std::string& service_name,
                             int default_port, int default_metrics_port) {
  absl::SetProgramUsageMessage(absl::StrCat("tunefleet-", service_name, " [flags]"));
  absl::ParseCommandLine(argc, argv);
  if (!absl::GetFlag(FLAGS_mutex_deadlock_detection)) {
    absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  }
  CommonFlags f;
  f.server.service_name = service_name;
  f.server.listen_address = absl::GetFlag(FLAGS_listen);
  if (f.server.listen_address.empty()) {
    f.server.listen_address = absl::StrCat("0.0.0.0:", default_port);
  }
  f.server.metrics_address = absl::GetFlag(FLAGS_metrics_listen);
  if (f.server.metrics_address.empty()) {
    f.server.metrics_address = absl::StrCat("0.0.0.0:", default_metrics_port);
  } else if (f.server.metrics_address == "off") {
    f.server.metrics_address.clear();
  }
  f.server.health_address = absl::GetFlag(FLAGS_health_listen);
  f.server.tls.cert_file = absl::GetFlag(FLAGS_tls_cert);
  f.server.tls.key_file = absl::GetFlag(FLAGS_tls_key);
  f.server.tls.client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  f.server.drain_timeout = absl::GetFlag(FLAGS_drain_timeout);
  f.keys_file = absl::GetFlag(FLAGS_keys_file);
  f.data_dir = absl::GetFlag(FLAGS_data_dir);
  f.log_level = absl::GetFlag(FLAGS_log_level);
  f.port_file = absl::GetFlag(FLAGS_port_file);
  f.client.tls_ca_file = absl::GetFlag(FLAGS_client_tls_ca_file);
  f.client.tls_cert_file = absl::GetFlag(FLAGS_client_tls_cert_file);
  f.client.tls_key_file = absl::GetFlag(FLAGS_client_tls_key_file);
  f.client.tls_server_name = absl::GetFlag(FLAGS_client_tls_server_name);
  f.log_format = absl::GetFlag(FLAGS_log_format);
  InitLogging(service_name, f.log_level, f.log_format);
  if (f.log_format == LogFormat::kJson) gpr_set_log_function(GrpcLogToSpdlog);
  return f;
}

ChannelOptions ClientChannelOptions(const CommonFlags& flags, const std::string& target) {
  ChannelOptions options = flags.client;
  options.target = target;
  return options;
}

}  // namespace tunefleet::rpc

namespace tunefleet::rpc {

absl::StatusOr<std::shared_ptr<const KeyRing>> LoadKeysFromFlags(const CommonFlags& flags) {
  if (flags.keys_file.empty()) {
    return absl::InvalidArgumentError(
        "--keys_file is required (create one with 'tunefleet keys create')");
  }
  return KeyRing::LoadFile(flags.keys_file);
}

namespace {

absl::Status WritePortFile(const std::string& path, const Server& server) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << "{\"port\": " << server.port() << ", \"metrics_port\": " << server.metrics_port()
        << "}\n";
    if (!out.flush()) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", path));
  }
  return absl::OkStatus();
}

}  // namespace

int ServeUntilSignal(Server& server, const std::function<absl::Status()>& ready,
                     const std::string& port_file) {
  if (absl::Status s = server.Start(); !s.ok()) {
    spdlog::critical("{}", s.ToString());
    return 1;
  }
  if (ready) {
    if (absl::Status s = ready(); !s.ok()) {
      spdlog::critical("not ready: {}", s.ToString());
      server.Shutdown();
      return 1;
    }
  }
  server.SetServing(true);
  if (!port_file.empty()) {
    if (absl::Status s = WritePortFile(port_file, server); !s.ok()) {
      spdlog::critical("{}", s.ToString());
      server.Shutdown();
      return 1;
    }
  }
  int sig = WaitForShutdownSignal();
  spdlog::info("received signal {}, shutting down", sig);
  server.Shutdown();
  return 0;
}

}  // namespace tunefleet::rpc
