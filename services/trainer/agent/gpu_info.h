// The GPUs a training node registers: their names and memory, read through
// NVML (libnvidia-ml.so.1, installed with the NVIDIA driver and mounted into
// GPU containers), found at run time so that the agent builds and runs
// without it. The scheduler places a job only on GPUs whose memory holds its
// estimate.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "tunefleet/internal/v1/trainer.pb.h"

namespace tunefleet::trainer {

struct GpuDescription {
  std::string name;  // "NVIDIA H200"
  int64_t memory_bytes = 0;
};

// GPU `index` as this node's workers number them: the index-th entry of
// CUDA_VISIBLE_DEVICES when that lists device numbers, else NVML's index.
// std::nullopt where NVML, the device, or a numeric mapping is absent.
std::optional<GpuDescription> DescribeGpu(int index);

// The `count` GPUs this node registers: index, and name and memory from
// DescribeGpu; `memory_bytes_override` > 0 sets every GPU's memory instead
// (the operator's --gpu_memory_gib, for nodes without NVML). Memory 0:
// unknown (the scheduler then does not check it).
std::vector<internal::v1::GpuInfo> NodeGpus(int count, int64_t memory_bytes_override);

// NVML's device number for GPU `index` given CUDA_VISIBLE_DEVICES' value
// (null: unset): its index-th entry when that is a number; std::nullopt for
// a UUID entry, an index past the list, or a negative index.
std::optional<unsigned int> PhysicalGpuIndex(int index, const char* visible);

}  // namespace tunefleet::trainer
