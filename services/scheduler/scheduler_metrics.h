// The scheduler's Prometheus metrics, refreshed from Scheduler::Stats() after
// every tick: jobs by state, queue depth, slots used/free, nodes,
// preemptions and node losses. (RPC counts and latency come from the server
// bootstrap.) Thread-safe as prometheus-cpp is.
#pragma once

#include <map>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include "services/scheduler/scheduler.h"

namespace tunefleet::scheduler {

class SchedulerMetrics {
 public:
  explicit SchedulerMetrics(prometheus::Registry& registry);
  void Update(const Scheduler::FleetStats& stats);

 private:
  prometheus::Family<prometheus::Gauge>& jobs_;
  std::map<int, prometheus::Gauge*> jobs_by_state_;
  prometheus::Gauge& queue_depth_;
  prometheus::Gauge& slots_used_;
  prometheus::Gauge& slots_free_;
  prometheus::Gauge& oldest_queued_;
  prometheus::Gauge& nodes_;
  prometheus::Counter& preemptions_;
  prometheus::Counter& node_losses_;
  double preemptions_seen_ = 0;
  double node_losses_seen_ = 0;
};

}  // namespace tunefleet::scheduler
