#include "common/store/sqlite.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "tests/testing/child_guard.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace tunefleet::store {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::tunefleet::testing::StatusIs;
using ::tunefleet::testing::TempDir;

int64_t Count(Database& db, const std::string& table) {
  auto rows = db.Query("SELECT COUNT(*) FROM " + table);
  EXPECT_TRUE(rows.ok()) << rows.status();
  return rows.ok() ? (*rows)[0][0].AsInt64() : -1;
}

bool TableExists(Database& db, const std::string& table) {
  auto rows = db.Query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", {table});
  EXPECT_TRUE(rows.ok()) << rows.status();
  return rows.ok() && !rows->empty();
}

class StoreSqlite : public ::testing::Test {
 protected:
  void SetUp() override { TF_ASSERT_OK_AND_ASSIGN(db_, Database::Open(path_)); }
  TempDir dir_;
  std::string path_ = dir_.Join("state.db");
  std::unique_ptr<Database> db_;
};

TEST_F(StoreSqlite, OpensInWalWithFullSyncAndForeignKeys) {
  TF_ASSERT_OK_AND_ASSIGN(auto mode, db_->Query("PRAGMA journal_mode"));
  EXPECT_EQ(mode[0][0].AsText(), "wal");
  TF_ASSERT_OK_AND_ASSIGN(auto sync, db_->Query("PRAGMA synchronous"));
  EXPECT_EQ(sync[0][0].AsInt64(), 2);  // FULL
  TF_ASSERT_OK_AND_ASSIGN(auto fk, db_->Query("PRAGMA foreign_keys"));
  EXPECT_EQ(fk[0][0].AsInt64(), 1);
}

TEST_F(StoreSqlite, OpenMissingWithoutCreateIsNotFound) {
  Database::Options options;
  options.create_if_missing = false;
  EXPECT_THAT(Database::Open(dir_.Join("missing.db"), options),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("missing.db")));
}

TEST(StoreSqliteMemory, InMemoryDatabaseWorks) {
  TF_ASSERT_OK_AND_ASSIGN(auto db, Database::Open(":memory:"));
  TF_ASSERT_OK(ApplyMigrations(*db, {{1, "CREATE TABLE t (x)"}}));
  TF_ASSERT_OK(db->Execute("INSERT INTO t VALUES (?)", {1.5}).status());
  TF_ASSERT_OK_AND_ASSIGN(auto rows, db->Query("SELECT x FROM t"));
  EXPECT_EQ(rows.at(0).at(0), Value(1.5));
}

TEST_F(StoreSqlite, BindsAndReadsEveryType) {
  TF_ASSERT_OK(db_->Exec("CREATE TABLE v (id INTEGER PRIMARY KEY, x)"));
  const std::string binary("\0\xff\x01zero", 7);
  const std::vector<Value> values = {
      Value(),
      Value(std::numeric_limits<int64_t>::max()),
      Value(std::numeric_limits<int64_t>::min()),
      Value(-2.5),
      Value("text with 'quotes' and ünïcödé"),
      Value(std::string("nul\0inside", 10)),
      Value::Blob(binary),
      Value::Blob(""),
      Value(""),
  };
  for (size_t i = 0; i < values.size(); ++i) {
    TF_ASSERT_OK(
        db_->Execute("INSERT INTO v (id, x) VALUES (?, ?)", {static_cast<int>(i), values[i]})
            .status());
  }
  TF_ASSERT_OK_AND_ASSIGN(auto rows, db_->Query("SELECT x, typeof(x) FROM v ORDER BY id"));
  ASSERT_EQ(rows.size(), values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(rows[i][0], values[i]) << "row " << i;
  }
  EXPECT_EQ(rows[0][1].AsText(), "null");
  EXPECT_EQ(rows[1][1].AsText(), "integer");
  EXPECT_EQ(rows[3][1].AsText(), "real");
  EXPECT_EQ(rows[4][1].AsText(), "text");
  EXPECT_EQ(rows[6][1].AsText(), "blob");
  EXPECT_EQ(rows[7][1].AsText(), "blob");  // empty, yet not NULL
  EXPECT_EQ(rows[6][0].bytes(), binary);
}

