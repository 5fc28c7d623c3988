#include "services/trainer/agent/agent.h"

#include <signal.h>

#include <cmath>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <system_error>

#include <spdlog/spdlog.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/base/status_macros.h"
#include "common/text/tokenizer.h"
#include "services/trainer/agent/worker_process.h"
#include "services/trainer/protocol/report.h"
#include "services/trainer/protocol/worker_spec.h"

namespace tunefleet::trainer {
namespace iv1 = internal::v1;
namespace fs = std::filesystem;

namespace {

// An id used as a path component must be one plain name.
bool SafeName(const std::string& s) {
  return !s.empty() && s != "." && s != ".." && s.find('/') == std::string::npos &&
         s.find('\0') == std::string::npos;
}

// An artifact name: a relative path without "..".
bool SafeArtifact(const std::string& s) {
  if (s.empty() || s.front() == '/') return false;
  for (absl::string_view part : absl::StrSplit(s, '/')) {
    if (part == "..") return false;
  }
  return true;
}

// The artifact name of `path` (absolute, under `root`), or empty.
std::string ArtifactName(const std::string& root, const std::string& path) {
  fs::path rel = fs::path(path).lexically_normal().lexically_relative(fs::path(root).lexically_normal());
  std::string s = rel.generic_string();
  if (s.empty() || s == "." || absl::StartsWith(s, "..")) return "";
  return s;
}

// The last non-empty line of a log file (what a crashed worker said last).
std::string LastLogLine(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return "";
  std::streamoff size = in.tellg();
  std::streamoff start = std::max<std::streamoff>(0, size - 4096);
  in.seekg(start);
  std::string tail((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> lines = absl::StrSplit(tail, '\n', absl::SkipWhitespace());
  if (lines.empty()) return "";
  std::string last(absl::StripAsciiWhitespace(lines.back()));
  if (last.size() > 300) last = last.substr(0, 300) + "...";
  return last;
}

v1::Error MakeError(const std::string& code, const std::string& message) {
  v1::Error e;
  e.set_code(code);
  e.set_message(message);
  return e;
}

void FillMetrics(const std::map<std::string, double>& m, v1::TrainingMetrics* out) {
  auto get = [&](const char* k) -> std::optional<double> {
    auto it = m.find(k);
    if (it == m.end()) return std::nullopt;
    return it->second;
  };
  if (auto v = get("train_loss")) {
    out->set_train_loss(*v);
    out->set_train_perplexity(std::exp(*v));
  }
  if (auto v = get("train_token_accuracy")) out->set_train_token_accuracy(*v);
  if (auto v = get("valid_loss")) out->set_valid_loss(*v);
  if (auto v = get("valid_token_accuracy")) out->set_valid_token_accuracy(*v);
  if (auto v = get("learning_rate")) out->set_learning_rate(*v);
  if (auto v = get("tokens_per_second")) out->set_tokens_per_second(*v);
  if (auto v = get("trained_tokens")) out->set_trained_tokens(static_cast<int64_t>(*v));
}

}  // namespace

// One assignment on this node: fetch, spec, worker, reports. Its thread runs
// the whole life; the supervisor thread feeds it lines and the exit.
class TrainerAgent::Runner {
 public:
  Runner(TrainerAgent* agent, iv1::Assignment assignment)
      : agent_(*agent), a_(std::move(assignment)) {}
  ~Runner() {
    Withdraw();
    if (thread_.joinable()) thread_.join();
    worker_.reset();
  }

  void Start() { thread_ = std::thread([this] { Run(); }); }

  // Absent from the desired set (or the agent stops): kill, report nothing.
  void Withdraw() {
    absl::MutexLock lock(&mu_);
    if (withdrawn_) return;
    withdrawn_ = true;
    cancel_.Cancel();
    if (worker_ != nullptr) (void)worker_->Signal(SIGKILL);
  }

  // checkpoint_and_stop, or keep_running=false: SIGTERM once.
  void CheckpointAndStop() {
    absl::MutexLock lock(&mu_);
    if (stop_requested_) return;
    stop_requested_ = true;
    if (worker_ != nullptr && phase_ != iv1::AssignmentStatus::PHASE_EXITED) {
      phase_ = iv1::AssignmentStatus::PHASE_CHECKPOINTING;
      spdlog::info("assignment={} job={} checkpoint and stop (SIGTERM)", a_.assignment_id(),
                   a_.job_id());
      (void)worker_->Signal(SIGTERM);
    }
  }

  bool done() const {
    absl::MutexLock lock(&mu_);
    return done_;
  }

  iv1::AssignmentStatus Status() const {
    absl::MutexLock lock(&mu_);
    iv1::AssignmentStatus s;
    s.set_assignment_id(a_.assignment_id());
    s.set_phase(phase_);
    s.set_step(step_);
    return s;
  }

 private:
  struct Event {
    std::optional<std::string> line;
    std::optional<WorkerExit> exit;
  };

  void Run();
  absl::StatusOr<WorkerSpec> Prepare();
  void HandleLine(const std::string& line);
  void Finish(const WorkerExit& exit);
  // Sets this rank's progress gauges (AgentMetrics).
  void ExportProgress(const ReportEvent& ev);
  void Complete(bool succeeded, const v1::Error& error, const std::string& result_artifact,
                int64_t trained_tokens,
                const std::optional<v1::JobEvaluation>& evaluation = std::nullopt);
  void ReportCheckpoint(int64_t step, const std::string& dir, const v1::TrainingMetrics& metrics);
  // Calls the scheduler; with `deliver`, retries UNAVAILABLE and
  // DEADLINE_EXCEEDED (the reports it delivers are idempotent) with backoff
  // until it answers or the runner is withdrawn (which cancels the call).
  template <typename Req, typename Resp>
  absl::StatusOr<Resp> Call(
      grpc::Status (iv1::TrainerControlService::Stub::*method)(grpc::ClientContext*, const Req&,
                                                              Resp*),
      const Req& req, bool deliver);
  bool withdrawn() const {
    absl::MutexLock lock(&mu_);
    return withdrawn_;
  }
  void SetPhase(iv1::AssignmentStatus::Phase p) {
    absl::MutexLock lock(&mu_);
    phase_ = p;
  }

  TrainerAgent& agent_;
  const iv1::Assignment a_;
  std::thread thread_;
  FetchCancellation cancel_;
  std::string log_file_;

  mutable absl::Mutex mu_;
  iv1::AssignmentStatus::Phase phase_ ABSL_GUARDED_BY(mu_) = iv1::AssignmentStatus::PHASE_FETCHING;
  int64_t step_ ABSL_GUARDED_BY(mu_) = 0;
  bool withdrawn_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_requested_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  std::unique_ptr<WorkerProcess> worker_ ABSL_GUARDED_BY(mu_);
  std::deque<Event> events_ ABSL_GUARDED_BY(mu_);

  // Runner-thread state (what the worker said so far).
  int64_t total_steps_ = 0;
  v1::TrainingMetrics last_metrics_;
  std::string reported_checkpoint_;
  std::optional<ReportEvent> completed_, stopped_, error_;
  int bad_lines_ = 0;
  // Progress series this rank set (removed when it ends).
  std::set<std::pair<prometheus::Family<prometheus::Gauge>*, prometheus::Gauge*>> exported_;
};

template <typename Req, typename Resp>
absl::StatusOr<Resp> TrainerAgent::Runner::Call(
    grpc::Status (iv1::TrainerControlService::Stub::*method)(grpc::ClientContext*, const Req&,
                                                            Resp*),
    const Req& req, bool deliver) {
  rpc::CallOptions o = agent_.SchedulerCallOptions();
  o.cancel = &cancel_;
  if (deliver) {
    o.max_attempts = 0;
    o.retry_deadline_exceeded = true;
  } else {
    o.max_attempts = 1;
  }
  o.on_retry = [&](const absl::Status& s, int, absl::Duration wait) {
    agent_.metrics_.scheduler_errors.Increment();
    spdlog::warn("assignment={} scheduler call failed, retrying in {}: {}", a_.assignment_id(),
                 absl::FormatDuration(wait), s.ToString());
  };
  absl::StatusOr<Resp> resp = rpc::CallUnary(agent_.scheduler_.get(), method, req, o);
  if (!resp.ok() && !absl::IsCancelled(resp.status())) {
    agent_.metrics_.scheduler_errors.Increment();
  }
  return resp;
}

absl::StatusOr<WorkerSpec> TrainerAgent::Runner::Prepare() {
  const TrainerAgentOptions& o = agent_.options_;
  if (!SafeName(a_.job_id()) || !SafeName(a_.assignment_id())) {
    return absl::InvalidArgumentError(absl::StrCat("assignment '", a_.assignment_id(), "' of job '",
                                                   a_.job_id(), "': ids must be plain names"));
  }
  WorkerSpec spec;
  spec.job_id = a_.job_id();
  spec.assignment_id = a_.assignment_id();
  spec.rank = a_.rank();
  spec.world_size = std::max(1, a_.world_size());
  if (!a_.master_address().empty()) spec.master_addr = a_.master_address();
  spec.master_port = a_.master_port();

  // The base model; a fine-tuned one ("ft:<base>:<suffix>:<job>") is its
  // base plus the adapter that job published (jobs/<job>/result).
  std::string base = a_.base_model();
  if (absl::StartsWith(base, "ft:")) {
    std::vector<std::string> parts = absl::StrSplit(base, ':');
    if (parts.size() < 4 || !SafeName(parts[1]) || !SafeName(parts.back())) {
      return absl::InvalidArgumentError(
          absl::StrCat("base_model '", base, "' is not ft:<base>:<suffix>:<job>"));
    }
    spec.init_adapter_dir = absl::StrCat(o.artifacts_dir, "/jobs/", parts.back(), "/result");
    if (!fs::is_directory(spec.init_adapter_dir)) {
      return absl::NotFoundError(absl::StrCat("base_model '", base, "': adapter ",
                                              spec.init_adapter_dir, " does not exist"));
    }
    base = parts[1];
  }
  if (!a_.init_adapter_artifact().empty()) {  // the scheduler names the adapter (base is the root)
    if (!SafeArtifact(a_.init_adapter_artifact()))
      return absl::InvalidArgumentError("init_adapter_artifact: not an artifact name");
    spec.init_adapter_dir = absl::StrCat(o.artifacts_dir, "/", a_.init_adapter_artifact());
  }
  if (!SafeName(base)) return absl::InvalidArgumentError(absl::StrCat("base_model '", base, "'"));
  spec.base_model_dir = absl::StrCat(o.models_dir, "/", base);
  spec.base_model_id = base;
  if (!fs::is_directory(spec.base_model_dir)) {
    return absl::NotFoundError(absl::StrCat("base model '", base, "' is not on node ",
                                            o.node_name, " (no directory ", spec.base_model_dir,
                                            ")"));
  }
  TF_ASSIGN_OR_RETURN(int64_t vocab, agent_.TokenizerVocab(spec.base_model_dir));

  const v1::Hyperparameters& h = a_.hyperparameters();
  WorkerHyperparameters& w = spec.hyper;
  if (h.has_epochs()) w.epochs = h.epochs();
  if (h.has_batch_size()) w.batch_size = h.batch_size();
  if (h.has_micro_batch_size()) w.micro_batch_size = h.micro_batch_size();
  if (h.has_learning_rate()) w.learning_rate = h.learning_rate();
  if (h.has_warmup_ratio()) w.warmup_ratio = h.warmup_ratio();
  if (h.has_lora_rank()) w.lora_rank = h.lora_rank();
  if (h.has_lora_alpha()) w.lora_alpha = h.lora_alpha();
  if (h.has_lora_dropout()) w.lora_dropout = h.lora_dropout();
  for (const std::string& m : h.lora_target_modules()) w.lora_target_modules.push_back(m);
  if (h.has_max_sequence_length()) w.max_sequence_length = h.max_sequence_length();
  if (h.has_seed()) w.seed = h.seed();
  if (h.has_checkpoint_interval_steps()) w.checkpoint_interval_steps = h.checkpoint_interval_steps();
  if (h.has_eval_interval_steps()) w.eval_interval_steps = h.eval_interval_steps();
  if (h.has_weight_decay()) w.weight_decay = h.weight_decay();
  switch (h.lr_scheduler()) {
    case v1::LR_SCHEDULER_LINEAR: w.lr_scheduler = LrScheduler::kLinear; break;
    case v1::LR_SCHEDULER_CONSTANT: w.lr_scheduler = LrScheduler::kConstant; break;
    default: w.lr_scheduler = LrScheduler::kCosine; break;
  }
  if (h.has_max_steps()) w.max_steps = h.max_steps();
  if (h.has_packing()) w.packing = h.packing();
  if (h.has_gradient_checkpointing()) w.gradient_checkpointing = h.gradient_checkpointing();
  if (h.has_keep_checkpoints()) w.keep_checkpoints = h.keep_checkpoints();
  if (h.has_early_stopping_patience()) w.early_stopping_patience = h.early_stopping_patience();
  if (a_.method().has_dpo()) {
    spec.objective = TrainingObjective::kDpo;
    if (a_.method().dpo().has_beta()) spec.dpo_beta = a_.method().dpo().beta();
  } else {
    spec.objective = TrainingObjective::kSupervised;
  }
  spec.method = a_.adapter() == v1::ADAPTER_TYPE_FULL ? TrainingMethod::kFull : TrainingMethod::kLora;
  spec.write_merged = a_.write_merged();
  spec.task = a_.task() == v1::TRAINING_TASK_CLASSIFICATION ? TrainingTask::kClassification
                                                            : TrainingTask::kChat;
  if (!o.gpus.empty()) {
    spec.device = a_.gpu_indices_size() > 0 ? absl::StrCat("cuda:", a_.gpu_indices(0)) : "cuda";
  }

  const std::string job_root = absl::StrCat(o.artifacts_dir, "/jobs/", a_.job_id());
  spec.output_dir = job_root + "/result";
  spec.checkpoint_root = job_root + "/checkpoints";
  if (!a_.resume_checkpoint().empty()) {
    if (!SafeArtifact(a_.resume_checkpoint())) {
      return absl::InvalidArgumentError(
          absl::StrCat("resume_checkpoint '", a_.resume_checkpoint(), "' is not an artifact name"));
    }
    spec.resume_from = absl::StrCat(o.artifacts_dir, "/", a_.resume_checkpoint());
  }
  // Checked before any download (with a stand-in for the shards), so that
  // a bad value fails fast and names itself.
  {
    WorkerSpec preflight = spec;
    preflight.train_shards = {"(fetched next)"};
    if (spec.task == TrainingTask::kClassification) preflight.num_labels = 2;  // from the shards
    TF_RETURN_IF_ERROR(ValidateWorkerSpec(preflight));
  }

  ShardFetchRequest req;
  req.tenant = a_.tenant();
  req.base_model = base;
  req.max_sequence_length = static_cast<int32_t>(w.max_sequence_length);
  req.rank = static_cast<int32_t>(spec.rank);
  req.world_size = static_cast<int32_t>(spec.world_size);
  req.vocab_size = vocab;
  for (const auto& [field, file, out] :
       {std::make_tuple("training_file", a_.training_file(), &spec.train_shards),
        std::make_tuple("validation_file", a_.validation_file(), &spec.valid_shards)}) {
    if (file.empty()) continue;
    req.file_id = file;
    absl::StatusOr<FetchedShard> shard = agent_.fetcher_.Fetch(req, &cancel_);
    if (!shard.ok()) {
      return absl::Status(shard.status().code(), absl::StrCat(field, " ", file, ": ",
                                                              shard.status().message()));
    }
    out->push_back(shard->path);
    if (spec.task == TrainingTask::kClassification && out == &spec.train_shards) {
      // The training file's labels name the classes; validation maps to them.
      if (shard->label_names.size() < 2) {
        return absl::InvalidArgumentError(absl::StrCat(
            "training_file ", file, ": classification needs at least 2 distinct labels, it has ",
            shard->label_names.size()));
      }
      spec.label_names = shard->label_names;
      spec.num_labels = static_cast<int64_t>(spec.label_names.size());
      req.label_names = spec.label_names;
    }
  }
  if (spec.train_shards.empty()) {
    return absl::InvalidArgumentError("training_file: the assignment names none");
  }
  TF_RETURN_IF_ERROR(ValidateWorkerSpec(spec));
  return spec;
}

void TrainerAgent::Runner::Run() {
  const TrainerAgentOptions& o = agent_.options_;
  spdlog::info("assignment={} job={} rank={}/{} fetching", a_.assignment_id(), a_.job_id(),
               a_.rank(), a_.world_size());
  absl::StatusOr<WorkerSpec> spec = Prepare();
  std::string work_dir = absl::StrCat(o.data_dir, "/work/", a_.assignment_id());
  if (spec.ok()) {
    std::error_code ec;
    fs::create_directories(work_dir, ec);
    absl::Status written = WriteWorkerSpecFile(*spec, work_dir + "/spec.json");
    if (!written.ok()) spec = written;
  }
  if (withdrawn()) {
    agent_.metrics_.withdrawn.Increment();
    SetPhase(iv1::AssignmentStatus::PHASE_EXITED);
    absl::MutexLock lock(&mu_);
    done_ = true;
    return;
  }
  if (!spec.ok()) {
    spdlog::error("assignment={} job={} cannot start: {}", a_.assignment_id(), a_.job_id(),
                  spec.status().ToString());
    std::string code = spec.status().code() == absl::StatusCode::kInvalidArgument ||
                               spec.status().code() == absl::StatusCode::kNotFound
                           ? "invalid_assignment"
                           : "fetch_failed";
    agent_.metrics_.not_started.Increment();
    Complete(false, MakeError(code, std::string(spec.status().message())), "", 0);
    return;
  }

  WorkerProcessOptions wo;
  wo.argv = {o.worker_binary, "--spec=" + work_dir + "/spec.json", "--report_fd=3"};
  wo.report_fd = 3;
  wo.env = {"OMP_WAIT_POLICY=PASSIVE"};
  // OpenBLAS's idle threads otherwise spin (sched_yield) for ~2^28 cycles
  // after each call, taking the CPU from the OpenMP threads that run the
  // worker's own kernels; an operator's setting is kept.
  if (std::getenv("OPENBLAS_THREAD_TIMEOUT") == nullptr) {
    wo.env.push_back("OPENBLAS_THREAD_TIMEOUT=4");
  }
  wo.log_file = log_file_ = work_dir + "/worker.log";
  wo.report_timeout = o.worker_timeout;
  absl::Status started;
  bool stopped_early = false, withdrawn_early = false;
  {
    absl::MutexLock lock(&mu_);
    stopped_early = stop_requested_;
    withdrawn_early = withdrawn_;
    if (!stopped_early && !withdrawn_early) {
      // Started under the lock, so that a Withdraw either comes first (no
      // worker) or finds the worker to kill.
      auto worker = WorkerProcess::Start(
          wo,
          [this](std::string line) {
            absl::MutexLock l(&mu_);
            events_.push_back(Event{std::move(line), std::nullopt});
          },
          [this](const WorkerExit& exit) {
            absl::MutexLock l(&mu_);
            events_.push_back(Event{std::nullopt, exit});
          });
      if (worker.ok()) {
        worker_ = std::move(*worker);
        agent_.metrics_.workers_started.Increment();
        phase_ = iv1::AssignmentStatus::PHASE_RUNNING;
        spdlog::info("assignment={} job={} worker pid={} started (log {})", a_.assignment_id(),
                     a_.job_id(), worker_->pid(), log_file_);
      } else {
        started = worker.status();
      }
    }
  }
  if (withdrawn_early) {
    agent_.metrics_.withdrawn.Increment();
    absl::MutexLock lock(&mu_);
    phase_ = iv1::AssignmentStatus::PHASE_EXITED;
    done_ = true;
    return;
  }
  if (stopped_early) {
    // Asked to stop before it started: nothing ran, nothing to save.
    agent_.metrics_.stopped.Increment();
    Complete(false, MakeError("stopped", "stopped before the worker started"), "", 0);
    return;
  }
  if (!started.ok()) {
    agent_.metrics_.not_started.Increment();
    Complete(false, MakeError("worker_failed_to_start", std::string(started.message())), "", 0);
    return;
  }
  for (;;) {
    Event e;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](std::deque<Event>* q) { return !q->empty(); }, &events_));
      e = std::move(events_.front());
      events_.pop_front();
    }
    if (e.line) {
      HandleLine(*e.line);
    } else {
      Finish(*e.exit);
      return;
    }
  }
}

