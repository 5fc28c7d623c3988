// The scheduler's core: the one owner of job, model, deployment, node and
// replica state, shaped like a Kubernetes controller. Callers (the thin gRPC
// services) ask it to change desired state; trainer agents and serving
// replicas pull what they should run and report what is. Time moves only
// through Tick(now) (lease expiry, placement): there are no hidden threads,
// main.cc runs a ticker and tests call Tick themselves with a ManualClock.
//
// Every change is one store Batch (state + its event in one transaction),
// committed before the call returns and applied to memory only once durable.
// Thread-safe: one mutex guards the in-memory state; the dataset service is
// called without it held; watchers are woken after it is released.
#pragma once

#include <functional>
#include <map>
#include <set>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/base/clock.h"
#include "services/scheduler/dataset_client.h"
#include "services/scheduler/event_bus.h"
#include "services/scheduler/job_spec.h"
#include "services/scheduler/job_state.h"
#include "services/scheduler/model_archive.h"
#include "services/scheduler/placement.h"
#include "services/scheduler/scheduler_store.h"
#include "services/scheduler/usage.h"
#include "tunefleet/internal/v1/serving.pb.h"
#include "tunefleet/internal/v1/trainer.pb.h"
#include "tunefleet/v1/usage.pb.h"

namespace tunefleet::scheduler {

struct SchedulerOptions {
  // The SQLite file.
  std::string db_path;
  // Base models: <models_dir>/<id>/config.json.
  std::string models_dir;
  // The shared artifact directory: model artifact names are relative to it
  // (GetModelContent reads fine-tuned models from here).
  std::string artifacts_dir;
  Clock* clock = Clock::Real();
  absl::Duration heartbeat_interval = absl::Seconds(2);
  // A node silent for longer is lost: its attempts fail, its jobs requeue.
  absl::Duration lease = absl::Seconds(10);
  // Lost attempts a job survives; one more fails it ("worker_lost").
  int max_retries = 3;
  // A queued job that no registered node can hold (more ranks than the fleet
  // has slots, or more memory than any GPU) waits this long for one before
  // it fails ("unschedulable"): a node lost for a while, or a fleet still
  // registering after a restart, does not fail the jobs that need it.
  // CreateJob still refuses such a job at once.
  absl::Duration unschedulable_grace = absl::Minutes(10);
  // CreateJob counts the tokens of a training file uploaded without a base
  // model (for the memory and cost estimates) for at most this long (a
  // tokenizer pass reads ~25 MB/s); past it the estimates keep their upper
  // bounds (max_sequence_length, bytes / 4) and the job's first event says so.
  absl::Duration token_count_timeout = absl::Seconds(10);
  int first_master_port = 29500;
  int max_watchers_per_topic = 1024;
  // Per-tenant quotas checked at admission (RESOURCE_EXHAUSTED naming the
  // quota); 0: unlimited. GPUs count every unfinished job's gpus.
  int max_active_jobs_per_tenant = 0;
  int max_gpus_per_tenant = 0;
  // Trained tokens a tenant may use per period (a rolling window ending now):
  // succeeded jobs that finished inside it count their reported
  // trained_tokens, unfinished jobs (queued, running, paused, ...) the larger
  // of their admission estimate and what they reported; failed and cancelled
  // jobs count nothing. A job whose estimate would push the total past the
  // limit is refused. 0: unlimited.
  int64_t max_trained_tokens_per_tenant = 0;
  absl::Duration trained_tokens_period = absl::Hours(24 * 30);
  // Group commit (see SchedulerStore); off: one fsync per mutation.
  bool group_commit = true;
  // Prices per base model (usage.h); empty: usage is reported unpriced.
  PriceTable prices;
};

inline std::string JobTopic(const std::string& job_id) { return "job/" + job_id; }
inline constexpr char kDeploymentsTopic[] = "deployments";
// One deployment's record changed (or it was deleted): WatchDeployment.
inline std::string DeploymentTopic(const std::string& id) { return "deployment/" + id; }

class Scheduler {
 public:
  // `dataset` must outlive the scheduler.
  static absl::StatusOr<std::unique_ptr<Scheduler>> Open(SchedulerOptions options,
                                                         DatasetClient* dataset);
  ~Scheduler();

