#include "services/dataset/file_registry.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "common/errors/error_details.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/base/ids.h"
#include "common/base/status_macros.h"

namespace tunefleet::dataset {
namespace {

// ALREADY_EXISTS for a request_id whose first upload had other content.
absl::Status RequestIdReused(const FileRecord& first, const std::string& request_id,
                             const std::string& sha256) {
  return errors::WithReason(
      absl::AlreadyExistsError(absl::StrCat("metadata.request_id '", request_id,
                                            "' was used for ", first.id,
                                            " with other content (sha256 ", first.sha256,
                                            ", these bytes ", sha256, ")")),
      "REQUEST_ID_REUSED", {{"file_id", first.id}});
}

constexpr char kBlobPrefix[] = "files/";

const store::Migration kMigrations[] = {
    {1, R"sql(
      CREATE TABLE files (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        filename TEXT NOT NULL,
        purpose INTEGER NOT NULL,
        format INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        status INTEGER NOT NULL,
        status_details TEXT NOT NULL DEFAULT '',
        created_at_us INTEGER NOT NULL
      );
      CREATE INDEX files_by_tenant ON files (tenant, created_at_us DESC, id DESC);
    )sql"},
    {2, R"sql(
      ALTER TABLE files ADD COLUMN validation BLOB NOT NULL DEFAULT x'';
      CREATE INDEX files_by_status ON files (status, created_at_us);
    )sql"},
    {3, R"sql(
      CREATE TABLE file_holds (
        file_id TEXT NOT NULL REFERENCES files (id),
        holder TEXT NOT NULL,
        PRIMARY KEY (file_id, holder)
      );
    )sql"},
    {4, R"sql(
      ALTER TABLE files ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
      ALTER TABLE files ADD COLUMN description TEXT NOT NULL DEFAULT '';
      ALTER TABLE files ADD COLUMN request_id TEXT NOT NULL DEFAULT '';
      CREATE UNIQUE INDEX files_by_request_id ON files (tenant, request_id)
        WHERE request_id != '';
    )sql"},
};

constexpr char kColumns[] =
    "id, tenant, filename, purpose, format, bytes, sha256, status, status_details, "
    "created_at_us, validation, labels, description, request_id";

std::string LabelsToJson(const errors::Labels& labels) {
  return nlohmann::json(labels).dump();
}

errors::Labels LabelsFromJson(const std::string& text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  errors::Labels out;
  if (!j.is_object()) return out;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.value().is_string()) out[it.key()] = it.value().get<std::string>();
  }
  return out;
}

FileRecord FromRow(const store::Row& r) {
  FileRecord f;
  f.id = r[0].AsText();
  f.tenant = r[1].AsText();
  f.filename = r[2].AsText();
  f.purpose = static_cast<Purpose>(r[3].AsInt64());
  f.format = static_cast<int>(r[4].AsInt64());
  f.bytes = r[5].AsInt64();
  f.sha256 = r[6].AsText();
  f.status = static_cast<FileStatus>(r[7].AsInt64());
  f.status_details = r[8].AsText();
  f.created_at = absl::FromUnixMicros(r[9].AsInt64());
  f.validation = std::string(r[10].bytes());
  f.labels = LabelsFromJson(r[11].AsText());
  f.description = r[12].AsText();
  f.request_id = r[13].AsText();
  return f;
}

absl::Status ValidateRequest(const UploadRequest& req, int64_t max_bytes) {
  if (req.filename.empty()) {
    return errors::InvalidField("metadata.filename", "metadata.filename is required");
  }
  if (req.filename.size() > 255) {
    return errors::InvalidField("metadata.filename", "metadata.filename is longer than 255 bytes");
  }
  for (char c : req.filename) {
    if (static_cast<unsigned char>(c) < 0x20 || c == '/' || c == '\\') {
      return errors::InvalidField(
          "metadata.filename", "metadata.filename must not contain '/', '\\' or control characters");
    }
  }
  if (req.purpose != Purpose::kFineTune && req.purpose != Purpose::kValidation) {
    return errors::InvalidField(
        "metadata.purpose", "metadata.purpose must be FILE_PURPOSE_FINE_TUNE or FILE_PURPOSE_VALIDATION");
  }
  if (req.expected_bytes < 0) {
    return errors::InvalidField("metadata.expected_bytes", "metadata.expected_bytes must not be negative");
  }
  if (req.expected_bytes > max_bytes) {
    return errors::InvalidField("metadata.expected_bytes", absl::StrCat("metadata.expected_bytes (", req.expected_bytes,
                                                   ") is over the limit of ", max_bytes, " bytes"));
  }
  std::vector<errors::FieldViolation> bad;
  errors::CheckLabels(req.labels, "metadata.labels", &bad);
  errors::CheckDescription(req.description, "metadata.description", &bad);
  // SplitFile's outputs use "split:<key>:training|validation" (key <= 128).
  if (req.request_id.size() > 160) bad.push_back({"metadata.request_id", "at most 160 characters"});
  if (!bad.empty()) return errors::InvalidFields(bad);
  if (!req.expected_sha256.empty()) {
    bool hex = req.expected_sha256.size() == 64;
    for (char c : req.expected_sha256) hex = hex && absl::ascii_isxdigit(c);
    if (!hex) {
      return errors::InvalidField("metadata.expected_sha256", "metadata.expected_sha256 must be 64 hex digits");
    }
  }
  return absl::OkStatus();
}

