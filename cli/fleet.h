// Running and probing a Tunefleet fleet: health checks over grpc.health.v1
// and the local launcher behind `tunefleet local`.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/base/subprocess.h"
#include "common/rpc/channel.h"

namespace tunefleet::cli {

// Asks a server's grpc.health.v1 service about `service` ("" = the whole
// server). Returns the status name ("SERVING", "NOT_SERVING", ...).
absl::StatusOr<std::string> CheckHealth(const rpc::ChannelOptions& channel,
                                        absl::Duration timeout, const std::string& service = "");

// Polls CheckHealth until SERVING or the deadline.
absl::Status WaitUntilServing(const rpc::ChannelOptions& channel, absl::Duration timeout);

// The services of a fleet, in start order.
inline const std::vector<std::string>& FleetServices() {
  static const std::vector<std::string> kServices = {"dataset", "scheduler", "trainer",
                                                     "serving"};
  return kServices;
}

struct LocalFleetOptions {
  std::string data_dir = "./tunefleet-local";
  // Where tunefleet-<service> binaries are; empty: next to this program.
  std::string bin_dir;
  std::string host = "127.0.0.1";
  // 0: every service on a free port; otherwise base, base+1, ... (gRPC) and
  // base+100, ... (metrics).
  int base_port = 0;
  absl::Duration start_timeout = absl::Seconds(60);
  // Hugging Face model directories the dataset service tokenizes with
  // (<models_dir>/<name>/); empty: <data_dir>/models.
  std::string models_dir;
  // CPU training slots the local trainer agent offers.
  int trainer_slots = 1;
  // Terms the serving replica's built-in filter blocks (one per line; empty:
  // none), passed as --blocklist_file.
  std::string blocklist_file;
  // The scheduler's price table (JSON, see services/scheduler/usage.h; empty:
  // usage is reported unpriced), passed as --price_table.
  std::string price_table;
};

struct RunningService {
  std::string name;
  std::string address;  // host:port
  int metrics_port = 0;
  std::unique_ptr<Subprocess> process;
  std::string log_file;
};

// The fleet's clear-text keys, kept at <data_dir>/credentials.json (0600):
// the tenant key for clients and the internal key for service-to-service
// calls. Their digests go to <data_dir>/keys.txt, which services load.
struct LocalCredentials {
  std::string tenant;
  std::string tenant_key;
  std::string internal_key;
};
absl::StatusOr<LocalCredentials> EnsureLocalCredentials(const std::string& data_dir);

// Starts every service, waits until each reports SERVING and writes
// <data_dir>/fleet.json (addresses) for other CLI commands.
class LocalFleet {
 public:
  static absl::StatusOr<std::unique_ptr<LocalFleet>> Start(const LocalFleetOptions& options);
  ~LocalFleet();

  const std::vector<RunningService>& services() const { return services_; }
  const LocalCredentials& credentials() const { return credentials_; }
  // SIGTERM to every service, then waits; returns an error naming any that
  // did not exit 0 within `timeout`.
  absl::Status Stop(absl::Duration timeout);
  // Leaves the services running after this object is gone (`local up`):
  // `StopDetached` stops them later through the pids in fleet.json.
  void Detach();

 private:
  LocalFleet() = default;
  std::vector<RunningService> services_;
  LocalCredentials credentials_;
};

// `tunefleet local down`: SIGTERM to every service of the fleet in
// `data_dir` (pids from fleet.json), then waits until each has exited.
absl::Status StopDetached(const std::string& data_dir, absl::Duration timeout);

// `tunefleet local status`: one line per service (address, pid, health);
// a service that died shows the end of its log.
absl::StatusOr<std::string> DescribeFleet(const std::string& data_dir, bool* all_serving);

// Where the current program lives (for finding sibling binaries).
std::string SelfDirectory();

}  // namespace tunefleet::cli