TEST_F(StoreSqlite, StatementStepsAndTypedColumns) {
  TF_ASSERT_OK(
      db_->Exec("CREATE TABLE t (n INTEGER, r REAL, s TEXT, b BLOB);"
                "INSERT INTO t VALUES (7, 0.25, 'seven', x'0001'), (NULL, NULL, NULL, NULL)"));
  TF_ASSERT_OK_AND_ASSIGN(Statement stmt, db_->Prepare("SELECT n, r, s, b FROM t ORDER BY n DESC"));
  EXPECT_EQ(stmt.ColumnCount(), 4);
  EXPECT_EQ(stmt.ColumnName(2), "s");
  TF_ASSERT_OK_AND_ASSIGN(bool row, stmt.Step());
  ASSERT_TRUE(row);
  EXPECT_EQ(stmt.ColumnInt64(0), 7);
  EXPECT_EQ(stmt.ColumnDouble(1), 0.25);
  EXPECT_EQ(stmt.ColumnText(2), "seven");
  EXPECT_EQ(stmt.ColumnText(3), std::string("\0\x01", 2));
  EXPECT_FALSE(stmt.ColumnIsNull(0));
  TF_ASSERT_OK_AND_ASSIGN(row, stmt.Step());
  ASSERT_TRUE(row);
  EXPECT_TRUE(stmt.ColumnIsNull(0));
  EXPECT_EQ(stmt.Column(3), Value::Null());
  EXPECT_EQ(stmt.ColumnText(2), "");
  TF_ASSERT_OK_AND_ASSIGN(row, stmt.Step());
  EXPECT_FALSE(row);
  // Reset runs it again from the top.
  TF_ASSERT_OK(stmt.Reset());
  TF_ASSERT_OK_AND_ASSIGN(row, stmt.Step());
  EXPECT_TRUE(row);
}

TEST_F(StoreSqlite, PreparedStatementInAHotLoop) {
  TF_ASSERT_OK(db_->Exec("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL)"));
  TF_ASSERT_OK_AND_ASSIGN(Statement insert, db_->Prepare("INSERT INTO t (name) VALUES (?)"));
  {
    TF_ASSERT_OK_AND_ASSIGN(Transaction txn, db_->Begin());
    for (int i = 0; i < 500; ++i) {
      TF_ASSERT_OK_AND_ASSIGN(ExecResult r, insert.Execute({"row-" + std::to_string(i)}));
      EXPECT_EQ(r.changes, 1);
      EXPECT_EQ(r.last_insert_rowid, i + 1);
    }
    TF_ASSERT_OK(txn.Commit());
  }
  EXPECT_EQ(Count(*db_, "t"), 500);
  TF_ASSERT_OK_AND_ASSIGN(Statement select, db_->Prepare("SELECT name FROM t WHERE id = ?"));
  TF_ASSERT_OK_AND_ASSIGN(auto rows, select.Query({42}));
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0][0].AsText(), "row-41");
  TF_ASSERT_OK_AND_ASSIGN(ExecResult updated,
                          db_->Execute("UPDATE t SET name = 'x' WHERE id <= ?", {10}));
  EXPECT_EQ(updated.changes, 10);
}

TEST(StoreSqliteValue, ConvertsLikeSqlite) {
  EXPECT_EQ(Value().AsInt64(), 0);
  EXPECT_EQ(Value().AsText(), "");
  EXPECT_TRUE(Value(nullptr).is_null());
  EXPECT_EQ(Value(3.9).AsInt64(), 3);
  EXPECT_EQ(Value(7).AsDouble(), 7.0);
  EXPECT_EQ(Value("12").AsInt64(), 12);
  EXPECT_EQ(Value("2.5").AsDouble(), 2.5);
  EXPECT_EQ(Value("abc").AsInt64(), 0);
  EXPECT_EQ(Value(42).AsText(), "42");
  EXPECT_EQ(Value(true).AsInt64(), 1);
  EXPECT_EQ(Value(uint32_t{5}).type(), Value::Type::kInt64);
  EXPECT_EQ(Value(1.5f).type(), Value::Type::kDouble);
  EXPECT_NE(Value("ab"), Value::Blob("ab"));
  EXPECT_EQ(Value::Blob(std::string("\x01\xfe", 2)).DebugString(), "x'01fe'");
  EXPECT_EQ(Value("a").DebugString(), "'a'");
}

