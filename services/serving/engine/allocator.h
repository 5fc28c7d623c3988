// Process-wide glibc allocator settings for a process that runs serving
// engines (the replica, serving_bench); call it first thing in main.
#pragma once

namespace tunefleet::serving {

// A prefill step allocates and frees activations of several MB to tens of
// MB per layer (a 32 x 64-token step of the bench model: about 100 MB a
// layer), and glibc maps blocks that large fresh and gives freed memory back
// to the kernel, so every step faulted its buffers in again: about 40% of a
// 32-stream burst's prefill on the 2-core build VM (figures in
// services/serving/README.md). Blocks up to 32 MB now come from
// the heap and freed memory stays in the process (given back past 1 GB free);
// peak memory is unchanged, each step reuses the last one's. The settings
// are the trainer worker's (TuneAllocatorForTraining), for the same reason.
void TuneAllocatorForServing();

}  // namespace tunefleet::serving
