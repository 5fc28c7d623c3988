#include "common/model/allocator.h"

#include <malloc.h>

namespace tunefleet::model {

void TuneAllocatorForTensorWork() {
  ::mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's largest
  ::mallopt(M_TRIM_THRESHOLD, 1 << 30);   // give memory back only past 1 GB free at the top
  ::mallopt(M_TOP_PAD, 256 << 20);        // grow the heap in large steps
}

}  // namespace tunefleet::model
