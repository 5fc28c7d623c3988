#include "services/scheduler/placement.h"

#include <algorithm>
#include <functional>
#include <iterator>
#include <map>
#include <optional>
#include <queue>
#include <set>
#include <tuple>

namespace tunefleet::scheduler {

namespace {

// The queue order of placement.h, one job at a time: Next() names the job to
// consider, Started() counts its slots for its tenant. One priority level at
// a time, a min-heap of the level's tenants keyed by (slots held, queue_seq
// of their oldest job, tenant); a tenant taken is pushed back on the next
// call, with the slots it holds by then. O(n log n) for n jobs.
class FairOrder {
 public:
  FairOrder(std::vector<QueuedJob> jobs, const TenantSlots& running) : jobs_(std::move(jobs)) {
    std::sort(jobs_.begin(), jobs_.end(), [](const QueuedJob& a, const QueuedJob& b) {
      if (a.priority != b.priority) return a.priority > b.priority;
      if (a.tenant != b.tenant) return a.tenant < b.tenant;
      if (a.queue_seq != b.queue_seq) return a.queue_seq < b.queue_seq;
      return a.id < b.id;
    });
    for (const QueuedJob& j : jobs_) tenants_.emplace(j.tenant, 0);
    for (auto& [tenant, index] : tenants_) {
      index = static_cast<int>(slots_.size());
      auto it = running.find(tenant);
      slots_.push_back(it == running.end() ? 0 : it->second);
    }
  }

  const QueuedJob* Next() {
    if (pending_ >= 0) Push(static_cast<size_t>(pending_));
    pending_ = -1;
    while (heap_.empty()) {
      if (level_end_ >= jobs_.size()) return nullptr;
      StartLevel();
    }
    const size_t g = std::get<2>(heap_.top());
    heap_.pop();
    Group& group = groups_[g];
    const QueuedJob* job = &jobs_[group.cursor++];
    if (group.cursor < group.end) pending_ = static_cast<int64_t>(g);
    return job;
  }

  void Started(const QueuedJob& job) {
    slots_[tenants_.at(job.tenant)] += std::max(1, job.world_size);
  }

 private:
  struct Group {
    size_t cursor, end;
    int tenant;
  };
  using Key = std::tuple<int64_t, int64_t, size_t>;  // (slots, head queue_seq, group)

  void StartLevel() {
    groups_.clear();
    size_t i = level_end_;
    const int priority = jobs_[i].priority;
    while (i < jobs_.size() && jobs_[i].priority == priority) {
      size_t end = i;
      while (end < jobs_.size() && jobs_[end].priority == priority &&
             jobs_[end].tenant == jobs_[i].tenant)
        ++end;
      groups_.push_back(Group{i, end, tenants_.at(jobs_[i].tenant)});
      Push(groups_.size() - 1);
      i = end;
    }
    level_end_ = i;
  }
  void Push(size_t g) {
    heap_.emplace(slots_[groups_[g].tenant], jobs_[groups_[g].cursor].queue_seq, g);
  }

  std::vector<QueuedJob> jobs_;
  std::map<std::string, int> tenants_;  // tenant -> index into slots_
  std::vector<int64_t> slots_;
  std::vector<Group> groups_;  // of the current priority level, in tenant order
  std::priority_queue<Key, std::vector<Key>, std::greater<Key>> heap_;
  size_t level_end_ = 0;
  int64_t pending_ = -1;
};

}  // namespace

void SortQueue(std::vector<QueuedJob>& jobs, const TenantSlots& running) {
  FairOrder order(std::move(jobs), running);
  std::vector<QueuedJob> sorted;
  while (const QueuedJob* j = order.Next()) {
    sorted.push_back(*j);
    order.Started(*j);
  }
  jobs = std::move(sorted);
}

PlacementResult Place(std::vector<QueuedJob> queued, std::vector<SlotNode> nodes,
                      const TenantSlots& running) {
  PlacementResult result;
  FairOrder order(std::move(queued), running);
  // Nodes by memory class (the slot memory they offer; 0: unlimited), each
  // class ordered by (free slots, node): best fit is a lower_bound, the
  // widest nodes are at the end; a reservation is O(log nodes). A job uses
  // the classes that hold its memory; fleets have few classes.
  struct Class {
    bool gpu = false;
    int64_t memory = 0;
    int64_t fleet = 0, free = 0;
    std::set<std::pair<int, size_t>> by_free;
  };
  std::vector<Class> classes;
  std::vector<size_t> class_of(nodes.size());
  for (size_t i = 0; i < nodes.size(); ++i) {
    const int64_t memory = std::max<int64_t>(0, nodes[i].slot_memory_bytes);
    const bool gpu = nodes[i].gpu;
    auto c = std::find_if(classes.begin(), classes.end(),
                          [&](const Class& k) { return k.gpu == gpu && k.memory == memory; });
    if (c == classes.end()) c = classes.insert(classes.end(), Class{gpu, memory, 0, 0, {}});
    class_of[i] = static_cast<size_t>(c - classes.begin());
    c->fleet += nodes[i].total_slots;
    c->free += nodes[i].free_slots;
    if (nodes[i].free_slots > 0) c->by_free.emplace(nodes[i].free_slots, i);
  }
  auto take = [&](size_t i, int n, GangPlacement& p) {
    Class& c = classes[class_of[i]];
    c.by_free.erase({nodes[i].free_slots, i});
    nodes[i].free_slots -= n;
    c.free -= n;
    if (nodes[i].free_slots > 0) c.by_free.emplace(nodes[i].free_slots, i);
    p.nodes.emplace_back(nodes[i].id, n);
  };
  std::vector<Class*> usable;
  while (const QueuedJob* next = order.Next()) {
    const QueuedJob& job = *next;
    if (nodes.empty()) break;
    int64_t fleet[2] = {0, 0}, free[2] = {0, 0};  // [cpu, gpu]
    for (const Class& c : classes) {
      if (c.memory > 0 && job.memory_bytes > c.memory) continue;
      fleet[c.gpu] += c.fleet;
      free[c.gpu] += c.free;
    }
    const int w = std::max(1, job.world_size);
    if (w > fleet[0] && w > fleet[1]) {
      result.never_fit.push_back(job.id);
      continue;
    }
    if (w > free[0] && w > free[1]) continue;  // waits; smaller jobs may backfill
    const bool gpu = w <= free[1];
    usable.clear();
    for (Class& c : classes)
      if (c.gpu == gpu && (c.memory == 0 || job.memory_bytes <= c.memory)) usable.push_back(&c);
    GangPlacement p;
    p.job_id = job.id;
    // The fullest node that holds the whole gang, over the usable classes.
    std::optional<std::pair<int, size_t>> best;
    for (Class* c : usable) {
      auto fit = c->by_free.lower_bound({w, 0});
      if (fit != c->by_free.end() && (!best || *fit < *best)) best = *fit;
    }
    if (best) {
      take(best->second, w, p);
    } else {
      int left = w;  // across the widest nodes: as few as possible
      while (left > 0) {
        std::optional<std::pair<int, size_t>> widest;
        for (Class* c : usable) {
          if (c->by_free.empty()) continue;
          const auto& last = *std::prev(c->by_free.end());
          if (!widest || last > *widest) widest = last;
        }
        const int n = std::min(left, widest->first);
        take(widest->second, n, p);
        left -= n;
      }
    }
    order.Started(job);
    result.placed.push_back(std::move(p));
  }
  return result;
}

}  // namespace tunefleet::scheduler