void TrainerAgent::Runner::HandleLine(const std::string& line) {
  absl::StatusOr<ReportEvent> parsed = ParseReportLine(line);
  if (!parsed.ok()) {
    if (++bad_lines_ <= 5) {
      spdlog::warn("assignment={} unreadable worker report: {}", a_.assignment_id(),
                   parsed.status().ToString());
    }
    return;
  }
  const ReportEvent& ev = *parsed;
  if (withdrawn()) return;
  switch (ev.kind) {
    case ReportKind::kStarted: {
      total_steps_ = ev.total_steps;
      absl::MutexLock lock(&mu_);
      step_ = ev.resumed_step;
      break;
    }
    case ReportKind::kProgress:
    case ReportKind::kEval: {
      if (ev.total_steps > 0) total_steps_ = ev.total_steps;
      v1::TrainingMetrics& m = last_metrics_;
      m.set_step(ev.step);
      m.set_epoch(ev.epoch);
      if (ev.kind == ReportKind::kProgress) {
        if (ev.train_loss) {
          m.set_train_loss(*ev.train_loss);
          m.set_train_perplexity(std::exp(*ev.train_loss));
        }
        if (ev.train_token_accuracy) m.set_train_token_accuracy(*ev.train_token_accuracy);
        if (ev.learning_rate) m.set_learning_rate(*ev.learning_rate);
        if (ev.tokens_per_second) m.set_tokens_per_second(*ev.tokens_per_second);
        if (ev.trained_tokens > 0) m.set_trained_tokens(ev.trained_tokens);
      } else {
        if (ev.valid_loss) m.set_valid_loss(*ev.valid_loss);
        if (ev.valid_token_accuracy) m.set_valid_token_accuracy(*ev.valid_token_accuracy);
      }
      // The method's figures (DPO rewards, classification macro-F1); an
      // evaluation's under "valid_".
      for (const auto& [key, value] : ev.metrics) {
        (*m.mutable_extra())[ev.kind == ReportKind::kEval ? absl::StrCat("valid_", key) : key] =
            value;
      }
      {
        absl::MutexLock lock(&mu_);
        step_ = ev.step;
      }
      ExportProgress(ev);
      iv1::ReportProgressRequest req;
      req.set_assignment_id(a_.assignment_id());
      *req.mutable_metrics() = m;
      req.set_total_steps(total_steps_);
      if (ev.kind == ReportKind::kEval) {
        req.set_message(absl::StrCat("step ", ev.step, "/", total_steps_, " evaluation"));
      }
      // Progress is best effort: the next report carries the same figures.
      auto resp = Call(&iv1::TrainerControlService::Stub::ReportProgress, req, false);
      if (!resp.ok()) {
        spdlog::warn("assignment={} progress not delivered: {}", a_.assignment_id(),
                     resp.status().ToString());
      } else if (!resp->keep_running()) {
        spdlog::info("assignment={} job={}: the scheduler says stop", a_.assignment_id(),
                     a_.job_id());
        CheckpointAndStop();
      }
      break;
    }
    case ReportKind::kCheckpoint: {
      v1::TrainingMetrics m = last_metrics_;
      m.set_step(ev.step);
      m.set_epoch(ev.epoch);
      FillMetrics(ev.metrics, &m);
      ReportCheckpoint(ev.step, ev.checkpoint_dir, m);
      break;
    }
    case ReportKind::kCompleted:
      completed_ = ev;
      break;
    case ReportKind::kStopped:
      stopped_ = ev;
      if (!ev.checkpoint_dir.empty() && ev.checkpoint_dir != reported_checkpoint_) {
        v1::TrainingMetrics m = last_metrics_;
        m.set_step(ev.step);
        ReportCheckpoint(ev.step, ev.checkpoint_dir, m);
      }
      break;
    case ReportKind::kError:
      error_ = ev;
      break;
  }
}

