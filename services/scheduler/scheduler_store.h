// The scheduler's durable state in one SQLite file: jobs, their events
// (state changes, metrics points, checkpoints), checkpoints, fine-tuned
// models, deployments, assignments, nodes and replicas.
//
// Every mutation is one Batch committed in one transaction, so a job's new
// state and the event that records it are written together or not at all.
//
// Group commit: Commit() writes the transaction into the WAL without an
// fsync (synchronous=NORMAL: it already survives kill -9, since the bytes are
// in the OS), and Sync(seq) makes it durable against power loss with one
// fsync of the WAL shared by every commit made before it: concurrent callers
// wait on the same fsync instead of paying one each (several ms here).
// Callers acknowledge a mutation only after Sync. With group_sync off every
// commit fsyncs itself (synchronous=FULL) and Sync is a no-op.
// Thread-safe (the Database serializes its users).
#pragma once

#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
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
  // Returns the commit's sequence number, for Sync.
  absl::StatusOr<int64_t> Commit(const Batch& batch);
  // Returns once commit `seq` (and every one before it) is on disk.
  absl::Status Sync(int64_t seq);
  // The tenant's inference per deployment in minute buckets starting in
  // [start_us, end_us).
  absl::StatusOr<std::vector<InferenceTotal>> InferenceUsage(const std::string& tenant,
                                                             int64_t start_us, int64_t end_us);
  // fsyncs performed so far (for tests and benchmarks).
  int64_t syncs();

 private:
  SchedulerStore(std::unique_ptr<store::Database> db, bool group_sync)
      : db_(std::move(db)), group_sync_(group_sync) {}
  absl::Status FsyncWal() ABSL_LOCKS_EXCLUDED(sync_mu_);
  // Runs `sql` through a statement prepared once (keyed by the literal).
  absl::Status Exec(const char* sql, std::initializer_list<store::Value> params)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(commit_mu_);
  std::unique_ptr<store::Database> db_;
  absl::Mutex commit_mu_;
  std::map<const char*, store::Statement> statements_ ABSL_GUARDED_BY(commit_mu_);
  const bool group_sync_;
  std::atomic<int64_t> committed_{0};
  absl::Mutex sync_mu_;
  absl::CondVar sync_cv_;
  int64_t synced_ ABSL_GUARDED_BY(sync_mu_) = 0;
  bool syncing_ ABSL_GUARDED_BY(sync_mu_) = false;
  int64_t syncs_ ABSL_GUARDED_BY(sync_mu_) = 0;
  int wal_fd_ = -1;  // used only by the one syncing thread
};

}  // namespace tunefleet::scheduler
