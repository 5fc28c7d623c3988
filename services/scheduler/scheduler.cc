#include "services/scheduler/scheduler.h"

#include <algorithm>
#include <limits>
#include <optional>
#include <set>

#include <spdlog/spdlog.h>

#include "absl/synchronization/notification.h"
#include "absl/strings/match.h"
#include "common/errors/error_details.h"
#include "common/errors/labels.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/base/ids.h"
#include "common/base/proto_time.h"
#include "common/base/status_macros.h"
#include "services/scheduler/deployment_policy.h"
#include "services/scheduler/model_ids.h"
#include "services/scheduler/placement.h"

namespace tunefleet::scheduler {
namespace {

// "ftjob-" and 24 characters: the creation time in milliseconds (9, base 32
// with digits before letters, so that ids sort by it as text), then 15
// random ones. Consecutive jobs then go to the same last pages of the jobs
// key and job_events indexes instead of a random page each, which keeps the
// group commit's WAL write and the checkpoints small.
std::string NewJobId(absl::Time now) {
  static constexpr char kSorted[] = "234567abcdefghijklmnopqrstuvwxyz";
  std::string id = NewId("ftjob");
  uint64_t ms = static_cast<uint64_t>(std::max<int64_t>(0, absl::ToUnixMillis(now)));
  for (int i = 8; i >= 0; --i) {
    id[6 + i] = kSorted[ms & 31];
    ms >>= 5;
  }
  return id;
}

constexpr char kGpuDtype[] = "bfloat16";

// The memory one rank of the job needs on a GPU (0: not estimated).
int64_t GpuMemoryNeed(const JobRecord& j) {
  if (j.job.memory_estimate().dtype() == kGpuDtype) return j.job.memory_estimate().total_bytes();
  if (j.alt_memory_estimate.dtype() == kGpuDtype) return j.alt_memory_estimate.total_bytes();
  return 0;
}

// Job.memory_estimate for the kind of slot the job is placed on (the two
// estimates swap; what was measured stays).
void EstimateForSlot(JobRecord& j, bool gpu) {
  const std::string want = gpu ? kGpuDtype : "float32";
  if (j.job.memory_estimate().dtype() == want || j.alt_memory_estimate.dtype() != want) return;
  const int64_t measured = j.job.memory_estimate().measured_peak_bytes();
  const int64_t runtime = j.job.memory_estimate().measured_runtime_bytes();
  std::swap(*j.job.mutable_memory_estimate(), j.alt_memory_estimate);
  j.alt_memory_estimate.set_measured_peak_bytes(0);
  j.alt_memory_estimate.set_measured_runtime_bytes(0);
  j.job.mutable_memory_estimate()->set_measured_peak_bytes(measured);
  j.job.mutable_memory_estimate()->set_measured_runtime_bytes(runtime);
}

// Drops the entries of `since` whose job is not in `ids`.
void KeepOnly(std::map<std::string, absl::Time>& since, const std::set<std::string>& ids) {
  for (auto it = since.begin(); it != since.end();)
    it = ids.count(it->first) ? std::next(it) : since.erase(it);
}

std::string GiB(int64_t bytes) {
  return absl::StrFormat("%.1f GiB", static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
}

// The base model a job trains on: Job.base_model itself, or the root base of
// the fine-tuned model it continues.
std::string RootBase(const std::string& base_model) {
  std::optional<FineTunedId> ft = ParseFineTunedId(base_model);
  return ft ? ft->base : base_model;
}

// Whether a deployment's model was fine-tuned with the classification task
// (a job's result or checkpoint; base models are chat decoders).
bool ClassificationModel(const std::map<std::string, JobRecord>& jobs, const std::string& model) {
  std::optional<FineTunedId> ft = ParseFineTunedId(model);
  if (!ft) return false;
  auto j = jobs.find(ft->job);
  return j != jobs.end() && j->second.job.task() == v1::TRAINING_TASK_CLASSIFICATION;
}

// `tenant`'s deployment `id` as a content filter policy sees it.
std::optional<DeploymentInfo> TenantDeployment(const std::map<std::string, DeploymentRecord>& deps,
                                               const std::map<std::string, JobRecord>& jobs,
                                               const std::string& tenant, const std::string& id) {
  auto it = deps.find(id);
  if (it == deps.end() || it->second.tenant != tenant) return std::nullopt;
  const std::string& model = it->second.deployment.model();
  return DeploymentInfo{model, ClassificationModel(jobs, model)};
}

// `tenant`'s other deployments whose content filter names `id` as classifier.
std::vector<std::string> ClassifierDependents(
    const std::map<std::string, DeploymentRecord>& deps, const std::string& tenant,
    const std::string& id) {
  std::vector<std::string> out;
  for (const auto& [dep_id, d] : deps) {
    if (dep_id != id && d.tenant == tenant &&
        d.deployment.content_filter().classifier_deployment() == id)
      out.push_back(dep_id);
  }
  return out;
}

// A base model the catalog does not offer, as a field violation: unknown, or
// a folder whose config.json the model library rejects (the reason).
absl::Status UnknownBase(const absl::Status& got, const char* field, const std::string& id) {
  return errors::FieldError(field, absl::IsFailedPrecondition(got)
                                       ? std::string(got.message())
                                       : absl::StrCat("unknown model '", id, "'"));
}

// A List's label filter follows the same rule as the labels themselves.
absl::Status CheckLabelFilter(const errors::Labels& want) {
  std::vector<errors::FieldViolation> bad;
  errors::CheckLabels(want, "labels", &bad);
  return bad.empty() ? absl::OkStatus() : errors::InvalidFields(bad);
}

absl::StatusOr<int> PageSize(int32_t requested) {
  if (requested < 0) return errors::FieldError("page_size", "must not be negative");
  if (requested == 0) return 20;
  return std::min(requested, 100);
}

absl::StatusOr<int64_t> Offset(const std::string& token) {
  if (token.empty()) return 0;
  int64_t v = 0;
  if (!absl::SimpleAtoi(token, &v) || v < 0)
    return errors::FieldError("page_token", absl::StrCat("'", token, "' is not valid"));
  return v;
}

bool ValidSuffix(const std::string& s) {
  if (s.size() > 40) return false;
  for (char c : s)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return false;
  return true;
}

std::string HostOf(const std::string& address) {
  size_t colon = address.rfind(':');
  std::string host = colon == std::string::npos ? address : address.substr(0, colon);
  if (host.empty() || host == "0.0.0.0" || host == "[::]") return "127.0.0.1";
  return host;
}

}  // namespace

// The writes of one operation: copies of what it changes, committed as one
// Batch and applied to memory only once durable.
class Scheduler::Txn {
 public:
  explicit Txn(Scheduler* s) : s_(s), now_(s->options_.clock->Now()) {}
  absl::Time now() const { return now_; }

  JobRecord& Job(const std::string& id) {
    auto it = jobs_.find(id);
    if (it != jobs_.end()) return it->second;
    return jobs_.emplace(id, s_->jobs_.at(id)).first->second;
  }
  void AddJob(const std::string& id, JobRecord rec) { jobs_[id] = std::move(rec); }
  const std::map<std::string, JobRecord>& jobs() const { return jobs_; }

  // Appends an event to the job (sequence and time assigned here).
  void Event(const std::string& job_id, v1::JobEvent e) {
    JobRecord& j = Job(job_id);
    e.set_sequence(++j.last_event_seq);
    *e.mutable_created_at() = ToTimestamp(now_);
    if (e.level() == v1::JobEvent::LEVEL_UNSPECIFIED) e.set_level(v1::JobEvent::LEVEL_INFO);
    batch_.events.emplace_back(job_id, std::move(e));
    topics_.insert(JobTopic(job_id));
  }

  AssignmentRecord& Assignment(const std::string& id) {
    auto it = assignments_.find(id);
    if (it != assignments_.end()) return it->second;
    return assignments_.emplace(id, s_->assignments_.at(id)).first->second;
  }
  void AddAssignment(AssignmentRecord a) {
    std::string id = a.assignment.assignment_id();
    assignments_[id] = std::move(a);
  }
  void DeleteAssignment(const std::string& id) {
    assignments_.erase(id);
    deleted_assignments_.insert(id);
  }
  // Ids of the job's assignments as this transaction leaves them.
  std::vector<std::string> AssignmentsOf(const std::string& job_id) {
    std::set<std::string> ids;
    for (const auto& [id, a] : s_->assignments_)
      if (a.assignment.job_id() == job_id) ids.insert(id);
    for (const auto& [id, a] : assignments_)
      if (a.assignment.job_id() == job_id) ids.insert(id);
    for (const auto& id : deleted_assignments_) ids.erase(id);
    return {ids.begin(), ids.end()};
  }
  // Every assignment as this transaction leaves it.
  std::map<std::string, AssignmentRecord> AllAssignments() {
    std::map<std::string, AssignmentRecord> all = s_->assignments_;
    for (const auto& [id, a] : assignments_) all[id] = a;
    for (const auto& id : deleted_assignments_) all.erase(id);
    return all;
  }

  DeploymentRecord& Deployment(const std::string& id) {
    auto it = deployments_.find(id);
    if (it != deployments_.end()) return it->second;
    return deployments_.emplace(id, s_->deployments_.at(id)).first->second;
  }
  void AddDeployment(DeploymentRecord d) {
    std::string id = d.deployment.id();
    deployments_[id] = std::move(d);
  }

  Batch& batch() { return batch_; }
  void Release(const std::string& file, const std::string& holder) {
    releases_.emplace_back(file, holder);
  }
  void Publish(const std::string& topic) { topics_.insert(topic); }
  void DesiredChanged() { desired_changed_ = true; }

  absl::Status Commit() {
    for (const auto& [id, j] : jobs_) batch_.jobs.emplace_back(id, j);
    for (const auto& [id, a] : assignments_) batch_.assignments.push_back(a);
    for (const auto& id : deleted_assignments_) batch_.deleted_assignments.push_back(id);
    for (const auto& [id, d] : deployments_) batch_.deployments.push_back(d);
    // Written into the store's open group transaction (a savepoint: a
    // failing batch leaves nothing behind); durable once AfterCommit's Sync
    // returns.
    absl::StatusOr<int64_t> seq = s_->store_->Append(batch_);
    absl::Status s = seq.status();
    if (seq.ok()) seq_ = *seq;
    if (!s.ok()) {
      spdlog::error("scheduler store commit failed: {}", s.ToString());
      releases_.clear();
      topics_.clear();
      return s;
    }
    // Durable: apply to memory.
    for (auto& [id, j] : jobs_) {
      if (!j.request_id.empty()) s_->request_ids_[{j.tenant, j.request_id}] = id;
      s_->jobs_[id] = std::move(j);
    }
    for (auto& [job_id, e] : batch_.events) s_->events_[job_id].push_back(std::move(e));
    for (auto& c : batch_.checkpoints) s_->checkpoints_[c.checkpoint.job_id()].push_back(c);
    for (auto& m : batch_.models) s_->models_[m.model.id()] = m;
    for (auto& id : batch_.deleted_models) s_->models_.erase(id);
    for (auto& [id, a] : assignments_) {
      auto it = s_->assignments_.find(id);
      bool seen = it != s_->assignments_.end() && it->second.seen;
      a.seen = a.seen || seen;
      s_->assignments_[id] = std::move(a);
    }
    for (auto& id : deleted_assignments_) s_->assignments_.erase(id);
    for (auto& [id, d] : deployments_) {
      topics_.insert(DeploymentTopic(id));
      s_->deployments_[id] = std::move(d);
    }
    for (auto& id : batch_.deleted_deployments) {
      topics_.insert(DeploymentTopic(id));
      s_->deployments_.erase(id);
    }
    for (auto& n : batch_.nodes) {
      auto& st = s_->nodes_[n.id];
      st.record = n;
      st.lease_expiry = now_ + s_->options_.lease;
    }
    for (auto& id : batch_.deleted_nodes) s_->nodes_.erase(id);
    for (auto& r : batch_.replicas) s_->replicas_[r.id].record = r;
    for (auto& u : batch_.deployment_usage) {
      auto& list = s_->deployment_usage_[u.deployment_id];
      auto same = std::find_if(list.begin(), list.end(),
                               [&](const DeploymentUsageRecord& x) { return x.id == u.id; });
      if (same != list.end()) *same = u;
      else list.push_back(u);
    }
    for (auto& c : batch_.replica_counters)
      s_->replica_counters_[{c.replica_id, c.deployment_id}] = c.counters;
    if (desired_changed_) {
      ++s_->generation_;
      topics_.insert(kDeploymentsTopic);
    }
    return absl::OkStatus();
  }

