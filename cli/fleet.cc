#include "cli/fleet.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/client.h"
#include "common/base/status_macros.h"
#include "common/rpc/auth.h"
#include "common/rpc/status.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace tunefleet::cli {
namespace fs = std::filesystem;

absl::StatusOr<std::string> CheckHealth(const rpc::ChannelOptions& channel_options,
                                        absl::Duration timeout, const std::string& service) {
  TF_ASSIGN_OR_RETURN(auto channel, rpc::MakeChannel(channel_options));
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  rpc::PrepareContext(&context, "", timeout);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) return rpc::FromGrpcStatus(status);
  return grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status());
}

absl::Status WaitUntilServing(const rpc::ChannelOptions& channel, absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  absl::Status last = absl::DeadlineExceededError("no answer");
  while (absl::Now() < deadline) {
    auto health = CheckHealth(channel, absl::Seconds(2));
    if (health.ok() && *health == "SERVING") return absl::OkStatus();
    last = health.ok() ? absl::UnavailableError(absl::StrCat("health is ", *health))
                       : health.status();
    absl::SleepFor(absl::Milliseconds(100));
  }
  return absl::DeadlineExceededError(absl::StrCat(channel.target, " not SERVING after ",
                                                  absl::FormatDuration(timeout), ": ",
                                                  last.ToString()));
}

std::string SelfDirectory() {
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return ".";
  return self.parent_path().string();
}