void TrainerAgent::Runner::ReportCheckpoint(int64_t step, const std::string& dir,
                                            const v1::TrainingMetrics& metrics) {
  std::string artifact = ArtifactName(agent_.options_.artifacts_dir, dir);
  if (artifact.empty()) {
    spdlog::error("assignment={} checkpoint {} is outside --artifacts_dir {}; not reported",
                  a_.assignment_id(), dir, agent_.options_.artifacts_dir);
    return;
  }
  iv1::ReportCheckpointRequest req;
  req.set_assignment_id(a_.assignment_id());
  req.set_step(step);
  req.set_artifact(artifact);
  *req.mutable_metrics() = metrics;
  auto resp = Call(&iv1::TrainerControlService::Stub::ReportCheckpoint, req, true);
  if (resp.ok()) {
    reported_checkpoint_ = dir;
    spdlog::info("assignment={} job={} checkpoint step={} artifact={} id={}", a_.assignment_id(),
                 a_.job_id(), step, artifact, resp->checkpoint_id());
  } else {
    spdlog::warn("assignment={} checkpoint {} not reported: {}", a_.assignment_id(), artifact,
                 resp.status().ToString());
  }
}

void TrainerAgent::Runner::ExportProgress(const ReportEvent& ev) {
  const prometheus::Labels labels = {{"job_id", a_.job_id()}, {"rank", std::to_string(a_.rank())}};
  AgentMetrics& m = agent_.metrics_;
  auto set = [&](prometheus::Family<prometheus::Gauge>& family, double value) {
    prometheus::Gauge& g = family.Add(labels);
    g.Set(value);
    exported_.emplace(&family, &g);
  };
  set(m.step, static_cast<double>(ev.step));
  if (ev.kind == ReportKind::kProgress) {
    if (ev.train_loss) set(m.train_loss, *ev.train_loss);
    if (ev.tokens_per_second) set(m.tokens_per_second, *ev.tokens_per_second);
  } else if (ev.valid_loss) {
    set(m.valid_loss, *ev.valid_loss);
  }
}

