// The flags every service binary shares (listen address, TLS, keys, metrics,
// drain, logging). They are defined once here, not repeated in each main.cc:
// four copies of the same ten flags would drift. Link this library into
// mains only; it turns flags into Options once.
#pragma once

#include <string>

#include <functional>
#include <memory>

#include "common/base/logging.h"
#include "common/rpc/auth.h"
#include "common/rpc/channel.h"
#include "common/rpc/server.h"

namespace tunefleet::rpc {

struct CommonFlags {
  ServerOptions server;
  std::string keys_file;
  std::string data_dir;
  std::string log_level;
  LogFormat log_format = LogFormat::kText;
  // After start, the bound ports are written here as JSON
  // {"port": N, "metrics_port": M} (atomically), for tools and tests that
  // start services on port 0.
  std::string port_file;
  // TLS of the calls this service makes to the others (--client_tls_*): the
  // same CA, certificate and key for every service it dials, as one
  // cert-manager Certificate per workload provides. `target` is unset.
  ChannelOptions client;
};

// Options for a channel from this service to another at `target`, carrying
// the --client_tls_* settings (plaintext when --client_tls_ca_file is unset).
ChannelOptions ClientChannelOptions(const CommonFlags& flags, const std::string& target);

// Parses argv (absl flags) and fills the options. `default_port` and
// `default_metrics_port` apply when --listen / --metrics_listen are unset.
CommonFlags ParseCommonFlags(int argc, char** argv, const std::string& service_name,
                             int default_port, int default_metrics_port);

}  // namespace tunefleet::rpc

namespace tunefleet::rpc {

// Loads the keys file named by --keys_file (required: every service
// authenticates its callers).
absl::StatusOr<std::shared_ptr<const KeyRing>> LoadKeysFromFlags(const CommonFlags& flags);

// The tail of every main(): start `server`, run `ready` (e.g. open the
// database), report SERVING, write the port file (if any), wait for SIGTERM/SIGINT, drain, return the
// process exit code.
int ServeUntilSignal(Server& server, const std::function<absl::Status()>& ready = nullptr,
                     const std::string& port_file = "");

}  // namespace tunefleet::rpc
