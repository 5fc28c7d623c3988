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

absl::StatusOr<Endpoint> ResolveEndpoint(const std::string& service,
                                         const std::string& fleet_dir,
                                         const std::string& target_flag,
                                         const std::string& key_flag) {
  Endpoint e;
  e.channel.target = target_flag;
  e.api_key = key_flag;
  std::string env_name = "TUNEFLEET_" + service;
  for (char& c : env_name) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (e.channel.target.empty() && std::getenv(env_name.c_str())) {
    e.channel.target = std::getenv(env_name.c_str());
  }
  if (e.api_key.empty() && std::getenv("TUNEFLEET_API_KEY")) {
    e.api_key = std::getenv("TUNEFLEET_API_KEY");
  }
  if ((e.channel.target.empty() || e.api_key.empty()) && !fleet_dir.empty()) {
    std::string fleet_json = fleet_dir + "/fleet.json";
    if (std::filesystem::exists(fleet_json)) {
      TF_ASSIGN_OR_RETURN(nlohmann::json fleet, ReadJson(fleet_json));
      if (e.channel.target.empty() && fleet["services"].contains(service)) {
        e.channel.target = fleet["services"][service]["address"].get<std::string>();
      }
      if (e.api_key.empty()) {
        TF_ASSIGN_OR_RETURN(nlohmann::json creds, ReadJson(fleet_dir + "/credentials.json"));
        e.api_key = creds.value("tenant_key", "");
      }
    }
  }
  if (e.channel.target.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "no address for the ", service, " service: pass --target, set ", env_name,
        ", or run 'tunefleet local' (its --data-dir is read with --fleet)"));
  }
  if (e.api_key.empty()) {
    return absl::InvalidArgumentError("no API key: pass --api-key or set TUNEFLEET_API_KEY");
  }
  return e;
}

absl::StatusOr<v1::File> UploadFile(const Endpoint& endpoint, const std::string& path,
                                    v1::FilePurpose purpose) {
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
  std::string buf(1 << 20, '\0');
  while (open && in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    std::streamsize n = in.gcount();
    if (n <= 0) break;
    sha.Update(absl::string_view(buf.data(), static_cast<size_t>(n)));
    req.set_chunk(buf.data(), static_cast<size_t>(n));
    open = writer->Write(req);
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
