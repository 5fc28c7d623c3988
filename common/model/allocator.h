// Process-wide glibc allocator settings for a process that runs the decoder
// step after step (the trainer worker, the serving replica, their benches);
// call it first thing in main.
#pragma once

namespace tunefleet::model {

// A training step or an engine step frees and allocates the same activation
// buffers, MBs to ~100 MB each (a 32 x 64-token prefill of the bench model:
// about 100 MB a layer), and glibc maps blocks that large fresh and gives
// freed memory back to the kernel, so every step faulted in and zeroed its
// buffers again: ~40% of a LoRA step and of a 32-stream prefill on the
// 2-core build VM (bench/train_bench, services/serving/README.md). Blocks up
// to 32 MB now come from the heap and freed memory stays in the process
// (given back past 1 GB free at the top); peak memory is unchanged, each
// step reuses the last one's.
void TuneAllocatorForTensorWork();

}  // namespace tunefleet::model