void TrainerAgent::Runner::Finish(const WorkerExit& exit) {
  // The rank is over: its progress series go after kRetiredKeep.
  agent_.metrics_.Retire(exported_, absl::Now());
  exported_.clear();
  int64_t step;
  {
    absl::MutexLock lock(&mu_);
    phase_ = iv1::AssignmentStatus::PHASE_EXITED;
    step = step_;
    if (withdrawn_) {
      spdlog::info("assignment={} job={} worker stopped ({})", a_.assignment_id(), a_.job_id(),
                   exit.Describe());
      agent_.metrics_.withdrawn.Increment();
      done_ = true;
      return;
    }
  }
  spdlog::info("assignment={} job={} worker {} at step {}", a_.assignment_id(), a_.job_id(),
               exit.Describe(), step);
  if (exit.success() && completed_) {
    std::string result;
    if (!completed_->result_dir.empty()) {
      result = ArtifactName(agent_.options_.artifacts_dir, completed_->result_dir);
      if (result.empty()) {
        Complete(false,
                 MakeError("result_outside_artifacts",
                           absl::StrCat("the worker published its result at ", completed_->result_dir,
                                        ", outside --artifacts_dir ", agent_.options_.artifacts_dir)),
                 "", completed_->trained_tokens);
        return;
      }
    }
    agent_.metrics_.succeeded.Increment();
    // What fine-tuning bought, on the same validation data (when there is
    // some): the fine-tuned model and the model it started from.
    std::optional<v1::JobEvaluation> evaluation;
    const ReportEvent& c = *completed_;
    auto base_acc = c.metrics.find("base_valid_token_accuracy");
    if (c.valid_loss || c.valid_token_accuracy || c.base_valid_loss ||
        base_acc != c.metrics.end()) {
      evaluation.emplace();
      if (c.valid_loss) evaluation->set_valid_loss(*c.valid_loss);
      if (c.valid_token_accuracy) evaluation->set_valid_token_accuracy(*c.valid_token_accuracy);
      if (c.base_valid_loss) evaluation->set_base_valid_loss(*c.base_valid_loss);
      if (base_acc != c.metrics.end()) evaluation->set_base_valid_token_accuracy(base_acc->second);
    }
    Complete(true, v1::Error(), result, c.trained_tokens, evaluation);
    return;
  }
  if (exit.success() && stopped_) {
    agent_.metrics_.stopped.Increment();
    Complete(false,
             MakeError("stopped", absl::StrCat("checkpointed at step ", stopped_->step,
                                               " and stopped on request")),
             "", 0);
    return;
  }
  if (error_) {
    agent_.metrics_.failed.Increment();
    std::string code = absl::AsciiStrToLower(error_->code.empty() ? "unknown" : error_->code);
    Complete(false, MakeError(code, absl::StrCat(error_->message, " (worker ", exit.Describe(), ")")),
             "", 0);
    return;
  }
  std::string message = absl::StrCat("worker ", exit.Describe(), " at step ", step);
  if (exit.success()) absl::StrAppend(&message, " without reporting completion");
  std::string last = LastLogLine(log_file_);
  if (!last.empty() && !exit.hung) absl::StrAppend(&message, "; its last output: ", last);
  (exit.hung ? agent_.metrics_.hung : agent_.metrics_.crashed).Increment();
  Complete(false, MakeError(exit.hung ? "worker_hung" : "worker_crashed", message), "", 0);
}

