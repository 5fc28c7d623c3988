// A small SQLite wrapper for the control-plane state of stateful services:
// WAL, synchronous writes, typed binding, RAII transactions and versioned
// migrations, with SQLite's errors mapped to absl::Status codes.
//
//   TF_ASSIGN_OR_RETURN(auto db, Database::Open(path));
//   TF_RETURN_IF_ERROR(ApplyMigrations(*db, {{1, "CREATE TABLE files (...)"}}));
//   TF_ASSIGN_OR_RETURN(auto rows,
//                       db->Query("SELECT bytes FROM files WHERE id = ?", {id}));
//   {
//     TF_ASSIGN_OR_RETURN(Transaction txn, db->Begin());
//     TF_RETURN_IF_ERROR(db->Execute("UPDATE ...", {...}).status());
//     TF_RETURN_IF_ERROR(txn.Commit());
//   }  // without Commit() the transaction rolls back here
//
// Error codes: SQLITE_BUSY/LOCKED -> kUnavailable (a retry can help);
// UNIQUE/PRIMARY KEY violations -> kAlreadyExists; other constraint violations
// (FOREIGN KEY, NOT NULL, CHECK) -> kFailedPrecondition; SQLITE_FULL and
// SQLITE_TOOBIG -> kResourceExhausted; anything else -> kInternal. Messages
// carry SQLite's message and the SQL text.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

struct sqlite3;
struct sqlite3_stmt;

namespace tunefleet::store {

// One SQLite value: NULL, INTEGER (int64), REAL (double), TEXT or BLOB.
// Constructors are implicit on purpose so that parameter lists read as
// `{id, 3, "name"}`; blobs are explicit (`Value::Blob(bytes)`) because they
// and text are both byte strings.
class Value {
 public:
  enum class Type { kNull, kInt64, kDouble, kText, kBlob };

  Value() = default;  // NULL
  Value(std::nullptr_t) {}
  template <typename T, std::enable_if_t<std::is_integral_v<T>, int> = 0>
  Value(T v) : type_(Type::kInt64), int_(static_cast<int64_t>(v)) {}
  template <typename T, std::enable_if_t<std::is_floating_point_v<T>, int> = 0>
  Value(T v) : type_(Type::kDouble), double_(static_cast<double>(v)) {}
  Value(std::string text) : type_(Type::kText), bytes_(std::move(text)) {}
  Value(absl::string_view text) : type_(Type::kText), bytes_(text) {}
  Value(const char* text) : type_(Type::kText), bytes_(text) {}

  static Value Null() { return Value(); }
  static Value Blob(absl::string_view bytes) {
    Value v(bytes);
    v.type_ = Type::kBlob;
    return v;
  }

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::kNull; }

  // Conversions follow SQLite's own rules (as sqlite3_column_int64 and
  // friends do): NULL reads as 0 / 0.0 / "", a REAL read as an integer is
  // truncated, text is parsed as a number (0 when it is not one).
  int64_t AsInt64() const;
  double AsDouble() const;
  std::string AsText() const;
  // The bytes of a TEXT or BLOB value without a copy; empty for the others.
  absl::string_view bytes() const { return bytes_; }

  // For tests and logs: NULL, 42, 1.5, 'text', x'00ff'.
  std::string DebugString() const;

  friend bool operator==(const Value& a, const Value& b);
  friend bool operator!=(const Value& a, const Value& b) { return !(a == b); }

 private:
  Type type_ = Type::kNull;
  int64_t int_ = 0;
  double double_ = 0;
  std::string bytes_;
};

std::ostream& operator<<(std::ostream& os, const Value& v);

// One result row, one Value per column in SELECT order.
using Row = std::vector<Value>;

// What a data-changing statement did.
struct ExecResult {
  int64_t changes = 0;            // rows inserted, updated or deleted
  int64_t last_insert_rowid = 0;  // of the connection, after the statement
};

class Database;

// A prepared statement, for hot loops and for results too large to hold in
// memory. Use it on one thread at a time, and destroy it before its Database.
// Parameters are numbered from 1, as in SQLite; columns from 0.
class Statement {
 public:
  Statement(Statement&& other) noexcept;
  Statement& operator=(Statement&& other) noexcept;
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  ~Statement();

  // Resets, binds `params` to ?1..?n, runs to completion.
  absl::StatusOr<ExecResult> Execute(absl::Span<const Value> params = {});
  // Resets, binds `params`, returns every row.
  absl::StatusOr<std::vector<Row>> Query(absl::Span<const Value> params = {});

  // Step-by-step use: Reset(), Bind...(), then Step() until it returns false.
  absl::Status Reset();  // also clears the bindings
  absl::Status Bind(int index, const Value& value);
  absl::Status BindAll(absl::Span<const Value> params);
  // True when a row is ready to read with Column*(); false when done.
  absl::StatusOr<bool> Step();

  int ColumnCount() const;
  std::string ColumnName(int column) const;
  Value Column(int column) const;
  Row CurrentRow() const;
  bool ColumnIsNull(int column) const;
  int64_t ColumnInt64(int column) const;
  double ColumnDouble(int column) const;
  std::string ColumnText(int column) const;  // TEXT or BLOB bytes

