// The trainer agent's reconcile loop: registers the node with the
// scheduler, heartbeats at the interval it returns (re-registering when the
// scheduler has forgotten the node, backing off while it is unreachable),
// and drives the local workers toward the desired assignment set in each
// heartbeat answer: a new assignment is fetched (shards, base model) and its
// worker started; one absent from the set is killed (its process group gets
// SIGKILL, nothing is reported); one named in checkpoint_and_stop gets
// SIGTERM (the worker checkpoints and exits 0). Worker reports are forwarded
// (progress, checkpoints, completion) and a crash or hang becomes a failed
// attempt; a worker never takes the agent down.
//
// It is a gRPC client (scheduler, dataset) without libtorch; the worker
// binary does the training. Thread-safe: one control thread, one runner
// thread per assignment (plus its supervisor thread); Status() may be called
// from any thread.
#pragma once

#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/rpc/client.h"
#include "services/trainer/agent/shard_fetcher.h"
#include "tunefleet/internal/v1/trainer.grpc.pb.h"

namespace tunefleet::trainer {

struct TrainerAgentOptions {
  std::string node_name;
  // CPU slots offered when there are no GPUs.
  int32_t slots = 1;
  std::vector<internal::v1::GpuInfo> gpus;
  // Base models: <models_dir>/<base_model>/ (Hugging Face directories).
  std::string models_dir;
  // Shared artifact store root; artifact names are relative to it.
  std::string artifacts_dir;
  // Local cache (shards) and per-assignment work directories (spec, log).
  std::string data_dir;
  std::string worker_binary;
  // A worker that reports nothing for this long is killed (failed attempt).
  absl::Duration worker_timeout = absl::Minutes(10);
  // The internal API key sent to the scheduler and the dataset service.
  std::string api_key;
  // Deadline of every unary call to the scheduler.
  absl::Duration rpc_timeout = absl::Seconds(10);
  // Retries of an unreachable scheduler back off up to this.
  absl::Duration max_backoff = absl::Seconds(5);
  ShardFetcherOptions shards;  // cache_dir and api_key are filled from the above
};

// What the agent did, for /metrics (handles kept: incrementing is cheap).
struct AgentMetrics {
  explicit AgentMetrics(prometheus::Registry& registry);
  prometheus::Counter& registrations;       // tunefleet_trainer_registrations_total
  prometheus::Counter& scheduler_errors;    // ..._scheduler_call_failures_total
  prometheus::Counter& workers_started;     // ..._workers_started_total
  // tunefleet_trainer_assignments_ended_total{outcome}
  prometheus::Counter& succeeded;
  prometheus::Counter& failed;         // the worker reported an error
  prometheus::Counter& crashed;        // died without one (signal, nonzero exit)
  prometheus::Counter& hung;           // killed after --worker_timeout
  prometheus::Counter& stopped;        // checkpointed and stopped on request
  prometheus::Counter& withdrawn;      // killed: no longer desired
  prometheus::Counter& not_started;    // fetch, model or spec failed
  // The ranks' last progress, labelled {job_id, rank}:
  // tunefleet_trainer_train_loss, tunefleet_trainer_valid_loss,
  // tunefleet_trainer_tokens_per_second (this rank's tokens),
  // tunefleet_trainer_step. A rank's series outlive it by kRetiredKeep, so
  // that scrapes see a short job's final values, then go (SweepRetired).
  prometheus::Family<prometheus::Gauge>& train_loss;
  prometheus::Family<prometheus::Gauge>& valid_loss;
  prometheus::Family<prometheus::Gauge>& tokens_per_second;
  prometheus::Family<prometheus::Gauge>& step;

  using Series = std::pair<prometheus::Family<prometheus::Gauge>*, prometheus::Gauge*>;
  static constexpr absl::Duration kRetiredKeep = absl::Minutes(5);
  // Thread-safe.
  void Retire(const std::set<Series>& series, absl::Time now);
  void SweepRetired(absl::Time now);

 private:
  absl::Mutex retired_mu_;
  std::vector<std::pair<absl::Time, Series>> retired_ ABSL_GUARDED_BY(retired_mu_);
};

class TrainerAgent {
 public:
  // `registry` (optional) receives the agent's metrics.
  TrainerAgent(TrainerAgentOptions options, std::shared_ptr<grpc::Channel> scheduler,
               std::shared_ptr<grpc::Channel> dataset, prometheus::Registry* registry = nullptr);
  // Stop()s.
  ~TrainerAgent();
  TrainerAgent(const TrainerAgent&) = delete;
  TrainerAgent& operator=(const TrainerAgent&) = delete;

  // Starts the control thread (register, heartbeat, reconcile).
  // `agent_address`: where this agent's own gRPC service is reached (sent at
  // registration; its host is the rendezvous host of ranks 0 placed here).
  void Start(const std::string& agent_address);
  // Kills every worker (SIGKILL to its group), reports nothing more, joins
  // every thread. The scheduler finds out through the missed heartbeats.
  void Stop();

  // What GetNodeStatus answers.
  internal::v1::NodeStatus Status() const;
  const AgentMetrics& metrics() const { return metrics_; }

 private:
  class Runner;

  void ControlLoop();
  // Registers (retrying until it works or the agent stops).
  bool Register();
  void Reconcile(const internal::v1::HeartbeatResponse& response);
  internal::v1::HeartbeatRequest HeartbeatRequest() const;
  // Sleeps until `d` passes or the agent stops; false when stopping.
  bool SleepFor(absl::Duration d);
  // The key, deadline and backoff of every scheduler call.
  rpc::CallOptions SchedulerCallOptions();
  // The vocabulary of a model directory's tokenizer (what its shard files
  // are checked against), loaded once per directory.
  absl::StatusOr<int64_t> TokenizerVocab(const std::string& model_dir);

  const TrainerAgentOptions options_;
  std::shared_ptr<prometheus::Registry> own_registry_;  // when none is given
  AgentMetrics metrics_;
  std::unique_ptr<internal::v1::TrainerControlService::Stub> scheduler_;
  ShardFetcher fetcher_;
  // Stop() cancels the control thread's call in flight and its backoff.
  rpc::CallCancellation stop_;
  std::thread control_;

  absl::Mutex vocab_mu_;
  std::map<std::string, int64_t> vocab_ ABSL_GUARDED_BY(vocab_mu_);

  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::string node_id_ ABSL_GUARDED_BY(mu_);
  std::string agent_address_ ABSL_GUARDED_BY(mu_);
  absl::Duration heartbeat_interval_ ABSL_GUARDED_BY(mu_) = absl::Seconds(2);
  absl::Time last_heartbeat_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::map<std::string, std::unique_ptr<Runner>> runners_ ABSL_GUARDED_BY(mu_);
  // Assignments that ended and were reported, kept while the scheduler still
  // lists them so that they are not started again.
  std::set<std::string> finished_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tunefleet::trainer
