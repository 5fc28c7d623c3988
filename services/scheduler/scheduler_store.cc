#include "services/scheduler/scheduler_store.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/base/status_macros.h"

namespace tunefleet::scheduler {
namespace {

using store::Value;

const store::Migration kMigrations[] = {
    {1, R"sql(
CREATE TABLE jobs (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  request_id TEXT NOT NULL,
  queue_seq INTEGER NOT NULL,
  resume_artifact TEXT NOT NULL,
  retries INTEGER NOT NULL,
  attempt INTEGER NOT NULL,
  held_files TEXT NOT NULL,
  last_event_seq INTEGER NOT NULL,
  state INTEGER NOT NULL,
  proto BLOB NOT NULL);
CREATE INDEX jobs_by_tenant ON jobs (tenant, queue_seq);
CREATE TABLE job_events (
  job_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  proto BLOB NOT NULL,
  PRIMARY KEY (job_id, seq)) WITHOUT ROWID;
CREATE TABLE checkpoints (
  id TEXT PRIMARY KEY,
  job_id TEXT NOT NULL,
  tenant TEXT NOT NULL,
  artifact TEXT NOT NULL,
  proto BLOB NOT NULL);
CREATE TABLE models (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  artifact TEXT NOT NULL,
  proto BLOB NOT NULL);
CREATE TABLE deployments (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  base_artifact TEXT NOT NULL,
  adapter_artifact TEXT NOT NULL,
  proto BLOB NOT NULL);
CREATE TABLE assignments (
  id TEXT PRIMARY KEY,
  job_id TEXT NOT NULL,
  node_id TEXT NOT NULL,
  stopping INTEGER NOT NULL,
  proto BLOB NOT NULL);
CREATE TABLE nodes (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  address TEXT NOT NULL,
  slots INTEGER NOT NULL);
CREATE TABLE replicas (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  address TEXT NOT NULL);
)sql"},
    {2, R"sql(
ALTER TABLE deployments ADD COLUMN request_id TEXT NOT NULL DEFAULT '';
)sql"},
    {3, R"sql(
ALTER TABLE jobs ADD COLUMN init_artifact TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN estimated_tokens INTEGER NOT NULL DEFAULT 0;
)sql"},
    {4, R"sql(
CREATE TABLE deployment_usage (
  id TEXT PRIMARY KEY,
  deployment_id TEXT NOT NULL,
  tenant TEXT NOT NULL,
  model TEXT NOT NULL,
  base_model TEXT NOT NULL,
  replicas INTEGER NOT NULL,
  start_us INTEGER NOT NULL,
  end_us INTEGER NOT NULL);
CREATE TABLE replica_counters (
  replica_id TEXT NOT NULL,
  deployment_id TEXT NOT NULL,
  requests INTEGER NOT NULL,
  prompt_tokens INTEGER NOT NULL,
  completion_tokens INTEGER NOT NULL,
  PRIMARY KEY (replica_id, deployment_id)) WITHOUT ROWID;
CREATE TABLE inference_usage (
  tenant TEXT NOT NULL,
  minute_us INTEGER NOT NULL,
  deployment_id TEXT NOT NULL,
  base_model TEXT NOT NULL,
  requests INTEGER NOT NULL,
  prompt_tokens INTEGER NOT NULL,
  completion_tokens INTEGER NOT NULL,
  PRIMARY KEY (tenant, minute_us, deployment_id, base_model)) WITHOUT ROWID;
)sql"},
    {5, R"sql(
ALTER TABLE jobs ADD COLUMN preempted_for TEXT NOT NULL DEFAULT '';
)sql"},
    {6, R"sql(
ALTER TABLE jobs ADD COLUMN alt_memory_estimate BLOB NOT NULL DEFAULT x'';
ALTER TABLE nodes ADD COLUMN gpus INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN slot_memory_bytes INTEGER NOT NULL DEFAULT 0;
)sql"},
};

template <typename Proto>
absl::Status ParseInto(const Value& v, Proto* out, const char* what) {
  if (!out->ParseFromString(std::string(v.bytes())))
    return absl::DataLossError(std::string("corrupt ") + what + " row");
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<SchedulerStore>> SchedulerStore::Open(const std::string& path,
                                                                      bool group_sync) {
  TF_ASSIGN_OR_RETURN(auto db, store::Database::Open(path));
  TF_RETURN_IF_ERROR(store::ApplyMigrations(*db, kMigrations));
  // WAL + NORMAL: a commit is written to the WAL but not fsynced; Sync()
  // fsyncs the WAL for a whole group. The database stays consistent either
  // way (SQLite checksums WAL frames); only durability moves to Sync.
  if (group_sync) TF_RETURN_IF_ERROR(db->Exec("PRAGMA synchronous=NORMAL"));
  return std::unique_ptr<SchedulerStore>(new SchedulerStore(std::move(db), group_sync));
}

SchedulerStore::~SchedulerStore() {
  // Batches appended without a Sync (none in the scheduler) are kept.
  {
    absl::MutexLock lock(&commit_mu_);
    absl::StatusOr<int64_t> written = CommitOpenLocked();
    if (!written.ok())
      spdlog::error("scheduler store: final commit failed: {}", written.status().ToString());
  }
  if (wal_fd_ >= 0) ::close(wal_fd_);
}

absl::Status SchedulerStore::FsyncWal() {
  if (wal_fd_ < 0) {
    wal_fd_ = ::open((db_->path() + "-wal").c_str(), O_RDWR | O_CLOEXEC);
    if (wal_fd_ < 0) {
      return absl::InternalError(absl::StrCat("cannot open ", db_->path(), "-wal: ",
                                              std::strerror(errno)));
    }
  }
  if (::fdatasync(wal_fd_) != 0) {
    return absl::UnavailableError(
        absl::StrCat("fsync of ", db_->path(), "-wal failed: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> SchedulerStore::CommitOpenLocked() {
  const int64_t target = appended_.load();
  if (!open_) return target;
  open_ = false;
  absl::Status s = Exec("COMMIT", {});
  if (!s.ok() && db_->InTransaction()) (void)db_->Exec("ROLLBACK");
  if (!s.ok()) return s;
  return target;
}

void SchedulerStore::Fail(const absl::Status& cause) {
  // Batches applied to the caller's memory are lost from disk: memory is
  // ahead of the file, so nothing more is written or acknowledged until a
  // restart reloads the file.
  absl::MutexLock lock(&sync_mu_);
  if (!failed_.ok()) return;
  spdlog::error("scheduler store failed, refusing every later write until a restart: {}",
                cause.ToString());
  failed_ = absl::UnavailableError(absl::StrCat(
      "the scheduler store failed (", cause.message(), "); restart the scheduler"));
  broken_ = true;
}

absl::Status SchedulerStore::FailedStatus() {
  absl::MutexLock lock(&sync_mu_);
  return failed_;
}

void SchedulerStore::LeadLocked() {
  leading_ = true;
  while (durable_ < appended_.load() && failed_.ok()) {
    sync_mu_.Unlock();
    absl::StatusOr<int64_t> target;
    const absl::Time t0 = absl::Now();
    {
      absl::MutexLock lock(&commit_mu_);
      target = CommitOpenLocked();
    }
    const absl::Time t1 = absl::Now();
    absl::Status s = target.ok() ? FsyncWal() : target.status();
    const absl::Time t2 = absl::Now();
    if (!s.ok()) Fail(s);
    sync_mu_.Lock();
    ++syncs_;
    commit_time_ += t1 - t0;
    fsync_time_ += t2 - t1;
    if (s.ok()) durable_ = std::max(durable_, *target);
    // Waiters first, then the callbacks (which finish RPCs) without the lock.
    sync_cv_.SignalAll();
    std::vector<std::function<void(absl::Status)>> ready;
    for (auto it = callbacks_.begin(); it != callbacks_.end();) {
      if (it->first <= durable_ || !failed_.ok()) {
        ready.push_back(std::move(it->second));
        it = callbacks_.erase(it);
      } else {
        ++it;
      }
    }
    if (!ready.empty()) {
      const absl::Status status = failed_;
      sync_mu_.Unlock();
      for (auto& done : ready) done(status);
      sync_mu_.Lock();
    }
  }
  leading_ = false;
  sync_cv_.SignalAll();
}

absl::Status SchedulerStore::Sync(int64_t seq) {
  if (!group_sync_) return absl::OkStatus();
  absl::MutexLock lock(&sync_mu_);
  while (durable_ < seq) {
    if (!failed_.ok()) return failed_;
    if (leading_) {
      sync_cv_.Wait(&sync_mu_);
      continue;
    }
    // No commit under way: this caller leads (commits every batch appended
    // so far, fsyncs, and keeps going while more arrive).
    LeadLocked();
  }
  return absl::OkStatus();
}

void SchedulerStore::WhenDurable(int64_t seq, std::function<void(absl::Status)> done) {
  if (!group_sync_) {
    done(absl::OkStatus());
    return;
  }
  sync_mu_.Lock();
  if (durable_ >= seq || !failed_.ok()) {
    const absl::Status status = durable_ >= seq ? absl::OkStatus() : failed_;
    sync_mu_.Unlock();
    done(status);
    return;
  }
  callbacks_.emplace_back(seq, std::move(done));
  // Under way: the leader runs `done` after its fsync; this thread is free.
  if (!leading_) LeadLocked();
  sync_mu_.Unlock();
}

int64_t SchedulerStore::syncs() {
  absl::MutexLock lock(&sync_mu_);
  return syncs_;
}

SchedulerStore::SyncTimes SchedulerStore::sync_times() {
  absl::MutexLock lock(&sync_mu_);
  return SyncTimes{syncs_, commit_time_, fsync_time_};
}

absl::StatusOr<StoreSnapshot> SchedulerStore::Load() {
  absl::MutexLock lock(&commit_mu_);
  StoreSnapshot s;
  TF_ASSIGN_OR_RETURN(auto rows, db_->Query(
      "SELECT id, tenant, request_id, queue_seq, resume_artifact, retries, attempt, held_files, "
      "last_event_seq, proto, init_artifact, estimated_tokens, preempted_for, alt_memory_estimate "
      "FROM jobs"));
  for (const auto& r : rows) {
    JobRecord j;
    j.tenant = r[1].AsText();
    j.request_id = r[2].AsText();
    j.queue_seq = r[3].AsInt64();
    j.resume_artifact = r[4].AsText();
    j.retries = static_cast<int32_t>(r[5].AsInt64());
    j.attempt = static_cast<int32_t>(r[6].AsInt64());
    std::string held = r[7].AsText();
    if (!held.empty()) j.held_files = absl::StrSplit(held, ',');
    j.last_event_seq = r[8].AsInt64();
    TF_RETURN_IF_ERROR(ParseInto(r[9], &j.job, "job"));
    j.init_artifact = r[10].AsText();
    j.estimated_tokens = r[11].AsInt64();
    j.preempted_for = r[12].AsText();
    TF_RETURN_IF_ERROR(ParseInto(r[13], &j.alt_memory_estimate, "job memory estimate"));
    s.jobs.emplace(r[0].AsText(), std::move(j));
  }
  TF_ASSIGN_OR_RETURN(rows, db_->Query("SELECT job_id, proto FROM job_events ORDER BY job_id, seq"));
  for (const auto& r : rows) {
    v1::JobEvent e;
    TF_RETURN_IF_ERROR(ParseInto(r[1], &e, "job event"));
    s.events[r[0].AsText()].push_back(std::move(e));
  }
  TF_ASSIGN_OR_RETURN(rows, db_->Query("SELECT tenant, artifact, proto FROM checkpoints"));
  for (const auto& r : rows) {
    CheckpointRecord c;
    c.tenant = r[0].AsText();
    c.artifact = r[1].AsText();
    TF_RETURN_IF_ERROR(ParseInto(r[2], &c.checkpoint, "checkpoint"));
    s.checkpoints.push_back(std::move(c));
  }
  TF_ASSIGN_OR_RETURN(rows, db_->Query("SELECT tenant, artifact, proto FROM models"));
  for (const auto& r : rows) {
    ModelRecord m;
    m.tenant = r[0].AsText();
    m.artifact = r[1].AsText();
    TF_RETURN_IF_ERROR(ParseInto(r[2], &m.model, "model"));
    s.models.push_back(std::move(m));
  }
  TF_ASSIGN_OR_RETURN(rows, db_->Query(
      "SELECT tenant, base_artifact, adapter_artifact, proto, request_id FROM deployments"));
  for (const auto& r : rows) {
    DeploymentRecord d;
    d.tenant = r[0].AsText();
    d.base_artifact = r[1].AsText();
    d.adapter_artifact = r[2].AsText();
    TF_RETURN_IF_ERROR(ParseInto(r[3], &d.deployment, "deployment"));
    d.request_id = r[4].AsText();
    s.deployments.push_back(std::move(d));
  }
  TF_ASSIGN_OR_RETURN(rows, db_->Query("SELECT node_id, stopping, proto FROM assignments"));
  for (const auto& r : rows) {
    AssignmentRecord a;
    a.node_id = r[0].AsText();
    a.stopping = r[1].AsInt64() != 0;
    TF_RETURN_IF_ERROR(ParseInto(r[2], &a.assignment, "assignment"));
    s.assignments.push_back(std::move(a));
  }
  TF_ASSIGN_OR_RETURN(rows,
                      db_->Query("SELECT id, name, address, slots, gpus, slot_memory_bytes FROM nodes"));
  for (const auto& r : rows) {
    s.nodes.push_back(NodeRecord{r[0].AsText(), r[1].AsText(), r[2].AsText(),
                                 static_cast<int32_t>(r[3].AsInt64()), static_cast<int32_t>(r[4].AsInt64()),
                                 r[5].AsInt64()});
  }
  TF_ASSIGN_OR_RETURN(rows, db_->Query("SELECT id, name, address FROM replicas"));
  for (const auto& r : rows) {
    s.replicas.push_back(ReplicaRecord{r[0].AsText(), r[1].AsText(), r[2].AsText()});
  }
  TF_ASSIGN_OR_RETURN(rows, db_->Query(
      "SELECT id, deployment_id, tenant, model, base_model, replicas, start_us, end_us "
      "FROM deployment_usage ORDER BY start_us"));
  for (const auto& r : rows) {
    s.deployment_usage.push_back(DeploymentUsageRecord{
        r[0].AsText(), r[1].AsText(), r[2].AsText(), r[3].AsText(), r[4].AsText(),
        static_cast<int32_t>(r[5].AsInt64()), r[6].AsInt64(), r[7].AsInt64()});
  }
  TF_ASSIGN_OR_RETURN(rows, db_->Query(
      "SELECT replica_id, deployment_id, requests, prompt_tokens, completion_tokens "
      "FROM replica_counters"));
  for (const auto& r : rows) {
    s.replica_counters.push_back(ReplicaCounterRecord{
        r[0].AsText(), r[1].AsText(), UsageCounters{r[2].AsInt64(), r[3].AsInt64(), r[4].AsInt64()}});
  }
  return s;
}

absl::StatusOr<std::vector<InferenceTotal>> SchedulerStore::InferenceUsage(
    const std::string& tenant, int64_t start_us, int64_t end_us) {
  absl::MutexLock lock(&commit_mu_);  // not between a batch's statements
  TF_ASSIGN_OR_RETURN(auto rows, db_->Query(
      "SELECT deployment_id, base_model, SUM(requests), SUM(prompt_tokens), "
      "SUM(completion_tokens) FROM inference_usage WHERE tenant = ? AND minute_us >= ? AND "
      "minute_us < ? GROUP BY deployment_id, base_model ORDER BY deployment_id",
      {tenant, start_us, end_us}));
  std::vector<InferenceTotal> out;
  for (const auto& r : rows) {
    out.push_back(InferenceTotal{r[0].AsText(), r[1].AsText(),
                                 UsageCounters{r[2].AsInt64(), r[3].AsInt64(), r[4].AsInt64()}});
  }
  return out;
}

absl::Status SchedulerStore::Exec(const char* sql, std::initializer_list<store::Value> params) {
  auto it = statements_.find(sql);
  if (it == statements_.end()) {
    TF_ASSIGN_OR_RETURN(store::Statement st, db_->Prepare(sql));
    it = statements_.emplace(sql, std::move(st)).first;
  }
  return it->second.Execute(std::vector<store::Value>(params)).status();
}

absl::StatusOr<int64_t> SchedulerStore::Commit(const Batch& b) {
  TF_ASSIGN_OR_RETURN(int64_t seq, Append(b));
  TF_RETURN_IF_ERROR(Sync(seq));
  return seq;
}

absl::StatusOr<int64_t> SchedulerStore::Append(const Batch& b) {
  absl::MutexLock lock(&commit_mu_);
  if (b.empty()) return appended_.load();
  if (broken_.load()) return FailedStatus();
  if (!group_sync_) {
    // One transaction and one fsync (synchronous=FULL) per batch.
    TF_ASSIGN_OR_RETURN(store::Transaction txn, db_->Begin());
    TF_RETURN_IF_ERROR(WriteLocked(b));
    TF_RETURN_IF_ERROR(txn.Commit());
    return ++appended_;
  }
  // Into the transaction left open for the next leader's COMMIT; the batch
  // is a savepoint, so a failing batch leaves the others as they were.
  if (!open_) {
    TF_RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE", {}));
    open_ = true;
  }
  TF_RETURN_IF_ERROR(Exec("SAVEPOINT batch", {}));
  absl::Status written = WriteLocked(b);
  if (written.ok()) written = Exec("RELEASE batch", {});
  if (written.ok()) return ++appended_;
  if (!db_->InTransaction()) {
    // SQLite rolled the whole transaction back (I/O error, disk full): the
    // batches before this one in it are gone too.
    open_ = false;
    Fail(written);
    return written;
  }
  absl::Status undone = Exec("ROLLBACK TO batch", {});
  if (undone.ok()) undone = Exec("RELEASE batch", {});
  if (!undone.ok()) Fail(undone);
  return written;
}

absl::Status SchedulerStore::WriteLocked(const Batch& b) {
  for (const auto& [id, j] : b.jobs) {
    TF_RETURN_IF_ERROR(Exec(
        "INSERT OR REPLACE INTO jobs (id, tenant, request_id, queue_seq, resume_artifact, retries, "
        "attempt, held_files, last_event_seq, state, proto, init_artifact, estimated_tokens, "
        "preempted_for, alt_memory_estimate) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        {id, j.tenant, j.request_id, j.queue_seq, j.resume_artifact, j.retries, j.attempt,
         absl::StrJoin(j.held_files, ","), j.last_event_seq, static_cast<int>(j.job.state()),
         Value::Blob(j.job.SerializeAsString()), j.init_artifact, j.estimated_tokens,
         j.preempted_for, Value::Blob(j.alt_memory_estimate.SerializeAsString())}));
  }
  for (const auto& [job_id, e] : b.events) {
    TF_RETURN_IF_ERROR(Exec("INSERT INTO job_events (job_id, seq, proto) VALUES (?,?,?)",
                            {job_id, e.sequence(), Value::Blob(e.SerializeAsString())}));
  }
  for (const auto& c : b.checkpoints) {
    TF_RETURN_IF_ERROR(Exec(
        "INSERT OR REPLACE INTO checkpoints (id, job_id, tenant, artifact, proto) VALUES (?,?,?,?,?)",
        {c.checkpoint.id(), c.checkpoint.job_id(), c.tenant, c.artifact,
         Value::Blob(c.checkpoint.SerializeAsString())}));
  }
  for (const auto& m : b.models) {
    TF_RETURN_IF_ERROR(Exec(
        "INSERT OR REPLACE INTO models (id, tenant, artifact, proto) VALUES (?,?,?,?)",
        {m.model.id(), m.tenant, m.artifact, Value::Blob(m.model.SerializeAsString())}));
  }
  for (const auto& id : b.deleted_models) {
    TF_RETURN_IF_ERROR(Exec("DELETE FROM models WHERE id = ?", {id}));
  }
  for (const auto& d : b.deployments) {
    TF_RETURN_IF_ERROR(Exec(
        "INSERT OR REPLACE INTO deployments (id, tenant, base_artifact, adapter_artifact, proto, "
        "request_id) VALUES (?,?,?,?,?,?)",
        {d.deployment.id(), d.tenant, d.base_artifact, d.adapter_artifact,
         Value::Blob(d.deployment.SerializeAsString()), d.request_id}));
  }
  for (const auto& id : b.deleted_deployments) {
    TF_RETURN_IF_ERROR(Exec("DELETE FROM deployments WHERE id = ?", {id}));
  }
  for (const auto& a : b.assignments) {
    TF_RETURN_IF_ERROR(Exec(
        "INSERT OR REPLACE INTO assignments (id, job_id, node_id, stopping, proto) VALUES (?,?,?,?,?)",
        {a.assignment.assignment_id(), a.assignment.job_id(), a.node_id, a.stopping ? 1 : 0,
         Value::Blob(a.assignment.SerializeAsString())}));
  }
  for (const auto& id : b.deleted_assignments) {
    TF_RETURN_IF_ERROR(Exec("DELETE FROM assignments WHERE id = ?", {id}));
  }
  for (const auto& n : b.nodes) {
    TF_RETURN_IF_ERROR(Exec(
        "INSERT OR REPLACE INTO nodes (id, name, address, slots, gpus, slot_memory_bytes) "
        "VALUES (?,?,?,?,?,?)",
        {n.id, n.name, n.address, n.slots, n.gpus, n.slot_memory_bytes}));
  }
  for (const auto& id : b.deleted_nodes) {
    TF_RETURN_IF_ERROR(Exec("DELETE FROM nodes WHERE id = ?", {id}));
  }
  for (const auto& r : b.replicas) {
    TF_RETURN_IF_ERROR(Exec(
        "INSERT OR REPLACE INTO replicas (id, name, address) VALUES (?,?,?)",
        {r.id, r.name, r.address}));
  }
  for (const auto& u : b.deployment_usage) {
    TF_RETURN_IF_ERROR(Exec(
        "INSERT OR REPLACE INTO deployment_usage (id, deployment_id, tenant, model, base_model, "
        "replicas, start_us, end_us) VALUES (?,?,?,?,?,?,?,?)",
        {u.id, u.deployment_id, u.tenant, u.model, u.base_model, u.replicas, u.start_us,
         u.end_us}));
  }
  for (const auto& c : b.replica_counters) {
    TF_RETURN_IF_ERROR(Exec(
        "INSERT OR REPLACE INTO replica_counters (replica_id, deployment_id, requests, "
        "prompt_tokens, completion_tokens) VALUES (?,?,?,?,?)",
        {c.replica_id, c.deployment_id, c.counters.requests, c.counters.prompt_tokens,
         c.counters.completion_tokens}));
  }
  for (const auto& d : b.inference) {
    TF_RETURN_IF_ERROR(Exec(
        "INSERT INTO inference_usage (tenant, minute_us, deployment_id, base_model, requests, "
        "prompt_tokens, completion_tokens) VALUES (?,?,?,?,?,?,?) ON CONFLICT (tenant, "
        "minute_us, deployment_id, base_model) DO UPDATE SET requests = requests + "
        "excluded.requests, prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
        "completion_tokens = completion_tokens + excluded.completion_tokens",
        {d.tenant, d.minute_us, d.deployment_id, d.base_model, d.delta.requests,
         d.delta.prompt_tokens, d.delta.completion_tokens}));
  }
  return absl::OkStatus();
}

}  // namespace tunefleet::scheduler