TEST_F(StoreSqlite, ConstraintViolationsMapToPreciseCodes) {
  TF_ASSERT_OK(db_->Exec(
      "CREATE TABLE parent (id TEXT PRIMARY KEY);"
      "CREATE TABLE child (id INTEGER PRIMARY KEY, parent TEXT NOT NULL REFERENCES parent(id),"
      " email TEXT UNIQUE, n INTEGER CHECK (n >= 0));"
      "INSERT INTO parent VALUES ('p1');"
      "INSERT INTO child VALUES (1, 'p1', 'a@x', 1)"));
  EXPECT_THAT(db_->Execute("INSERT INTO parent VALUES (?)", {"p1"}),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("parent.id")));
  EXPECT_THAT(db_->Execute("INSERT INTO child VALUES (1, 'p1', 'b@x', 1)"),
              StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_THAT(db_->Execute("INSERT INTO child VALUES (2, 'p1', 'a@x', 1)"),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("child.email")));
  EXPECT_THAT(db_->Execute("INSERT INTO child VALUES (3, 'nope', 'c@x', 1)"),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("FOREIGN KEY")));
  EXPECT_THAT(db_->Execute("DELETE FROM parent WHERE id = 'p1'"),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("FOREIGN KEY")));
  EXPECT_THAT(db_->Execute("INSERT INTO child VALUES (4, NULL, 'd@x', 1)"),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("NOT NULL")));
  EXPECT_THAT(db_->Execute("INSERT INTO child VALUES (5, 'p1', 'e@x', -1)"),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("CHECK")));
}

TEST_F(StoreSqlite, OtherErrorsAreInternalWithTheSql) {
  EXPECT_THAT(db_->Query("SELEKT 1"),
              StatusIs(absl::StatusCode::kInternal, HasSubstr("in: SELEKT 1")));
  EXPECT_THAT(db_->Exec("INSERT INTO no_such_table VALUES (1)"),
              StatusIs(absl::StatusCode::kInternal, HasSubstr("no_such_table")));
  // Misuse of the API itself.
  EXPECT_THAT(db_->Query("SELECT ?, ?", {1}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("2 parameters")));
  EXPECT_THAT(db_->Query("SELECT 1; SELECT 2"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("one statement")));
  EXPECT_THAT(db_->Query("  "), StatusIs(absl::StatusCode::kInvalidArgument));
  TF_EXPECT_OK(db_->Query("SELECT 1;  ").status());  // a trailing ';' is fine
}

TEST_F(StoreSqlite, WriterLockedByAnotherConnectionIsUnavailable) {
  TF_ASSERT_OK(db_->Exec("CREATE TABLE t (x)"));
  Database::Options impatient;
  impatient.busy_timeout = absl::ZeroDuration();
  TF_ASSERT_OK_AND_ASSIGN(auto other, Database::Open(path_, impatient));
  {
    TF_ASSERT_OK_AND_ASSIGN(Transaction txn, db_->Begin());
    TF_ASSERT_OK(db_->Execute("INSERT INTO t VALUES (1)").status());
    EXPECT_THAT(other->Begin(), StatusIs(absl::StatusCode::kUnavailable));
    EXPECT_THAT(other->Execute("INSERT INTO t VALUES (2)"),
                StatusIs(absl::StatusCode::kUnavailable, HasSubstr("locked")));
    // WAL: readers are not blocked, and see only committed data.
    EXPECT_EQ(Count(*other, "t"), 0);
    TF_ASSERT_OK(txn.Commit());
  }
  EXPECT_EQ(Count(*other, "t"), 1);
  TF_ASSERT_OK_AND_ASSIGN(Transaction txn, other->Begin());
  TF_EXPECT_OK(txn.Commit());
}

// --- transactions ------------------------------------------------------------

TEST_F(StoreSqlite, TransactionRollsBackWhenDestroyed) {
  TF_ASSERT_OK(db_->Exec("CREATE TABLE t (x)"));
  {
    TF_ASSERT_OK_AND_ASSIGN(Transaction txn, db_->Begin());
    EXPECT_TRUE(db_->InTransaction());
    TF_ASSERT_OK(db_->Execute("INSERT INTO t VALUES (1)").status());
    EXPECT_EQ(Count(*db_, "t"), 1);  // visible inside
  }
  EXPECT_FALSE(db_->InTransaction());
  EXPECT_EQ(Count(*db_, "t"), 0);
}

