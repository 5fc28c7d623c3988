// Stand-in for a header Debian's libtorch-dev 1.13 leaves out although
// c10d/reducer.hpp includes it. The Reducer only names these two types (a
// std::function typedef and a shared_ptr, whose layouts do not depend on the
// pointee), so declaring them keeps its layout identical to libtorch's.
// Used only where the real header is missing (services/trainer/worker/CMakeLists.txt);
// PyTorch's own libtorch ships it.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>

namespace torch::distributed::autograd {

class DistAutogradContext {
 public:
  using GradCallback = std::function<bool(at::Tensor&)>;
};
using ContextPtr = std::shared_ptr<DistAutogradContext>;

}  // namespace torch::distributed::autograd
