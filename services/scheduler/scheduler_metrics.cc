#include "services/scheduler/scheduler_metrics.h"

#include <string>

namespace tunefleet::scheduler {

SchedulerMetrics::SchedulerMetrics(prometheus::Registry& r)
    : jobs_(prometheus::BuildGauge()
                .Name("tunefleet_scheduler_jobs")
                .Help("Jobs by state")
                .Register(r)),
      queue_depth_(prometheus::BuildGauge()
                       .Name("tunefleet_scheduler_queue_depth")
                       .Help("Queued jobs")
                       .Register(r)
                       .Add({})),
      slots_used_(prometheus::BuildGauge()
                      .Name("tunefleet_scheduler_slots_used")
                      .Help("Trainer slots with an assignment")
                      .Register(r)
                      .Add({})),
      slots_free_(prometheus::BuildGauge()
                      .Name("tunefleet_scheduler_slots_free")
                      .Help("Registered trainer slots without an assignment")
                      .Register(r)
                      .Add({})),
      oldest_queued_(prometheus::BuildGauge()
                         .Name("tunefleet_scheduler_oldest_queued_job_seconds")
                         .Help("How long the longest-waiting queued job has waited (0: none)")
                         .Register(r)
                         .Add({})),
      nodes_(prometheus::BuildGauge()
                 .Name("tunefleet_scheduler_nodes")
                 .Help("Registered trainer nodes holding a lease")
                 .Register(r)
                 .Add({})),
      preemptions_(prometheus::BuildCounter()
                       .Name("tunefleet_scheduler_preemptions_total")
                       .Help("Running jobs stopped for a higher-priority one")
                       .Register(r)
                       .Add({})),
      node_losses_(prometheus::BuildCounter()
                       .Name("tunefleet_scheduler_node_losses_total")
                       .Help("Trainer nodes lost (lease expired)")
                       .Register(r)
                       .Add({})) {
  for (int s = v1::JobState_MIN; s <= v1::JobState_MAX; ++s) {
    if (!v1::JobState_IsValid(s) || s == v1::JOB_STATE_UNSPECIFIED) continue;
    jobs_by_state_[s] = &jobs_.Add({{"state", std::string(StateName(static_cast<v1::JobState>(s)))}});
  }
}

void SchedulerMetrics::Update(const Scheduler::FleetStats& st) {
  for (auto& [state, gauge] : jobs_by_state_) {
    auto it = st.jobs_by_state.find(state);
    gauge->Set(it == st.jobs_by_state.end() ? 0 : it->second);
  }
  queue_depth_.Set(st.queued_jobs);
  slots_used_.Set(st.used_slots);
  slots_free_.Set(std::max(0, st.slots - st.used_slots));
  nodes_.Set(st.nodes);
  oldest_queued_.Set(st.oldest_queued_seconds);
  preemptions_.Increment(static_cast<double>(st.preemptions) - preemptions_seen_);
  preemptions_seen_ = static_cast<double>(st.preemptions);
  node_losses_.Increment(static_cast<double>(st.node_losses) - node_losses_seen_);
  node_losses_seen_ = static_cast<double>(st.node_losses);
}

}  // namespace tunefleet::scheduler
