#include "common/store/sqlite.h"

#include <sqlite3.h>

#include <cinttypes>
#include <cstdlib>
#include <ostream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/base/logging.h"
#include "common/base/status_macros.h"

namespace tunefleet::store {

// ---------------------------------------------------------------------------
// Value

int64_t Value::AsInt64() const {
  switch (type_) {
    case Type::kInt64:
      return int_;
    case Type::kDouble:
      return static_cast<int64_t>(double_);
    case Type::kText: {
      int64_t v = 0;
      if (absl::SimpleAtoi(bytes_, &v)) return v;
      double d = 0;
      if (absl::SimpleAtod(bytes_, &d)) return static_cast<int64_t>(d);
      return 0;
    }
    case Type::kNull:
    case Type::kBlob:
      return 0;
  }
  return 0;
}

double Value::AsDouble() const {
  switch (type_) {
    case Type::kInt64:
      return static_cast<double>(int_);
    case Type::kDouble:
      return double_;
    case Type::kText: {
      double d = 0;
      return absl::SimpleAtod(bytes_, &d) ? d : 0.0;
    }
    case Type::kNull:
    case Type::kBlob:
      return 0;
  }
  return 0;
}

std::string Value::AsText() const {
  switch (type_) {
    case Type::kInt64:
      return absl::StrCat(int_);
    case Type::kDouble:
      return absl::StrCat(double_);
    case Type::kText:
    case Type::kBlob:
      return bytes_;
    case Type::kNull:
      return "";
  }
  return "";
}

std::string Value::DebugString() const {
  switch (type_) {
    case Type::kNull:
      return "NULL";
    case Type::kInt64:
      return absl::StrCat(int_);
    case Type::kDouble:
      return absl::StrCat(double_);
    case Type::kText:
      return absl::StrCat("'", bytes_, "'");
    case Type::kBlob: {
      static constexpr char kHex[] = "0123456789abcdef";
      std::string out = "x'";
      for (unsigned char c : bytes_) {
        out.push_back(kHex[c >> 4]);
        out.push_back(kHex[c & 15]);
      }
      out.push_back('\'');
      return out;
    }
  }
  return "?";
}

bool operator==(const Value& a, const Value& b) {
  if (a.type_ != b.type_) return false;
  switch (a.type_) {
    case Value::Type::kNull:
      return true;
    case Value::Type::kInt64:
      return a.int_ == b.int_;
    case Value::Type::kDouble:
      return a.double_ == b.double_;
    case Value::Type::kText:
    case Value::Type::kBlob:
      return a.bytes_ == b.bytes_;
  }
  return false;
}

std::ostream& operator<<(std::ostream& os, const Value& v) { return os << v.DebugString(); }

// ---------------------------------------------------------------------------
// Errors

namespace {

absl::StatusCode CodeFor(int rc) {
  switch (rc & 0xff) {  // the primary code of an extended one
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return absl::StatusCode::kUnavailable;
    case SQLITE_CONSTRAINT:
      if (rc == SQLITE_CONSTRAINT_UNIQUE || rc == SQLITE_CONSTRAINT_PRIMARYKEY ||
          rc == SQLITE_CONSTRAINT_ROWID) {
        return absl::StatusCode::kAlreadyExists;
      }
      return absl::StatusCode::kFailedPrecondition;
    case SQLITE_FULL:
    case SQLITE_TOOBIG:
      return absl::StatusCode::kResourceExhausted;
    default:
      return absl::StatusCode::kInternal;
  }
}

// `detail` is sqlite3_errmsg() of the connection, which must be read before
// any other call on it.
absl::Status SqliteError(int rc, absl::string_view detail, absl::string_view sql) {
  std::string message =
      absl::StrCat("sqlite: ", detail, " (", sqlite3_errstr(rc), ", code ", rc, ")");
  if (!sql.empty()) absl::StrAppend(&message, " in: ", sql);
  return absl::Status(CodeFor(rc), message);
}

absl::Status SqliteError(sqlite3* db, int rc, absl::string_view sql) {
  return SqliteError(rc, db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc), sql);
}

}  // namespace