// Page tokens are opaque to clients: the position after the last file
// returned, in (created_at DESC, id DESC) order.
std::string EncodeToken(const FileRecord& last) {
  return absl::WebSafeBase64Escape(
      absl::StrCat(absl::ToUnixMicros(last.created_at), ":", last.id));
}

absl::Status DecodeToken(const std::string& token, int64_t* created_us, std::string* id) {
  std::string raw;
  if (!absl::WebSafeBase64Unescape(token, &raw)) {
    return errors::InvalidField("page_token", "page_token is not a token this service issued");
  }
  std::vector<std::string> parts = absl::StrSplit(raw, absl::MaxSplits(':', 1));
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], created_us) || parts[1].empty()) {
    return errors::InvalidField("page_token", "page_token is not a token this service issued");
  }
  *id = parts[1];
  return absl::OkStatus();
}

}  // namespace

std::string BlobName(const std::string& file_id) { return absl::StrCat(kBlobPrefix, file_id); }

absl::StatusOr<std::unique_ptr<FileRegistry>> FileRegistry::Open(const std::string& dir,
                                                                 FileRegistryOptions options) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  TF_ASSIGN_OR_RETURN(auto db, store::Database::Open(dir + "/files.db"));
  TF_ASSIGN_OR_RETURN(auto blobs, store::DirectoryArtifactStore::Open(dir + "/blobs"));
  return Open(std::move(db), std::move(blobs), options);
}

absl::StatusOr<std::unique_ptr<FileRegistry>> FileRegistry::Open(
    std::unique_ptr<store::Database> db, std::unique_ptr<store::ArtifactStore> blobs,
    FileRegistryOptions options) {
  if (db == nullptr || blobs == nullptr)
    return absl::InvalidArgumentError("a file registry needs a database and an artifact store");
  TF_RETURN_IF_ERROR(store::ApplyMigrations(*db, kMigrations));
  auto registry = std::unique_ptr<FileRegistry>(
      new FileRegistry(options, std::move(db), std::move(blobs)));
  TF_RETURN_IF_ERROR(registry->RemoveOrphanBlobs());
  return registry;
}

// A crash between storing a blob and recording it leaves a blob without a
// row: nobody can see it, so it is removed.
absl::Status FileRegistry::RemoveOrphanBlobs() {
  TF_ASSIGN_OR_RETURN(std::vector<std::string> names, blobs_->List(kBlobPrefix));
  for (const std::string& name : names) {
    std::string id = name.substr(sizeof(kBlobPrefix) - 1);
    TF_ASSIGN_OR_RETURN(auto rows, db_->Query("SELECT 1 FROM files WHERE id = ?", {id}));
    if (rows.empty()) TF_RETURN_IF_ERROR(blobs_->Delete(name));
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> FileRegistry::UsedBytes(const std::string& tenant) {
  TF_ASSIGN_OR_RETURN(auto rows,
                      db_->Query("SELECT COALESCE(SUM(bytes), 0) FROM files WHERE tenant = ?",
                                 {tenant}));
  return rows[0][0].AsInt64();
}

// Reservations and commits hold mu_ while they read or change the bytes
// stored, so that a commit moving bytes from "reserved" to "stored" is never
// seen half-done (counted in neither).
absl::Status FileRegistry::Reserve(const std::string& tenant, int64_t bytes) {
  absl::MutexLock lock(&mu_);
  TF_ASSIGN_OR_RETURN(int64_t used, UsedBytes(tenant));
  int64_t& reserved = reserved_[tenant];
  if (used + reserved + bytes > options_.tenant_quota_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "storage quota exceeded: tenant '", tenant, "' stores ", used, " bytes (plus ", reserved,
        " in uploads in progress) of its ", options_.tenant_quota_bytes, "-byte quota"));
  }
  reserved += bytes;
  return absl::OkStatus();
}

