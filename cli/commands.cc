#include "cli/commands.h"

#include <iostream>

#include <google/protobuf/util/json_util.h>

#include "absl/strings/str_cat.h"
#include "common/errors/error_details.h"

namespace tunefleet::cli {

int ExitCodeFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return 0;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
      return 2;
    case absl::StatusCode::kNotFound:
      return 3;
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kPermissionDenied:
      return 4;
    case absl::StatusCode::kUnauthenticated:
      return 5;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      return 6;
    default:
      return 1;
  }
}

int Fail(const absl::Status& status) {
  const errors::Details details = errors::GetDetails(status);
  std::cerr << "tunefleet: " << status.message() << " [" << absl::StatusCodeToString(status.code());
  if (!details.reason.empty() && details.reason != absl::StatusCodeToString(status.code())) {
    std::cerr << " " << details.reason;
  }
  std::cerr << "]\n";
  // The structured details in plain words: which field, which job holds
  // the file, which quota, when to retry.
  for (const std::string& line : errors::DescribeDetails(details)) {
    std::cerr << "  " << line << "\n";
  }
  return ExitCodeFor(status);
}

void AddClientFlags(CLI::App* c, ClientFlags* flags, const std::string& service) {
  std::string env = service;
  for (char& ch : env) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  c->add_option("--fleet", flags->fleet_dir,
                "A 'tunefleet local' data dir to read addresses and keys from")
      ->capture_default_str();
  c->add_option("--config", flags->config_file,
                "Config file with addresses, API key and TLS (or TUNEFLEET_CONFIG; see "
                "'tunefleet --help')");
  c->add_option("--target", flags->target,
                absl::StrCat("The ", service, " service's host:port (or TUNEFLEET_", env, ")"));
  c->add_option("--api-key", flags->api_key, "API key (or TUNEFLEET_API_KEY)");
  c->add_option("--tls-ca", flags->tls.tls_ca_file, "CA of the server certificate (enables TLS)");
  c->add_option("--tls-cert", flags->tls.tls_cert_file, "Client certificate (mTLS)");
  c->add_option("--tls-key", flags->tls.tls_key_file, "Client key (mTLS)");
  c->add_option("--tls-server-name", flags->tls.tls_server_name,
                "Name to check in the server certificate");
  c->add_flag("--json", flags->json, "Print JSON instead of a table");
}

absl::StatusOr<Endpoint> ResolveService(const ClientFlags& flags, const std::string& service) {
  // Flags, then environment, then a config file (cli/client.h).
  EndpointFlags given;
  given.target = flags.target;
  given.api_key = flags.api_key;
  given.tls = flags.tls;
  given.config_file = flags.config_file;
  given.fleet_dir = flags.fleet_dir;
  return ResolveEndpoint(service, given);
}

std::string ToJson(const google::protobuf::Message& message) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

}  // namespace tunefleet::cli