// Holds the connection for one call; reentrant for the thread that already
// holds it (inside a Transaction).
class ConnectionLock {
 public:
  explicit ConnectionLock(Database* db) : db_(db) { db_->Acquire(); }
  ~ConnectionLock() { db_->Release(); }
  ConnectionLock(const ConnectionLock&) = delete;
  ConnectionLock& operator=(const ConnectionLock&) = delete;

 private:
  Database* db_;
};

// ---------------------------------------------------------------------------
// Statement

Statement::Statement(Statement&& other) noexcept
    : db_(other.db_), stmt_(other.stmt_), sql_(std::move(other.sql_)) {
  other.db_ = nullptr;
  other.stmt_ = nullptr;
}

Statement& Statement::operator=(Statement&& other) noexcept {
  if (this != &other) {
    Finalize();
    db_ = std::exchange(other.db_, nullptr);
    stmt_ = std::exchange(other.stmt_, nullptr);
    sql_ = std::move(other.sql_);
  }
  return *this;
}

Statement::~Statement() { Finalize(); }

void Statement::Finalize() {
  if (stmt_ == nullptr) return;
  ConnectionLock lock(db_);
  sqlite3_finalize(stmt_);
  stmt_ = nullptr;
}

absl::Status Statement::Error(int rc) const { return SqliteError(db_->db_, rc, sql_); }

absl::Status Statement::Reset() {
  ConnectionLock lock(db_);
  // sqlite3_reset repeats the error of the last step; that error was
  // already reported by Step(), so it is not an error of the reset.
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
  return absl::OkStatus();
}

absl::Status Statement::Bind(int index, const Value& value) {
  ConnectionLock lock(db_);
  int rc = SQLITE_OK;
  switch (value.type()) {
    case Value::Type::kNull:
      rc = sqlite3_bind_null(stmt_, index);
      break;
    case Value::Type::kInt64:
      rc = sqlite3_bind_int64(stmt_, index, value.AsInt64());
      break;
    case Value::Type::kDouble:
      rc = sqlite3_bind_double(stmt_, index, value.AsDouble());
      break;
    case Value::Type::kText:
      rc = sqlite3_bind_text64(stmt_, index, value.bytes().data(), value.bytes().size(),
                               SQLITE_TRANSIENT, SQLITE_UTF8);
      break;
    case Value::Type::kBlob:
      // A zero-length blob needs a non-null pointer to stay a blob, not NULL.
      rc = sqlite3_bind_blob64(stmt_, index, value.bytes().empty() ? "" : value.bytes().data(),
                               value.bytes().size(), SQLITE_TRANSIENT);
      break;
  }
  if (rc != SQLITE_OK) {
    return SqliteError(db_->db_, rc, absl::StrCat(sql_, " [parameter ", index, "]"));
  }
  return absl::OkStatus();
}

