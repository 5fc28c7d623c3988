// The scheduler's durable state in one SQLite file: jobs, their events
// (state changes, metrics points, checkpoints), checkpoints, fine-tuned
// models, deployments, assignments, nodes and replicas.
//
// Every mutation is one Batch written as one unit, so a job's new state and
// the event that records it are written together or not at all.
//
// Group commit, leader/follower: Append() runs the batch's statements inside
// one SQLite transaction left open (each batch a savepoint, so a failing
// batch leaves nothing behind and the others stand); Sync(seq) and
// WhenDurable(seq) make it durable. The first caller to find no commit under
// way leads: it COMMITs every batch appended so far (one WAL write,
// synchronous=NORMAL), fdatasyncs the WAL once for all of them, wakes the
// Sync waiters, runs the WhenDurable callbacks, and goes on while batches
// are waiting; nobody else wakes a thread for it. Callers acknowledge a
// mutation only once it is durable. With group_sync off every batch is its
// own transaction with its own fsync (synchronous=FULL), durable at Append.
//
// A COMMIT or fsync that fails loses batches the caller has already applied
// to memory, so the store then refuses every later write (UNAVAILABLE) until
// a restart reloads the file.
// Thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/store/sqlite.h"
#include "tunefleet/internal/v1/trainer.pb.h"
#include "tunefleet/v1/deployments.pb.h"
#include "tunefleet/v1/jobs.pb.h"
#include "tunefleet/v1/models.pb.h"

namespace tunefleet::scheduler {

namespace v1 = ::tunefleet::v1;
namespace iv1 = ::tunefleet::internal::v1;

struct JobRecord {
  std::string tenant;
  std::string request_id;
  int64_t queue_seq = 0;  // admission order (age in the queue)
  // Artifact name of the checkpoint the next attempt resumes from.
  std::string resume_artifact;
  // A job continued from a fine-tuned model: the artifact name of the PEFT
  // adapter it starts from (empty: a fresh adapter).
  std::string init_artifact;
  // Trained tokens estimated at admission (the per-tenant token quota).
  int64_t estimated_tokens = 0;
  int32_t retries = 0;  // attempts lost so far
  int32_t attempt = 0;  // attempts started so far
  // Preemption in progress: the queued job this running job was asked to
  // checkpoint and stop for (empty: none). Durable so that a restarted
  // scheduler still stops the victim and requeues it when its ranks are gone.
  std::string preempted_for;
  // The memory estimate for the other kind of slot than job.memory_estimate's
  // (dtype "bfloat16" for GPUs, "float32" for CPU slots): placement checks
  // the GPU one against a GPU's memory and swaps the two when the job lands
  // on the other kind. Empty for jobs admitted before it was kept.
  v1::MemoryEstimate alt_memory_estimate;
  std::vector<std::string> held_files;  // released when the job finishes
  int64_t last_event_seq = 0;
  v1::Job job;
};

struct CheckpointRecord {
  std::string tenant;
  std::string artifact;
  v1::Checkpoint checkpoint;
};

struct ModelRecord {
  std::string tenant;
  std::string artifact;  // the adapter (PEFT) directory's artifact name
  v1::Model model;
};

struct DeploymentRecord {
  std::string tenant;
  std::string base_artifact;     // base model id (folder under models_dir)
  std::string adapter_artifact;  // empty for a base deployment
  v1::Deployment deployment;
  std::string request_id;  // CreateDeploymentRequest.request_id (idempotency)
};

struct AssignmentRecord {
  std::string node_id;
  // Cancelled: no longer desired; kept until the agent has stopped it.
  bool stopping = false;
  iv1::Assignment assignment;
  // Memory only: the agent has reported it in a heartbeat.
  bool seen = false;
};

struct NodeRecord {
  std::string id;
  std::string name;
  std::string address;  // agent address; its host is rank 0's master address
  int32_t slots = 0;
  int32_t gpus = 0;  // GPUs registered (0: CPU slots)
  // A GPU node: the memory of its smallest GPU (what one rank may use);
  // 0: CPU slots, or GPUs whose memory the agent could not read.
  int64_t slot_memory_bytes = 0;
};

struct ReplicaRecord {
  std::string id;
  std::string name;
  std::string address;
};

// Usage (usage.h): a deployment's desired replicas over one stretch of its
// life (a new row when it is created or its model or replicas change; closed
// when that happens again or it is deleted). Kept after the deployment is.
struct DeploymentUsageRecord {
  std::string id;  // row key
  std::string deployment_id;
  std::string tenant;
  std::string model;
  std::string base_model;  // the price table's key
  int32_t replicas = 0;
  int64_t start_us = 0;  // unix micros
  int64_t end_us = 0;    // 0: still open
};

struct UsageCounters {
  int64_t requests = 0;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

// The last cumulative counters a replica reported for a deployment (the
// base of the next delta).
struct ReplicaCounterRecord {
  std::string replica_id;
  std::string deployment_id;
  UsageCounters counters;
};

// Inference served, added into the deployment's one-minute bucket.
struct InferenceDelta {
  std::string deployment_id;
  std::string tenant;
  std::string base_model;
  int64_t minute_us = 0;  // unix micros of the minute's start
  UsageCounters delta;
};

// A deployment's inference in a period (InferenceUsage).
struct InferenceTotal {
  std::string deployment_id;
  std::string base_model;
  UsageCounters counters;
};

// One transaction's worth of writes. Upserts replace the whole row.
struct Batch {
  std::vector<std::pair<std::string, JobRecord>> jobs;  // (id, record)
  std::vector<std::pair<std::string, v1::JobEvent>> events;  // (job id, event)
  std::vector<CheckpointRecord> checkpoints;
  std::vector<ModelRecord> models;
  std::vector<std::string> deleted_models;
  std::vector<DeploymentRecord> deployments;
  std::vector<std::string> deleted_deployments;
  std::vector<AssignmentRecord> assignments;
  std::vector<std::string> deleted_assignments;
  std::vector<NodeRecord> nodes;
  std::vector<std::string> deleted_nodes;
  std::vector<ReplicaRecord> replicas;
  std::vector<DeploymentUsageRecord> deployment_usage;  // upserts
  std::vector<ReplicaCounterRecord> replica_counters;   // upserts
  std::vector<InferenceDelta> inference;                // added to their bucket
  bool empty() const {
    return jobs.empty() && events.empty() && checkpoints.empty() && models.empty() &&
           deleted_models.empty() && deployments.empty() && deleted_deployments.empty() &&
           assignments.empty() && deleted_assignments.empty() && nodes.empty() &&
           deleted_nodes.empty() && replicas.empty() && deployment_usage.empty() &&
           replica_counters.empty() && inference.empty();
  }
};

// Everything, as loaded at start-up.
struct StoreSnapshot {
  std::map<std::string, JobRecord> jobs;
  std::map<std::string, std::vector<v1::JobEvent>> events;  // by job, in sequence
  std::vector<CheckpointRecord> checkpoints;
  std::vector<ModelRecord> models;
  std::vector<DeploymentRecord> deployments;
  std::vector<AssignmentRecord> assignments;
  std::vector<NodeRecord> nodes;
  std::vector<ReplicaRecord> replicas;
  std::vector<DeploymentUsageRecord> deployment_usage;
  std::vector<ReplicaCounterRecord> replica_counters;
};

class SchedulerStore {
 public:
  // Opens (creating) `path` and brings its schema up to date.
  static absl::StatusOr<std::unique_ptr<SchedulerStore>> Open(const std::string& path,
                                                              bool group_sync = true);
  ~SchedulerStore();
  absl::StatusOr<StoreSnapshot> Load();
  // Writes `batch` into the open group transaction (not yet durable) and
  // returns its sequence number for Sync or WhenDurable. Callers that apply
  // batches to memory call it in that order (under their own lock).
  absl::StatusOr<int64_t> Append(const Batch& batch);
  // Append, then Sync.
  absl::StatusOr<int64_t> Commit(const Batch& batch);
  // Returns once batch `seq` (and every one before it) is on disk.
  absl::Status Sync(int64_t seq);
  // Calls `done` once batch `seq` is on disk (or with the error that lost
  // it): at once on this thread, or later on the thread that leads the
  // commit. `done` must not block for long: later commits wait behind it.
  void WhenDurable(int64_t seq, std::function<void(absl::Status)> done);
  // The tenant's inference per deployment in minute buckets starting in
  // [start_us, end_us).
  absl::StatusOr<std::vector<InferenceTotal>> InferenceUsage(const std::string& tenant,
                                                             int64_t start_us, int64_t end_us);
  // fsyncs performed so far (for tests and benchmarks).
  int64_t syncs();
  // Group commit: time the leaders spent in COMMIT (the WAL write) and in
  // the fsync, summed over `syncs` rounds (for benchmarks).
  struct SyncTimes {
    int64_t syncs = 0;
    absl::Duration commit;
    absl::Duration fsync;
  };
  SyncTimes sync_times();

