#include "cli/client.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/base/sha256.h"
#include "common/base/status_macros.h"
#include "common/rpc/status.h"

namespace tunefleet::cli {
namespace {

absl::StatusOr<nlohmann::json> ReadJson(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded()) return absl::DataLossError(absl::StrCat(path, " is not valid JSON"));
  return j;
}

absl::StatusOr<std::unique_ptr<v1::DatasetService::Stub>> Stub(const Endpoint& e) {
  TF_ASSIGN_OR_RETURN(auto channel, rpc::MakeChannel(e.channel));
  return v1::DatasetService::NewStub(channel);
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::Channel>> ChannelOf(Endpoint& endpoint) {
  if (!endpoint.grpc_channel) {
    TF_ASSIGN_OR_RETURN(endpoint.grpc_channel, rpc::MakeChannel(endpoint.channel));
  }
  return endpoint.grpc_channel;
}

absl::StatusOr<v1::FilePurpose> ParsePurpose(const std::string& purpose) {
  if (purpose == "fine-tune") return v1::FILE_PURPOSE_FINE_TUNE;
  if (purpose == "validation") return v1::FILE_PURPOSE_VALIDATION;
  return absl::InvalidArgumentError(
      absl::StrCat("--purpose must be fine-tune or validation, not '", purpose, "'"));
}

std::string DefaultConfigPath() {
  const char* xdg = std::getenv("XDG_CONFIG_HOME");
  if (xdg != nullptr && *xdg != '\0') return absl::StrCat(xdg, "/tunefleet/config.json");
  const char* home = std::getenv("HOME");
  return absl::StrCat(home != nullptr ? home : ".", "/.config/tunefleet/config.json");
}

absl::StatusOr<ClientConfig> ReadClientConfig(const std::string& path) {
  TF_ASSIGN_OR_RETURN(nlohmann::json j, ReadJson(path));
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(path, " is not a JSON object"));
  ClientConfig c;
  c.path = path;
  auto text = [&](const char* key, std::string* out) -> absl::Status {
    if (!j.contains(key)) return absl::OkStatus();
    if (!j[key].is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": \"", key, "\" must be a string"));
    }
    *out = j[key].get<std::string>();
    return absl::OkStatus();
  };
  for (const char* service : {"dataset", "scheduler", "serving"}) {
    std::string address;
    TF_RETURN_IF_ERROR(text(service, &address));
    if (!address.empty()) c.addresses[service] = address;
  }
  TF_RETURN_IF_ERROR(text("api_key", &c.api_key));
  TF_RETURN_IF_ERROR(text("tls_ca", &c.tls.tls_ca_file));
  TF_RETURN_IF_ERROR(text("tls_cert", &c.tls.tls_cert_file));
  TF_RETURN_IF_ERROR(text("tls_key", &c.tls.tls_key_file));
  TF_RETURN_IF_ERROR(text("tls_server_name", &c.tls.tls_server_name));
  // TLS files are relative to the config file.
  std::filesystem::path base = std::filesystem::path(path).parent_path();
  for (std::string* f : {&c.tls.tls_ca_file, &c.tls.tls_cert_file, &c.tls.tls_key_file}) {
    if (!f->empty() && std::filesystem::path(*f).is_relative()) *f = (base / *f).string();
  }
  return c;
}

absl::Status WriteClientConfig(const std::string& path, const ClientConfig& config) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [service, address] : config.addresses) j[service] = address;
  if (!config.api_key.empty()) j["api_key"] = config.api_key;
  if (!config.tls.tls_ca_file.empty()) j["tls_ca"] = config.tls.tls_ca_file;
  if (!config.tls.tls_cert_file.empty()) j["tls_cert"] = config.tls.tls_cert_file;
  if (!config.tls.tls_key_file.empty()) j["tls_key"] = config.tls.tls_key_file;
  if (!config.tls.tls_server_name.empty()) j["tls_server_name"] = config.tls.tls_server_name;
  std::string tmp = absl::StrCat(path, ".tmp");
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", tmp));
    out << j.dump(2) << "\n";
  }
  std::filesystem::permissions(tmp, std::filesystem::perms::owner_read |
                                        std::filesystem::perms::owner_write);
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot write ", path, ": ", ec.message()));
  return absl::OkStatus();
}