absl::Status Statement::BindAll(absl::Span<const Value> params) {
  ConnectionLock lock(db_);
  int expected = sqlite3_bind_parameter_count(stmt_);
  if (static_cast<int>(params.size()) != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("statement takes ", expected, " parameters, got ", params.size(), ": ", sql_));
  }
  for (size_t i = 0; i < params.size(); ++i) {
    TF_RETURN_IF_ERROR(Bind(static_cast<int>(i) + 1, params[i]));
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> Statement::Step() {
  ConnectionLock lock(db_);
  int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  absl::Status error = Error(rc);
  sqlite3_reset(stmt_);  // leaves the statement reusable after an error
  return error;
}

absl::StatusOr<ExecResult> Statement::Execute(absl::Span<const Value> params) {
  ConnectionLock lock(db_);
  TF_RETURN_IF_ERROR(Reset());
  TF_RETURN_IF_ERROR(BindAll(params));
  while (true) {
    TF_ASSIGN_OR_RETURN(bool row, Step());
    if (!row) break;
  }
  ExecResult result;
  result.changes = sqlite3_changes64(db_->db_);
  result.last_insert_rowid = sqlite3_last_insert_rowid(db_->db_);
  sqlite3_reset(stmt_);  // releases the statement's read snapshot
  return result;
}

absl::StatusOr<std::vector<Row>> Statement::Query(absl::Span<const Value> params) {
  ConnectionLock lock(db_);
  TF_RETURN_IF_ERROR(Reset());
  TF_RETURN_IF_ERROR(BindAll(params));
  std::vector<Row> rows;
  while (true) {
    TF_ASSIGN_OR_RETURN(bool row, Step());
    if (!row) break;
    rows.push_back(CurrentRow());
  }
  sqlite3_reset(stmt_);
  return rows;
}

int Statement::ColumnCount() const { return sqlite3_column_count(stmt_); }

std::string Statement::ColumnName(int column) const {
  const char* name = sqlite3_column_name(stmt_, column);
  return name != nullptr ? name : "";
}

Value Statement::Column(int column) const {
  switch (sqlite3_column_type(stmt_, column)) {
    case SQLITE_INTEGER:
      return Value(static_cast<int64_t>(sqlite3_column_int64(stmt_, column)));
    case SQLITE_FLOAT:
      return Value(sqlite3_column_double(stmt_, column));
    case SQLITE_TEXT:
      return Value(ColumnText(column));
    case SQLITE_BLOB:
      return Value::Blob(ColumnText(column));
    default:
      return Value();
  }
}

Row Statement::CurrentRow() const {
  Row row;
  int n = ColumnCount();
  row.reserve(n);
  for (int i = 0; i < n; ++i) row.push_back(Column(i));
  return row;
}

bool Statement::ColumnIsNull(int column) const {
  return sqlite3_column_type(stmt_, column) == SQLITE_NULL;
}

int64_t Statement::ColumnInt64(int column) const { return sqlite3_column_int64(stmt_, column); }

double Statement::ColumnDouble(int column) const { return sqlite3_column_double(stmt_, column); }

std::string Statement::ColumnText(int column) const {
  // The pointer first, then the size: that order is the one SQLite
  // documents as safe when a conversion happens.
  const void* data = sqlite3_column_blob(stmt_, column);
  int size = sqlite3_column_bytes(stmt_, column);
  if (data == nullptr || size <= 0) return "";
  return std::string(static_cast<const char*>(data), static_cast<size_t>(size));
}

// ---------------------------------------------------------------------------
// Transaction

Transaction& Transaction::operator=(Transaction&& other) noexcept {
  if (this != &other) {
    RollbackIfActive();
    db_ = std::exchange(other.db_, nullptr);
  }
  return *this;
}

Transaction::~Transaction() { RollbackIfActive(); }

void Transaction::RollbackIfActive() {
  if (db_ == nullptr) return;
  absl::Status status = Rollback();
  if (!status.ok()) spdlog::warn("sqlite: implicit rollback failed: {}", status.ToString());
}

absl::Status Transaction::Commit() {
  if (db_ == nullptr) return absl::FailedPreconditionError("transaction already ended");
  Database* db = std::exchange(db_, nullptr);
  return db->EndTransaction("COMMIT");
}

absl::Status Transaction::Rollback() {
  if (db_ == nullptr) return absl::FailedPreconditionError("transaction already ended");
  Database* db = std::exchange(db_, nullptr);
  return db->EndTransaction("ROLLBACK");
}

// ---------------------------------------------------------------------------
// Database

absl::StatusOr<std::unique_ptr<Database>> Database::Open(const std::string& path,
                                                         const Options& options) {
  // FULLMUTEX although every call holds the connection: a Statement's
  // Column*() reads run without that hold, between its Step() calls.
  int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX;
  if (options.create_if_missing) flags |= SQLITE_OPEN_CREATE;
  sqlite3* handle = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &handle, flags, nullptr);
  if (rc != SQLITE_OK) {
    absl::Status error = SqliteError(handle, rc, "");
    sqlite3_close_v2(handle);
    if ((rc & 0xff) == SQLITE_CANTOPEN && !options.create_if_missing) {
      return absl::NotFoundError(absl::StrCat("no database at ", path));
    }
    return absl::Status(error.code(), absl::StrCat("opening ", path, ": ", error.message()));
  }
  sqlite3_extended_result_codes(handle, 1);
  std::unique_ptr<Database> db(new Database(handle, path));

  sqlite3_busy_timeout(handle, static_cast<int>(absl::ToInt64Milliseconds(options.busy_timeout)));
  // WAL lets readers run beside the one writer. synchronous=FULL syncs the
  // WAL at every commit: what must survive a restart is on disk before the
  // RPC that wrote it returns (NORMAL could lose the last commits on power
  // loss, though never corrupt the file).
  TF_ASSIGN_OR_RETURN(std::vector<Row> mode, db->Query("PRAGMA journal_mode=WAL"));
  std::string journal = mode.empty() ? "" : absl::AsciiStrToLower(mode[0][0].AsText());
  if (journal != "wal" && journal != "memory") {
    return absl::InternalError(
        absl::StrCat("sqlite: ", path, " cannot use WAL (journal_mode=", journal, ")"));
  }
  TF_RETURN_IF_ERROR(db->Exec("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON"));
  return db;
}