void FileRegistry::Unreserve(const std::string& tenant, int64_t bytes) {
  absl::MutexLock lock(&mu_);
  UnreserveLocked(tenant, bytes);
}

void FileRegistry::UnreserveLocked(const std::string& tenant, int64_t bytes) {
  auto it = reserved_.find(tenant);
  if (it == reserved_.end()) return;
  it->second -= bytes;
  if (it->second <= 0) reserved_.erase(it);
}

absl::StatusOr<std::unique_ptr<Upload>> FileRegistry::BeginUpload(const std::string& tenant,
                                                                 UploadRequest request) {
  TF_RETURN_IF_ERROR(ValidateRequest(request, options_.max_file_bytes));
  FileRecord record;
  record.id = NewId("file");
  record.tenant = tenant;
  record.filename = request.filename;
  record.purpose = request.purpose;
  record.format = request.format;
  record.labels = request.labels;
  record.description = request.description;
  record.request_id = request.request_id;
  if (!request.request_id.empty()) {
    // A retry of an upload that committed: answered without storing a byte.
    TF_ASSIGN_OR_RETURN(std::optional<FileRecord> first,
                        FindByRequestId(tenant, request.request_id));
    if (first.has_value()) {
      if (!request.expected_sha256.empty() &&
          absl::AsciiStrToLower(request.expected_sha256) != first->sha256) {
        return RequestIdReused(*first, request.request_id, request.expected_sha256);
      }
      return std::unique_ptr<Upload>(
          new Upload(this, std::move(record), std::move(request), std::move(*first)));
    }
  }
  TF_ASSIGN_OR_RETURN(auto writer, blobs_->OpenWriter(BlobName(record.id)));
  return std::unique_ptr<Upload>(
      new Upload(this, std::move(record), std::move(request), std::move(writer)));
}

Upload::~Upload() {
  if (!done_ && !first_.has_value()) {
    if (writer_) writer_->Abort();
    registry_->Unreserve(record_.tenant, bytes_);
  }
}

absl::Status Upload::Append(absl::string_view data) {
  if (done_) return absl::FailedPreconditionError("upload already finished");
  const int64_t max = registry_->options_.max_file_bytes;
  if (bytes_ + static_cast<int64_t>(data.size()) > max) {
    return absl::InvalidArgumentError(
        absl::StrCat("file is larger than the limit of ", max, " bytes"));
  }
  bytes_ += static_cast<int64_t>(data.size());
  if (first_.has_value()) {
    hash_->Update(data);
    return absl::OkStatus();
  }
  TF_RETURN_IF_ERROR(registry_->Reserve(record_.tenant, static_cast<int64_t>(data.size())));
  return writer_->Append(data);
}

absl::StatusOr<FileRecord> Upload::CommitRetry() {
  done_ = true;
  const std::string sha256 = hash_->HexDigest();
  if (!request_.expected_sha256.empty() &&
      absl::AsciiStrToLower(request_.expected_sha256) != sha256) {
    return absl::DataLossError(absl::StrCat("sha256 of the received bytes is ", sha256,
                                            ", not metadata.expected_sha256 ",
                                            request_.expected_sha256));
  }
  if (first_->sha256 != sha256) return RequestIdReused(*first_, record_.request_id, sha256);
  return *first_;
}