void TrainerAgent::Runner::Complete(bool succeeded, const v1::Error& error,
                                    const std::string& result_artifact, int64_t trained_tokens,
                                    const std::optional<v1::JobEvaluation>& evaluation) {
  iv1::CompleteAssignmentRequest req;
  if (evaluation) *req.mutable_evaluation() = *evaluation;
  req.set_assignment_id(a_.assignment_id());
  req.set_succeeded(succeeded);
  if (!succeeded) *req.mutable_error() = error;
  req.set_result_artifact(result_artifact);
  req.set_trained_tokens(trained_tokens);
  if (succeeded && completed_) {
    v1::JobEvaluation* e = req.mutable_evaluation();
    if (completed_->valid_loss) e->set_valid_loss(*completed_->valid_loss);
    if (completed_->valid_token_accuracy) e->set_valid_token_accuracy(*completed_->valid_token_accuracy);
    if (completed_->base_valid_loss) e->set_base_valid_loss(*completed_->base_valid_loss);
    auto base_acc = completed_->metrics.find("base_valid_token_accuracy");
    if (base_acc != completed_->metrics.end()) e->set_base_valid_token_accuracy(base_acc->second);
    auto peak = completed_->metrics.find("peak_rss_bytes");  // the measured peak, beside the estimate
    if (peak != completed_->metrics.end()) req.set_peak_rss_bytes(static_cast<int64_t>(peak->second));
    auto device = completed_->metrics.find("peak_device_bytes");
    if (device != completed_->metrics.end()) req.set_peak_device_bytes(static_cast<int64_t>(device->second));
    auto runtime = completed_->metrics.find("runtime_bytes");
    if (runtime != completed_->metrics.end()) req.set_runtime_bytes(static_cast<int64_t>(runtime->second));
  }
  auto resp = Call(&iv1::TrainerControlService::Stub::CompleteAssignment, req, true);
  if (resp.ok()) {
    spdlog::info("assignment={} job={} reported {}{}", a_.assignment_id(), a_.job_id(),
                 succeeded ? "success" : "failure: ", succeeded ? result_artifact : error.message());
  } else {
    spdlog::warn("assignment={} completion not delivered: {}", a_.assignment_id(),
                 resp.status().ToString());
  }
  absl::MutexLock lock(&mu_);
  phase_ = iv1::AssignmentStatus::PHASE_EXITED;
  done_ = true;
}

