// Process-wide settings for a process that runs the decoder step after step
// (the trainer worker, the serving replica, their benches): glibc's
// allocator, and libgomp's waiting. Call them first thing in main.
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

// How long ATen's OpenMP threads spin before they sleep, in libgomp's
// iterations (its documentation counts ~100000 a millisecond): ~0.1 ms.
inline constexpr const char* kDecoderSpinCount = "10000";

// libgomp reads its environment once, when it loads: a process that runs the
// decoder on the CPU needs OMP_WAIT_POLICY=PASSIVE (libgomp's default spins
// for ~3 ms after each parallel region, and on a few cores it then steals
// the time of Debian's OpenBLAS threads: every figure dropped several-fold)
// and GOMP_SPINCOUNT=kDecoderSpinCount (passive alone puts the threads to
// sleep at once, and a one-token decode step wakes them for each of its
// ~35 products: a short spin keeps them awake within a step, 10-20% of a
// single-stream decode step on the 2-core build VM). Where either is
// missing from the environment, sets it and executes the program again
// (argv as given; the same process id); returns when both were already set,
// or when the exec failed (the program then runs without them). A variable
// already set is kept as it is.
void ExecWithDecoderThreading(char** argv);

// libgomp spins for GOMP_SPINCOUNT only while it manages no more threads than
// the process may run on; past that it spins ~100 iterations and sleeps. A
// thread that ran a parallel region keeps its team of workers until it exits,
// so a loading thread, or a bench's main thread, left a second team beside
// the engine's, and the engine's workers then slept and were woken at every
// product (~80 context switches a step; a single-stream step 5.3 -> 6.8 ms on
// the 2-core build VM). Releases the calling thread's team
// (omp_pause_resource_all); its next parallel region builds it again. Call it
// on a long-lived thread when it is done with tensor work for a while.
void ReleaseThreadTeam();

}  // namespace tunefleet::model