absl::StatusOr<FileRecord> Upload::Commit() {
  if (done_) return absl::FailedPreconditionError("upload already finished");
  if (request_.expected_bytes > 0 && request_.expected_bytes != bytes_) {
    return absl::InvalidArgumentError(absl::StrCat("received ", bytes_,
                                                   " bytes but metadata.expected_bytes is ",
                                                   request_.expected_bytes));
  }
  if (bytes_ == 0) return absl::InvalidArgumentError("the file is empty");
  if (first_.has_value()) return CommitRetry();
  TF_ASSIGN_OR_RETURN(store::ArtifactInfo info, writer_->Commit());
  record_.bytes = info.size;
  record_.sha256 = info.sha256;
  if (!request_.expected_sha256.empty() &&
      absl::AsciiStrToLower(request_.expected_sha256) != info.sha256) {
    (void)registry_->blobs_->Delete(BlobName(record_.id));
    return absl::DataLossError(absl::StrCat("sha256 of the received bytes is ", info.sha256,
                                            ", not metadata.expected_sha256 ",
                                            request_.expected_sha256));
  }
  record_.status = FileStatus::kUploaded;
  record_.created_at = registry_->options_.clock->Now();
  absl::MutexLock lock(&registry_->mu_);
  if (!record_.request_id.empty()) {
    // Two uploads with one request_id racing: the first to commit stands.
    absl::StatusOr<std::optional<FileRecord>> first =
        registry_->FindByRequestId(record_.tenant, record_.request_id);
    if (!first.ok() || first->has_value()) {
      (void)registry_->blobs_->Delete(BlobName(record_.id));
      done_ = true;
      registry_->UnreserveLocked(record_.tenant, bytes_);
      if (!first.ok()) return first.status();
      const FileRecord& f = **first;
      if (f.sha256 != record_.sha256) return RequestIdReused(f, record_.request_id, record_.sha256);
      return f;
    }
  }
  absl::StatusOr<store::ExecResult> inserted = registry_->db_->Execute(
      absl::StrCat("INSERT INTO files (", kColumns,
                   ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
      {record_.id, record_.tenant, record_.filename, static_cast<int>(record_.purpose),
       record_.format, record_.bytes, record_.sha256, static_cast<int>(record_.status),
       record_.status_details, absl::ToUnixMicros(record_.created_at),
       store::Value::Blob(""), LabelsToJson(record_.labels), record_.description,
       record_.request_id});
  if (!inserted.ok()) {
    (void)registry_->blobs_->Delete(BlobName(record_.id));
    return inserted.status();
  }
  done_ = true;
  registry_->UnreserveLocked(record_.tenant, bytes_);
  return record_;
}

absl::StatusOr<FileRecord> FileRegistry::Get(const Scope& scope, const std::string& id) {
  if (!HasIdPrefix(id, "file")) {
    return errors::InvalidField("file_id", absl::StrCat("file_id '", id, "' is not a file id (file-…)"));
  }
  TF_ASSIGN_OR_RETURN(auto rows, db_->Query(absl::StrCat("SELECT ", kColumns,
                                                         " FROM files WHERE id = ?"),
                                            {id}));
  // A file outside the scope is reported exactly like a missing one.
  if (rows.empty() || !scope.Covers(rows[0][1].AsText())) {
    return absl::NotFoundError(absl::StrCat("file ", id, " not found"));
  }
  return FromRow(rows[0]);
}

absl::StatusOr<std::optional<FileRecord>> FileRegistry::FindByRequestId(
    const std::string& tenant, const std::string& request_id) {
  TF_ASSIGN_OR_RETURN(auto rows,
                      db_->Query(absl::StrCat("SELECT ", kColumns,
                                              " FROM files WHERE tenant = ? AND request_id = ?"),
                                 {tenant, request_id}));
  if (rows.empty()) return std::optional<FileRecord>();
  return std::optional<FileRecord>(FromRow(rows[0]));
}

absl::StatusOr<FilePage> FileRegistry::List(const std::string& tenant, int page_size,
                                            const std::string& page_token, Purpose purpose,
                                            const errors::Labels& labels) {
  {
    std::vector<errors::FieldViolation> bad;
    errors::CheckLabels(labels, "labels", &bad);
    if (!bad.empty()) return errors::InvalidFields(bad);
  }
  if (page_size < 0) return errors::InvalidField("page_size", "page_size must not be negative");
  if (page_size == 0) page_size = 20;
  page_size = std::min(page_size, 100);
  int64_t after_us = INT64_MAX;
  std::string after_id = "\x7f";
  if (!page_token.empty()) TF_RETURN_IF_ERROR(DecodeToken(page_token, &after_us, &after_id));
  // Label keys are validated above ([a-z0-9._/-]), so they can be quoted
  // into a JSON path.
  std::string label_filter;
  std::vector<store::Value> args = {tenant, after_us, after_us, after_id,
                                    static_cast<int>(purpose), static_cast<int>(purpose)};
  for (const auto& [key, value] : labels) {
    absl::StrAppend(&label_filter, " AND json_extract(labels, ?) = ?");
    args.push_back(absl::StrCat("$.\"", key, "\""));
    args.push_back(value);
  }
  args.push_back(page_size + 1);
  TF_ASSIGN_OR_RETURN(
      auto rows,
      db_->Query(absl::StrCat("SELECT ", kColumns, " FROM files WHERE tenant = ? AND "
                              "(created_at_us < ? OR (created_at_us = ? AND id < ?)) AND "
                              "(? = 0 OR purpose = ?)",
                              label_filter, " ORDER BY created_at_us DESC, id DESC LIMIT ?"),
                 args));
  FilePage page;
  for (size_t i = 0; i < rows.size() && static_cast<int>(i) < page_size; ++i) {
    page.files.push_back(FromRow(rows[i]));
  }
  if (static_cast<int>(rows.size()) > page_size) page.next_page_token = EncodeToken(page.files.back());
  return page;
}

absl::Status FileRegistry::SetStatus(const std::string& id, FileStatus status,
                                     const std::string& details,
                                     const std::string& validation, int detected_format) {
  TF_ASSIGN_OR_RETURN(
      store::ExecResult r,
      db_->Execute("UPDATE files SET status = ?, status_details = ?, validation = ?, "
                   "format = CASE WHEN format = 0 THEN ? ELSE format END WHERE id = ?",
                   {static_cast<int>(status), details, store::Value::Blob(validation),
                    detected_format, id}));
  if (r.changes == 0) return absl::NotFoundError(absl::StrCat("file ", id, " not found"));
  return absl::OkStatus();
}

absl::StatusOr<std::vector<FileRecord>> FileRegistry::PendingValidation() {
  TF_ASSIGN_OR_RETURN(auto rows,
                      db_->Query(absl::StrCat("SELECT ", kColumns,
                                              " FROM files WHERE status IN (?, ?) "
                                              "ORDER BY created_at_us"),
                                 {static_cast<int>(FileStatus::kUploaded),
                                  static_cast<int>(FileStatus::kProcessing)}));
  std::vector<FileRecord> out;
  for (const auto& r : rows) out.push_back(FromRow(r));
  return out;
}

absl::Status FileRegistry::Hold(const std::string& tenant, const std::string& id,
                                const std::string& holder) {
  if (holder.empty()) return errors::InvalidField("holder", "holder is required");
  TF_RETURN_IF_ERROR(Get(Scope::Tenant(tenant), id).status());
  return db_->Execute("INSERT OR IGNORE INTO file_holds (file_id, holder) VALUES (?, ?)",
                      {id, holder})
      .status();
}

absl::Status FileRegistry::Release(const std::string& id, const std::string& holder) {
  return db_->Execute("DELETE FROM file_holds WHERE file_id = ? AND holder = ?", {id, holder})
      .status();
}

absl::Status FileRegistry::Delete(const std::string& tenant, const std::string& id) {
  TF_RETURN_IF_ERROR(Get(Scope::Tenant(tenant), id).status());
  // The hold check and the delete are one transaction: a hold taken
  // meanwhile either blocks the delete or fails on the missing file.
  TF_ASSIGN_OR_RETURN(store::Transaction txn, db_->Begin());
  TF_ASSIGN_OR_RETURN(auto holds,
                      db_->Query("SELECT holder FROM file_holds WHERE file_id = ? ORDER BY holder",
                                 {id}));
  if (!holds.empty()) {
    std::string holders;
    for (const auto& h : holds) absl::StrAppend(&holders, holders.empty() ? "" : ", ", h[0].AsText());
    absl::Status status = errors::WithReason(
        absl::FailedPreconditionError(absl::StrCat("file ", id, " is in use by unfinished job(s) ",
                                                   holders,
                                                   "; cancel them or wait until they finish")),
        "FILE_IN_USE", {{"file_id", id}});
    for (const auto& h : holds) {
      status = errors::WithPreconditionViolation(status, "FILE_HELD", h[0].AsText(),
                                                 "an unfinished job uses this file");
    }
    return status;
  }
  // The row goes first: once it is gone the file is invisible, and a crash
  // before the blob is removed leaves an orphan that Open() cleans up.
  TF_ASSIGN_OR_RETURN(store::ExecResult deleted,
                      db_->Execute("DELETE FROM files WHERE id = ?", {id}));
  TF_RETURN_IF_ERROR(txn.Commit());
  // Two concurrent deletes: the one that removed nothing reports NOT_FOUND.
  if (deleted.changes == 0) return absl::NotFoundError(absl::StrCat("file ", id, " not found"));
  absl::Status s = blobs_->Delete(BlobName(id));
  if (!s.ok() && !absl::IsNotFound(s)) return s;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<store::ArtifactReader>> FileRegistry::OpenContent(
    const Scope& scope, const std::string& id, int64_t offset) {
  TF_ASSIGN_OR_RETURN(FileRecord f, Get(scope, id));
  if (offset < 0 || offset > f.bytes) {
    return absl::OutOfRangeError(
        absl::StrCat("offset ", offset, " is outside file ", id, " of ", f.bytes, " bytes"));
  }
  return blobs_->OpenReader(BlobName(id), offset);
}

}  // namespace tunefleet::dataset