// ---------------------------------------------------------------------------

namespace {

prometheus::Counter& Ended(prometheus::Registry& r, const std::string& outcome) {
  return prometheus::BuildCounter()
      .Name("tunefleet_trainer_assignments_ended_total")
      .Help("Assignments whose worker ended (or never started), by outcome")
      .Register(r)
      .Add({{"outcome", outcome}});
}

prometheus::Counter& Plain(prometheus::Registry& r, const std::string& name,
                           const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(r).Add({});
}

}  // namespace

AgentMetrics::AgentMetrics(prometheus::Registry& r)
    : registrations(Plain(r, "tunefleet_trainer_registrations_total",
                          "Registrations with the scheduler (more than one: re-registered)")),
      scheduler_errors(Plain(r, "tunefleet_trainer_scheduler_call_failures_total",
                             "Scheduler calls that failed (each retry counts)")),
      workers_started(Plain(r, "tunefleet_trainer_workers_started_total", "Worker processes started")),
      succeeded(Ended(r, "succeeded")),
      failed(Ended(r, "failed")),
      crashed(Ended(r, "crashed")),
      hung(Ended(r, "hung")),
      stopped(Ended(r, "stopped")),
      withdrawn(Ended(r, "withdrawn")),
      not_started(Ended(r, "not_started")),
      train_loss(prometheus::BuildGauge()
                     .Name("tunefleet_trainer_train_loss")
                     .Help("Last training loss a running rank reported, by job and rank")
                     .Register(r)),
      valid_loss(prometheus::BuildGauge()
                     .Name("tunefleet_trainer_valid_loss")
                     .Help("Last validation loss a running rank reported, by job and rank")
                     .Register(r)),
      tokens_per_second(prometheus::BuildGauge()
                            .Name("tunefleet_trainer_tokens_per_second")
                            .Help("Training tokens per second of a running rank, by job and rank")
                            .Register(r)),
      step(prometheus::BuildGauge()
               .Name("tunefleet_trainer_step")
               .Help("Last optimizer step a running rank reported, by job and rank")
               .Register(r)) {}

