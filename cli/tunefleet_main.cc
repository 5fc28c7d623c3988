// tunefleet: the command-line client.
//   tunefleet local            run the whole fleet on this machine
//   tunefleet health           ask a service whether it is SERVING
//   tunefleet keys create      make an API key (prints it once, stores its digest)
//   tunefleet jobs ...         create, follow, inspect, cancel, pause, resume fine-tuning jobs
//   tunefleet models ...       list, get, download (a tar, sha256 checked), delete models
//   tunefleet deployments ...  deploy models behind the chat API; update one in place
//   tunefleet chat             talk to a deployment
// Exit codes: see cli/commands.h.
//   tunefleet files ...        upload, list, get, delete training files
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <iostream>

#include <CLI/CLI.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/client.h"
#include "cli/commands.h"
#include "cli/fleet.h"
#include "common/rpc/keys.h"
#include "common/rpc/shutdown_signals.h"

namespace tunefleet::cli {

void PrintFile(const v1::File& f);  // files_cmd.cc

namespace {

int RunLocal(const LocalFleetOptions& options, bool check_only, const std::string& sample,
             const std::string& sample_model) {
  rpc::BlockShutdownSignals();
  auto fleet = LocalFleet::Start(options);
  if (!fleet.ok()) return Fail(fleet.status());
  std::cout << absl::StrFormat("%-10s %-22s %-8s %-8s %s\n", "SERVICE", "ADDRESS", "METRICS",
                               "PID", "HEALTH");
  for (const auto& s : (*fleet)->services()) {
    std::cout << absl::StrFormat("%-10s %-22s %-8d %-8d %s\n", s.name, s.address, s.metrics_port,
                                 s.process->pid(), "SERVING");
  }
  std::cout << "credentials: " << options.data_dir << "/credentials.json (tenant '"
            << (*fleet)->credentials().tenant << "')\n";
  if (!sample.empty()) {
    Endpoint endpoint;
    endpoint.channel.target = (*fleet)->services().front().address;
    endpoint.api_key = (*fleet)->credentials().tenant_key;
    auto file = UploadFile(endpoint, sample, v1::FILE_PURPOSE_FINE_TUNE);
    if (!file.ok()) return Fail(file.status());
    std::cout << "uploaded " << sample << " through DatasetService.UploadFile:\n";
    PrintFile(*file);
    auto validated = WaitForValidation(endpoint, file->id(), absl::Minutes(2));
    if (!validated.ok()) return Fail(validated.status());
    std::cout << "automatic validation: " << v1::FileStatus_Name(validated->status()).substr(12)
              << "\n"
              << FormatReport(validated->validation());
    if (!sample_model.empty()) {
      v1::ValidateFileRequest req;
      req.set_file_id(file->id());
      req.set_base_model(sample_model);
      req.set_max_sequence_length(64);
      req.set_epochs(3);
      auto report = ValidateFile(endpoint, req);
      if (!report.ok()) return Fail(report.status());
      std::cout << "ValidateFile with " << sample_model
                << "'s tokenizer (max 64 tokens, 3 epochs):\n"
                << FormatReport(*report);
    }
    auto split = SplitFile(endpoint, file->id(), 0.2, 1);
    if (!split.ok()) return Fail(split.status());
    std::cout << "SplitFile (20% validation, seed 1):\n";
    PrintFile(split->training_file());
    PrintFile(split->validation_file());
    auto listed = ListFiles(endpoint, "");
    if (!listed.ok()) return Fail(listed.status());
    std::cout << "ListFiles returns " << listed->files_size() << " file(s) for tenant '"
              << (*fleet)->credentials().tenant << "'\n";
  }
  if (!check_only) {
    std::cout << "fleet is up; Ctrl-C stops it\n" << std::flush;
    rpc::WaitForShutdownSignal();
  }
  absl::Status stopped = (*fleet)->Stop(absl::Seconds(30));
  if (!stopped.ok()) return Fail(stopped);
  std::cout << "every service drained and exited cleanly\n";
  return 0;
}

int LocalUp(const LocalFleetOptions& options) {
  bool serving = false;
  if (DescribeFleet(options.data_dir, &serving).ok() && serving) {
    return Fail(absl::AlreadyExistsError(absl::StrCat(
        "a fleet is already running in ", options.data_dir, " ('tunefleet local status')")));
  }
  auto fleet = LocalFleet::Start(options);
  if (!fleet.ok()) return Fail(fleet.status());
  (*fleet)->Detach();
  bool all = false;
  auto text = DescribeFleet(options.data_dir, &all);
  if (text.ok()) std::cout << *text;
  std::cout << "fleet is up in the background; logs in " << options.data_dir
            << "/logs; the CLI finds it with --fleet " << options.data_dir
            << "; 'tunefleet local down' stops it\n";
  return 0;
}

}  // namespace
}  // namespace tunefleet::cli