  EventBus& bus() { return bus_; }

  // Jobs (public API; `tenant` from the caller's credentials).
  absl::StatusOr<v1::Job> CreateJob(const std::string& tenant, const v1::CreateJobRequest& req);
  // The same, answering through `done` once the job is durable: on this
  // thread, or on the thread that leads its group commit (so that this one
  // does not wait for the fsync). `done` must not block.
  void CreateJob(const std::string& tenant, const v1::CreateJobRequest& req,
                 std::function<void(absl::StatusOr<v1::Job>)> done);
  absl::StatusOr<v1::Job> GetJob(const std::string& tenant, const std::string& job_id);
  absl::StatusOr<v1::ListJobsResponse> ListJobs(const std::string& tenant,
                                                const v1::ListJobsRequest& req);
  absl::StatusOr<v1::Job> CancelJob(const std::string& tenant, const std::string& job_id);
  absl::StatusOr<v1::Job> PauseJob(const std::string& tenant, const std::string& job_id);
  absl::StatusOr<v1::Job> ResumeJob(const std::string& tenant, const std::string& job_id);
  // Events with sequence > after, at most `limit`; `*finished` when the job is
  // over and nothing after them remains.
  absl::StatusOr<std::vector<v1::JobEvent>> JobEvents(const std::string& tenant,
                                                      const std::string& job_id, int64_t after,
                                                      int limit, bool* finished);
  // JobEvents a page at a time; the page token is the last sequence returned,
  // empty once the job is over and nothing remains.
  absl::StatusOr<v1::ListJobEventsResponse> ListJobEvents(const std::string& tenant,
                                                          const v1::ListJobEventsRequest& req);
  // Every metrics event's point, in the order reported.
  absl::StatusOr<v1::JobMetrics> GetJobMetrics(const std::string& tenant,
                                               const std::string& job_id);
  absl::StatusOr<v1::ListCheckpointsResponse> ListCheckpoints(const std::string& tenant,
                                                              const v1::ListCheckpointsRequest& req);

  // Models.
  absl::StatusOr<v1::ListModelsResponse> ListModels(const std::string& tenant,
                                                    const v1::ListModelsRequest& req);
  absl::StatusOr<v1::Model> GetModel(const std::string& tenant, const std::string& model_id);
  absl::StatusOr<v1::DeleteModelResponse> DeleteModel(const std::string& tenant,
                                                      const std::string& model_id);
  // A fine-tuned model's directory as a ustar archive stream (see
  // ModelService.GetModelContent); the archive's root folder is the model id
  // with ':' as '_'.
  absl::StatusOr<std::unique_ptr<TarStream>> OpenModelContent(const std::string& tenant,
                                                             const std::string& model_id);

  // Deployments.
  absl::StatusOr<v1::Deployment> CreateDeployment(const std::string& tenant,
                                                  const v1::CreateDeploymentRequest& req);
  absl::StatusOr<v1::Deployment> GetDeployment(const std::string& tenant, const std::string& id);
  absl::StatusOr<v1::ListDeploymentsResponse> ListDeployments(
      const std::string& tenant, const v1::ListDeploymentsRequest& req);
  // Returns the deployment as it was, in state DELETING; it is gone at once.
  absl::StatusOr<v1::Deployment> DeleteDeployment(const std::string& tenant,
                                                  const std::string& id);
  // Applies the fields req.update_mask names (model, replicas,
  // content_filter) to the deployment; the id stays.
  absl::StatusOr<v1::Deployment> UpdateDeployment(const std::string& tenant,
                                                  const v1::UpdateDeploymentRequest& req);

  // Usage and cost of `tenant` in [start, end) (scheduler_usage.cc).
  absl::StatusOr<v1::UsageReport> GetUsage(const std::string& tenant, absl::Time start,
                                           absl::Time end);
  absl::Time Now() const { return options_.clock->Now(); }

