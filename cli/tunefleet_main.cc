// tunefleet: the command-line client.
//   tunefleet local            run the whole fleet on this machine
//   tunefleet health           ask a service whether it is SERVING
//   tunefleet keys create      make an API key (prints it once, stores its digest)
//   tunefleet files ...        upload, list, get, delete training files
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <iostream>

#include <CLI/CLI.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/client.h"
#include "cli/fleet.h"
#include "common/rpc/auth.h"
#include "common/rpc/server.h"

namespace tunefleet::cli {
namespace {

int Fail(const absl::Status& status) {
  std::cerr << "tunefleet: " << status.message() << " [" << absl::StatusCodeToString(status.code())
            << "]\n";
  return 1;
}

void PrintFile(const v1::File& f) {
  std::cout << absl::StrFormat("%-30s %-10s %10d  %s  %s\n", f.id(),
                               v1::FileStatus_Name(f.status()).substr(12), f.bytes(),
                               f.sha256().substr(0, 12), f.filename());
}

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

}  // namespace
}  // namespace tunefleet::cli

int main(int argc, char** argv) {
  using namespace tunefleet;
  CLI::App app{"tunefleet: fine-tune and serve models on your own GPUs"};
  app.require_subcommand(1);

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

  auto* files_cmd = app.add_subcommand("files", "Training and validation files");
  files_cmd->require_subcommand(1);
  std::string fleet_dir = "./tunefleet-local", target, api_key;
  rpc::ChannelOptions tls;
  for (CLI::App* c : {files_cmd}) {
    c->add_option("--fleet", fleet_dir, "A 'tunefleet local' data dir to read addresses and keys from")
        ->capture_default_str();
    c->add_option("--target", target, "Dataset service host:port (or TUNEFLEET_DATASET)");
    c->add_option("--api-key", api_key, "API key (or TUNEFLEET_API_KEY)");
    c->add_option("--tls-ca", tls.tls_ca_file, "CA of the server certificate (enables TLS)");
    c->add_option("--tls-cert", tls.tls_cert_file, "Client certificate (mTLS)");
    c->add_option("--tls-key", tls.tls_key_file, "Client key (mTLS)");
    c->add_option("--tls-server-name", tls.tls_server_name, "Name to check in the server certificate");
  }
  std::string path, purpose = "fine-tune", file_id;
  auto* upload_cmd = files_cmd->add_subcommand("upload", "Upload a JSONL file");
  upload_cmd->add_option("path", path, "Local file")->required();
  upload_cmd->add_option("--purpose", purpose, "fine-tune or validation")->capture_default_str();
  auto* list_cmd = files_cmd->add_subcommand("list", "List your files");
  auto* get_cmd = files_cmd->add_subcommand("get", "Show one file");
  get_cmd->add_option("id", file_id, "file-…")->required();
  auto* delete_cmd = files_cmd->add_subcommand("delete", "Delete a file");
  delete_cmd->add_option("id", file_id, "file-…")->required();
  v1::ValidateFileRequest validate_req;
  std::string base_model;
  int max_len = 0, epochs = 1, max_issues = 20;
  auto* validate_cmd = files_cmd->add_subcommand("validate", "Validate a file and show statistics");
  validate_cmd->add_option("id", file_id, "file-…")->required();
  validate_cmd->add_option("--base-model", base_model, "Count tokens with this model's tokenizer");
  validate_cmd->add_option("--max-seq-len", max_len, "Report examples longer than this");
  validate_cmd->add_option("--epochs", epochs, "For the cost estimate")->capture_default_str();
  validate_cmd->add_option("--max-issues", max_issues, "Issues shown in detail")->capture_default_str();
  double ratio = 0.1;
  int64_t seed = 0;
  auto* split_cmd = files_cmd->add_subcommand("split", "Split into training and validation files");
  split_cmd->add_option("id", file_id, "file-…")->required();
  split_cmd->add_option("--ratio", ratio, "Fraction for validation, (0, 0.5]")->capture_default_str();
  split_cmd->add_option("--seed", seed, "Same seed, same split")->capture_default_str();

  // --fleet/--target/--api-key may follow the verb too.
  for (CLI::App* c : {upload_cmd, list_cmd, get_cmd, delete_cmd, validate_cmd, split_cmd}) {
    c->fallthrough();
  }

  CLI11_PARSE(app, argc, argv);

  if (local_cmd->parsed()) return cli::RunLocal(local, check_only, sample, sample_model);
  if (files_cmd->parsed()) {
    auto endpoint = cli::ResolveEndpoint("dataset", fleet_dir, target, api_key);
    if (!endpoint.ok()) return cli::Fail(endpoint.status());
    endpoint->channel.tls_ca_file = tls.tls_ca_file;
    endpoint->channel.tls_cert_file = tls.tls_cert_file;
    endpoint->channel.tls_key_file = tls.tls_key_file;
    endpoint->channel.tls_server_name = tls.tls_server_name;
    if (upload_cmd->parsed()) {
      auto p = cli::ParsePurpose(purpose);
      if (!p.ok()) return cli::Fail(p.status());
      auto f = cli::UploadFile(*endpoint, path, *p);
      if (!f.ok()) return cli::Fail(f.status());
      cli::PrintFile(*f);
    } else if (list_cmd->parsed()) {
      std::string token;
      do {
        auto page = cli::ListFiles(*endpoint, token);
        if (!page.ok()) return cli::Fail(page.status());
        for (const auto& f : page->files()) cli::PrintFile(f);
        token = page->next_page_token();
      } while (!token.empty());
    } else if (get_cmd->parsed()) {
      auto f = cli::GetFile(*endpoint, file_id);
      if (!f.ok()) return cli::Fail(f.status());
      cli::PrintFile(*f);
    } else if (validate_cmd->parsed()) {
      v1::ValidateFileRequest req;
      req.set_file_id(file_id);
      req.set_base_model(base_model);
      req.set_max_sequence_length(max_len);
      req.set_epochs(epochs);
      req.set_max_issues(max_issues);
      auto r = cli::ValidateFile(*endpoint, req);
      if (!r.ok()) return cli::Fail(r.status());
      std::cout << cli::FormatReport(*r);
      return r->valid() ? 0 : 3;
    } else if (split_cmd->parsed()) {
      auto r = cli::SplitFile(*endpoint, file_id, ratio, seed);
      if (!r.ok()) return cli::Fail(r.status());
      cli::PrintFile(r->training_file());
      cli::PrintFile(r->validation_file());
    } else if (delete_cmd->parsed()) {
      absl::Status s = cli::DeleteFile(*endpoint, file_id);
      if (!s.ok()) return cli::Fail(s);
      std::cout << "deleted " << file_id << "\n";
    }
    return 0;
  }
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
  return 0;
}
