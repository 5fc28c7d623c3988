// The one place where libtorch versions differ for the model code: 1.13 (Debian,
// CPU) has no public scaled-dot-product attention; 2.x (CUDA builds) does, and
// runs fused kernels with it. Autocast's switches became per device type in
// 2.4. Everything version-specific stays in this header.
#pragma once

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include <cmath>
#include <limits>

namespace tunefleet::model::compat {

inline constexpr bool kHasSdpa = TORCH_VERSION_MAJOR >= 2;

// Attention over q [B,H,Tq,D], k/v [B,H,Tk,D] with a boolean `keep` mask
// broadcastable to [B,H,Tq,Tk] (true = attend); every query row must keep at
// least one key. An undefined `keep` means plain causal attention with
// Tq == Tk, which lets 2.x use its flash kernels. Scores and softmax run in
// fp32 on the plain path so that bf16/fp16 inputs stay accurate.
inline at::Tensor Attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& keep) {
#if TORCH_VERSION_MAJOR >= 2
  if (q.is_cuda()) {
    if (!keep.defined())
      return at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true);
    return at::scaled_dot_product_attention(q, k, v, keep);
  }
#endif
  at::Tensor mask = keep;
  if (!mask.defined())
    mask = at::ones({q.size(-2), k.size(-2)}, q.options().dtype(at::kBool)).tril();
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  at::Tensor scores = at::matmul(q.to(at::kFloat), k.to(at::kFloat).transpose(-2, -1)).mul_(scale);
  scores.masked_fill_(mask.logical_not(), -std::numeric_limits<float>::infinity());
  at::Tensor probs = at::softmax(scores, -1);
  return at::matmul(probs.to(v.scalar_type()), v);
}

#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
inline bool AutocastEnabled(at::DeviceType d) { return at::autocast::is_autocast_enabled(d); }
inline void SetAutocastEnabled(at::DeviceType d, bool on) { at::autocast::set_autocast_enabled(d, on); }
inline at::ScalarType AutocastDtype(at::DeviceType d) { return at::autocast::get_autocast_dtype(d); }
inline void SetAutocastDtype(at::DeviceType d, at::ScalarType t) { at::autocast::set_autocast_dtype(d, t); }
#else
// Before 2.4: one switch and one dtype for CUDA ("gpu") and one for the CPU.
inline bool AutocastEnabled(at::DeviceType d) {
  return d == at::kCUDA ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled();
}
inline void SetAutocastEnabled(at::DeviceType d, bool on) {
  if (d == at::kCUDA) {
    at::autocast::set_enabled(on);
  } else {
    at::autocast::set_cpu_enabled(on);
  }
}
inline at::ScalarType AutocastDtype(at::DeviceType d) {
  return d == at::kCUDA ? at::autocast::get_autocast_gpu_dtype() : at::autocast::get_autocast_cpu_dtype();
}
inline void SetAutocastDtype(at::DeviceType d, at::ScalarType t) {
  if (d == at::kCUDA) {
    at::autocast::set_autocast_gpu_dtype(t);
  } else {
    at::autocast::set_autocast_cpu_dtype(t);
  }
}
#endif

// Mixed precision for the current thread while alive: operators on `device`
// (kCPU or kCUDA) run under autocast to `dtype` (matrix products in it;
// softmax, norms and losses in fp32, as autocast's operator lists say).
// at::ScalarType::Undefined: nothing changes. Scopes nest; leaving the
// outermost one empties autocast's cache of cast weights, as PyTorch's
// `torch.autocast` does, so that the next forward sees an optimizer step.
// Backward is meant to run outside (the cast operators carry their own
// backward).
class AutocastScope {
 public:
  AutocastScope(at::DeviceType device, at::ScalarType dtype)
      : active_(dtype != at::ScalarType::Undefined), device_(device) {
    if (!active_) return;
    was_enabled_ = AutocastEnabled(device_);
    was_dtype_ = AutocastDtype(device_);
    SetAutocastEnabled(device_, true);
    SetAutocastDtype(device_, dtype);
    at::autocast::increment_nesting();
  }
  ~AutocastScope() {
    if (!active_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    SetAutocastEnabled(device_, was_enabled_);
    SetAutocastDtype(device_, was_dtype_);
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool active_;
  at::DeviceType device_;
  bool was_enabled_ = false;
  at::ScalarType was_dtype_ = at::ScalarType::Undefined;
};

}  // namespace tunefleet::model::compat