  std::vector<std::pair<std::string, std::string>> releases_;
  std::set<std::string> topics_;
  int64_t seq_ = 0;  // the store commit to Sync before acknowledging

 private:
  Scheduler* s_;
  const absl::Time now_;
  std::map<std::string, JobRecord> jobs_;
  std::map<std::string, AssignmentRecord> assignments_;
  std::set<std::string> deleted_assignments_;
  std::map<std::string, DeploymentRecord> deployments_;
  Batch batch_;
  bool desired_changed_ = false;
};

Scheduler::Scheduler(SchedulerOptions options, DatasetClient* dataset,
                     std::unique_ptr<SchedulerStore> store)
    : options_(std::move(options)),
      dataset_(dataset),
      store_(std::move(store)),
      catalog_(options_.models_dir),
      bus_(options_.max_watchers_per_topic) {}

Scheduler::~Scheduler() = default;

absl::StatusOr<std::unique_ptr<Scheduler>> Scheduler::Open(SchedulerOptions options,
                                                           DatasetClient* dataset) {
  TF_ASSIGN_OR_RETURN(auto store, SchedulerStore::Open(options.db_path, options.group_commit));
  std::unique_ptr<Scheduler> s(new Scheduler(std::move(options), dataset, std::move(store)));
  TF_RETURN_IF_ERROR(s->Load());
  return s;
}

absl::Status Scheduler::Load() {
  TF_ASSIGN_OR_RETURN(StoreSnapshot snap, store_->Load());
  absl::MutexLock lock(&mu_);
  const absl::Time now = options_.clock->Now();
  jobs_ = std::move(snap.jobs);
  for (const auto& [id, j] : jobs_) {
    next_queue_seq_ = std::max(next_queue_seq_, j.queue_seq + 1);
    if (!j.request_id.empty()) request_ids_[{j.tenant, j.request_id}] = id;
  }
  events_ = std::move(snap.events);
  for (auto& c : snap.checkpoints) checkpoints_[c.checkpoint.job_id()].push_back(std::move(c));
  for (auto& [job, list] : checkpoints_) {
    std::sort(list.begin(), list.end(), [](const CheckpointRecord& a, const CheckpointRecord& b) {
      return a.checkpoint.step() < b.checkpoint.step();
    });
  }
  for (auto& m : snap.models) models_[m.model.id()] = std::move(m);
  for (auto& d : snap.deployments) deployments_[d.deployment.id()] = std::move(d);
  for (auto& a : snap.assignments) assignments_[a.assignment.assignment_id()] = std::move(a);
  for (const auto& [id, j] : jobs_) {
    if (!j.preempted_for.empty() && j.job.state() == v1::JOB_STATE_RUNNING)
      spdlog::info("job={} is still being preempted for job={}: its ranks are asked to "
                   "checkpoint and stop", id, j.preempted_for);
  }
  // Nodes known before the restart get a fresh lease: an agent that is still
  // there keeps its attempts by heartbeating; one that is gone expires.
  for (auto& n : snap.nodes) nodes_[n.id] = NodeState{n, now + options_.lease};
  for (auto& r : snap.replicas) replicas_[r.id].record = r;
  for (auto& u : snap.deployment_usage) deployment_usage_[u.deployment_id].push_back(std::move(u));
  for (auto& c : snap.replica_counters)
    replica_counters_[{c.replica_id, c.deployment_id}] = c.counters;
  // Deployments made before usage was kept: counted from their creation.
  Batch usage;
  for (const auto& [id, d] : deployments_) {
    bool open = false;
    for (const auto& u : deployment_usage_[id]) open = open || (u.end_us == 0 && u.tenant == d.tenant);
    if (open) continue;
    usage.deployment_usage.push_back(DeploymentUsageRecord{
        NewId("dusage"), id, d.tenant, d.deployment.model(), d.base_artifact,
        d.deployment.replicas(), absl::ToUnixMicros(FromTimestamp(d.deployment.created_at())), 0});
    deployment_usage_[id].push_back(usage.deployment_usage.back());
  }
  if (!usage.empty()) {
    TF_ASSIGN_OR_RETURN(int64_t seq, store_->Commit(usage));
    TF_RETURN_IF_ERROR(store_->Sync(seq));
  }
  // Monotonic across restarts without storing it.
  generation_ = absl::ToUnixMicros(now);
  spdlog::info("scheduler loaded: {} jobs, {} models, {} deployments, {} nodes, {} assignments",
               jobs_.size(), models_.size(), deployments_.size(), nodes_.size(),
               assignments_.size());
  return absl::OkStatus();
}

absl::Status Scheduler::AfterCommit(Txn& t) {
  // Durable first (one fsync shared with concurrent commits), then visible
  // to watchers and acknowledged.
  return AfterDurable(t.releases_, t.topics_,
                      t.seq_ > 0 ? store_->Sync(t.seq_) : absl::OkStatus());
}

absl::Status Scheduler::AfterDurable(
    const std::vector<std::pair<std::string, std::string>>& releases,
    const std::set<std::string>& topics, absl::Status synced) {
  if (!synced.ok()) spdlog::error("scheduler store sync failed: {}", synced.ToString());
  for (const auto& [file, holder] : releases) {
    absl::Status s = dataset_ != nullptr ? dataset_->ReleaseFile(file, holder) : absl::OkStatus();
    if (!s.ok()) spdlog::warn("release of file={} by {} failed: {}", file, holder, s.ToString());
  }
  for (const auto& topic : topics) bus_.Publish(topic);
  return synced;
}

// ---- jobs -----------------------------------------------------------------

absl::StatusOr<JobRecord*> Scheduler::FindJob(const std::string& tenant,
                                              const std::string& job_id) {
  auto it = jobs_.find(job_id);
  if (it == jobs_.end() || it->second.tenant != tenant)
    return absl::NotFoundError(absl::StrCat("job ", job_id, " not found"));
  return &it->second;
}

v1::Job Scheduler::View(const std::string& id, const JobRecord& j, bool with_position) {
  v1::Job job = j.job;
  AddJobCost(id, j, &job);
  if (with_position && job.state() == v1::JOB_STATE_QUEUED) {
    // 1 + the queued jobs ahead in queue order (priority, then fair share
    // between tenants, then age: placement.h).
    std::vector<QueuedJob> queue;
    for (const auto& [qid, q] : jobs_) {
      if (q.job.state() == v1::JOB_STATE_QUEUED)
        queue.push_back(QueuedJob{qid, q.job.priority(), q.queue_seq, q.job.gpus(), q.tenant});
    }
    SortQueue(queue, RunningSlotsLocked(assignments_));
    for (size_t i = 0; i < queue.size(); ++i)
      if (queue[i].id == id) job.set_queue_position(static_cast<int32_t>(i + 1));
  }
  return job;
}

absl::StatusOr<v1::Job> Scheduler::CreateJob(const std::string& tenant,
                                             const v1::CreateJobRequest& req) {
  absl::Notification answered;
  absl::StatusOr<v1::Job> out;
  CreateJob(tenant, req, [&](absl::StatusOr<v1::Job> r) {
    out = std::move(r);
    answered.Notify();
  });
  answered.WaitForNotification();
  return out;
}

void Scheduler::CreateJob(const std::string& tenant, const v1::CreateJobRequest& req,
                          std::function<void(absl::StatusOr<v1::Job>)> done) {
  Txn t(this);
  absl::StatusOr<v1::Job> out = AdmitJob(tenant, req, t);
  auto created = [tenant](const v1::Job& job) {
    spdlog::info("job={} tenant={} created: base={} gpus={} steps={}", job.id(), tenant,
                 job.base_model(), job.gpus(), job.total_steps());
  };
  if (!out.ok() || t.seq_ == 0 || !t.releases_.empty()) {
    // Nothing to wait for (refused, validate_only, a retried request_id), or
    // files to release (blocking calls): answered on this thread.
    absl::Status synced = AfterCommit(t);
    if (out.ok() && !synced.ok()) out = synced;
    if (out.ok() && t.seq_ > 0) created(*out);
    done(std::move(out));
    return;
  }
  // The reply waits for the group commit without holding this thread.
  store_->WhenDurable(t.seq_, [this, topics = std::move(t.topics_), job = *std::move(out),
                               created, done = std::move(done)](absl::Status synced) mutable {
    synced = AfterDurable({}, topics, synced);
    if (!synced.ok()) {
      done(synced);
      return;
    }
    created(job);
    done(std::move(job));
  });
}

absl::StatusOr<v1::Job> Scheduler::AdmitJob(const std::string& tenant,
                                            const v1::CreateJobRequest& req, Txn& t) {
  // 1. The request alone.
  std::vector<errors::FieldViolation> bad;
  if (req.base_model().empty()) bad.push_back({"base_model", "required"});
  if (req.training_file().empty()) bad.push_back({"training_file", "required"});
  if (!req.validation_file().empty() && req.has_validation_split())
    bad.push_back({"validation_split", "give either validation_file or validation_split, not both"});
  if (req.has_validation_split() && !(req.validation_split() > 0 && req.validation_split() <= 0.5))
    bad.push_back({"validation_split", "must be in (0, 0.5]"});
  if (!v1::AdapterType_IsValid(req.adapter())) bad.push_back({"adapter", "unknown value"});
  if (!v1::TrainingTask_IsValid(req.task())) bad.push_back({"task", "unknown value"});
  if (!ValidSuffix(req.suffix())) bad.push_back({"suffix", "up to 40 characters of [a-z0-9-]"});
  if (req.gpus() < 0 || req.gpus() > 64) bad.push_back({"gpus", "must be in [0, 64]"});
  if (req.priority() < -1000 || req.priority() > 1000)
    bad.push_back({"priority", "must be in [-1000, 1000]"});
  if (req.request_id().size() > 128) bad.push_back({"request_id", "at most 128 characters"});
  errors::CheckLabels(errors::ToLabels(req.labels()), "labels", &bad);
  errors::CheckDescription(req.description(), "description", &bad);
  if (!bad.empty()) return errors::InvalidFields(bad);
  // Continuing from a fine-tuned model (a result or a checkpoint): the
  // caller's, LoRA, its root base in the catalog; the job trains on that base
  // starting from the model's adapter, whose rank, alpha and targets it keeps.
  std::string root_base = req.base_model();
  std::string init_artifact;
  v1::Hyperparameters given = req.hyperparameters();
  if (absl::StartsWith(req.base_model(), "ft:")) {
    FineTuned from;
    {
      absl::MutexLock lock(&mu_);
      TF_ASSIGN_OR_RETURN(from, FindFineTuned(tenant, req.base_model()));
    }
    if (!from.lora) {
      return errors::FieldError("base_model", absl::StrCat("model ", req.base_model(),
          " was fully fine-tuned (merged weights); only a LoRA model can be continued"));
    }
    if (options_.artifacts_dir.empty()) {
      return absl::FailedPreconditionError(
          "this scheduler has no artifact directory (--artifacts_dir) to read adapters from");
    }
    absl::StatusOr<AdapterConfig> adapter =
        ReadAdapterConfig(absl::StrCat(options_.artifacts_dir, "/", from.artifact));
    if (!adapter.ok()) {
      spdlog::error("model={} {}", req.base_model(), adapter.status().ToString());
      return absl::DataLossError(absl::StrCat("the files of model ", req.base_model(),
                                              " are missing from the artifact store"));
    }
    std::vector<errors::FieldViolation> mismatch;
    ContinueFromAdapter(*adapter, req.adapter(), &given, &mismatch);
    if (!mismatch.empty()) return errors::InvalidFields(mismatch);
    root_base = from.base;
    init_artifact = from.artifact;
  }
  absl::StatusOr<BaseModel> model = catalog_.Get(root_base);
  if (!model.ok()) {
    if (root_base == req.base_model()) return UnknownBase(model.status(), "base_model", root_base);
    return errors::FieldError(
        "base_model", absl::StrCat("model ", req.base_model(), " was fine-tuned from '",
                                   root_base, "', which is not in the model catalog"));
  }
  const int gpus = std::max(1, req.gpus());
  {
    absl::MutexLock lock(&mu_);
    if (!req.request_id().empty()) {
      auto it = request_ids_.find({tenant, req.request_id()});
      if (it != request_ids_.end()) return View(it->second, jobs_.at(it->second));
    }
    TF_RETURN_IF_ERROR(CheckQuota(tenant, gpus, 0));
    if (std::string why = SlotShortfallLocked(gpus); !why.empty())
      return errors::FieldError("gpus", why);
  }
  // 2. The method, then the files as the dataset service sees them for this
  // tenant (their format must be the one the method trains on).
  const bool chat = req.task() != v1::TRAINING_TASK_CLASSIFICATION;
  TF_ASSIGN_OR_RETURN(const v1::Method method, ResolveMethod(req.method(), req.task()));
  auto check_file = [&](const DatasetFile& f, const char* field, bool training) -> absl::Status {
    if (f.status != v1::FILE_STATUS_PROCESSED) {
      return errors::FieldError(field, absl::StrCat("file ", f.id, " is not processed (",
          f.status == v1::FILE_STATUS_ERROR ? "validation failed: " + f.status_details
                                            : v1::FileStatus_Name(f.status),
          ")"));
    }
    if (training && f.purpose != v1::FILE_PURPOSE_FINE_TUNE) {
      return errors::FieldError(
          field, absl::StrCat("file ", f.id, " has purpose ", v1::FilePurpose_Name(f.purpose),
                       ", not fine-tune"));
    }
    const v1::DataFormat need = NeededFormat(method, req.task());
    if (f.format != v1::DATA_FORMAT_UNSPECIFIED && f.format != need) {
      return errors::FieldError(
          field, absl::StrCat("file ", f.id, " is ", v1::DataFormat_Name(f.format), "; method ",
                              MethodName(method), " with the ", chat ? "chat" : "classification",
                              " task needs ", v1::DataFormat_Name(need)));
    }
    return absl::OkStatus();
  };
  if (dataset_ == nullptr) return absl::FailedPreconditionError("no dataset service configured");
  TF_ASSIGN_OR_RETURN(DatasetFile train, dataset_->GetFile(tenant, req.training_file()));
  TF_RETURN_IF_ERROR(check_file(train, "training_file", true));
  DatasetFile valid;
  bool has_valid = false;
  if (!req.validation_file().empty()) {
    TF_ASSIGN_OR_RETURN(valid, dataset_->GetFile(tenant, req.validation_file()));
    TF_RETURN_IF_ERROR(check_file(valid, "validation_file", false));
    has_valid = true;
  }
  const std::string job_id = NewJobId(options_.clock->Now());
  // 3. Hyperparameters: checked and resolved before anything is split or held.
  int64_t examples = train.examples;
  if (req.has_validation_split()) {
    examples = std::max<int64_t>(1, examples - static_cast<int64_t>(examples * req.validation_split()));
  }
  JobShape shape;
  shape.adapter = req.adapter();
  shape.task = chat ? v1::TRAINING_TASK_CHAT : v1::TRAINING_TASK_CLASSIFICATION;
  shape.dpo = method.has_dpo();
  shape.gpus = gpus;
  shape.examples = examples;
  shape.has_validation = has_valid || req.has_validation_split();
  TF_ASSIGN_OR_RETURN(ResolvedJob resolved,
                      ResolveHyperparameters(given, shape, *model, job_id));
  v1::Job job;
  job.set_base_model(req.base_model());
  job.set_training_file(train.id);
  job.set_validation_file(has_valid ? valid.id : "");
  job.set_adapter(req.adapter() == v1::ADAPTER_TYPE_UNSPECIFIED ? v1::ADAPTER_TYPE_LORA
                                                                : req.adapter());
  job.set_task(chat ? v1::TRAINING_TASK_CHAT : v1::TRAINING_TASK_CLASSIFICATION);
  *job.mutable_hyperparameters() = resolved.hyperparameters;
  job.set_suffix(req.suffix());
  job.set_gpus(gpus);
  job.set_priority(req.priority());
  job.set_total_steps(resolved.total_steps);
  *job.mutable_method() = method;
  job.set_write_merged(req.write_merged());
  *job.mutable_labels() = req.labels();
  job.set_description(req.description());
  // A file uploaded without a base model has no token statistics: count its
  // tokens now with this base's tokenizer, so that the memory estimate bounds
  // attention by the longest example (not max_sequence_length) and the cost
  // estimate counts trained tokens (not bytes / 4). Without a count (the
  // dataset service has no tokenizer for the base, or the pass timed out) the
  // estimates stay on those upper bounds and the job's first event says so.
  std::string uncounted;
  if (train.longest_example <= 0) {
    absl::StatusOr<TokenCounts> counts =
        dataset_->CountTokens(tenant, train.id, root_base, options_.token_count_timeout);
    if (counts.ok()) {
      train.trained_tokens = counts->trained_tokens;
      train.longest_example = counts->longest_example;
    } else {
      uncounted = std::string(counts.status().message());
      spdlog::warn("job={} tokens of {} not counted with {}: {}", job_id, train.id, root_base,
                   counts.status().ToString());
    }
  }
  // The estimate for each kind of slot; the job shows the fleet's (GPUs
  // when any node registered some) until it is placed.
  const int64_t num_labels = chat ? 0 : std::max<int64_t>(2, train.labels);
  v1::MemoryEstimate gpu_estimate =
      EstimateJobMemory(*model, job.adapter(), method, resolved.hyperparameters, num_labels,
                        model::TrainingPrecision::kBf16Autocast, train.longest_example);
  v1::MemoryEstimate cpu_estimate =
      EstimateJobMemory(*model, job.adapter(), method, resolved.hyperparameters, num_labels,
                        model::TrainingPrecision::kFp32, train.longest_example);
  v1::MemoryEstimate alt_estimate;
  {
    absl::MutexLock lock(&mu_);
    const std::string why = MemoryShortfallLocked(gpus, gpu_estimate.total_bytes());
    if (!why.empty()) {
      return errors::WithPreconditionViolation(absl::FailedPreconditionError(why), "MEMORY",
                                               "memory_estimate", why);
    }
    const bool gpu_fleet = FleetHasGpusLocked();
    *job.mutable_memory_estimate() = gpu_fleet ? gpu_estimate : cpu_estimate;
    alt_estimate = gpu_fleet ? cpu_estimate : gpu_estimate;
  }
  // The trained-token estimate: the file's per-epoch count of trained tokens
  // (or, when the dataset service counted none — it counts with a base
  // model's tokenizer only — its bytes / 4, an over-estimate for chat JSON),
  // scaled to the examples the planned steps go through.
  int64_t estimated_tokens = 0;
  const int64_t per_epoch = train.trained_tokens > 0 ? train.trained_tokens : train.bytes / 4;
  if (per_epoch > 0 && train.examples > 0) {
    const double per_example =
        static_cast<double>(per_epoch) / static_cast<double>(train.examples);
    estimated_tokens = static_cast<int64_t>(per_example * static_cast<double>(
        resolved.total_steps * resolved.hyperparameters.batch_size()));
  }
  job.set_estimated_trained_tokens(estimated_tokens);
  if (const Price* price = options_.prices.Find(root_base)) {
    job.set_estimated_cost(JobCost(*price, estimated_tokens, 0));
    job.set_currency(price->currency);
  }
  job.set_trained_tokens(0);
  job.set_state(v1::JOB_STATE_VALIDATING_FILES);
  if (req.validate_only()) {
    job.set_state(v1::JOB_STATE_UNSPECIFIED);
    return job;
  }
  {
    absl::MutexLock lock(&mu_);  // before anything is split or held
    TF_RETURN_IF_ERROR(CheckQuota(tenant, gpus, estimated_tokens));
  }
  // 4. Split, hold the files, then admit.
  if (req.has_validation_split()) {
    TF_ASSIGN_OR_RETURN(auto parts, dataset_->SplitFile(tenant, train.id, req.validation_split(),
                                                        resolved.hyperparameters.seed()));
    job.set_training_file(parts.first.id);
    job.set_validation_file(parts.second.id);
  }
  std::vector<std::string> held;
  for (const std::string& f : {job.training_file(), job.validation_file()}) {
    if (f.empty()) continue;
    absl::Status s = dataset_->HoldFile(tenant, f, job_id);
    if (!s.ok()) {
      for (const auto& h : held) (void)dataset_->ReleaseFile(h, job_id);
      return s;
    }
    held.push_back(f);
  }
  job.set_id(job_id);
  v1::Job out;
  absl::Status status;
  {
    absl::MutexLock lock(&mu_);
    if (!req.request_id().empty()) {
      auto it = request_ids_.find({tenant, req.request_id()});
      if (it != request_ids_.end()) out = View(it->second, jobs_.at(it->second));
    }
    if (out.id().empty()) status = CheckQuota(tenant, gpus, estimated_tokens);
    if (!out.id().empty() || !status.ok()) {
      // A concurrent retry won the race (or the quota filled): undo the holds.
      for (const auto& h : held) t.Release(h, job_id);
    } else {
      *job.mutable_created_at() = ToTimestamp(t.now());
      *job.mutable_update_time() = job.created_at();
      JobRecord rec;
      rec.tenant = tenant;
      rec.request_id = req.request_id();
      rec.queue_seq = next_queue_seq_++;
      rec.held_files = held;
      rec.init_artifact = init_artifact;
      rec.estimated_tokens = estimated_tokens;
      rec.alt_memory_estimate = alt_estimate;
      rec.job = job;
      t.AddJob(job_id, std::move(rec));
      v1::JobEvent created;
      created.set_state(v1::JOB_STATE_VALIDATING_FILES);
      created.set_message(absl::StrCat(
          "job created: ", examples, " training examples, ", resolved.total_steps,
          " steps planned",
          uncounted.empty() ? ""
                            : absl::StrCat("; tokens not counted (", uncounted,
                                           "): the estimates assume examples of the maximum "
                                           "length and bytes / 4 trained tokens")));
      t.Event(job_id, created);
      status = Transition(t, job_id, JobTrigger::kFilesValidated, "files validated; queued");
      if (status.ok()) status = t.Commit();
      if (status.ok()) {
        out = View(job_id, jobs_.at(job_id));
      } else {
        for (const auto& h : held) t.Release(h, job_id);
      }
    }
  }
  if (!status.ok()) return status;
  return out;
}

bool Scheduler::FleetHasGpusLocked() const {
  for (const auto& [id, n] : nodes_)
    if (n.record.gpus > 0) return true;
  return false;
}

std::string Scheduler::SlotShortfallLocked(int gpus) const {
  int64_t cpu = 0, gpu = 0;
  for (const auto& [id, n] : nodes_) (n.record.gpus > 0 ? gpu : cpu) += n.record.slots;
  if (nodes_.empty() || gpus <= std::max(cpu, gpu)) return "";
  if (cpu == 0 || gpu == 0)
    return absl::StrCat("the job needs ", gpus, " slots and the registered fleet has ", cpu + gpu);
  return absl::StrCat("the job needs ", gpus, " slots of one kind and the registered fleet has ",
                      gpu, " GPUs and ", cpu, " CPU slots (a job's ranks are all GPUs or all CPU "
                      "slots)");
}

std::string Scheduler::MemoryShortfallLocked(int gpus, int64_t need) const {
  if (need <= 0) return "";
  int64_t cpu = 0, gpu = 0, holding = 0, largest = 0;
  for (const auto& [id, n] : nodes_) {
    if (n.record.gpus == 0) {
      cpu += n.record.slots;
      continue;
    }
    gpu += n.record.slots;
    if (n.record.slot_memory_bytes == 0 || n.record.slot_memory_bytes >= need)
      holding += n.record.slots;
    largest = std::max(largest, n.record.slot_memory_bytes);
  }
  if (largest == 0 || holding >= gpus || cpu >= gpus || gpu < gpus) return "";
  return absl::StrCat(
      "the job needs ", GiB(need), " of GPU memory per rank (memory_estimate in bf16) and ",
      holding == 0 ? std::string("no registered GPU holds it")
                   : absl::StrCat("only ", holding, " registered GPUs hold it, of the ", gpus,
                                  " it needs"),
      " (the largest has ", GiB(largest),
      "); gradient_checkpointing, a smaller micro_batch_size or max_sequence_length, or a LoRA "
      "adapter needs less");
}

absl::Status Scheduler::CheckQuota(const std::string& tenant, int gpus, int64_t tokens) {
  if (options_.max_trained_tokens_per_tenant > 0) {
    const int64_t limit = options_.max_trained_tokens_per_tenant;
    const absl::Time since = options_.clock->Now() - options_.trained_tokens_period;
    int64_t used = 0;
    for (const auto& [id, j] : jobs_) {
      if (j.tenant != tenant) continue;
      const v1::JobState s = j.job.state();
      if (s == v1::JOB_STATE_SUCCEEDED) {
        if (FromTimestamp(j.job.finished_at()) >= since) used += j.job.trained_tokens();
      } else if (!IsTerminal(s)) {
        used += std::max(j.estimated_tokens, j.job.trained_tokens());
      }
    }
    if (tokens > 0 && used + tokens > limit) {
      const std::string period = absl::FormatDuration(options_.trained_tokens_period);
      return errors::WithQuotaViolation(
          errors::WithReason(
              absl::ResourceExhaustedError(absl::StrCat(
                  "quota max_trained_tokens_per_tenant: ", tenant, " has used or committed ",
                  used, " trained tokens in the last ", period, " and this job is estimated at ",
                  tokens, " (limit ", limit, ")")),
              "QUOTA_EXCEEDED", {{"quota", "max_trained_tokens_per_tenant"}}),
          absl::StrCat("tenant:", tenant, "/max_trained_tokens_per_tenant"),
          absl::StrCat(used, " used + ", tokens, " estimated > ", limit, " per ", period));
    }
  }
  if (options_.max_active_jobs_per_tenant <= 0 && options_.max_gpus_per_tenant <= 0)
    return absl::OkStatus();
  int active = 0;
  int used = 0;
  for (const auto& [id, j] : jobs_) {
    if (j.tenant != tenant || IsTerminal(j.job.state())) continue;
    ++active;
    used += std::max(1, j.job.gpus());
  }
  if (options_.max_active_jobs_per_tenant > 0 && active >= options_.max_active_jobs_per_tenant) {
    return errors::WithQuotaViolation(
        errors::WithReason(absl::ResourceExhaustedError(absl::StrCat(
                               "quota max_active_jobs_per_tenant: ", tenant, " has ", active,
                               " unfinished jobs (limit ", options_.max_active_jobs_per_tenant,
                               ")")),
                           "QUOTA_EXCEEDED", {{"quota", "max_active_jobs_per_tenant"}}),
        absl::StrCat("tenant:", tenant, "/max_active_jobs_per_tenant"),
        absl::StrCat(active, " of ", options_.max_active_jobs_per_tenant, " unfinished jobs"));
  }
  if (options_.max_gpus_per_tenant > 0 && used + gpus > options_.max_gpus_per_tenant) {
    return errors::WithQuotaViolation(
        errors::WithReason(
            absl::ResourceExhaustedError(absl::StrCat(
                "quota max_gpus_per_tenant: ", tenant, " has ", used,
                " GPUs in unfinished jobs and asks ", gpus, " more (limit ",
                options_.max_gpus_per_tenant, ")")),
            "QUOTA_EXCEEDED", {{"quota", "max_gpus_per_tenant"}}),
        absl::StrCat("tenant:", tenant, "/max_gpus_per_tenant"),
        absl::StrCat(used, " in use + ", gpus, " asked > ", options_.max_gpus_per_tenant));
  }
  return absl::OkStatus();
}

absl::Status Scheduler::Transition(Txn& t, const std::string& job_id, JobTrigger trigger,
                                   const std::string& message, const v1::Error* error) {
  JobRecord& j = t.Job(job_id);
  absl::StatusOr<v1::JobState> next = Apply(j.job.state(), trigger);
  if (!next.ok()) {
    // The state table's reason and metadata stay; the job is named.
    absl::Status status = next.status();
    absl::Status named = absl::FailedPreconditionError(
        absl::StrCat("job ", job_id, ": ", next.status().message()));
    status.ForEachPayload(
        [&](absl::string_view url, const absl::Cord& v) { named.SetPayload(url, v); });
    return errors::WithPreconditionViolation(named, "JOB_STATE", job_id,
                                             std::string(next.status().message()));
  }
  j.job.set_state(*next);
  *j.job.mutable_update_time() = ToTimestamp(t.now());
  if (*next != v1::JOB_STATE_RUNNING) j.preempted_for.clear();
  if (*next == v1::JOB_STATE_RUNNING && !j.job.has_started_at())
    *j.job.mutable_started_at() = ToTimestamp(t.now());
  if (error != nullptr) *j.job.mutable_error() = *error;
  v1::JobEvent e;
  e.set_state(*next);
  e.set_message(message);
  if (*next == v1::JOB_STATE_FAILED) e.set_level(v1::JobEvent::LEVEL_ERROR);
  t.Event(job_id, e);
  if (IsTerminal(*next)) {
    *j.job.mutable_finished_at() = ToTimestamp(t.now());
    j.job.clear_estimated_finish();
    for (const auto& f : j.held_files) t.Release(f, job_id);
    j.held_files.clear();
    for (const auto& id : t.AssignmentsOf(job_id)) t.DeleteAssignment(id);
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::Job> Scheduler::GetJob(const std::string& tenant, const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  TF_ASSIGN_OR_RETURN(JobRecord * j, FindJob(tenant, job_id));
  return View(job_id, *j, /*with_position=*/true);
}

absl::StatusOr<v1::ListJobsResponse> Scheduler::ListJobs(const std::string& tenant,
                                                         const v1::ListJobsRequest& req) {
  TF_ASSIGN_OR_RETURN(int page, PageSize(req.page_size()));
  int64_t before = std::numeric_limits<int64_t>::max();
  if (!req.page_token().empty()) {
    if (!absl::SimpleAtoi(req.page_token(), &before) || before <= 0)
      return errors::FieldError(
          "page_token", absl::StrCat("'", req.page_token(), "' is not valid"));
  }
  std::set<int> states(req.states().begin(), req.states().end());
  const errors::Labels want = errors::ToLabels(req.labels());
  TF_RETURN_IF_ERROR(CheckLabelFilter(want));
  absl::MutexLock lock(&mu_);
  std::vector<std::pair<int64_t, std::string>> mine;  // newest first
  for (const auto& [id, j] : jobs_) {
    if (j.tenant != tenant || j.queue_seq >= before) continue;
    if (!states.empty() && !states.count(j.job.state())) continue;
    if (!errors::LabelsMatch(errors::ToLabels(j.job.labels()), want)) continue;
    mine.emplace_back(j.queue_seq, id);
  }
  std::sort(mine.rbegin(), mine.rend());
  v1::ListJobsResponse resp;
  for (size_t i = 0; i < mine.size() && static_cast<int>(i) < page; ++i)
    *resp.add_jobs() = View(mine[i].second, jobs_.at(mine[i].second), /*with_position=*/true);
  if (static_cast<int>(mine.size()) > page) resp.set_next_page_token(absl::StrCat(mine[page - 1].first));
  return resp;
}

void Scheduler::StopAssignmentsOf(Txn& t, const std::string& job_id) {
  for (const auto& id : t.AssignmentsOf(job_id)) t.Assignment(id).stopping = true;
}

absl::StatusOr<v1::Job> Scheduler::CancelJob(const std::string& tenant, const std::string& job_id) {
  Txn t(this);
  v1::Job out;
  {
    absl::MutexLock lock(&mu_);
    TF_RETURN_IF_ERROR(FindJob(tenant, job_id).status());
    TF_RETURN_IF_ERROR(Transition(t, job_id, JobTrigger::kCancel, "cancelled by the caller"));
    if (t.Job(job_id).job.state() == v1::JOB_STATE_CANCELLING) StopAssignmentsOf(t, job_id);
    TF_RETURN_IF_ERROR(t.Commit());
    out = View(job_id, jobs_.at(job_id));
  }
  TF_RETURN_IF_ERROR(AfterCommit(t));
  spdlog::info("job={} cancel: now {}", job_id, std::string(StateName(out.state())));
  return out;
}

absl::StatusOr<v1::Job> Scheduler::PauseJob(const std::string& tenant, const std::string& job_id) {
  Txn t(this);
  v1::Job out;
  {
    absl::MutexLock lock(&mu_);
    TF_RETURN_IF_ERROR(FindJob(tenant, job_id).status());
    TF_RETURN_IF_ERROR(Transition(t, job_id, JobTrigger::kPause, "pause asked by the caller"));
    TF_RETURN_IF_ERROR(t.Commit());
    out = View(job_id, jobs_.at(job_id));
  }
  TF_RETURN_IF_ERROR(AfterCommit(t));
  return out;
}

absl::StatusOr<v1::Job> Scheduler::ResumeJob(const std::string& tenant, const std::string& job_id) {
  Txn t(this);
  v1::Job out;
  {
    absl::MutexLock lock(&mu_);
    TF_ASSIGN_OR_RETURN(JobRecord * j, FindJob(tenant, job_id));
    std::string from = j->resume_artifact.empty() ? "the start" : j->resume_artifact;
    TF_RETURN_IF_ERROR(
        Transition(t, job_id, JobTrigger::kResume, absl::StrCat("resumed; will continue from ", from)));
    TF_RETURN_IF_ERROR(t.Commit());
    out = View(job_id, jobs_.at(job_id));
  }
  TF_RETURN_IF_ERROR(AfterCommit(t));
  return out;
}

absl::StatusOr<std::vector<v1::JobEvent>> Scheduler::JobEvents(const std::string& tenant,
                                                               const std::string& job_id,
                                                               int64_t after, int limit,
                                                               bool* finished) {
  absl::MutexLock lock(&mu_);
  TF_ASSIGN_OR_RETURN(JobRecord * j, FindJob(tenant, job_id));
  std::vector<v1::JobEvent> out;
  const auto& list = events_[job_id];
  // Sequences are 1..n in order.
  for (size_t i = static_cast<size_t>(std::max<int64_t>(0, after));
       i < list.size() && static_cast<int>(out.size()) < limit; ++i)
    out.push_back(list[i]);
  int64_t last = out.empty() ? after : out.back().sequence();
  if (finished != nullptr)
    *finished = IsTerminal(j->job.state()) && last >= static_cast<int64_t>(list.size());
  return out;
}

absl::StatusOr<v1::ListJobEventsResponse> Scheduler::ListJobEvents(
    const std::string& tenant, const v1::ListJobEventsRequest& req) {
  if (req.page_size() < 0) return errors::FieldError("page_size", "must not be negative");
  const int page = req.page_size() == 0 ? 100 : std::min(req.page_size(), 1000);
  // The token is the sequence of the last event already returned.
  int64_t after = 0;
  if (!req.page_token().empty() && (!absl::SimpleAtoi(req.page_token(), &after) || after < 0))
    return errors::FieldError("page_token", absl::StrCat("'", req.page_token(), "' is not valid"));
  {
    absl::MutexLock lock(&mu_);
    TF_RETURN_IF_ERROR(FindJob(tenant, req.job_id()).status());
    auto it = events_.find(req.job_id());
    const int64_t n = it == events_.end() ? 0 : static_cast<int64_t>(it->second.size());
    if (after > n) {
      return errors::FieldError(
          "page_token", absl::StrCat("'", req.page_token(), "' is past the last event of job ",
                                     req.job_id(), " (", n, ")"));
    }
  }
  bool finished = false;
  TF_ASSIGN_OR_RETURN(std::vector<v1::JobEvent> events,
                      JobEvents(tenant, req.job_id(), after, page, &finished));
  v1::ListJobEventsResponse resp;
  // A job still going keeps a token even on an empty page, to poll with.
  if (!finished)
    resp.set_next_page_token(absl::StrCat(events.empty() ? after : events.back().sequence()));
  for (auto& e : events) *resp.add_events() = std::move(e);
  return resp;
}

absl::StatusOr<v1::JobMetrics> Scheduler::GetJobMetrics(const std::string& tenant,
                                                        const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  TF_RETURN_IF_ERROR(FindJob(tenant, job_id).status());
  v1::JobMetrics out;
  auto it = events_.find(job_id);
  if (it == events_.end()) return out;
  for (const auto& e : it->second)
    if (e.payload_case() == v1::JobEvent::kMetrics) *out.add_steps() = e.metrics();
  return out;
}

absl::StatusOr<v1::ListCheckpointsResponse> Scheduler::ListCheckpoints(
    const std::string& tenant, const v1::ListCheckpointsRequest& req) {
  TF_ASSIGN_OR_RETURN(int page, PageSize(req.page_size()));
  TF_ASSIGN_OR_RETURN(int64_t offset, Offset(req.page_token()));
  absl::MutexLock lock(&mu_);
  TF_RETURN_IF_ERROR(FindJob(tenant, req.job_id()).status());
  const auto& list = checkpoints_[req.job_id()];
  v1::ListCheckpointsResponse resp;
  // Newest first.
  int64_t n = static_cast<int64_t>(list.size());
  const v1::Job& job = jobs_.at(req.job_id()).job;
  const bool lora = job.adapter() != v1::ADAPTER_TYPE_FULL;
  for (int64_t i = offset; i < n && i < offset + page; ++i) {
    v1::Checkpoint* c = resp.add_checkpoints();
    *c = list[n - 1 - i].checkpoint;
    // A LoRA checkpoint's adapter deploys (and downloads) as a model.
    if (lora) {
      c->set_model(CheckpointModelId(RootBase(job.base_model()), job.suffix(), req.job_id(),
                                     c->step()));
    }
  }
  if (offset + page < n) resp.set_next_page_token(absl::StrCat(offset + page));
  return resp;
}

// ---- models ---------------------------------------------------------------

v1::Model Scheduler::BaseModelView(const BaseModel& m) {
  v1::Model out;
  out.set_id(m.id);
  out.set_kind(v1::MODEL_KIND_BASE);
  out.set_family(m.family);
  out.set_parameters(m.parameters);
  out.set_max_sequence_length(m.max_sequence_length);
  out.set_format("hf");
  out.set_format_type(v1::MODEL_FORMAT_HF);
  *out.mutable_capabilities() = CapabilitiesOf(m);
  return out;
}

v1::Model Scheduler::ModelView(const ModelRecord& m) {
  v1::Model out = m.model;
  if (out.format_type() == v1::MODEL_FORMAT_UNSPECIFIED)  // recorded before format_type
    out.set_format_type(out.format() == "merged" ? v1::MODEL_FORMAT_MERGED : v1::MODEL_FORMAT_LORA);
  out.clear_deployments();
  for (const auto& [id, d] : deployments_)
    if (d.deployment.model() == out.id() && d.tenant == m.tenant) out.add_deployments(id);
  return out;
}

absl::StatusOr<v1::ListModelsResponse> Scheduler::ListModels(const std::string& tenant,
                                                             const v1::ListModelsRequest& req) {
  TF_ASSIGN_OR_RETURN(int page, PageSize(req.page_size()));
  TF_ASSIGN_OR_RETURN(int64_t offset, Offset(req.page_token()));
  const errors::Labels want = errors::ToLabels(req.labels());
  TF_RETURN_IF_ERROR(CheckLabelFilter(want));
  std::vector<BaseModel> bases = catalog_.List();
  absl::MutexLock lock(&mu_);
  std::vector<v1::Model> all;
  // Base models carry no labels: a label filter leaves them out.
  if (req.kind() != v1::MODEL_KIND_FINE_TUNED && want.empty())
    for (const auto& b : bases) all.push_back(BaseModelView(b));
  if (req.kind() != v1::MODEL_KIND_BASE)
    for (const auto& [id, m] : models_)
      if (m.tenant == tenant && errors::LabelsMatch(errors::ToLabels(m.model.labels()), want))
        all.push_back(ModelView(m));
  v1::ListModelsResponse resp;
  int64_t n = static_cast<int64_t>(all.size());
  for (int64_t i = offset; i < n && i < offset + page; ++i) *resp.add_models() = all[i];
  if (offset + page < n) resp.set_next_page_token(absl::StrCat(offset + page));
  return resp;
}

absl::StatusOr<v1::Model> Scheduler::GetModel(const std::string& tenant,
                                              const std::string& model_id) {
  if (!absl::StartsWith(model_id, "ft:")) {
    TF_ASSIGN_OR_RETURN(BaseModel b, catalog_.Get(model_id));
    absl::MutexLock lock(&mu_);
    return BaseModelView(b);
  }
  absl::MutexLock lock(&mu_);
  TF_ASSIGN_OR_RETURN(FineTuned m, FindFineTuned(tenant, model_id));
  return m.model;
}

absl::StatusOr<Scheduler::FineTuned> Scheduler::FindFineTuned(const std::string& tenant,
                                                              const std::string& id) {
  const absl::Status not_found = absl::NotFoundError(absl::StrCat("model ", id, " not found"));
  std::optional<FineTunedId> parsed = ParseFineTunedId(id);
  if (!parsed) return not_found;
  FineTuned out;
  if (parsed->checkpoint_step < 0) {
    auto it = models_.find(id);
    if (it == models_.end() || it->second.tenant != tenant) return not_found;
    out.artifact = it->second.artifact;
    out.base = it->second.model.base_model();
    out.model = ModelView(it->second);
    out.lora = out.model.format_type() == v1::MODEL_FORMAT_LORA;
    return out;
  }
  // A checkpoint: of the caller's LoRA job, under exactly the id it lists.
  auto j = jobs_.find(parsed->job);
  if (j == jobs_.end() || j->second.tenant != tenant ||
      j->second.job.adapter() == v1::ADAPTER_TYPE_FULL)
    return not_found;
  const v1::Job& job = j->second.job;
  const std::string root = RootBase(job.base_model());
  if (CheckpointModelId(root, job.suffix(), parsed->job, parsed->checkpoint_step) != id)
    return not_found;
  auto c = checkpoints_.find(parsed->job);
  if (c == checkpoints_.end()) return not_found;
  const CheckpointRecord* found = nullptr;
  for (const CheckpointRecord& r : c->second)  // the latest at that step (a resumed run repeats)
    if (r.checkpoint.step() == parsed->checkpoint_step) found = &r;
  if (found == nullptr) return not_found;
  out.artifact = CheckpointAdapterArtifact(found->artifact);
  out.base = root;
  out.checkpoint = true;
  v1::Model& m = out.model;
  m.set_id(id);
  m.set_kind(v1::MODEL_KIND_FINE_TUNED);
  m.set_base_model(root);
  m.set_job_id(parsed->job);
  absl::StatusOr<BaseModel> base = catalog_.Get(root);
  if (base.ok()) {
    m.set_family(base->family);
    m.set_parameters(base->parameters);
    m.set_max_sequence_length(base->max_sequence_length);
  }
  m.set_format("lora");
  m.set_format_type(v1::MODEL_FORMAT_LORA);
  *m.mutable_created_at() = found->checkpoint.created_at();
  *m.mutable_labels() = job.labels();
  m.set_description(absl::StrCat("checkpoint at step ", parsed->checkpoint_step, " of ",
                                 parsed->job));
  for (const auto& [dep_id, d] : deployments_)
    if (d.deployment.model() == id && d.tenant == tenant) m.add_deployments(dep_id);
  return out;
}

absl::StatusOr<v1::DeleteModelResponse> Scheduler::DeleteModel(const std::string& tenant,
                                                               const std::string& model_id) {
  if (!absl::StartsWith(model_id, "ft:")) {
    TF_RETURN_IF_ERROR(catalog_.Get(model_id).status());
    return absl::PermissionDeniedError(
        absl::StrCat("model ", model_id, " is a base model and cannot be deleted through the API"));
  }
  Txn t(this);
  {
    absl::MutexLock lock(&mu_);
    TF_ASSIGN_OR_RETURN(FineTuned found, FindFineTuned(tenant, model_id));
    if (found.checkpoint) {
      return absl::FailedPreconditionError(absl::StrCat(
          "model ", model_id, " is a checkpoint of job ", found.model.job_id(),
          ": checkpoint models go with their job's checkpoints and cannot be deleted"));
    }
    for (const auto& [id, d] : deployments_) {
      if (d.deployment.model() == model_id) {
        return errors::WithPreconditionViolation(
            errors::WithReason(absl::FailedPreconditionError(absl::StrCat(
                                   "model ", model_id, " is deployed by ", id,
                                   "; delete the deployment first")),
                               "MODEL_DEPLOYED", {{"model_id", model_id}}),
            "DEPLOYED", id, "a deployment serves this model");
      }
    }
    t.batch().deleted_models.push_back(model_id);
    TF_RETURN_IF_ERROR(t.Commit());
  }
  TF_RETURN_IF_ERROR(AfterCommit(t));
  v1::DeleteModelResponse resp;
  resp.set_model_id(model_id);
  resp.set_deleted(true);
  return resp;
}

void Scheduler::RegisterResult(Txn& t, const std::string& job_id, const std::string& artifact) {
  JobRecord& j = t.Job(job_id);
  ModelRecord m;
  m.tenant = j.tenant;
  m.artifact = artifact;
  const std::string root = RootBase(j.job.base_model());
  std::string id = FineTunedModelId(root, j.job.suffix(), job_id);
  m.model.set_id(id);
  m.model.set_kind(v1::MODEL_KIND_FINE_TUNED);
  m.model.set_base_model(root);
  m.model.set_job_id(job_id);
  absl::StatusOr<BaseModel> base = catalog_.Get(root);
  if (base.ok()) {
    m.model.set_family(base->family);
    m.model.set_parameters(base->parameters);
    m.model.set_max_sequence_length(base->max_sequence_length);
  }
  const bool full = j.job.adapter() == v1::ADAPTER_TYPE_FULL;
  m.model.set_format(full ? "merged" : "lora");
  m.model.set_format_type(full ? v1::MODEL_FORMAT_MERGED : v1::MODEL_FORMAT_LORA);
  *m.model.mutable_created_at() = ToTimestamp(t.now());
  *m.model.mutable_labels() = j.job.labels();
  m.model.set_description(j.job.description());
  t.batch().models.push_back(m);
  j.job.set_result_model(id);
}

// ---- deployments ----------------------------------------------------------

absl::StatusOr<v1::Deployment> Scheduler::CreateDeployment(const std::string& tenant,
                                                           const v1::CreateDeploymentRequest& req) {
  if (req.model().empty()) return errors::FieldError("model", "required");
  if (req.replicas() < 0 || req.replicas() > 64)
    return errors::FieldError("replicas", "must be in [0, 64]");
  if (!req.deployment_id().empty())
    TF_RETURN_IF_ERROR(ValidateDeploymentId(req.deployment_id(), "deployment_id"));
  if (req.request_id().size() > 128) return errors::FieldError("request_id", "at most 128 characters");
  {
    std::vector<errors::FieldViolation> bad;
    errors::CheckLabels(errors::ToLabels(req.labels()), "labels", &bad);
    errors::CheckDescription(req.description(), "description", &bad);
    if (!bad.empty()) return errors::InvalidFields(bad);
  }
  TF_RETURN_IF_ERROR(ValidateContentFilter(req.content_filter(), ""));
  // A retry of a create that went through: the deployment it made.
  auto replay = [&](const std::map<std::string, DeploymentRecord>& all) -> const DeploymentRecord* {
    if (req.request_id().empty()) return nullptr;
    for (const auto& [id, d] : all)
      if (d.tenant == tenant && d.request_id == req.request_id()) return &d;
    return nullptr;
  };
  // Ids are global keys (a chat names the deployment by id alone): another
  // tenant's deployment holds its id too, without saying whose it is.
  auto taken = [&](const std::string& id) -> absl::Status {
    return errors::WithFieldViolation(
        errors::WithReason(absl::AlreadyExistsError(absl::StrCat(
                               "deployment_id: deployment ", id,
                               " already exists; choose another id or delete it first")),
                           "DEPLOYMENT_EXISTS", {{"deployment_id", id}}),
        "deployment_id", "taken");
  };
  DeploymentRecord d;
  d.tenant = tenant;
  d.request_id = req.request_id();
  {
    absl::MutexLock lock(&mu_);
    if (const DeploymentRecord* done = replay(deployments_)) return done->deployment;
    if (!req.deployment_id().empty() && deployments_.count(req.deployment_id()))
      return taken(req.deployment_id());
  }
  if (absl::StartsWith(req.model(), "ft:")) {
    absl::MutexLock lock(&mu_);
    TF_ASSIGN_OR_RETURN(FineTuned m, FindFineTuned(tenant, req.model()));
    d.base_artifact = m.base;
    d.adapter_artifact = m.artifact;
  } else {
    if (absl::Status s = catalog_.Get(req.model()).status(); !s.ok())
      return UnknownBase(s, "model", req.model());
    d.base_artifact = req.model();
  }
  Txn t(this);
  d.deployment.set_id(req.deployment_id().empty() ? NewId("dep") : req.deployment_id());
  d.deployment.set_model(req.model());
  d.deployment.set_replicas(std::max(1, req.replicas()));
  *d.deployment.mutable_content_filter() = req.content_filter();
  *d.deployment.mutable_labels() = req.labels();
  d.deployment.set_description(req.description());
  d.deployment.set_state(v1::DEPLOYMENT_STATE_CREATING);
  *d.deployment.mutable_created_at() = ToTimestamp(t.now());
  {
    absl::MutexLock lock(&mu_);
    // Checked again: the lock was let go (the model may be gone, a racing
    // create may have taken the id or used the request id).
    if (const DeploymentRecord* done = replay(deployments_)) return done->deployment;
    if (deployments_.count(d.deployment.id())) return taken(d.deployment.id());
    if (!d.adapter_artifact.empty()) TF_RETURN_IF_ERROR(FindFineTuned(tenant, req.model()).status());
    const auto& deps = deployments_;
    const auto& jobs = jobs_;
    TF_RETURN_IF_ERROR(CheckClassifierDeployment(
        req.content_filter(), d.deployment.id(), "",
        [&](const std::string& id) { return TenantDeployment(deps, jobs, tenant, id); }));
    t.AddDeployment(d);
    DeploymentUsageChanged(t.batch(), t.now(), d.deployment.id(), &d);
    t.DesiredChanged();
    TF_RETURN_IF_ERROR(t.Commit());
  }
  TF_RETURN_IF_ERROR(AfterCommit(t));
  spdlog::info("deployment={} tenant={} model={} created", d.deployment.id(), tenant, req.model());
  return d.deployment;
}

absl::StatusOr<v1::Deployment> Scheduler::GetDeployment(const std::string& tenant,
                                                        const std::string& id) {
  absl::MutexLock lock(&mu_);
  auto it = deployments_.find(id);
  if (it == deployments_.end() || it->second.tenant != tenant)
    return absl::NotFoundError(absl::StrCat("deployment ", id, " not found"));
  return it->second.deployment;
}

absl::StatusOr<v1::ListDeploymentsResponse> Scheduler::ListDeployments(
    const std::string& tenant, const v1::ListDeploymentsRequest& req) {
  TF_ASSIGN_OR_RETURN(int page, PageSize(req.page_size()));
  TF_ASSIGN_OR_RETURN(int64_t offset, Offset(req.page_token()));
  const errors::Labels want = errors::ToLabels(req.labels());
  TF_RETURN_IF_ERROR(CheckLabelFilter(want));
  absl::MutexLock lock(&mu_);
  std::vector<const v1::Deployment*> mine;
  for (const auto& [id, d] : deployments_)
    if (d.tenant == tenant && errors::LabelsMatch(errors::ToLabels(d.deployment.labels()), want))
      mine.push_back(&d.deployment);
  v1::ListDeploymentsResponse resp;
  int64_t n = static_cast<int64_t>(mine.size());
  for (int64_t i = offset; i < n && i < offset + page; ++i) *resp.add_deployments() = *mine[i];
  if (offset + page < n) resp.set_next_page_token(absl::StrCat(offset + page));
  return resp;
}

absl::StatusOr<v1::Deployment> Scheduler::DeleteDeployment(const std::string& tenant,
                                                           const std::string& id) {
  Txn t(this);
  v1::Deployment gone;
  {
    absl::MutexLock lock(&mu_);
    auto it = deployments_.find(id);
    if (it == deployments_.end() || it->second.tenant != tenant)
      return absl::NotFoundError(absl::StrCat("deployment ", id, " not found"));
    TF_RETURN_IF_ERROR(ClassifierInUse(id, ClassifierDependents(deployments_, tenant, id),
                                       absl::StrCat("deployment ", id, " cannot be deleted")));
    gone = it->second.deployment;
    gone.set_state(v1::DEPLOYMENT_STATE_DELETING);
    t.batch().deleted_deployments.push_back(id);
    DeploymentUsageChanged(t.batch(), t.now(), id, nullptr);
    t.DesiredChanged();
    TF_RETURN_IF_ERROR(t.Commit());
    for (auto& [rid, r] : replicas_) r.statuses.erase(id);
  }
  TF_RETURN_IF_ERROR(AfterCommit(t));
  spdlog::info("deployment={} tenant={} deleted", id, tenant);
  return gone;
}

absl::StatusOr<v1::Deployment> Scheduler::UpdateDeployment(const std::string& tenant,
                                                           const v1::UpdateDeploymentRequest& req) {
  const v1::Deployment& patch = req.deployment();
  if (patch.id().empty()) return errors::FieldError("deployment.id", "required");
  if (req.update_mask().paths_size() == 0) {
    return errors::FieldError("update_mask",
                              "name what changes (model, replicas, content_filter)");
  }
  bool model = false, replicas = false, filter = false;
  for (const std::string& path : req.update_mask().paths()) {
    if (path == "model") {
      model = true;
    } else if (path == "replicas") {
      replicas = true;
    } else if (path == "content_filter") {
      filter = true;
    } else {
      return errors::FieldError(
          "update_mask.paths",
          absl::StrCat("'", path, "' cannot be updated (updatable: model, replicas, content_filter)"));
    }
  }
  if (replicas && (patch.replicas() < 0 || patch.replicas() > 64))
    return errors::FieldError("deployment.replicas", "must be in [0, 64]");
  if (filter) TF_RETURN_IF_ERROR(ValidateContentFilter(patch.content_filter(), "deployment."));
  if (model && patch.model().empty()) return errors::FieldError("deployment.model", "required");
  // A base model's folder is looked up before the lock (a directory scan).
  const bool base_model = model && !absl::StartsWith(patch.model(), "ft:");
  if (base_model) {
    if (absl::Status s = catalog_.Get(patch.model()).status(); !s.ok())
      return UnknownBase(s, "deployment.model", patch.model());
  }
  Txn t(this);
  v1::Deployment updated;
  {
    absl::MutexLock lock(&mu_);
    auto it = deployments_.find(patch.id());
    if (it == deployments_.end() || it->second.tenant != tenant)
      return absl::NotFoundError(absl::StrCat("deployment ", patch.id(), " not found"));
    std::string base = it->second.base_artifact, adapter = it->second.adapter_artifact;
    if (model) {
      if (base_model) {
        adapter.clear();
        base = patch.model();
      } else {
        TF_ASSIGN_OR_RETURN(FineTuned m, FindFineTuned(tenant, patch.model()));
        base = m.base;
        adapter = m.artifact;
      }
      if (base != it->second.base_artifact) {
        return errors::FieldError("deployment.model", absl::StrCat(
            patch.model(), " is ",
            base_model ? "the base model " : "fine-tuned from ", base, ", but ", patch.id(),
            " serves ", it->second.base_artifact,
            "; a different base model needs a new deployment"));
      }
      // Deployments that use this one as their classifier need a classifier.
      if (!ClassificationModel(jobs_, patch.model())) {
        TF_RETURN_IF_ERROR(ClassifierInUse(
            patch.id(), ClassifierDependents(deployments_, tenant, patch.id()),
            absl::StrCat("deployment ", patch.id(), " cannot serve ", patch.model(),
                         ", which is not a classification model")));
      }
    }
    if (filter) {
      const auto& deps = deployments_;
      const auto& jobs = jobs_;
      TF_RETURN_IF_ERROR(CheckClassifierDeployment(
          patch.content_filter(), patch.id(), "deployment.",
          [&](const std::string& id) { return TenantDeployment(deps, jobs, tenant, id); }));
    }
    DeploymentRecord& d = t.Deployment(patch.id());
    const bool new_model = model && patch.model() != d.deployment.model();
    if (model) {
      d.deployment.set_model(patch.model());
      d.base_artifact = base;
      d.adapter_artifact = adapter;
    }
    const int32_t old_replicas = d.deployment.replicas();
    if (replicas) d.deployment.set_replicas(std::max(1, patch.replicas()));
    if (new_model || d.deployment.replicas() != old_replicas)
      DeploymentUsageChanged(t.batch(), t.now(), patch.id(), &d);
    if (filter) *d.deployment.mutable_content_filter() = patch.content_filter();
    if (new_model) {
      // What replicas reported was about the old model.
      d.deployment.set_state(v1::DEPLOYMENT_STATE_CREATING);
      d.deployment.set_ready_replicas(0);
      d.deployment.clear_error();
    }
    updated = d.deployment;
    t.DesiredChanged();
    TF_RETURN_IF_ERROR(t.Commit());
    if (new_model) {
      for (auto& [rid, r] : replicas_) r.statuses.erase(patch.id());
    }
  }
  TF_RETURN_IF_ERROR(AfterCommit(t));
  spdlog::info("deployment={} tenant={} updated ({})", patch.id(), tenant,
               absl::StrJoin(req.update_mask().paths(), ","));
  return updated;
}

absl::StatusOr<std::unique_ptr<TarStream>> Scheduler::OpenModelContent(
    const std::string& tenant, const std::string& model_id) {
  if (!absl::StartsWith(model_id, "ft:")) {
    TF_RETURN_IF_ERROR(catalog_.Get(model_id).status());
    return absl::FailedPreconditionError(absl::StrCat(
        "model ", model_id,
        " is a base model: only fine-tuned models can be downloaded (base models are the "
        "operator's files under the models directory)"));
  }
  std::string artifact;
  {
    absl::MutexLock lock(&mu_);
    TF_ASSIGN_OR_RETURN(FineTuned m, FindFineTuned(tenant, model_id));
    artifact = m.artifact;
  }
  if (options_.artifacts_dir.empty()) {
    return absl::FailedPreconditionError(
        "this scheduler has no artifact directory (--artifacts_dir) to read models from");
  }
  std::string root = model_id;
  for (char& c : root) {
    if (c == ':' || c == '/') c = '_';
  }
  auto stream = TarStream::Open(absl::StrCat(options_.artifacts_dir, "/", artifact), root);
  if (absl::IsNotFound(stream.status())) {
    spdlog::error("model={} {}", model_id, stream.status().ToString());
    return absl::DataLossError(absl::StrCat("the files of model ", model_id,
                                            " are missing from the artifact store"));
  }
  return stream;
}

// ---- serving replicas -----------------------------------------------------

absl::StatusOr<iv1::RegisterReplicaResponse> Scheduler::RegisterReplica(
    const iv1::RegisterReplicaRequest& req) {
  if (req.replica_name().empty()) return errors::FieldError("replica_name", "required");
  Txn t(this);
  ReplicaRecord r{NewId("replica"), req.replica_name(), req.address()};
  {
    absl::MutexLock lock(&mu_);
    t.batch().replicas.push_back(r);
    TF_RETURN_IF_ERROR(t.Commit());
  }
  TF_RETURN_IF_ERROR(AfterCommit(t));
  iv1::RegisterReplicaResponse resp;
  resp.set_replica_id(r.id);
  return resp;
}

absl::StatusOr<iv1::DesiredDeployments> Scheduler::DesiredDeployments(
    const std::string& replica_id) {
  absl::MutexLock lock(&mu_);
  if (!replicas_.count(replica_id))
    return absl::NotFoundError(absl::StrCat("replica ", replica_id, " not found"));
  iv1::DesiredDeployments out;
  out.set_generation(generation_);
  for (const auto& [id, d] : deployments_) {
    iv1::DesiredDeployment* dd = out.add_deployments();
    *dd->mutable_deployment() = d.deployment;
    dd->set_base_model_artifact(d.base_artifact);
    dd->set_adapter_artifact(d.adapter_artifact);
    dd->set_tenant(d.tenant);
  }
  return out;
}

void Scheduler::RecomputeDeployment(Txn& t, const std::string& dep_id) {
  auto it = deployments_.find(dep_id);
  if (it == deployments_.end()) return;
  int ready = 0;
  std::string error;
  for (const auto& [rid, r] : replicas_) {
    auto s = r.statuses.find(dep_id);
    if (s == r.statuses.end()) continue;
    if (s->second.ready()) ++ready;
    else if (!s->second.error().empty()) error = s->second.error();
  }
  const v1::Deployment& cur = it->second.deployment;
  int connected = static_cast<int>(replicas_.size());
  int needed = std::max(1, std::min(cur.replicas(), connected));
  v1::DeploymentState state = ready >= needed ? v1::DEPLOYMENT_STATE_ACTIVE
                              : (ready == 0 && !error.empty()) ? v1::DEPLOYMENT_STATE_FAILED
                                                               : v1::DEPLOYMENT_STATE_CREATING;
  if (cur.ready_replicas() == ready && cur.state() == state &&
      (state != v1::DEPLOYMENT_STATE_FAILED || cur.error().message() == error))
    return;
  DeploymentRecord& d = t.Deployment(dep_id);
  d.deployment.set_ready_replicas(ready);
  d.deployment.set_state(state);
  if (state == v1::DEPLOYMENT_STATE_FAILED) {
    d.deployment.mutable_error()->set_code("replica_failed");
    d.deployment.mutable_error()->set_message(error);
  } else {
    d.deployment.clear_error();
  }
}

absl::StatusOr<iv1::ReportReplicaStatusResponse> Scheduler::ReportReplicaStatus(
    const iv1::ReportReplicaStatusRequest& req) {
  Txn t(this);
  {
    absl::MutexLock lock(&mu_);
    auto it = replicas_.find(req.replica_id());
    if (it == replicas_.end())
      return absl::NotFoundError(absl::StrCat("replica ", req.replica_id(), " not found"));
    std::set<std::string> touched;
    for (const auto& [id, s] : it->second.statuses) touched.insert(id);
    it->second.statuses.clear();
    for (const auto& s : req.deployments()) {
      CountInference(t.batch(), t.now(), req.replica_id(), s);  // served before a delete still counts
      if (!deployments_.count(s.deployment_id())) continue;  // deleted meanwhile
      it->second.statuses[s.deployment_id()] = s;
      touched.insert(s.deployment_id());
    }
    for (const auto& id : touched) RecomputeDeployment(t, id);
    TF_RETURN_IF_ERROR(t.Commit());
  }
  TF_RETURN_IF_ERROR(AfterCommit(t));
  return iv1::ReportReplicaStatusResponse();
}

void Scheduler::ReplicaDisconnected(const std::string& replica_id) {
  Txn t(this);
  {
    absl::MutexLock lock(&mu_);
    auto it = replicas_.find(replica_id);
    if (it == replicas_.end()) return;
    std::set<std::string> touched;
    for (const auto& [id, s] : it->second.statuses) touched.insert(id);
    it->second.statuses.clear();
    for (const auto& id : touched) RecomputeDeployment(t, id);
    if (!t.Commit().ok()) return;
  }
  (void)AfterCommit(t);
}

// ---- trainer agents -------------------------------------------------------

absl::StatusOr<iv1::RegisterNodeResponse> Scheduler::RegisterNode(
    const iv1::RegisterNodeRequest& req) {
  if (req.node_name().empty()) return errors::FieldError("node_name", "required");
  int slots = req.slots() > 0 ? req.slots() : req.gpus_size();
  if (slots <= 0 || slots > 1024)
    return errors::FieldError("slots", "a node registers 1..1024 slots (or its gpus)");
  // A rank's memory on this node: its smallest GPU's (unknown when any GPU's
  // memory is).
  int64_t slot_memory = req.gpus_size() > 0 ? std::numeric_limits<int64_t>::max() : 0;
  for (int i = 0; i < req.gpus_size(); ++i) {
    const int64_t m = req.gpus(i).memory_bytes();
    if (m < 0) return errors::FieldError(absl::StrCat("gpus[", i, "].memory_bytes"), "must be >= 0");
    slot_memory = std::min(slot_memory, m);
  }
  Txn t(this);
  NodeRecord n{NewId("node"), req.node_name(), req.agent_address(), slots, req.gpus_size(),
               slot_memory};
  {
    absl::MutexLock lock(&mu_);
    // A node that registers again under the same name is a restarted agent:
    // whatever its previous incarnation ran is lost.
    for (const auto& [id, old] : nodes_) {
      if (old.record.name != req.node_name()) continue;
      for (const auto& [aid, a] : t.AllAssignments())
        if (a.node_id == id) LoseAttempt(t, a.assignment.job_id(), absl::StrCat("node ", req.node_name(), " restarted"));
      t.batch().deleted_nodes.push_back(id);
    }
    t.batch().nodes.push_back(n);
    TF_RETURN_IF_ERROR(t.Commit());
  }
  TF_RETURN_IF_ERROR(AfterCommit(t));
  spdlog::info("node={} name={} slots={} gpus={} slot_memory={} registered", n.id, n.name,
               n.slots, n.gpus, n.slot_memory_bytes);
  iv1::RegisterNodeResponse resp;
  resp.set_node_id(n.id);
  resp.set_heartbeat_interval_ms(absl::ToInt64Milliseconds(options_.heartbeat_interval));
  resp.set_lease_ms(absl::ToInt64Milliseconds(options_.lease));
  return resp;
}

void Scheduler::LoseAttempt(Txn& t, const std::string& job_id, const std::string& why) {
  if (t.AssignmentsOf(job_id).empty()) return;  // already handled in this Txn
  for (const auto& id : t.AssignmentsOf(job_id)) t.DeleteAssignment(id);
  JobRecord& j = t.Job(job_id);
  v1::JobState s = j.job.state();
  if (s == v1::JOB_STATE_RUNNING) {
    ++j.retries;
    if (j.retries > options_.max_retries) {
      v1::Error e;
      e.set_code("worker_lost");
      e.set_message(absl::StrCat(why, "; the job lost ", j.retries, " attempts (limit ",
                                 options_.max_retries, ")"));
      (void)Transition(t, job_id, JobTrigger::kFail, e.message(), &e);
      return;
    }
    std::string from = j.resume_artifact.empty() ? "the start" : j.resume_artifact;
    (void)Transition(t, job_id, JobTrigger::kRequeue,
                     absl::StrCat(why, "; requeued to resume from ", from));
    return;
  }
  (void)Transition(t, job_id, JobTrigger::kRequeue, why);
}

void Scheduler::FinishAssignment(Txn& t, const std::string& assignment_id) {
  std::string job_id = t.Assignment(assignment_id).assignment.job_id();
  t.DeleteAssignment(assignment_id);
  if (!jobs_.count(job_id) || !t.AssignmentsOf(job_id).empty()) return;
  v1::JobState s = t.Job(job_id).job.state();
  if (s == v1::JOB_STATE_PAUSING) {
    std::string at = t.Job(job_id).resume_artifact;
    (void)Transition(t, job_id, JobTrigger::kStopped,
                     absl::StrCat("paused", at.empty() ? "" : " at checkpoint " + at));
  } else if (s == v1::JOB_STATE_CANCELLING) {
    (void)Transition(t, job_id, JobTrigger::kStopped, "cancelled; every rank has stopped");
  } else if (s == v1::JOB_STATE_RUNNING && !t.Job(job_id).preempted_for.empty()) {
    std::string at = t.Job(job_id).resume_artifact;
    ++preemptions_;
    (void)Transition(t, job_id, JobTrigger::kStopped,
                     absl::StrCat("preempted; requeued to resume from ",
                                  at.empty() ? "the start" : at));
  }
}

absl::StatusOr<iv1::HeartbeatResponse> Scheduler::Heartbeat(const iv1::HeartbeatRequest& req) {
  Txn t(this);
  iv1::HeartbeatResponse resp;
  {
    absl::MutexLock lock(&mu_);
    auto node = nodes_.find(req.node_id());
    if (node == nodes_.end()) {
      return absl::NotFoundError(
          absl::StrCat("node ", req.node_id(), " is not registered (register again)"));
    }
    node->second.lease_expiry = t.now() + options_.lease;
    std::map<std::string, iv1::AssignmentStatus> reported;
    for (const auto& s : req.assignments()) reported[s.assignment_id()] = s;
    std::vector<std::string> finished;
    for (auto& [id, a] : assignments_) {
      if (a.node_id != req.node_id()) continue;
      auto r = reported.find(id);
      bool present = r != reported.end() && r->second.phase() != iv1::AssignmentStatus::PHASE_EXITED;
      if (r != reported.end()) a.seen = true;
      v1::JobState s = jobs_.at(a.assignment.job_id()).job.state();
      // A rank of a pausing or cancelling job that the agent no longer runs
      // has stopped.
      if (!present && (a.stopping || s == v1::JOB_STATE_PAUSING ||
                       s == v1::JOB_STATE_CANCELLING || Preempting(a.assignment.job_id())))
        finished.push_back(id);
    }
    for (const auto& id : finished) FinishAssignment(t, id);
    TF_RETURN_IF_ERROR(t.Commit());
    for (const auto& [id, a] : assignments_) {
      if (a.node_id != req.node_id() || a.stopping) continue;
      *resp.add_assignments() = a.assignment;
      if (jobs_.at(a.assignment.job_id()).job.state() == v1::JOB_STATE_PAUSING ||
          Preempting(a.assignment.job_id()))
        resp.add_checkpoint_and_stop(id);
    }
  }
  TF_RETURN_IF_ERROR(AfterCommit(t));
  return resp;
}

absl::StatusOr<iv1::ReportProgressResponse> Scheduler::ReportProgress(
    const iv1::ReportProgressRequest& req) {
  Txn t(this);
  iv1::ReportProgressResponse resp;
  {
    absl::MutexLock lock(&mu_);
    auto it = assignments_.find(req.assignment_id());
    // A stale rank (its attempt was lost or cancelled) is told to stop.
    if (it == assignments_.end() || it->second.stopping) {
      resp.set_keep_running(false);
      return resp;
    }
    const std::string job_id = it->second.assignment.job_id();
    const bool rank0 = it->second.assignment.rank() == 0;
    v1::JobState s = jobs_.at(job_id).job.state();
    resp.set_keep_running(s == v1::JOB_STATE_RUNNING || s == v1::JOB_STATE_PAUSING);
    if (!rank0 || !resp.keep_running()) return resp;
    JobRecord& j = t.Job(job_id);
    const auto& m = req.metrics();
    if (req.total_steps() > 0) j.job.set_total_steps(req.total_steps());
    j.job.set_completed_steps(m.step());
    *j.job.mutable_update_time() = ToTimestamp(t.now());
    if (m.trained_tokens() > 0) j.job.set_trained_tokens(m.trained_tokens());
    // Estimated finish from the step rate since the previous report.
    auto p = progress_.find(job_id);
    if (p != progress_.end() && m.step() > p->second.step && j.job.total_steps() > m.step()) {
      absl::Duration per_step = (t.now() - p->second.at) / (m.step() - p->second.step);
      *j.job.mutable_estimated_finish() =
          ToTimestamp(t.now() + per_step * (j.job.total_steps() - m.step()));
    }
    v1::JobEvent e;
    *e.mutable_metrics() = m;
    e.set_message(req.message().empty() ? absl::StrCat("step ", m.step(), "/", j.job.total_steps())
                                        : req.message());
    t.Event(job_id, e);
    TF_RETURN_IF_ERROR(t.Commit());
    progress_[job_id] = Progress{t.now(), m.step()};
  }
  TF_RETURN_IF_ERROR(AfterCommit(t));
  return resp;
}

absl::StatusOr<iv1::ReportCheckpointResponse> Scheduler::ReportCheckpoint(
    const iv1::ReportCheckpointRequest& req) {
  if (req.artifact().empty()) return errors::FieldError("artifact", "required");
  Txn t(this);
  iv1::ReportCheckpointResponse resp;
  {
    absl::MutexLock lock(&mu_);
    auto it = assignments_.find(req.assignment_id());
    if (it == assignments_.end())
      return absl::NotFoundError(
          absl::StrCat("assignment ", req.assignment_id(), " is not active"));
    if (it->second.assignment.rank() != 0) return resp;  // rank 0 speaks for the job
    const std::string job_id = it->second.assignment.job_id();
    JobRecord& j = t.Job(job_id);
    CheckpointRecord c;
    c.tenant = j.tenant;
    c.artifact = req.artifact();
    c.checkpoint.set_id(NewId("ckpt"));
    c.checkpoint.set_job_id(job_id);
    c.checkpoint.set_step(req.step());
    *c.checkpoint.mutable_metrics() = req.metrics();
    *c.checkpoint.mutable_created_at() = ToTimestamp(t.now());
    j.resume_artifact = req.artifact();
    t.batch().checkpoints.push_back(c);
    v1::JobEvent e;
    e.set_checkpoint_id(c.checkpoint.id());
    e.set_message(absl::StrCat("checkpoint ", c.checkpoint.id(), " at step ", req.step()));
    t.Event(job_id, e);
    TF_RETURN_IF_ERROR(t.Commit());
    resp.set_checkpoint_id(c.checkpoint.id());
  }
  TF_RETURN_IF_ERROR(AfterCommit(t));
  return resp;
}

absl::StatusOr<iv1::CompleteAssignmentResponse> Scheduler::CompleteAssignment(
    const iv1::CompleteAssignmentRequest& req) {
  Txn t(this);
  {
    absl::MutexLock lock(&mu_);
    auto it = assignments_.find(req.assignment_id());
    if (it == assignments_.end())
      return absl::NotFoundError(
          absl::StrCat("assignment ", req.assignment_id(), " is not active"));
    const iv1::Assignment a = it->second.assignment;
    const std::string& job_id = a.job_id();
    v1::JobState s = jobs_.at(job_id).job.state();
    if (req.trained_tokens() > 0 && a.rank() == 0) t.Job(job_id).job.set_trained_tokens(req.trained_tokens());
    // The largest rank's peak, beside the estimate: the GPU's where the rank
    // ran on one, else its resident memory.
    if (const int64_t peak = req.peak_device_bytes() > 0 ? req.peak_device_bytes() : req.peak_rss_bytes();
        peak > 0) {
      v1::MemoryEstimate* m = t.Job(job_id).job.mutable_memory_estimate();
      if (peak > m->measured_peak_bytes()) {
        m->set_measured_peak_bytes(peak);
        m->set_measured_runtime_bytes(req.runtime_bytes());
      }
    }
    if (req.has_evaluation() && req.succeeded() && a.rank() == 0) {
      *t.Job(job_id).job.mutable_evaluation() = req.evaluation();
    }
    if (req.succeeded() && a.rank() == 0 &&
        (s == v1::JOB_STATE_RUNNING || s == v1::JOB_STATE_PAUSING)) {
      t.DeleteAssignment(a.assignment_id());
      if (req.result_artifact().empty()) {
        v1::Error e;
        e.set_code("result_missing");
        e.set_message("the trainer reported success without a result artifact");
        TF_RETURN_IF_ERROR(Transition(t, job_id, JobTrigger::kFail, e.message(), &e));
      } else {
        RegisterResult(t, job_id, req.result_artifact());
        JobRecord& j = t.Job(job_id);
        j.job.set_completed_steps(j.job.total_steps());
        TF_RETURN_IF_ERROR(Transition(t, job_id, JobTrigger::kSucceed,
                                      absl::StrCat("succeeded; model ", j.job.result_model())));
      }
    } else if (!req.succeeded() && s == v1::JOB_STATE_RUNNING && !Preempting(job_id)) {
      t.DeleteAssignment(a.assignment_id());
      v1::Error e = req.error();
      if (e.code().empty()) e.set_code("training_failed");
      if (e.message().empty()) e.set_message(absl::StrCat("rank ", a.rank(), " failed"));
      TF_RETURN_IF_ERROR(Transition(t, job_id, JobTrigger::kFail, e.message(), &e));
    } else {
      FinishAssignment(t, a.assignment_id());
    }
    TF_RETURN_IF_ERROR(t.Commit());
    spdlog::info("assignment={} job={} rank={} completed succeeded={} job now {}",
                 a.assignment_id(), job_id, a.rank(), req.succeeded(),
                 std::string(StateName(jobs_.at(job_id).job.state())));
  }
  TF_RETURN_IF_ERROR(AfterCommit(t));
  return iv1::CompleteAssignmentResponse();
}

// ---- time -----------------------------------------------------------------

TenantSlots Scheduler::RunningSlotsLocked(
    const std::map<std::string, AssignmentRecord>& assignments) {
  TenantSlots slots;
  for (const auto& [id, a] : assignments) {
    auto j = jobs_.find(a.assignment.job_id());
    if (j != jobs_.end()) ++slots[j->second.tenant];
  }
  return slots;
}

void Scheduler::PlaceLocked(Txn& t) {
  std::map<std::string, AssignmentRecord> all = t.AllAssignments();
  std::vector<SlotNode> nodes;
  std::map<std::string, std::set<int>> used_gpus, used_ports;
  for (const auto& [id, a] : all) {
    for (int g : a.assignment.gpu_indices()) used_gpus[a.node_id].insert(g);
    if (a.assignment.rank() == 0) used_ports[a.node_id].insert(a.assignment.master_port());
  }
  for (const auto& [id, n] : nodes_) {
    int used = static_cast<int>(used_gpus[id].size());
    nodes.push_back(SlotNode{id, n.record.slots, std::max(0, n.record.slots - used),
                             n.record.slot_memory_bytes, n.record.gpus > 0});
  }
  std::vector<QueuedJob> queue;
  std::set<std::string> queued;
  for (const auto& [id, j] : jobs_) {
    v1::JobState s = t.jobs().count(id) ? t.jobs().at(id).job.state() : j.job.state();
    if (s == v1::JOB_STATE_QUEUED) {
      queue.push_back(QueuedJob{id, j.job.priority(), j.queue_seq, j.job.gpus(), j.tenant,
                                GpuMemoryNeed(j)});
      queued.insert(id);
    }
  }
  // A job that left the queue (paused, cancelled) waits a whole grace again
  // if it comes back.
  KeepOnly(unschedulable_since_, queued);
  const TenantSlots running = RunningSlotsLocked(all);
  if (queue.empty() || nodes.empty()) return;
  int free_before = 0;
  for (const auto& n : nodes) free_before += n.free_slots;
  SortQueue(queue, running);
  const std::vector<QueuedJob> ordered = queue;
  PlacementResult r = Place(std::move(queue), std::move(nodes), running);
  int placed_slots = 0;
  std::set<std::string> settled(r.never_fit.begin(), r.never_fit.end());
  for (const auto& p : r.placed) {
    settled.insert(p.job_id);
    for (const auto& [node, n] : p.nodes) placed_slots += n;
  }
  PreemptFor(t, ordered, settled, free_before - placed_slots);
  KeepOnly(unschedulable_since_, {r.never_fit.begin(), r.never_fit.end()});
  for (const auto& id : r.never_fit) {
    v1::Error e;
    e.set_code("unschedulable");
    const std::string memory = MemoryShortfallLocked(t.Job(id).job.gpus(), GpuMemoryNeed(t.Job(id)));
    e.set_param(memory.empty() ? "gpus" : "memory_estimate");
    std::string why = memory.empty() ? SlotShortfallLocked(t.Job(id).job.gpus()) : memory;
    e.set_message(why.empty() ? "no registered node holds the job" : why);
    auto [since, fresh] = unschedulable_since_.try_emplace(id, t.now());
    if (t.now() - since->second < options_.unschedulable_grace) {
      if (fresh) {
        v1::JobEvent wait;
        wait.set_level(v1::JobEvent::LEVEL_WARNING);
        wait.set_message(absl::StrCat(
            "waiting: ", e.message(), "; the job fails at ",
            absl::FormatTime(absl::RFC3339_sec, since->second + options_.unschedulable_grace,
                             absl::UTCTimeZone()),
            " unless a node that holds it registers"));
        t.Event(id, wait);
      }
      continue;
    }
    unschedulable_since_.erase(since);
    (void)Transition(t, id, JobTrigger::kFail, e.message(), &e);
  }
  for (const auto& p : r.placed) {
    JobRecord& j = t.Job(p.job_id);
    ++j.attempt;
    EstimateForSlot(j, nodes_.at(p.nodes.front().first).record.gpus > 0);
    const std::string& master_node = p.nodes.front().first;
    int port = options_.first_master_port;
    while (used_ports[master_node].count(port)) ++port;
    used_ports[master_node].insert(port);
    const std::string master = HostOf(nodes_.at(master_node).record.address);
    int rank = 0;
    std::vector<std::string> where;
    for (const auto& [node_id, count] : p.nodes) {
      where.push_back(absl::StrCat(node_id, "x", count));
      for (int k = 0; k < count; ++k, ++rank) {
        AssignmentRecord a;
        a.node_id = node_id;
        iv1::Assignment& as = a.assignment;
        as.set_assignment_id(NewId("asg"));
        as.set_job_id(p.job_id);
        as.set_rank(rank);
        as.set_world_size(std::max(1, j.job.gpus()));
        as.set_master_address(master);
        as.set_master_port(port);
        as.set_base_model(RootBase(j.job.base_model()));
        as.set_init_adapter_artifact(j.init_artifact);
        as.set_training_file(j.job.training_file());
        as.set_validation_file(j.job.validation_file());
        as.set_adapter(j.job.adapter());
        as.set_task(j.job.task());
        *as.mutable_hyperparameters() = j.job.hyperparameters();
        as.set_resume_checkpoint(j.resume_artifact);
        int g = 0;
        while (used_gpus[node_id].count(g)) ++g;
        used_gpus[node_id].insert(g);
        as.add_gpu_indices(g);
        as.set_tenant(j.tenant);
        as.set_total_steps(j.job.total_steps());
        *as.mutable_method() = j.job.method();
        if (!as.method().has_dpo()) as.mutable_method()->mutable_supervised();
        as.set_write_merged(j.job.write_merged());
        t.AddAssignment(std::move(a));
      }
    }
    (void)Transition(t, p.job_id, JobTrigger::kStart,
                     absl::StrCat("running: attempt ", j.attempt, " on ", absl::StrJoin(where, ", "),
                                  j.resume_artifact.empty() ? "" : ", resuming from " + j.resume_artifact));
  }
}

void Scheduler::PreemptFor(Txn& t, const std::vector<QueuedJob>& ordered,
                           const std::set<std::string>& settled, int free_slots) {
  // Slots that victims already asked to stop will return.
  int available = free_slots;
  struct Victim {
    int priority;
    int64_t queue_seq;
    std::string id;
    int slots;
  };
  std::vector<Victim> running;
  for (const auto& [id, committed] : jobs_) {
    const JobRecord& j = t.jobs().count(id) ? t.jobs().at(id) : committed;
    if (j.job.state() != v1::JOB_STATE_RUNNING) continue;
    int slots = static_cast<int>(t.AssignmentsOf(id).size());
    if (!j.preempted_for.empty()) {
      available += slots;
    } else {
      running.push_back(Victim{j.job.priority(), j.queue_seq, id, slots});
    }
  }
  // Lowest priority first, then the newest (it has lost the least work).
  std::sort(running.begin(), running.end(), [](const Victim& a, const Victim& b) {
    if (a.priority != b.priority) return a.priority < b.priority;
    return a.queue_seq > b.queue_seq;
  });
  for (const QueuedJob& q : ordered) {
    if (settled.count(q.id)) continue;
    const int w = std::max(1, q.world_size);
    if (w <= available) {
      available -= w;  // starts once the stopping ranks are gone
      continue;
    }
    int gained = 0;
    std::vector<size_t> chosen;
    for (size_t i = 0; i < running.size() && available + gained < w; ++i) {
      if (running[i].priority >= q.priority) break;
      chosen.push_back(i);
      gained += running[i].slots;
    }
    if (available + gained < w) continue;  // preempting cannot make room: wait
    for (size_t i : chosen) {
      const std::string& victim = running[i].id;
      t.Job(victim).preempted_for = q.id;  // durable with its event
      v1::JobEvent e;
      e.set_level(v1::JobEvent::LEVEL_WARNING);
      e.set_message(absl::StrCat("preempted by ", q.id, " (priority ", q.priority,
                                 "): checkpointing to return to the queue"));
      t.Event(victim, e);
      spdlog::info("job={} preempted by job={}", victim, q.id);
    }
    for (auto it = chosen.rbegin(); it != chosen.rend(); ++it)
      running.erase(running.begin() + static_cast<std::ptrdiff_t>(*it));
    available += gained - w;
  }
}

void Scheduler::Tick(absl::Time now) {
  Txn t(this);
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, n] : nodes_) {
      if (n.lease_expiry >= now) continue;
      ++node_losses_;
      spdlog::warn("node={} name={} lost: no heartbeat for {}", id, n.record.name,
                   absl::FormatDuration(options_.lease));
      for (const auto& [aid, a] : t.AllAssignments())
        if (a.node_id == id)
          LoseAttempt(t, a.assignment.job_id(), absl::StrCat("node ", n.record.name, " lost"));
      t.batch().deleted_nodes.push_back(id);
    }
    // Placement sees the fleet without the lost nodes.
    std::vector<NodeState> lost;
    for (const auto& id : t.batch().deleted_nodes) {
      lost.push_back(nodes_.at(id));
      nodes_.erase(id);
    }
    PlaceLocked(t);
    absl::Status s = t.Commit();
    if (!s.ok()) {
      for (auto& n : lost) nodes_[n.record.id] = n;
      return;
    }
  }
  (void)AfterCommit(t);
}

Scheduler::FleetStats Scheduler::Stats() {
  absl::MutexLock lock(&mu_);
  FleetStats st;
  st.nodes = static_cast<int>(nodes_.size());
  for (const auto& [id, n] : nodes_) st.slots += n.record.slots;
  st.used_slots = static_cast<int>(assignments_.size());
  st.preemptions = preemptions_;
  st.node_losses = node_losses_;
  for (const auto& [id, j] : jobs_) ++st.jobs_by_state[j.job.state()];
  const absl::Time now = options_.clock->Now();
  for (const auto& [id, j] : jobs_) {
    if (j.job.state() == v1::JOB_STATE_QUEUED) {
      ++st.queued_jobs;
      const absl::Time created = absl::FromUnixSeconds(j.job.created_at().seconds()) +
                                 absl::Nanoseconds(j.job.created_at().nanos());
      st.oldest_queued_seconds =
          std::max(st.oldest_queued_seconds, absl::ToDoubleSeconds(now - created));
    }
    if (j.job.state() == v1::JOB_STATE_RUNNING) ++st.running_jobs;
  }
  return st;
}

}  // namespace tunefleet::scheduler