  // Trainer agents.
  absl::StatusOr<iv1::RegisterNodeResponse> RegisterNode(const iv1::RegisterNodeRequest& req);
  absl::StatusOr<iv1::HeartbeatResponse> Heartbeat(const iv1::HeartbeatRequest& req);
  absl::StatusOr<iv1::ReportProgressResponse> ReportProgress(const iv1::ReportProgressRequest& req);
  absl::StatusOr<iv1::ReportCheckpointResponse> ReportCheckpoint(
      const iv1::ReportCheckpointRequest& req);
  absl::StatusOr<iv1::CompleteAssignmentResponse> CompleteAssignment(
      const iv1::CompleteAssignmentRequest& req);

  // Serving replicas.
  absl::StatusOr<iv1::RegisterReplicaResponse> RegisterReplica(
      const iv1::RegisterReplicaRequest& req);
  // The full desired set for a replica (every replica serves every
  // deployment), with a generation that grows on every change.
  absl::StatusOr<iv1::DesiredDeployments> DesiredDeployments(const std::string& replica_id);
  absl::StatusOr<iv1::ReportReplicaStatusResponse> ReportReplicaStatus(
      const iv1::ReportReplicaStatusRequest& req);
  // The replica's watch ended: what it reported no longer counts as ready.
  void ReplicaDisconnected(const std::string& replica_id);

  // Expires node leases (their attempts are lost: requeue from the last
  // checkpoint, or fail past max_retries), then runs one placement pass.
  void Tick(absl::Time now);

  // Slots registered and in use, for metrics and tests.
  struct FleetStats {
    int nodes = 0;
    int slots = 0;
    int used_slots = 0;
    int queued_jobs = 0;
    int running_jobs = 0;
    // How long the longest-waiting queued job has waited (0: none queued).
    double oldest_queued_seconds = 0;
    int64_t preemptions = 0;
    int64_t node_losses = 0;
    std::map<int, int> jobs_by_state;  // v1::JobState -> count
  };
  FleetStats Stats();
  SchedulerStore& store() { return *store_; }

 private:
  class Txn;
  struct NodeState {
    NodeRecord record;
    absl::Time lease_expiry;
  };
  struct ReplicaState {
    ReplicaRecord record;
    std::map<std::string, iv1::ReplicaDeploymentStatus> statuses;  // by deployment
  };
  struct Progress {
    absl::Time at;
    int64_t step = 0;
  };

  Scheduler(SchedulerOptions options, DatasetClient* dataset, std::unique_ptr<SchedulerStore> store);
  absl::Status Load();

