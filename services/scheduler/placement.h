// The queue order and gang placement, both pure (no clock, no store) so that
// they are tested by tables and benchmarked alone.
//
// Queue order: higher priority first. At equal priority, fair share between
// tenants: the next job is the oldest queued job of the tenant holding the
// fewest slots — its running jobs' slots plus those of the jobs started (or,
// for SortQueue, ordered) before it in the same pass — ties going to the
// tenant whose oldest queued job is older (smaller queue_seq), then to the
// smaller tenant id. Within one tenant, older first. With one tenant (or
// none named) this is priority, then age. So a tenant with many queued jobs
// cannot starve another at the same priority: as soon as it holds more slots,
// the other's oldest job goes first. A higher priority still always wins.
// Gang placement: a job needing W slots starts only when all W are reserved
// in the same pass, so there are no partial starts and two large jobs cannot
// deadlock holding halves. A job is packed onto one node when one has room
// (the fullest such node: best fit), else across the nodes with the most free
// slots (fewest nodes). A job that does not fit now is skipped and smaller
// jobs behind it may start (backfill); a job larger than the whole registered
// fleet is reported in `never_fit` so that the caller fails it at once.
// Memory: a job that names the memory one rank needs (its GPU estimate) is
// placed only on nodes whose slots offer at least that much (a node offering
// 0, CPU slots, takes any job); "the whole fleet" is then the nodes that
// hold it.
// Kinds: a gang is all GPUs or all CPU slots, never both (its ranks share
// one collective backend and one precision: NCCL and bf16, or Gloo and
// fp32); GPUs when enough of them are free, else CPU slots. A job fits the
// fleet when one kind has W slots that hold it.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace tunefleet::scheduler {

struct QueuedJob {
  std::string id;
  int priority = 0;
  int64_t queue_seq = 0;  // admission order: smaller is older
  int world_size = 1;
  std::string tenant;  // fair share is between tenants
  int64_t memory_bytes = 0;  // per rank on a GPU (0: no need stated)
};

// Slots held by each tenant's running jobs (the fair share's starting point).
using TenantSlots = std::map<std::string, int>;

struct SlotNode {
  std::string id;
  int total_slots = 0;
  int free_slots = 0;
  int64_t slot_memory_bytes = 0;  // per slot (a GPU's memory; 0: unlimited)
  bool gpu = false;  // GPU slots (else CPU slots)
};

struct GangPlacement {
  std::string job_id;
  // (node id, ranks on that node), in rank order: rank 0 is on the first.
  std::vector<std::pair<std::string, int>> nodes;
};

struct PlacementResult {
  std::vector<GangPlacement> placed;
  std::vector<std::string> never_fit;
};

// Sorts `jobs` into queue order, as if each started in turn (so each adds its
// world size to its tenant's slots).
void SortQueue(std::vector<QueuedJob>& jobs, const TenantSlots& running = {});

// One placement pass over `jobs` (any order; taken in queue order here, where
// only jobs that start add to their tenant's slots) and `nodes`.
PlacementResult Place(std::vector<QueuedJob> jobs, std::vector<SlotNode> nodes,
                      const TenantSlots& running = {});

}  // namespace tunefleet::scheduler