  const std::string& sql() const { return sql_; }

 private:
  friend class Database;
  Statement(Database* db, sqlite3_stmt* stmt, std::string sql)
      : db_(db), stmt_(stmt), sql_(std::move(sql)) {}
  absl::Status Error(int rc) const;
  void Finalize();

  Database* db_ = nullptr;
  sqlite3_stmt* stmt_ = nullptr;
  std::string sql_;
};

// A write transaction begun with BEGIN IMMEDIATE (the write lock is taken at
// the start, so two writers never deadlock upgrading a read lock). It rolls
// back when destroyed without Commit(). While it lives, the calling thread
// holds the Database exclusively: use it, and finish it, on that thread.
class Transaction {
 public:
  Transaction(Transaction&& other) noexcept : db_(other.db_) { other.db_ = nullptr; }
  Transaction& operator=(Transaction&& other) noexcept;
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  ~Transaction();

  // A failed COMMIT rolls back, so the transaction is over either way.
  absl::Status Commit();
  absl::Status Rollback();
  bool active() const { return db_ != nullptr; }

 private:
  friend class Database;
  explicit Transaction(Database* db) : db_(db) {}
  void RollbackIfActive();
  Database* db_ = nullptr;
};

// One SQLite connection.
//
// Thread-safe: every call holds the connection for its duration, and a
// Transaction holds it from Begin() to its end, so other threads' calls wait
// while the owning thread keeps using `db->...` inside its transaction (the
// connection lock is reentrant for its owner). Keep transactions short:
// they pause every other user of this Database (a read-heavy path can open a
// second Database on the same file; WAL lets it read beside the writer).
// Statements and Transactions must end before their Database is destroyed.
class Database {
 public:
  struct Options {
    // How long a writer waits for another connection's write lock before
    // the call fails with kUnavailable.
    absl::Duration busy_timeout = absl::Seconds(5);
    bool create_if_missing = true;
  };

  // Opens (or creates) the database at `path` in WAL mode with
  // synchronous=FULL and foreign keys enforced.
  static absl::StatusOr<std::unique_ptr<Database>> Open(const std::string& path,
                                                        const Options& options);
  static absl::StatusOr<std::unique_ptr<Database>> Open(const std::string& path) {
    return Open(path, Options());
  }
  ~Database();
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  // Runs one or more ';'-separated statements without parameters.
  absl::Status Exec(absl::string_view sql);
  // Runs one statement with parameters bound to ?1..?n.
  absl::StatusOr<ExecResult> Execute(absl::string_view sql, absl::Span<const Value> params = {});
  absl::StatusOr<std::vector<Row>> Query(absl::string_view sql,
                                         absl::Span<const Value> params = {});
  absl::StatusOr<Statement> Prepare(absl::string_view sql);
  absl::StatusOr<Transaction> Begin();

  // Whether a transaction is open on this connection.
  bool InTransaction();
  const std::string& path() const { return path_; }

 private:
  friend class Statement;
  friend class Transaction;
  friend class ConnectionLock;

  Database(sqlite3* db, std::string path) : db_(db), path_(std::move(path)) {}
  // `flags` are sqlite3_prepare_v3's.
  absl::StatusOr<Statement> Prepare(absl::string_view sql, unsigned int flags);
  void Acquire() ABSL_LOCKS_EXCLUDED(mu_);
  void Release() ABSL_LOCKS_EXCLUDED(mu_);
  bool Free() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return depth_ == 0; }
  // Ends the open transaction with `sql` (COMMIT or ROLLBACK) and releases
  // the hold Begin() took.
  absl::Status EndTransaction(const char* sql);

  // Guards the ownership of the connection, not the connection itself:
  // `db_` is used only by the thread that owns it (owner_, depth_ > 0).
  absl::Mutex mu_;
  std::thread::id owner_ ABSL_GUARDED_BY(mu_);
  int depth_ ABSL_GUARDED_BY(mu_) = 0;

  sqlite3* const db_;
  const std::string path_;
};

// One schema step. Versions are positive and strictly increasing in the
// list given to ApplyMigrations; a step may hold several statements.
// The runner wraps each step in a transaction, so a step holds no
// BEGIN/COMMIT of its own, nor PRAGMAs that do nothing inside a transaction
// (foreign_keys, journal_mode).
struct Migration {
  int version = 0;
  std::string sql;
};

// Brings the schema up to the last of `migrations`. Each step runs in its own
// transaction together with its row in `schema_migrations`, so a failing step
// leaves nothing behind and the steps before it stay applied; steps already
// recorded are skipped. A database whose version is newer than the last
// migration given is refused with kFailedPrecondition (an older binary must
// not write a schema it does not know). Safe against another process
// migrating the same file at the same time.
absl::Status ApplyMigrations(Database& db, absl::Span<const Migration> migrations);

// The highest applied migration version; 0 for a fresh database.
absl::StatusOr<int> SchemaVersion(Database& db);

}  // namespace tunefleet::store