 private:
  SchedulerStore(std::unique_ptr<store::Database> db, bool group_sync)
      : db_(std::move(db)), group_sync_(group_sync) {}
  absl::Status FsyncWal();
  absl::Status WriteLocked(const Batch& batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(commit_mu_);
  // COMMITs the open transaction; returns the last batch it holds.
  absl::StatusOr<int64_t> CommitOpenLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(commit_mu_);
  // Commits and fsyncs until every appended batch is durable.
  void LeadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(sync_mu_);
  void Fail(const absl::Status& cause) ABSL_LOCKS_EXCLUDED(sync_mu_);
  absl::Status FailedStatus() ABSL_LOCKS_EXCLUDED(sync_mu_);
  // Runs `sql` through a statement prepared once (keyed by the literal).
  absl::Status Exec(const char* sql, std::initializer_list<store::Value> params)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(commit_mu_);
  std::unique_ptr<store::Database> db_;
  absl::Mutex commit_mu_;
  std::map<const char*, store::Statement> statements_ ABSL_GUARDED_BY(commit_mu_);
  bool open_ ABSL_GUARDED_BY(commit_mu_) = false;  // a group transaction is open
  const bool group_sync_;
  std::atomic<int64_t> appended_{0};
  std::atomic<bool> broken_{false};  // failed_ is set
  absl::Mutex sync_mu_;
  absl::CondVar sync_cv_;
  int64_t durable_ ABSL_GUARDED_BY(sync_mu_) = 0;
  bool leading_ ABSL_GUARDED_BY(sync_mu_) = false;
  int64_t syncs_ ABSL_GUARDED_BY(sync_mu_) = 0;
  absl::Duration commit_time_ ABSL_GUARDED_BY(sync_mu_);
  absl::Duration fsync_time_ ABSL_GUARDED_BY(sync_mu_);
  absl::Status failed_ ABSL_GUARDED_BY(sync_mu_);
  std::vector<std::pair<int64_t, std::function<void(absl::Status)>>> callbacks_
      ABSL_GUARDED_BY(sync_mu_);
  int wal_fd_ = -1;  // used only by the leader
};

}  // namespace tunefleet::scheduler