int main(int argc, char** argv) {
  using namespace tunefleet;
  CLI::App app{"tunefleet: fine-tune and serve models on your own GPUs"};
  app.require_subcommand(1);
  app.footer(
      "Each command finds its service's address, the API key and TLS options setting by "
      "setting: flags first (--target, --api-key, --tls-*), then the environment "
      "(TUNEFLEET_DATASET/_SCHEDULER/_SERVING, TUNEFLEET_API_KEY, TUNEFLEET_TLS_CA/_CERT/_KEY/"
      "_SERVER_NAME), then one config file: --config FILE, else $TUNEFLEET_CONFIG, else "
      "<--fleet dir>/config.json (written by 'tunefleet local'), else "
      "~/.config/tunefleet/config.json.\n"
      "Exit codes: 0 ok, 1 server error, 2 bad argument, 3 not found, 4 refused, "
      "5 bad API key, 6 service unreachable.");

  cli::LocalFleetOptions local;
  bool check_only = false;
  auto* local_cmd = app.add_subcommand("local", "Run the whole fleet on this machine");
  local_cmd->add_option("--data-dir", local.data_dir, "State, logs and keys")->capture_default_str();
  local_cmd->add_option("--bin-dir", local.bin_dir, "Where the tunefleet-* binaries are");
  local_cmd->add_option("--host", local.host, "Address to listen on")->capture_default_str();
  local_cmd->add_option("--base-port", local.base_port,
                        "First gRPC port (0: free ports)")->capture_default_str();
  local_cmd->add_flag("--check", check_only,
                      "Start, verify every service is SERVING, then stop cleanly");

  rpc::ChannelOptions health_channel;
  std::string health_service;
  std::string sample;
  local_cmd->add_option("--sample-upload", sample,
                        "Upload this JSONL file once the fleet is up (demo)");
  std::string sample_model;
  local_cmd->add_option("--sample-model", sample_model,
                        "With --sample-upload: count its tokens with this model (demo)");
  auto* up_cmd = local_cmd->add_subcommand(
      "up", "Start the fleet in the background and return once every service is SERVING");
  auto* down_cmd = local_cmd->add_subcommand("down", "Drain and stop a fleet started with 'up'");
  auto* status_cmd = local_cmd->add_subcommand("status", "Each service, its address and health");
  for (CLI::App* c : {up_cmd, down_cmd, status_cmd}) c->fallthrough();
  local_cmd->add_option("--blocklist-file", local.blocklist_file,
                        "Terms the serving replica blocks, one per line");
  local_cmd->add_option("--price-table", local.price_table,
                        "The scheduler's price table (JSON) that `tunefleet usage` prices by");
  local_cmd->add_option("--slots", local.trainer_slots, "CPU training slots of the trainer agent")
      ->capture_default_str();
  local_cmd->add_option("--models-dir", local.models_dir,
                        "Hugging Face model directories (default <data-dir>/models)");

  auto* health_cmd = app.add_subcommand("health", "Ask a service whether it is SERVING");
  health_cmd->add_option("target", health_channel.target, "host:port")->required();
  health_cmd->add_option("--service", health_service, "Service name (default: the server)");
  health_cmd->add_option("--tls-ca", health_channel.tls_ca_file, "CA of the server certificate");
  health_cmd->add_option("--tls-cert", health_channel.tls_cert_file, "Client certificate (mTLS)");
  health_cmd->add_option("--tls-key", health_channel.tls_key_file, "Client key (mTLS)");

  auto* keys_cmd = app.add_subcommand("keys", "Manage API keys");
  keys_cmd->require_subcommand(1);
  std::string keys_file, tenant, key_name;
  bool internal = false;
  auto* create_cmd = keys_cmd->add_subcommand(
      "create", "Create a key: prints it once and appends its digest to the keys file");
  create_cmd->add_option("--keys-file", keys_file, "Keys file the services load")->required();
  create_cmd->add_option("--tenant", tenant, "Tenant the key acts for");
  create_cmd->add_option("--name", key_name, "A label for the key");
  create_cmd->add_flag("--internal", internal, "The service-to-service credential");

  int exit_code = 0;
  cli::AddFilesCommands(&app, &exit_code);
  cli::AddJobsCommands(&app, &exit_code);
  cli::AddModelsCommands(&app, &exit_code);
  cli::AddDeploymentsCommands(&app, &exit_code);
  cli::AddUsageCommand(&app, &exit_code);
  cli::AddChatCommand(&app, &exit_code);

  // Usage errors exit with 2, like INVALID_ARGUMENT (cli/commands.h).
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }

  if (up_cmd->parsed()) return cli::LocalUp(local);
  if (down_cmd->parsed()) {
    absl::Status s = cli::StopDetached(local.data_dir, absl::Seconds(60));
    if (!s.ok()) return cli::Fail(s);
    std::cout << "every service drained and stopped; state kept in " << local.data_dir << "\n";
    return 0;
  }
  if (status_cmd->parsed()) {
    bool all_serving = false;
    auto text = cli::DescribeFleet(local.data_dir, &all_serving);
    if (!text.ok()) return cli::Fail(text.status());
    std::cout << *text;
    return all_serving ? 0 : 1;
  }
  if (local_cmd->parsed()) return cli::RunLocal(local, check_only, sample, sample_model);
  if (health_cmd->parsed()) {
    auto status = cli::CheckHealth(health_channel, absl::Seconds(5), health_service);
    if (!status.ok()) return cli::Fail(status.status());
    std::cout << *status << "\n";
    return *status == "SERVING" ? 0 : 1;
  }
  if (create_cmd->parsed()) {
    if (!internal && tenant.empty()) {
      return cli::Fail(absl::InvalidArgumentError("--tenant is required for a tenant key"));
    }
    rpc::NewKey key =
        rpc::GenerateKey(tenant, internal ? rpc::Role::kInternal : rpc::Role::kTenant, key_name);
    {
      std::ofstream out(keys_file, std::ios::app);
      if (!out) return cli::Fail(absl::NotFoundError(absl::StrCat("cannot open ", keys_file)));
      out << key.line << "\n";
    }
    chmod(keys_file.c_str(), 0600);
    std::cout << key.key << "\n";
    std::cerr << "store this key now: only its digest was written to " << keys_file << "\n";
    return 0;
  }
  return exit_code;
}