TEST_F(StoreSqlite, CommittedTransactionSurvivesReopen) {
  TF_ASSERT_OK(db_->Exec("CREATE TABLE t (x)"));
  {
    TF_ASSERT_OK_AND_ASSIGN(Transaction txn, db_->Begin());
    TF_ASSERT_OK(db_->Execute("INSERT INTO t VALUES (?)", {"kept"}).status());
    TF_ASSERT_OK(txn.Commit());
    EXPECT_FALSE(txn.active());
    EXPECT_THAT(txn.Commit(), StatusIs(absl::StatusCode::kFailedPrecondition));
  }
  {
    TF_ASSERT_OK_AND_ASSIGN(Transaction txn, db_->Begin());
    TF_ASSERT_OK(db_->Execute("INSERT INTO t VALUES (?)", {"dropped"}).status());
    TF_ASSERT_OK(txn.Rollback());
  }
  db_.reset();
  TF_ASSERT_OK_AND_ASSIGN(db_, Database::Open(path_));
  TF_ASSERT_OK_AND_ASSIGN(auto rows, db_->Query("SELECT x FROM t"));
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0][0].AsText(), "kept");
}

TEST_F(StoreSqlite, MovedStatementsAndTransactionsKeepOneOwner) {
  TF_ASSERT_OK(db_->Exec("CREATE TABLE t (x)"));
  TF_ASSERT_OK_AND_ASSIGN(Statement insert, db_->Prepare("INSERT INTO t VALUES (?)"));
  TF_ASSERT_OK_AND_ASSIGN(Statement other, db_->Prepare("SELECT COUNT(*) FROM t"));
  other = std::move(insert);  // finalizes the SELECT, takes the INSERT
  TF_ASSERT_OK(other.Execute({1}).status());
  Statement moved(std::move(other));
  TF_ASSERT_OK(moved.Execute({2}).status());
  EXPECT_EQ(moved.sql(), "INSERT INTO t VALUES (?)");
  {
    TF_ASSERT_OK_AND_ASSIGN(Transaction a, db_->Begin());
    TF_ASSERT_OK(moved.Execute({3}).status());
    Transaction b(std::move(a));
    Transaction c = std::move(b);
    TF_ASSERT_OK(c.Commit());
  }
  EXPECT_EQ(Count(*db_, "t"), 3);
}

TEST_F(StoreSqlite, NestedBeginIsFailedPrecondition) {
  TF_ASSERT_OK_AND_ASSIGN(Transaction txn, db_->Begin());
  EXPECT_THAT(db_->Begin(), StatusIs(absl::StatusCode::kFailedPrecondition));
  TF_EXPECT_OK(txn.Commit());
  TF_ASSERT_OK_AND_ASSIGN(Transaction again, db_->Begin());
}

TEST_F(StoreSqlite, MovedTransactionRollsBackOnce) {
  TF_ASSERT_OK(db_->Exec("CREATE TABLE t (x)"));
  {
    TF_ASSERT_OK_AND_ASSIGN(Transaction a, db_->Begin());
    TF_ASSERT_OK(db_->Execute("INSERT INTO t VALUES (1)").status());
    Transaction b = std::move(a);
    EXPECT_FALSE(a.active());  // NOLINT(bugprone-use-after-move): checking the moved-from state
    EXPECT_TRUE(b.active());
  }
  EXPECT_EQ(Count(*db_, "t"), 0);
  EXPECT_FALSE(db_->InTransaction());
}

// Another thread's statements must not land inside (and be rolled back
// with) a transaction they are not part of: they wait for it to end.
TEST_F(StoreSqlite, OtherThreadsWaitForAnOpenTransaction) {
  TF_ASSERT_OK(db_->Exec("CREATE TABLE t (x)"));
  absl::Notification started;
  absl::Status other_status;
  std::thread other;
  {
    TF_ASSERT_OK_AND_ASSIGN(Transaction txn, db_->Begin());
    TF_ASSERT_OK(db_->Execute("INSERT INTO t VALUES ('rolled back')").status());
    other = std::thread([&] {
      started.Notify();
      other_status = db_->Execute("INSERT INTO t VALUES ('other thread')").status();
    });
    started.WaitForNotification();
    TF_ASSERT_OK(txn.Rollback());
  }
  other.join();
  TF_ASSERT_OK(other_status);
  TF_ASSERT_OK_AND_ASSIGN(auto rows, db_->Query("SELECT x FROM t"));
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0][0].AsText(), "other thread");
}