void AgentMetrics::Retire(const std::set<Series>& series, absl::Time now) {
  absl::MutexLock lock(&retired_mu_);
  for (const Series& s : series) retired_.emplace_back(now, s);
}

void AgentMetrics::SweepRetired(absl::Time now) {
  absl::MutexLock lock(&retired_mu_);
  auto keep = retired_.begin();
  for (auto& r : retired_) {
    if (now - r.first >= kRetiredKeep) {
      // A later rank of the same job on this node may have set the same
      // series again; it is removed with the older one (harmless: it is set
      // again at that rank's next report).
      r.second.first->Remove(r.second.second);
    } else {
      *keep++ = r;
    }
  }
  retired_.erase(keep, retired_.end());
}

TrainerAgent::TrainerAgent(TrainerAgentOptions options, std::shared_ptr<grpc::Channel> scheduler,
                           std::shared_ptr<grpc::Channel> dataset, prometheus::Registry* registry)
    : options_([&] {
        options.shards.cache_dir = options.data_dir + "/shards";
        options.shards.api_key = options.api_key;
        return std::move(options);
      }()),
      own_registry_(registry == nullptr ? std::make_shared<prometheus::Registry>() : nullptr),
      metrics_(registry != nullptr ? *registry : *own_registry_),
      scheduler_(iv1::TrainerControlService::NewStub(scheduler)),
      fetcher_(options_.shards, std::move(dataset)) {}

TrainerAgent::~TrainerAgent() { Stop(); }

void TrainerAgent::Start(const std::string& agent_address) {
  {
    absl::MutexLock lock(&mu_);
    agent_address_ = agent_address;
  }
  control_ = std::thread([this] { ControlLoop(); });
}

void TrainerAgent::Stop() {
  std::map<std::string, std::unique_ptr<Runner>> runners;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    runners.swap(runners_);
  }
  stop_.Cancel();
  for (auto& [id, r] : runners) r->Withdraw();
  runners.clear();  // joins
  if (control_.joinable()) control_.join();
}

bool TrainerAgent::SleepFor(absl::Duration d) { return stop_.SleepFor(d); }

rpc::CallOptions TrainerAgent::SchedulerCallOptions() {
  rpc::CallOptions o;
  o.api_key = options_.api_key;
  o.timeout = options_.rpc_timeout;
  o.max_backoff = options_.max_backoff;
  return o;
}

bool TrainerAgent::Register() {
  iv1::RegisterNodeRequest req;
  req.set_node_name(options_.node_name);
  for (const auto& g : options_.gpus) *req.add_gpus() = g;
  req.set_slots(options_.gpus.empty() ? options_.slots : 0);
  {
    absl::MutexLock lock(&mu_);
    req.set_agent_address(agent_address_);
  }
  // Until it works or the agent stops, whatever the error: a node that is
  // not registered has nothing to do (a wrong key is logged and counted at
  // every attempt).
  rpc::CallOptions o = SchedulerCallOptions();
  o.max_attempts = 0;
  o.retry_every_error = true;
  o.cancel = &stop_;
  o.on_retry = [&](const absl::Status& s, int, absl::Duration wait) {
    metrics_.scheduler_errors.Increment();
    spdlog::warn("node={} registration failed, retrying in {}: {}", options_.node_name,
                 absl::FormatDuration(wait), s.ToString());
  };
  absl::StatusOr<iv1::RegisterNodeResponse> resp =
      rpc::CallUnary(scheduler_.get(), &iv1::TrainerControlService::Stub::RegisterNode, req, o);
  if (!resp.ok()) return false;  // stopped
  absl::MutexLock lock(&mu_);
  if (stopping_) return false;
  metrics_.registrations.Increment();
  node_id_ = resp->node_id();
  if (resp->heartbeat_interval_ms() > 0) {
    heartbeat_interval_ = absl::Milliseconds(resp->heartbeat_interval_ms());
  }
  spdlog::info("node={} registered as {} (heartbeat every {})", options_.node_name, node_id_,
               absl::FormatDuration(heartbeat_interval_));
  return true;
}

