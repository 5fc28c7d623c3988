// The command groups of the `tunefleet` CLI, one file each (files, jobs,
// models, deployments, chat), and what they share: how a command finds its
// service (flags, then environment, then a `tunefleet local` directory), how
// it prints (tables, or --json), and its exit codes.
#pragma once

#include <memory>
#include <string>

#include <CLI/CLI.hpp>
#include <google/protobuf/message.h>

#include "absl/status/status.h"
#include "cli/client.h"

namespace tunefleet::cli {

// Exit codes, so scripts can tell failures apart:
//   0 ok; 1 server error or other failure; 2 bad argument (the caller's
//   input: a usage error, INVALID_ARGUMENT, OUT_OF_RANGE); 3 not found;
//   4 refused (FAILED_PRECONDITION, RESOURCE_EXHAUSTED, ALREADY_EXISTS,
//   PERMISSION_DENIED, a prompt blocked by the content filter);
//   5 bad or missing API key (UNAUTHENTICATED); 6 the service cannot be
//   reached (UNAVAILABLE, DEADLINE_EXCEEDED).
int ExitCodeFor(const absl::Status& status);
// Prints `tunefleet: <message> [<CODE>]` to stderr and returns ExitCodeFor.
int Fail(const absl::Status& status);

// Flags every client command takes.
struct ClientFlags {
  std::string fleet_dir = "./tunefleet-local";
  std::string config_file;
  std::string target;
  std::string api_key;
  rpc::ChannelOptions tls;
  bool json = false;
};
void AddClientFlags(CLI::App* command, ClientFlags* flags, const std::string& service);
// The endpoint of `service` ("dataset", "scheduler", "serving").
absl::StatusOr<Endpoint> ResolveService(const ClientFlags& flags, const std::string& service);

// One protobuf message as indented JSON (for --json).
std::string ToJson(const google::protobuf::Message& message);

// Each group registers its subcommands; the callback of the command that ran
// stores its exit code in *exit_code.
void AddFilesCommands(CLI::App* app, int* exit_code);
void AddJobsCommands(CLI::App* app, int* exit_code);
void AddModelsCommands(CLI::App* app, int* exit_code);
void AddDeploymentsCommands(CLI::App* app, int* exit_code);
void AddChatCommand(CLI::App* app, int* exit_code);
void AddUsageCommand(CLI::App* app, int* exit_code);

}  // namespace tunefleet::cli
