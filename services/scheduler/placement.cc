#include "services/scheduler/placement.h"

#include <algorithm>
#include <numeric>

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
  for (const SlotNode& n : nodes) {
    fleet += n.total_slots;
    free_total += n.free_slots;
  }
  // Nodes by free slots, most first; kept sorted as slots are taken.
  std::vector<size_t> order(nodes.size());
  std::iota(order.begin(), order.end(), 0);
  auto resort = [&] {
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      if (nodes[a].free_slots != nodes[b].free_slots)
        return nodes[a].free_slots > nodes[b].free_slots;
      return nodes[a].id < nodes[b].id;
    });
  };
  resort();
  for (const QueuedJob& job : jobs) {
    int w = std::max(1, job.world_size);
    if (!nodes.empty() && w > fleet) {
      result.never_fit.push_back(job.id);
      continue;
    }
    if (w > free_total) continue;  // waits; smaller jobs may backfill
    GangPlacement p;
    p.job_id = job.id;
    // Best fit on one node: the node with the fewest free slots that still
    // holds the whole gang (order is descending, so scan from the back).
    for (auto it = order.rbegin(); it != order.rend(); ++it) {
      if (nodes[*it].free_slots >= w) {
        p.nodes.emplace_back(nodes[*it].id, w);
        nodes[*it].free_slots -= w;
        break;
      }
    }
    if (p.nodes.empty()) {
      int left = w;
      for (size_t i : order) {
        if (left == 0) break;
        int take = std::min(left, nodes[i].free_slots);
        if (take == 0) break;
        p.nodes.emplace_back(nodes[i].id, take);
        nodes[i].free_slots -= take;
        left -= take;
      }
    }
    free_total -= w;
    resort();
    result.placed.push_back(std::move(p));
  }
  return result;
}

}  // namespace tunefleet::scheduler