namespace {

// The config file of step 3 (see client.h); nullopt-like empty path when none.
absl::StatusOr<ClientConfig> FindConfig(const EndpointFlags& flags) {
  namespace fs = std::filesystem;
  if (!flags.config_file.empty()) {
    if (!fs::exists(flags.config_file)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--config: cannot read ", flags.config_file));
    }
    return ReadClientConfig(flags.config_file);
  }
  if (const char* env = std::getenv("TUNEFLEET_CONFIG"); env != nullptr && *env != '\0') {
    if (!fs::exists(env)) {
      return absl::InvalidArgumentError(absl::StrCat("TUNEFLEET_CONFIG: cannot read ", env));
    }
    return ReadClientConfig(env);
  }
  if (!flags.fleet_dir.empty()) {
    std::string config = flags.fleet_dir + "/config.json";
    if (fs::exists(config)) return ReadClientConfig(config);
    // A fleet dir written before config.json existed.
    std::string fleet_json = flags.fleet_dir + "/fleet.json";
    if (fs::exists(fleet_json)) {
      ClientConfig c;
      c.path = fleet_json;
      TF_ASSIGN_OR_RETURN(nlohmann::json fleet, ReadJson(fleet_json));
      for (const char* service : {"dataset", "scheduler", "serving"}) {
        if (fleet["services"].contains(service)) {
          c.addresses[service] = fleet["services"][service]["address"].get<std::string>();
        }
      }
      TF_ASSIGN_OR_RETURN(nlohmann::json creds, ReadJson(flags.fleet_dir + "/credentials.json"));
      c.api_key = creds.value("tenant_key", "");
      return c;
    }
  }
  std::string user = DefaultConfigPath();
  if (fs::exists(user)) return ReadClientConfig(user);
  return ClientConfig();
}

}  // namespace

absl::StatusOr<Endpoint> ResolveEndpoint(const std::string& service, const EndpointFlags& flags) {
  std::string env_name = "TUNEFLEET_" + service;
  for (char& c : env_name) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  auto env = [](const std::string& name) -> std::string {
    const char* v = std::getenv(name.c_str());
    return v != nullptr ? v : "";
  };
  TF_ASSIGN_OR_RETURN(ClientConfig config, FindConfig(flags));
  auto pick = [&](const std::string& flag, const std::string& env_var, const std::string& file) {
    if (!flag.empty()) return flag;
    std::string e = env(env_var);
    return e.empty() ? file : e;
  };
  Endpoint e;
  auto address = config.addresses.find(service);
  e.channel.target =
      pick(flags.target, env_name, address == config.addresses.end() ? "" : address->second);
  e.api_key = pick(flags.api_key, "TUNEFLEET_API_KEY", config.api_key);
  e.channel.tls_ca_file = pick(flags.tls.tls_ca_file, "TUNEFLEET_TLS_CA", config.tls.tls_ca_file);
  e.channel.tls_cert_file =
      pick(flags.tls.tls_cert_file, "TUNEFLEET_TLS_CERT", config.tls.tls_cert_file);
  e.channel.tls_key_file = pick(flags.tls.tls_key_file, "TUNEFLEET_TLS_KEY", config.tls.tls_key_file);
  e.channel.tls_server_name =
      pick(flags.tls.tls_server_name, "TUNEFLEET_TLS_SERVER_NAME", config.tls.tls_server_name);
  if (e.channel.target.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "no address for the ", service, " service: pass --target, set ", env_name,
        ", or name it in a config file (--config, TUNEFLEET_CONFIG, ", DefaultConfigPath(),
        ", or the config.json of a 'tunefleet local' --data-dir, read with --fleet)"));
  }
  if (e.api_key.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "no API key: pass --api-key, set TUNEFLEET_API_KEY, or put \"api_key\" in ",
        config.path.empty() ? "a config file" : config.path));
  }
  return e;
}

absl::StatusOr<Endpoint> ResolveEndpoint(const std::string& service,
                                         const std::string& fleet_dir,
                                         const std::string& target_flag,
                                         const std::string& key_flag) {
  EndpointFlags flags;
  flags.fleet_dir = fleet_dir;
  flags.target = target_flag;
  flags.api_key = key_flag;
  return ResolveEndpoint(service, flags);
}

absl::StatusOr<v1::File> UploadFile(const Endpoint& endpoint, const std::string& path,
                                    v1::FilePurpose purpose,
                                    const std::function<void(int64_t)>& on_progress) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  TF_ASSIGN_OR_RETURN(auto stub, Stub(endpoint));
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, endpoint.api_key, absl::Hours(1));
  v1::File file;
  auto writer = stub->UploadFile(&ctx, &file);
  v1::UploadFileRequest req;
  req.mutable_metadata()->set_filename(std::filesystem::path(path).filename().string());
  req.mutable_metadata()->set_purpose(purpose);
  req.mutable_metadata()->set_expected_bytes(
      static_cast<int64_t>(std::filesystem::file_size(path)));
  bool open = writer->Write(req);
  Sha256 sha;
  int64_t sent = 0;
  std::string buf(1 << 20, '\0');
  while (open && in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    std::streamsize n = in.gcount();
    if (n <= 0) break;
    sha.Update(absl::string_view(buf.data(), static_cast<size_t>(n)));
    req.set_chunk(buf.data(), static_cast<size_t>(n));
    open = writer->Write(req);
    sent += n;
    if (on_progress) on_progress(sent);
  }
  if (open) writer->WritesDone();
  grpc::Status status = writer->Finish();
  if (!status.ok()) return rpc::FromGrpcStatus(status);
  if (file.sha256() != sha.HexDigest()) {
    return absl::DataLossError(absl::StrCat("the server stored sha256 ", file.sha256(),
                                            " but the local file has ", sha.HexDigest()));
  }
  return file;
}