absl::StatusOr<LocalCredentials> EnsureLocalCredentials(const std::string& data_dir) {
  std::error_code ec;
  fs::create_directories(data_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", data_dir, ": ", ec.message()));
  fs::path creds_path = fs::path(data_dir) / "credentials.json";
  fs::path keys_path = fs::path(data_dir) / "keys.txt";
  LocalCredentials creds;
  if (fs::exists(creds_path) && fs::exists(keys_path)) {
    std::ifstream in(creds_path);
    try {
      nlohmann::json j = nlohmann::json::parse(in);
      creds.tenant = j.at("tenant").get<std::string>();
      creds.tenant_key = j.at("tenant_key").get<std::string>();
      creds.internal_key = j.at("internal_key").get<std::string>();
      return creds;
    } catch (const std::exception& e) {
      return absl::DataLossError(absl::StrCat(creds_path.string(), " is damaged: ", e.what(),
                                              " (delete it and keys.txt to start over)"));
    }
  }
  creds.tenant = "default";
  rpc::NewKey tenant = rpc::GenerateKey(creds.tenant, rpc::Role::kTenant, "local-tenant");
  rpc::NewKey internal = rpc::GenerateKey("", rpc::Role::kInternal, "local-internal");
  creds.tenant_key = tenant.key;
  creds.internal_key = internal.key;
  {
    std::ofstream keys(keys_path, std::ios::trunc);
    keys << "# Tunefleet API keys (SHA-256 digests only). Written by 'tunefleet local'.\n"
         << tenant.line << "\n"
         << internal.line << "\n";
  }
  nlohmann::json j = {{"tenant", creds.tenant},
                      {"tenant_key", creds.tenant_key},
                      {"internal_key", creds.internal_key}};
  std::string tmp = creds_path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << j.dump(2) << "\n";
  }
  chmod(tmp.c_str(), 0600);
  fs::rename(tmp, creds_path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot write ", creds_path.string()));
  return creds;
}

absl::StatusOr<std::unique_ptr<LocalFleet>> LocalFleet::Start(const LocalFleetOptions& options) {
  auto fleet = std::unique_ptr<LocalFleet>(new LocalFleet());
  TF_ASSIGN_OR_RETURN(fleet->credentials_, EnsureLocalCredentials(options.data_dir));
  std::string bin_dir = options.bin_dir.empty() ? SelfDirectory() : options.bin_dir;
  fs::path data = fs::absolute(options.data_dir);
  fs::create_directories(data / "logs");
  fs::create_directories(data / "run");

  // Service-to-service calls carry the internal key, read from a file that
  // only this user can read.
  fs::path internal_key = data / "internal.key";
  {
    std::ofstream out(internal_key, std::ios::trunc);
    out << fleet->credentials_.internal_key << "\n";
  }
  chmod(internal_key.c_str(), 0600);
  std::string models_dir =
      options.models_dir.empty() ? (data / "models").string() : fs::absolute(options.models_dir).string();
  fs::create_directories(models_dir);
  fs::create_directories(data / "artifacts");
  std::map<std::string, std::string> addresses;

  int index = 0;
  for (const std::string& name : FleetServices()) {
    RunningService svc;
    svc.name = name;
    fs::path port_file = data / "run" / (name + ".ports.json");
    fs::remove(port_file);
    int port = options.base_port == 0 ? 0 : options.base_port + index;
    int metrics = options.base_port == 0 ? 0 : options.base_port + 100 + index;
    ++index;
    svc.log_file = (data / "logs" / (name + ".log")).string();
    std::vector<std::string> argv = {
        (fs::path(bin_dir) / ("tunefleet-" + name)).string(),
        absl::StrCat("--listen=", options.host, ":", port),
        absl::StrCat("--metrics_listen=", options.host, ":", metrics),
        absl::StrCat("--keys_file=", (data / "keys.txt").string()),
        absl::StrCat("--data_dir=", (data / name).string()),
        absl::StrCat("--port_file=", port_file.string()),
        "--drain_timeout=10s",
    };
    argv.push_back(absl::StrCat("--models_dir=", models_dir));
    if (name != "dataset") {
      // Everything the fleet exchanges (checkpoints, adapters) lives in one
      // artifact directory; services that dial others carry the internal key.
      argv.push_back(absl::StrCat("--artifacts_dir=", (data / "artifacts").string()));
      argv.push_back(absl::StrCat("--internal_key_file=", internal_key.string()));
    }
    if (name == "scheduler" || name == "trainer") {
      argv.push_back(absl::StrCat("--dataset_address=", addresses["dataset"]));
    }
    if (name == "trainer" || name == "serving") {
      argv.push_back(absl::StrCat("--scheduler_address=", addresses["scheduler"]));
    }
    if (name == "trainer") argv.push_back(absl::StrCat("--slots=", options.trainer_slots));
    if (name == "scheduler" && !options.price_table.empty()) {
      argv.push_back(absl::StrCat("--price_table=", fs::absolute(options.price_table).string()));
    }
    if (name == "serving" && !options.blocklist_file.empty()) {
      argv.push_back(absl::StrCat("--blocklist_file=", fs::absolute(options.blocklist_file).string()));
    }
    Subprocess::Options popts;
    popts.log_file = svc.log_file;
    // Processes that run the decoder on the CPU must not spin in OpenMP.
    popts.env.push_back("OMP_WAIT_POLICY=PASSIVE");
    TF_ASSIGN_OR_RETURN(Subprocess proc, Subprocess::Start(argv, popts));
    svc.process = std::make_unique<Subprocess>(std::move(proc));

    // The port file appears once the service is listening and ready.
    absl::Time deadline = absl::Now() + options.start_timeout;
    while (!fs::exists(port_file)) {
      auto exited = svc.process->Wait(absl::ZeroDuration());
      if (exited.ok()) {
        return absl::UnavailableError(absl::StrCat("tunefleet-", name, " ",
                                                   DescribeWaitStatus(*exited),
                                                   " during start; see ", svc.log_file));
      }
      if (absl::Now() > deadline) {
        return absl::DeadlineExceededError(
            absl::StrCat("tunefleet-", name, " did not start; see ", svc.log_file));
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
    std::ifstream in(port_file);
    nlohmann::json ports = nlohmann::json::parse(in, nullptr, false);
    if (ports.is_discarded() || !ports.contains("port")) {
      return absl::InternalError(absl::StrCat("unreadable port file ", port_file.string()));
    }
    svc.address = absl::StrCat(options.host, ":", ports["port"].get<int>());
    svc.metrics_port = ports.value("metrics_port", 0);
    rpc::ChannelOptions channel;
    channel.target = svc.address;
    TF_RETURN_IF_ERROR(WaitUntilServing(channel, options.start_timeout));
    addresses[name] = svc.address;
    fleet->services_.push_back(std::move(svc));
  }

  nlohmann::json j;
  for (const auto& s : fleet->services_) {
    j["services"][s.name] = {{"address", s.address}, {"metrics_port", s.metrics_port},
                             {"pid", s.process->pid()}, {"log", s.log_file}};
  }
  j["credentials"] = (data / "credentials.json").string();
  {
    std::ofstream out(data / "fleet.json", std::ios::trunc);
    out << j.dump(2) << "\n";
  }
  // The CLI's config for this fleet: found with --fleet, or with
  // TUNEFLEET_CONFIG=<data_dir>/config.json from anywhere.
  ClientConfig config;
  for (const auto& s : fleet->services_) {
    if (s.name != "trainer") config.addresses[s.name] = s.address;
  }
  config.api_key = fleet->credentials_.tenant_key;
  TF_RETURN_IF_ERROR(WriteClientConfig((data / "config.json").string(), config));
  return fleet;
}

absl::Status LocalFleet::Stop(absl::Duration timeout) {
  std::string failures;
  // Stop in reverse start order: clients of a service go before it.
  for (auto it = services_.rbegin(); it != services_.rend(); ++it) {
    if (!it->process->running()) continue;
    (void)it->process->Signal(SIGTERM);
  }
  for (auto it = services_.rbegin(); it != services_.rend(); ++it) {
    if (!it->process->running()) continue;
    auto status = it->process->Wait(timeout);
    if (!status.ok()) {
      absl::StrAppend(&failures, " tunefleet-", it->name, ": ", status.status().message(), ";");
    } else if (!WIFEXITED(*status) || WEXITSTATUS(*status) != 0) {
      absl::StrAppend(&failures, " tunefleet-", it->name, " ", DescribeWaitStatus(*status), ";");
    }
  }
  if (!failures.empty()) return absl::InternalError(absl::StrCat("unclean stop:", failures));
  return absl::OkStatus();
}

LocalFleet::~LocalFleet() { (void)Stop(absl::Seconds(15)); }

void LocalFleet::Detach() {
  for (auto& s : services_) s.process->Release();
}

namespace {

absl::StatusOr<nlohmann::json> ReadFleetJson(const std::string& data_dir) {
  fs::path path = fs::path(data_dir) / "fleet.json";
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("no fleet in ", data_dir, " (no ", path.string(),
                                            "); start one with 'tunefleet local up'"));
  }
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.contains("services")) {
    return absl::DataLossError(absl::StrCat(path.string(), " is not a fleet description"));
  }
  return j;
}

bool Alive(pid_t pid) { return pid > 0 && kill(pid, 0) == 0; }

std::string LogTail(const std::string& path, int lines) {
  std::ifstream in(path);
  std::vector<std::string> tail;
  std::string line;
  while (std::getline(in, line)) {
    tail.push_back(line);
    if (static_cast<int>(tail.size()) > lines) tail.erase(tail.begin());
  }
  std::string out;
  for (const auto& l : tail) absl::StrAppend(&out, "    | ", l, "\n");
  return out;
}

}  // namespace