  // Helpers; all need mu_.
  absl::StatusOr<JobRecord*> FindJob(const std::string& tenant, const std::string& job_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The caller's view; the queue position costs a pass over the jobs, so
  // only reads ask for it.
  v1::Job View(const std::string& id, const JobRecord& j, bool with_position = false)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  v1::Model ModelView(const ModelRecord& m) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  v1::Model BaseModelView(const BaseModel& m) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A fine-tuned model of `tenant`: a job's result or one of its LoRA
  // checkpoints (model_ids.h); NOT_FOUND "model <id> not found" otherwise.
  struct FineTuned {
    std::string artifact;  // the PEFT (or merged) directory
    std::string base;      // the root base model
    bool lora = true;
    bool checkpoint = false;
    v1::Model model;
  };
  absl::StatusOr<FineTuned> FindFineTuned(const std::string& tenant, const std::string& id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Transition(Txn& t, const std::string& job_id, JobTrigger trigger,
                          const std::string& message, const v1::Error* error = nullptr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void LoseAttempt(Txn& t, const std::string& job_id, const std::string& why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StopAssignmentsOf(Txn& t, const std::string& job_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RegisterResult(Txn& t, const std::string& job_id, const std::string& artifact)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PlaceLocked(Txn& t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Slots each tenant holds: one per assignment (a rank), stopping ones too
  // until they are gone. The fair share's input (placement.h).
  TenantSlots RunningSlotsLocked(const std::map<std::string, AssignmentRecord>& assignments)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Preemption: for each queued job (in queue order) that placement left
  // waiting, when stopping running jobs of lower priority (lowest first,
  // newest first) frees enough slots, those are asked to checkpoint and stop
  // (checkpoint_and_stop; JobRecord::preempted_for, durable, so a restarted
  // scheduler keeps asking); once their ranks are gone they are requeued to
  // resume from that checkpoint and the waiting job is placed.
  void PreemptFor(Txn& t, const std::vector<QueuedJob>& ordered,
                  const std::set<std::string>& settled, int free_slots)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether the committed job is being preempted: its ranks are asked to
  // checkpoint and stop, and their exit requeues it rather than failing it.
  bool Preempting(const std::string& job_id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !jobs_.at(job_id).preempted_for.empty();
  }
  // Why the registered GPUs cannot hold a job of `gpus` ranks needing
  // `need` bytes each (its GPU estimate), or "" when they can, when the CPU
  // slots can, when the fleet is too small anyway (the slots check says so),
  // or when no GPU's memory is known.
  std::string MemoryShortfallLocked(int gpus, int64_t need) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Why the registered fleet has too few slots of one kind for a job of
  // `gpus` ranks (a gang is all GPUs or all CPU slots), or "".
  std::string SlotShortfallLocked(int gpus) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool FleetHasGpusLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // `tokens`: the new job's estimated trained tokens.
  absl::Status CheckQuota(const std::string& tenant, int gpus, int64_t tokens)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RecomputeDeployment(Txn& t, const std::string& dep_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Usage: closes the deployment's open usage stretch and, unless it is
  // gone (`now` null), opens one with its current model and replicas.
  void DeploymentUsageChanged(Batch& b, absl::Time at, const std::string& dep_id,
                              const DeploymentRecord* now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A replica's cumulative counters for one deployment: the delta since its
  // last report goes into the batch (a stale or repeated report adds nothing).
  void CountInference(Batch& b, absl::Time at, const std::string& replica_id,
                      const iv1::ReplicaDeploymentStatus& s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sets the job view's accelerator_seconds, cost and currency.
  void AddJobCost(const std::string& id, const JobRecord& j, v1::Job* job)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Waits for durability, releases files, wakes watchers.
  absl::Status AfterCommit(Txn& t) ABSL_LOCKS_EXCLUDED(mu_);
  // AfterCommit's second half, once the store said `synced`.
  absl::Status AfterDurable(const std::vector<std::pair<std::string, std::string>>& releases,
                            const std::set<std::string>& topics, absl::Status synced)
      ABSL_LOCKS_EXCLUDED(mu_);
  // CreateJob up to its commit (not yet durable); `t` holds what to wait for.
  absl::StatusOr<v1::Job> AdmitJob(const std::string& tenant, const v1::CreateJobRequest& req,
                                   Txn& t) ABSL_LOCKS_EXCLUDED(mu_);
  // Checkpoint-and-finish for one assignment (CompleteAssignment, or an agent
  // that reports it gone while its job pauses or cancels).
  void FinishAssignment(Txn& t, const std::string& assignment_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const SchedulerOptions options_;
  DatasetClient* const dataset_;
  std::unique_ptr<SchedulerStore> store_;
  BaseModelCatalog catalog_;
  EventBus bus_;

  absl::Mutex mu_;
  std::map<std::string, JobRecord> jobs_ ABSL_GUARDED_BY(mu_);
  // (tenant, request_id) -> job id, for idempotent creation.
  std::map<std::pair<std::string, std::string>, std::string> request_ids_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::vector<v1::JobEvent>> events_ ABSL_GUARDED_BY(mu_);
  // Queued jobs no registered node holds, and since when (in memory: a
  // restarted scheduler grants the whole grace again).
  std::map<std::string, absl::Time> unschedulable_since_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::vector<CheckpointRecord>> checkpoints_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, ModelRecord> models_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, DeploymentRecord> deployments_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, AssignmentRecord> assignments_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, NodeState> nodes_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, ReplicaState> replicas_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Progress> progress_ ABSL_GUARDED_BY(mu_);
  // Usage: every deployment's stretches (by deployment id, oldest first,
  // deleted deployments too) and each replica's last counters.
  std::map<std::string, std::vector<DeploymentUsageRecord>> deployment_usage_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<std::string, std::string>, UsageCounters> replica_counters_
      ABSL_GUARDED_BY(mu_);
  int64_t preemptions_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t node_losses_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t next_queue_seq_ ABSL_GUARDED_BY(mu_) = 1;
  int64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace tunefleet::scheduler