Database::~Database() {
  // close_v2 defers the close if a Statement still lives (a bug in the
  // caller), rather than failing and leaking the connection.
  sqlite3_close_v2(db_);
}

void Database::Acquire() {
  std::thread::id self = std::this_thread::get_id();
  absl::MutexLock lock(&mu_);
  if (depth_ > 0 && owner_ == self) {
    ++depth_;
    return;
  }
  mu_.Await(absl::Condition(this, &Database::Free));
  owner_ = self;
  depth_ = 1;
}

void Database::Release() {
  absl::MutexLock lock(&mu_);
  if (--depth_ == 0) owner_ = std::thread::id();
}

absl::Status Database::Exec(absl::string_view sql) {
  ConnectionLock lock(this);
  std::string text(sql);
  char* message = nullptr;
  int rc = sqlite3_exec(db_, text.c_str(), nullptr, nullptr, &message);
  if (rc == SQLITE_OK) return absl::OkStatus();
  absl::Status error = SqliteError(rc, message != nullptr ? message : sqlite3_errstr(rc), text);
  sqlite3_free(message);
  return error;
}

absl::StatusOr<Statement> Database::Prepare(absl::string_view sql) {
  // A Statement is prepared to be reused: tell SQLite it will live long.
  return Prepare(sql, SQLITE_PREPARE_PERSISTENT);
}

absl::StatusOr<Statement> Database::Prepare(absl::string_view sql, unsigned int flags) {
  ConnectionLock lock(this);
  sqlite3_stmt* stmt = nullptr;
  const char* tail = nullptr;
  int rc = sqlite3_prepare_v3(db_, sql.data(), static_cast<int>(sql.size()), flags, &stmt, &tail);
  if (rc != SQLITE_OK) {
    absl::Status error = SqliteError(db_, rc, sql);
    sqlite3_finalize(stmt);
    return error;
  }
  if (stmt == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("no SQL statement in: ", sql));
  }
  Statement statement(this, stmt, std::string(sql));
  absl::string_view rest =
      absl::StripAsciiWhitespace(sql.substr(static_cast<size_t>(tail - sql.data())));
  while (!rest.empty() && rest.front() == ';') {
    rest = absl::StripLeadingAsciiWhitespace(rest.substr(1));
  }
  if (!rest.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("one statement expected (Exec runs scripts), found more in: ", sql));
  }
  return statement;
}

absl::StatusOr<ExecResult> Database::Execute(absl::string_view sql,
                                             absl::Span<const Value> params) {
  ConnectionLock lock(this);
  TF_ASSIGN_OR_RETURN(Statement statement, Prepare(sql, /*flags=*/0));
  return statement.Execute(params);
}