absl::Status StopDetached(const std::string& data_dir, absl::Duration timeout) {
  TF_ASSIGN_OR_RETURN(nlohmann::json j, ReadFleetJson(data_dir));
  std::vector<std::pair<std::string, pid_t>> pids;
  const auto& order = FleetServices();
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    if (!j["services"].contains(*it)) continue;
    pid_t pid = j["services"][*it].value("pid", 0);
    if (Alive(pid)) {
      kill(pid, SIGTERM);
      pids.emplace_back(*it, pid);
    }
  }
  absl::Time deadline = absl::Now() + timeout;
  std::string stuck;
  for (const auto& [name, pid] : pids) {
    while (Alive(pid)) {
      // A child of this process (tests) must be reaped to disappear.
      waitpid(pid, nullptr, WNOHANG);
      if (absl::Now() > deadline) break;
      absl::SleepFor(absl::Milliseconds(50));
    }
    if (Alive(pid)) {
      kill(pid, SIGKILL);
      absl::StrAppend(&stuck, " tunefleet-", name, " (pid ", pid, ")");
    }
  }
  fs::remove(fs::path(data_dir) / "fleet.json");
  fs::remove(fs::path(data_dir) / "config.json");
  if (!stuck.empty()) {
    return absl::DeadlineExceededError(
        absl::StrCat("did not drain within ", absl::FormatDuration(timeout), ", killed:", stuck));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> DescribeFleet(const std::string& data_dir, bool* all_serving) {
  TF_ASSIGN_OR_RETURN(nlohmann::json j, ReadFleetJson(data_dir));
  *all_serving = true;
  std::string out = absl::StrFormat("%-10s %-22s %-8s %s\n", "SERVICE", "ADDRESS", "PID", "HEALTH");
  for (const std::string& name : FleetServices()) {
    if (!j["services"].contains(name)) continue;
    const auto& s = j["services"][name];
    pid_t pid = s.value("pid", 0);
    std::string address = s.value("address", "");
    std::string health;
    if (!Alive(pid)) {
      health = "DEAD";
    } else {
      rpc::ChannelOptions channel;
      channel.target = address;
      auto h = CheckHealth(channel, absl::Seconds(2));
      health = h.ok() ? *h : absl::StrCat("UNREACHABLE (", h.status().message(), ")");
    }
    if (health != "SERVING") *all_serving = false;
    absl::StrAppendFormat(&out, "%-10s %-22s %-8d %s\n", name, address, pid, health);
    if (health == "DEAD") {
      absl::StrAppend(&out, "  end of ", s.value("log", std::string("?")), ":\n",
                      LogTail(s.value("log", std::string()), 10));
    }
  }
  return out;
}

}  // namespace tunefleet::cli