TEST_F(StoreSqlite, ConcurrentWritersThroughOneDatabase) {
  TF_ASSERT_OK(db_->Exec("CREATE TABLE t (thread INTEGER, i INTEGER)"));
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([this, t] {
      for (int i = 0; i < 25; ++i) {
        auto txn = db_->Begin();
        ASSERT_TRUE(txn.ok()) << txn.status();
        ASSERT_TRUE(db_->Execute("INSERT INTO t VALUES (?, ?)", {t, i}).ok());
        ASSERT_TRUE(txn->Commit().ok());
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(Count(*db_, "t"), 100);
}

using ::tunefleet::testing::ChildGuard;

// What a killed service leaves: its committed write survives, its open
// transaction vanishes, its write lock goes with it, and the file is intact.
TEST_F(StoreSqlite, KilledWriterKeepsCommitsAndLosesItsOpenTransaction) {
  TF_ASSERT_OK(ApplyMigrations(*db_, {{1, "CREATE TABLE t (x TEXT)"}}));
  db_.reset();  // SQLite connections must not cross a fork

  int mid_write[2], never[2];
  ASSERT_EQ(pipe(mid_write), 0);
  ASSERT_EQ(pipe(never), 0);
  ChildGuard child;
  child.pid = fork();
  ASSERT_GE(child.pid, 0);
  if (child.pid == 0) {
    close(mid_write[0]);
    close(never[1]);
    auto db = Database::Open(path_);
    if (!db.ok()) _exit(2);
    if (!(*db)->Execute("INSERT INTO t VALUES ('committed')").ok()) _exit(3);
    auto txn = (*db)->Begin();
    if (!txn.ok()) _exit(4);
    if (!(*db)->Execute("INSERT INTO t VALUES ('in flight')").ok()) _exit(5);
    char c = 'w';
    if (write(mid_write[1], &c, 1) != 1) _exit(6);
    while (read(never[0], &c, 1) != 0) {
    }
    _exit(7);
  }
  close(mid_write[1]);
  close(never[0]);
  char c = 0;
  ASSERT_EQ(read(mid_write[0], &c, 1), 1) << "the child died before writing";
  close(mid_write[0]);

  Database::Options impatient;
  impatient.busy_timeout = absl::ZeroDuration();
  TF_ASSERT_OK_AND_ASSIGN(auto db, Database::Open(path_, impatient));
  EXPECT_THAT(db->Begin(), StatusIs(absl::StatusCode::kUnavailable));  // the child writes

  ASSERT_EQ(kill(child.pid, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(waitpid(child.pid, &status, 0), child.pid);
  child.pid = -1;
  close(never[1]);

  TF_ASSERT_OK_AND_ASSIGN(Transaction txn, db->Begin());  // the lock died with it
  TF_ASSERT_OK(txn.Commit());
  TF_ASSERT_OK_AND_ASSIGN(auto rows, db->Query("SELECT x FROM t"));
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0][0].AsText(), "committed");
  TF_ASSERT_OK_AND_ASSIGN(auto check, db->Query("PRAGMA integrity_check"));
  EXPECT_EQ(check[0][0].AsText(), "ok");
}

// --- migrations --------------------------------------------------------------

const std::vector<Migration>& TwoSteps() {
  static const auto* steps = new std::vector<Migration>{
      {1, "CREATE TABLE files (id TEXT PRIMARY KEY, bytes INTEGER NOT NULL)"},
      // A data step: running it twice would fail (PRIMARY KEY) or duplicate.
      {2,
       "ALTER TABLE files ADD COLUMN purpose TEXT;"
       "INSERT INTO files VALUES ('file-seed', 3, 'fine-tune')"},
  };
  return *steps;
}

TEST_F(StoreSqlite, MigrationsApplyOnceAndSurviveReopen) {
  TF_ASSERT_OK_AND_ASSIGN(int before, SchemaVersion(*db_));
  EXPECT_EQ(before, 0);
  TF_ASSERT_OK(ApplyMigrations(*db_, TwoSteps()));
  TF_ASSERT_OK_AND_ASSIGN(int version, SchemaVersion(*db_));
  EXPECT_EQ(version, 2);
  TF_ASSERT_OK(ApplyMigrations(*db_, TwoSteps()));  // a no-op
  EXPECT_EQ(Count(*db_, "files"), 1);
  TF_ASSERT_OK(db_->Execute("INSERT INTO files VALUES (?, ?, ?)", {"file-2", 10, "x"}).status());

  db_.reset();
  TF_ASSERT_OK_AND_ASSIGN(db_, Database::Open(path_));
  TF_ASSERT_OK_AND_ASSIGN(version, SchemaVersion(*db_));
  EXPECT_EQ(version, 2);
  TF_ASSERT_OK(ApplyMigrations(*db_, TwoSteps()));
  EXPECT_EQ(Count(*db_, "files"), 2);

  // A later binary adds a step: only that one runs.
  std::vector<Migration> three = TwoSteps();
  three.push_back({3, "CREATE INDEX files_by_purpose ON files (purpose)"});
  TF_ASSERT_OK(ApplyMigrations(*db_, three));
  TF_ASSERT_OK_AND_ASSIGN(auto applied,
                          db_->Query("SELECT version FROM schema_migrations ORDER BY version"));
  ASSERT_EQ(applied.size(), 3u);
  EXPECT_THAT((std::vector<int64_t>{applied[0][0].AsInt64(), applied[1][0].AsInt64(),
                                    applied[2][0].AsInt64()}),
              ElementsAre(1, 2, 3));
  EXPECT_EQ(Count(*db_, "files"), 2);
}

TEST_F(StoreSqlite, FailedMigrationRollsBackEntirely) {
  std::vector<Migration> steps = {
      {1, "CREATE TABLE a (x)"},
      {2,
       "CREATE TABLE b (x); INSERT INTO b VALUES (1); INSERT INTO a VALUES (1);"
       "INSERT INTO no_such_table VALUES (1)"},
  };
  EXPECT_THAT(ApplyMigrations(*db_, steps),
              StatusIs(absl::StatusCode::kInternal, HasSubstr("migration 2 failed")));
  TF_ASSERT_OK_AND_ASSIGN(int version, SchemaVersion(*db_));
  EXPECT_EQ(version, 1);  // step 1 stays applied
  EXPECT_TRUE(TableExists(*db_, "a"));
  EXPECT_FALSE(TableExists(*db_, "b"));  // DDL rolled back too
  EXPECT_EQ(Count(*db_, "a"), 0);
  EXPECT_FALSE(db_->InTransaction());

  steps[1].sql = "CREATE TABLE b (x); INSERT INTO b VALUES (1)";
  TF_ASSERT_OK(ApplyMigrations(*db_, steps));
  TF_ASSERT_OK_AND_ASSIGN(version, SchemaVersion(*db_));
  EXPECT_EQ(version, 2);
  EXPECT_EQ(Count(*db_, "b"), 1);
}

TEST_F(StoreSqlite, NewerDatabaseIsRefused) {
  std::vector<Migration> three = TwoSteps();
  three.push_back({3, "CREATE TABLE later (x)"});
  TF_ASSERT_OK(ApplyMigrations(*db_, three));
  EXPECT_THAT(ApplyMigrations(*db_, TwoSteps()),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("schema version 3, newer than the latest this binary knows (2)")));
}

TEST_F(StoreSqlite, MigrationListMustBeOrdered) {
  EXPECT_THAT(ApplyMigrations(*db_, {{2, "SELECT 1"}, {1, "SELECT 1"}}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ApplyMigrations(*db_, {{0, "SELECT 1"}}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ApplyMigrations(*db_, {{1, "SELECT 1"}, {1, "SELECT 1"}}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(StoreSqlite, TwoConnectionsMigrateTheSameFileOnce) {
  TF_ASSERT_OK_AND_ASSIGN(auto other, Database::Open(path_));
  absl::Status a, b;
  std::thread ta([&] { a = ApplyMigrations(*db_, TwoSteps()); });
  std::thread tb([&] { b = ApplyMigrations(*other, TwoSteps()); });
  ta.join();
  tb.join();
  TF_EXPECT_OK(a);
  TF_EXPECT_OK(b);
  EXPECT_EQ(Count(*db_, "files"), 1);
  EXPECT_EQ(Count(*db_, "schema_migrations"), 2);
}

}  // namespace
}  // namespace tunefleet::store
