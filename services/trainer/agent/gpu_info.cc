#include "services/trainer/agent/gpu_info.h"

#include <dlfcn.h>

#include <cstdlib>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace tunefleet::trainer {
namespace {

// The NVML calls used, as nvml.h declares them (0 is NVML_SUCCESS; a device
// handle is an opaque pointer; nvmlMemory_t is three unsigned long longs).
struct NvmlMemory {
  unsigned long long total, free, used;  // NOLINT(runtime/int)
};
using InitFn = int (*)();
using HandleByIndexFn = int (*)(unsigned int, void**);
using NameFn = int (*)(void*, char*, unsigned int);
using MemoryInfoFn = int (*)(void*, NvmlMemory*);

struct Nvml {
  HandleByIndexFn handle_by_index = nullptr;
  NameFn name = nullptr;
  MemoryInfoFn memory_info = nullptr;
};

// Loaded and initialised once; empty where the library is absent or
// nvmlInit fails (no driver).
const Nvml& FindNvml() {
  static const Nvml nvml = [] {
    Nvml n;
    void* h = ::dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr) return n;
    auto init = reinterpret_cast<InitFn>(::dlsym(h, "nvmlInit_v2"));
    n.handle_by_index = reinterpret_cast<HandleByIndexFn>(::dlsym(h, "nvmlDeviceGetHandleByIndex_v2"));
    n.name = reinterpret_cast<NameFn>(::dlsym(h, "nvmlDeviceGetName"));
    n.memory_info = reinterpret_cast<MemoryInfoFn>(::dlsym(h, "nvmlDeviceGetMemoryInfo"));
    if (init == nullptr || n.handle_by_index == nullptr || n.name == nullptr ||
        n.memory_info == nullptr || init() != 0) {
      return Nvml();
    }
    return n;
  }();
  return nvml;
}

}  // namespace

std::optional<unsigned int> PhysicalGpuIndex(int index, const char* visible) {
  if (index < 0) return std::nullopt;
  if (visible == nullptr) return static_cast<unsigned int>(index);
  std::vector<std::string> ids = absl::StrSplit(visible, ',', absl::SkipWhitespace());
  unsigned int physical = 0;
  if (static_cast<size_t>(index) >= ids.size() || !absl::SimpleAtoi(ids[index], &physical))
    return std::nullopt;
  return physical;
}

std::optional<GpuDescription> DescribeGpu(int index) {
  const Nvml& nvml = FindNvml();
  const std::optional<unsigned int> physical =
      PhysicalGpuIndex(index, std::getenv("CUDA_VISIBLE_DEVICES"));
  if (nvml.handle_by_index == nullptr || !physical) return std::nullopt;
  void* device = nullptr;
  if (nvml.handle_by_index(*physical, &device) != 0) return std::nullopt;
  GpuDescription d;
  char name[96] = {};
  if (nvml.name(device, name, sizeof(name)) == 0) d.name = name;
  NvmlMemory memory{};
  if (nvml.memory_info(device, &memory) == 0) d.memory_bytes = static_cast<int64_t>(memory.total);
  return d;
}

std::vector<internal::v1::GpuInfo> NodeGpus(int count, int64_t memory_bytes_override) {
  std::vector<internal::v1::GpuInfo> gpus;
  for (int i = 0; i < count; ++i) {
    internal::v1::GpuInfo g;
    g.set_index(i);
    if (std::optional<GpuDescription> d = DescribeGpu(i)) {
      g.set_name(d->name);
      g.set_memory_bytes(d->memory_bytes);
    }
    if (memory_bytes_override > 0) g.set_memory_bytes(memory_bytes_override);
    gpus.push_back(std::move(g));
  }
  return gpus;
}

}  // namespace tunefleet::trainer