iv1::HeartbeatRequest TrainerAgent::HeartbeatRequest() const {
  iv1::HeartbeatRequest req;
  absl::MutexLock lock(&mu_);
  req.set_node_id(node_id_);
  for (const auto& [id, r] : runners_) *req.add_assignments() = r->Status();
  for (const std::string& id : finished_) {
    iv1::AssignmentStatus* s = req.add_assignments();
    s->set_assignment_id(id);
    s->set_phase(iv1::AssignmentStatus::PHASE_EXITED);
  }
  return req;
}

void TrainerAgent::ControlLoop() {
  absl::Duration backoff = absl::Milliseconds(100);
  for (;;) {
    bool registered;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      registered = !node_id_.empty();
    }
    if (!registered) {
      if (!Register()) return;
      continue;
    }
    // One attempt: the loop is the retry (the next heartbeat carries fresh
    // assignment states), and NOT_FOUND means register again.
    rpc::CallOptions o = SchedulerCallOptions();
    o.max_attempts = 1;
    o.cancel = &stop_;
    absl::StatusOr<iv1::HeartbeatResponse> answer = rpc::CallUnary(
        scheduler_.get(), &iv1::TrainerControlService::Stub::Heartbeat, HeartbeatRequest(), o);
    absl::Status s = answer.status();
    metrics_.SweepRetired(absl::Now());
    absl::Duration interval;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      interval = heartbeat_interval_;
      if (s.ok()) last_heartbeat_ = absl::Now();
    }
    if (s.ok()) {
      backoff = absl::Milliseconds(100);
      Reconcile(*answer);
      if (!SleepFor(interval)) return;
      continue;
    }
    metrics_.scheduler_errors.Increment();
    if (absl::IsNotFound(s)) {
      spdlog::warn("node={} the scheduler does not know this node; registering again: {}",
                   options_.node_name, s.ToString());
      absl::MutexLock lock(&mu_);
      node_id_.clear();
    } else {
      spdlog::warn("node={} heartbeat failed, retrying in {}: {}", options_.node_name,
                   absl::FormatDuration(backoff), s.ToString());
      if (!SleepFor(backoff)) return;
      backoff = std::min(backoff * 2, options_.max_backoff);
    }
  }
}

void TrainerAgent::Reconcile(const iv1::HeartbeatResponse& response) {
  std::map<std::string, const iv1::Assignment*> desired;
  for (const auto& a : response.assignments()) desired[a.assignment_id()] = &a;
  std::set<std::string> stop(response.checkpoint_and_stop().begin(),
                             response.checkpoint_and_stop().end());
  std::vector<std::unique_ptr<Runner>> ended;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    for (auto it = runners_.begin(); it != runners_.end();) {
      Runner& r = *it->second;
      if (!desired.count(it->first)) {
        spdlog::info("assignment={} is no longer desired; stopping its worker", it->first);
        r.Withdraw();
      } else if (stop.count(it->first)) {
        r.CheckpointAndStop();
      }
      if (r.done()) {
        if (desired.count(it->first)) finished_.insert(it->first);
        ended.push_back(std::move(it->second));
        it = runners_.erase(it);
      } else {
        ++it;
      }
    }
    for (auto it = finished_.begin(); it != finished_.end();) {
      it = desired.count(*it) ? std::next(it) : finished_.erase(it);
    }
    for (const auto& [id, a] : desired) {
      if (runners_.count(id) || finished_.count(id)) continue;
      auto runner = std::make_unique<Runner>(this, *a);
      if (stop.count(id)) runner->CheckpointAndStop();
      runner->Start();
      runners_[id] = std::move(runner);
    }
  }
  ended.clear();  // joins finished runner threads outside the lock
}

absl::StatusOr<int64_t> TrainerAgent::TokenizerVocab(const std::string& model_dir) {
  {
    absl::MutexLock lock(&vocab_mu_);
    auto it = vocab_.find(model_dir);
    if (it != vocab_.end()) return it->second;
  }
  // Loaded outside the lock (a large tokenizer.json takes a while); two
  // runners may both load it once, harmlessly.
  auto tokenizer = text::Tokenizer::FromDirectory(model_dir);
  if (!tokenizer.ok()) {
    return absl::Status(tokenizer.status().code(),
                        absl::StrCat("tokenizer of ", model_dir, ": ", tokenizer.status().message()));
  }
  int64_t vocab = (*tokenizer)->vocab_size();
  absl::MutexLock lock(&vocab_mu_);
  vocab_[model_dir] = vocab;
  return vocab;
}

iv1::NodeStatus TrainerAgent::Status() const {
  iv1::NodeStatus s;
  absl::MutexLock lock(&mu_);
  s.set_node_id(node_id_);
  s.set_node_name(options_.node_name);
  for (const auto& g : options_.gpus) *s.add_gpus() = g;
  for (const auto& [id, r] : runners_) *s.add_assignments() = r->Status();
  for (const std::string& id : finished_) {
    iv1::AssignmentStatus* a = s.add_assignments();
    a->set_assignment_id(id);
    a->set_phase(iv1::AssignmentStatus::PHASE_EXITED);
  }
  if (last_heartbeat_ != absl::InfinitePast()) {
    s.mutable_last_heartbeat()->set_seconds(absl::ToUnixSeconds(last_heartbeat_));
  }
  return s;
}

}  // namespace tunefleet::trainer