absl::StatusOr<v1::File> GetFile(const Endpoint& endpoint, const std::string& id) {
  TF_ASSIGN_OR_RETURN(auto stub, Stub(endpoint));
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, endpoint.api_key, absl::Seconds(30));
  v1::GetFileRequest req;
  req.set_file_id(id);
  v1::File file;
  grpc::Status s = stub->GetFile(&ctx, req, &file);
  if (!s.ok()) return rpc::FromGrpcStatus(s);
  return file;
}

absl::StatusOr<v1::ListFilesResponse> ListFiles(const Endpoint& endpoint,
                                                const std::string& page_token) {
  TF_ASSIGN_OR_RETURN(auto stub, Stub(endpoint));
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, endpoint.api_key, absl::Seconds(30));
  v1::ListFilesRequest req;
  req.set_page_token(page_token);
  req.set_page_size(100);
  v1::ListFilesResponse resp;
  grpc::Status s = stub->ListFiles(&ctx, req, &resp);
  if (!s.ok()) return rpc::FromGrpcStatus(s);
  return resp;
}

absl::Status DeleteFile(const Endpoint& endpoint, const std::string& id) {
  TF_ASSIGN_OR_RETURN(auto stub, Stub(endpoint));
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, endpoint.api_key, absl::Seconds(30));
  v1::DeleteFileRequest req;
  req.set_file_id(id);
  v1::DeleteFileResponse resp;
  return rpc::FromGrpcStatus(stub->DeleteFile(&ctx, req, &resp));
}

absl::StatusOr<v1::File> WaitForValidation(const Endpoint& endpoint, const std::string& id,
                                           absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    TF_ASSIGN_OR_RETURN(v1::File f, GetFile(endpoint, id));
    if (f.status() == v1::FILE_STATUS_PROCESSED || f.status() == v1::FILE_STATUS_ERROR) return f;
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat("file ", id, " is still being validated"));
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
}

absl::StatusOr<v1::ValidationReport> ValidateFile(const Endpoint& endpoint,
                                                  const v1::ValidateFileRequest& request) {
  TF_ASSIGN_OR_RETURN(auto stub, Stub(endpoint));
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, endpoint.api_key, absl::Minutes(30));
  v1::ValidationReport report;
  grpc::Status s = stub->ValidateFile(&ctx, request, &report);
  if (!s.ok()) return rpc::FromGrpcStatus(s);
  return report;
}

absl::StatusOr<v1::SplitFileResponse> SplitFile(const Endpoint& endpoint, const std::string& id,
                                                double ratio, int64_t seed) {
  TF_ASSIGN_OR_RETURN(auto stub, Stub(endpoint));
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, endpoint.api_key, absl::Minutes(30));
  v1::SplitFileRequest req;
  req.set_file_id(id);
  req.set_validation_ratio(ratio);
  req.set_seed(seed);
  v1::SplitFileResponse resp;
  grpc::Status s = stub->SplitFile(&ctx, req, &resp);
  if (!s.ok()) return rpc::FromGrpcStatus(s);
  return resp;
}

std::string FormatReport(const v1::ValidationReport& r) {
  std::string out = absl::StrCat(r.valid() ? "valid" : "INVALID", ": ", r.total_errors(),
                                 " error(s), ", r.total_warnings(), " warning(s)\n");
  for (const auto& i : r.issues()) {
    absl::StrAppend(&out, "  ", i.severity() == v1::ISSUE_SEVERITY_ERROR ? "error  " : "warning",
                    " ", i.line() > 0 ? absl::StrCat("line ", i.line()) : std::string("file"),
                    i.field().empty() ? "" : absl::StrCat(" ", i.field()), ": ", i.message(),
                    " [", i.code(), "]\n");
  }
  const auto& st = r.statistics();
  absl::StrAppend(&out, "  examples ", st.examples(), ", messages/example mean ",
                  absl::StrFormat("%.2f", st.messages_per_example().mean()), ", duplicates ",
                  st.duplicate_examples(), ", without system ", st.examples_missing_system(),
                  ", without user ", st.examples_missing_user(), "\n");
  if (st.total_tokens() > 0) {
    absl::StrAppend(&out, "  tokens/example min ", st.tokens_per_example().min(), " p50 ",
                    st.tokens_per_example().p50(), " p95 ", st.tokens_per_example().p95(),
                    " max ", st.tokens_per_example().max(), "; trained tokens/epoch ",
                    r.trained_tokens_per_epoch(), ", for ", r.epochs(), " epoch(s) ",
                    r.estimated_trained_tokens(), "\n");
    if (st.examples_over_max_length() > 0) {
      absl::StrAppend(&out, "  ", st.examples_over_max_length(), " example(s) over ",
                      r.max_sequence_length(), " tokens; truncation removes ",
                      st.tokens_truncated(), " tokens\n");
    }
  }
  for (const auto& [label, count] : st.label_counts()) {
    absl::StrAppend(&out, "  label ", label, ": ", count, "\n");
  }
  return out;
}

}  // namespace tunefleet::cli
