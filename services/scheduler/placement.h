// The queue order and gang placement, both pure (no clock, no store) so that
// they are tested by tables and benchmarked alone.
//
// Queue order: higher priority first, then older (smaller queue_seq) first.
// Gang placement: a job needing W slots starts only when all W are reserved
// in the same pass, so there are no partial starts and two large jobs cannot
// deadlock holding halves. A job is packed onto one node when one has room
// (the fullest such node: best fit), else across the nodes with the most free
// slots (fewest nodes). A job that does not fit now is skipped and smaller
// jobs behind it may start (backfill); a job larger than the whole registered
// fleet is reported in `never_fit` so that the caller fails it at once.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace tunefleet::scheduler {

struct QueuedJob {
  std::string id;
  int priority = 0;
  int64_t queue_seq = 0;  // admission order: smaller is older
  int world_size = 1;
};

struct SlotNode {
  std::string id;
  int total_slots = 0;
  int free_slots = 0;
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

// Sorts `jobs` into queue order (priority desc, queue_seq asc).
void SortQueue(std::vector<QueuedJob>& jobs);

// One placement pass over `jobs` (any order; sorted here) and `nodes`.
PlacementResult Place(std::vector<QueuedJob> jobs, std::vector<SlotNode> nodes);

}  // namespace tunefleet::scheduler