absl::StatusOr<std::vector<Row>> Database::Query(absl::string_view sql,
                                                 absl::Span<const Value> params) {
  ConnectionLock lock(this);
  TF_ASSIGN_OR_RETURN(Statement statement, Prepare(sql, /*flags=*/0));
  return statement.Query(params);
}

absl::StatusOr<Transaction> Database::Begin() {
  Acquire();  // held until the transaction ends
  if (sqlite3_get_autocommit(db_) == 0) {
    Release();
    return absl::FailedPreconditionError(absl::StrCat("a transaction is already open on ", path_));
  }
  absl::Status status = Exec("BEGIN IMMEDIATE");
  if (!status.ok()) {
    Release();
    return status;
  }
  return Transaction(this);
}

absl::Status Database::EndTransaction(const char* sql) {
  absl::Status status;
  // An I/O or disk-full error may already have rolled SQLite's transaction
  // back; a ROLLBACK then has nothing to do.
  if (sqlite3_get_autocommit(db_) == 0) {
    status = Exec(sql);
    if (!status.ok() && sqlite3_get_autocommit(db_) == 0) {
      absl::Status rollback = Exec("ROLLBACK");
      if (!rollback.ok()) {
        spdlog::error("sqlite: {}: ROLLBACK after a failed {} failed: {}", path_, sql,
                      rollback.ToString());
      }
    }
  } else if (absl::string_view(sql) == "COMMIT") {
    status = absl::AbortedError(
        absl::StrCat("sqlite: ", path_, ": the transaction was rolled back by an earlier error"));
  }
  Release();
  return status;
}

bool Database::InTransaction() {
  ConnectionLock lock(this);
  return sqlite3_get_autocommit(db_) == 0;
}

// ---------------------------------------------------------------------------
// Migrations

namespace {

constexpr char kCreateMigrationsTable[] =
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version INTEGER PRIMARY KEY,"
    " applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))";

absl::StatusOr<int> CurrentVersion(Database& db) {
  TF_ASSIGN_OR_RETURN(std::vector<Row> rows,
                      db.Query("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"));
  return static_cast<int>(rows.at(0).at(0).AsInt64());
}

}  // namespace

absl::StatusOr<int> SchemaVersion(Database& db) {
  TF_RETURN_IF_ERROR(db.Exec(kCreateMigrationsTable));
  return CurrentVersion(db);
}

absl::Status ApplyMigrations(Database& db, absl::Span<const Migration> migrations) {
  int previous = 0;
  for (const Migration& m : migrations) {
    if (m.version <= previous) {
      return absl::InvalidArgumentError(
          absl::StrCat("migration versions must be positive and strictly increasing; ", m.version,
                       " follows ", previous));
    }
    previous = m.version;
  }
  const int latest = previous;

  TF_RETURN_IF_ERROR(db.Exec(kCreateMigrationsTable));
  TF_ASSIGN_OR_RETURN(int current, CurrentVersion(db));
  if (current > latest) {
    return absl::FailedPreconditionError(
        absl::StrCat("database ", db.path(), " has schema version ", current,
                     ", newer than the latest this binary knows (", latest, ")"));
  }
  for (const Migration& m : migrations) {
    if (m.version <= current) continue;
    TF_ASSIGN_OR_RETURN(Transaction txn, db.Begin());
    // Read again under the write lock: another process may have migrated
    // since the first read.
    TF_ASSIGN_OR_RETURN(current, CurrentVersion(db));
    if (m.version <= current) continue;  // txn rolls back: nothing to do
    absl::Status status = db.Exec(m.sql);
    if (!status.ok()) {
      return absl::Status(status.code(),
                          absl::StrCat("migration ", m.version, " failed: ", status.message()));
    }
    TF_RETURN_IF_ERROR(
        db.Execute("INSERT INTO schema_migrations (version) VALUES (?)", {m.version}).status());
    TF_RETURN_IF_ERROR(txn.Commit());
    spdlog::info("sqlite: db={} migrated to schema version {}", db.path(), m.version);
    current = m.version;
  }
  return absl::OkStatus();
}

}  // namespace tunefleet::store
