#include "services/trainer/worker/device_memory.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstddef>
#include <cstdio>

namespace tunefleet::trainer {
namespace {

// The three runtime calls used, as the CUDA runtime declares them (the C ABI
// has not changed since CUDA 2): 0 is cudaSuccess.
using MemGetInfoFn = int (*)(size_t* free, size_t* total);
using GetDeviceFn = int (*)(int* device);
using SetDeviceFn = int (*)(int device);

struct Runtime {
  MemGetInfoFn mem_get_info = nullptr;
  GetDeviceFn get_device = nullptr;
  SetDeviceFn set_device = nullptr;
};

// The runtime libtorch_cuda loaded (its soname for CUDA 13, 12 or 11), else
// one on the library path; looked up once.
const Runtime& FindRuntime() {
  static const Runtime runtime = [] {
    Runtime r;
    for (int flags : {RTLD_NOW | RTLD_NOLOAD, RTLD_NOW}) {
      for (const char* name : {"libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so"}) {
        void* h = ::dlopen(name, flags);
        if (h == nullptr) continue;
        r.mem_get_info = reinterpret_cast<MemGetInfoFn>(::dlsym(h, "cudaMemGetInfo"));
        r.get_device = reinterpret_cast<GetDeviceFn>(::dlsym(h, "cudaGetDevice"));
        r.set_device = reinterpret_cast<SetDeviceFn>(::dlsym(h, "cudaSetDevice"));
        if (r.mem_get_info && r.get_device && r.set_device) return r;
        r = Runtime();
      }
    }
    return r;
  }();
  return runtime;
}

}  // namespace

std::optional<int64_t> CudaBytesInUse(int index) {
  const Runtime& rt = FindRuntime();
  if (rt.mem_get_info == nullptr || index < 0) return std::nullopt;
  int current = 0;
  if (rt.get_device(&current) != 0) return std::nullopt;
  if (current != index && rt.set_device(index) != 0) return std::nullopt;
  size_t free = 0, total = 0;
  const bool ok = rt.mem_get_info(&free, &total) == 0 && total >= free;
  if (current != index) rt.set_device(current);
  if (!ok) return std::nullopt;
  return static_cast<int64_t>(total - free);
}

std::optional<int64_t> ResidentBytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return std::nullopt;
  long long size = 0, resident = 0;
  const bool ok = std::fscanf(f, "%lld %lld", &size, &resident) == 2;
  std::fclose(f);
  const long page = ::sysconf(_SC_PAGESIZE);
  if (!ok || page <= 0) return std::nullopt;
  return static_cast<int64_t>(resident) * page;
}

}  // namespace tunefleet::trainer
