#include "common/model/allocator.h"

#include <malloc.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdlib>
#include <utility>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace tunefleet::model {

void TuneAllocatorForTensorWork() {
  ::mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's largest
  ::mallopt(M_TRIM_THRESHOLD, 1 << 30);   // give memory back only past 1 GB free at the top
  ::mallopt(M_TOP_PAD, 256 << 20);        // grow the heap in large steps
}

void ExecWithDecoderThreading(char** argv) {
  bool changed = false;
  for (const auto& [name, value] : {std::pair{"OMP_WAIT_POLICY", "PASSIVE"},
                                    std::pair{"GOMP_SPINCOUNT", kDecoderSpinCount}}) {
    if (std::getenv(name) == nullptr) {
      ::setenv(name, value, 1);
      changed = true;
    }
  }
  if (changed) ::execv("/proc/self/exe", argv);  // returns only on failure
}

void ReleaseThreadTeam() {
#if defined(_OPENMP)
  (void)omp_pause_resource_all(omp_pause_hard);
#endif
}

}  // namespace tunefleet::model
