// Memory in use on a CUDA device, for the worker's end-of-run report (what
// the run really used, beside its estimate), without CUDA at build time.
#pragma once

#include <cstdint>
#include <optional>

namespace tunefleet::trainer {

// Bytes in use on CUDA device `index` as the driver counts them (total minus
// free: this process's context and its caching allocator's reserve, and
// anything else on the device), through the CUDA runtime that a CUDA libtorch
// has loaded, found at run time (dlopen/dlsym of cudaMemGetInfo). The
// calling thread's current device is put back afterwards. std::nullopt where
// there is no CUDA runtime or no such device.
std::optional<int64_t> CudaBytesInUse(int index);

// This process's resident memory now (/proc/self/statm); std::nullopt where
// it cannot be read.
std::optional<int64_t> ResidentBytes();

}  // namespace tunefleet::trainer
