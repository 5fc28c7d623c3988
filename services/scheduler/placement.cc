#include "services/scheduler/placement.h"

#include <algorithm>
#include <iterator>
#include <set>

namespace tunefleet::scheduler {

void SortQueue(std::vector<QueuedJob>& jobs) {
  std::sort(jobs.begin(), jobs.end(), [](const QueuedJob& a, const QueuedJob& b) {
    if (a.priority != b.priority) return a.priority > b.priority;
    if (a.queue_seq != b.queue_seq) return a.queue_seq < b.queue_seq;
    return a.id < b.id;
  });
}

PlacementResult Place(std::vector<QueuedJob> jobs, std::vector<SlotNode> nodes) {
  PlacementResult result;
  SortQueue(jobs);
  int64_t fleet = 0;
  int64_t free_total = 0;
  // Nodes ordered by (free slots, id): best fit is a lower_bound, the widest
  // nodes are at the end; each reservation is O(log nodes).
  std::set<std::pair<int, size_t>> by_free;
  for (size_t i = 0; i < nodes.size(); ++i) {
    fleet += nodes[i].total_slots;
    free_total += nodes[i].free_slots;
    if (nodes[i].free_slots > 0) by_free.emplace(nodes[i].free_slots, i);
  }
  auto take = [&](size_t i, int n, GangPlacement& p) {
    by_free.erase({nodes[i].free_slots, i});
    nodes[i].free_slots -= n;
    if (nodes[i].free_slots > 0) by_free.emplace(nodes[i].free_slots, i);
    p.nodes.emplace_back(nodes[i].id, n);
  };
  for (const QueuedJob& job : jobs) {
    if (free_total == 0 && nodes.empty()) break;
    int w = std::max(1, job.world_size);
    if (!nodes.empty() && w > fleet) {
      result.never_fit.push_back(job.id);
      continue;
    }
    if (w > free_total) continue;  // waits; smaller jobs may backfill
    GangPlacement p;
    p.job_id = job.id;
    auto fit = by_free.lower_bound({w, 0});
    if (fit != by_free.end()) {
      take(fit->second, w, p);  // the fullest node that holds the whole gang
    } else {
      int left = w;  // across the widest nodes: as few as possible
      while (left > 0) {
        auto widest = std::prev(by_free.end());
        int n = std::min(left, widest->first);
        take(widest->second, n, p);
        left -= n;
      }
    }
    free_total -= w;
    result.placed.push_back(std::move(p));
  }
  return result;
}

}  // namespace tunefleet::scheduler
