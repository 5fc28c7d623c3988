// Decoder: gradient checkpointing. A layer's forward runs without autograd
// (no activations kept) inside a custom autograd function; its backward
// re-runs the layer with autograd on and differentiates that.
//
// The recomputation differentiates with torch::autograd::grad with respect to
// the layer's input and its trainable tensors (LoRA A/B of the layer, or the
// base weights when they require grad) and hands those gradients back
// through the outer graph. Nothing is accumulated into .grad inside the
// recomputation, so gradient hooks (c10d's Reducer) fire once per parameter,
// as without checkpointing.
//
// RNG: the default generator of the device is saved before the layer's
// forward and replayed in backward (and put back afterwards), so LoRA dropout
// draws the same masks in both runs: gradients equal those of a plain
// forward with any dropout.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <mutex>

#include "common/model/decoder.h"
#include "common/model/torch_compat.h"

namespace tunefleet::model {
namespace internal {

// What a layer's backward needs besides its saved tensors.
struct LayerClosure : torch::CustomClassHolder {
  const Decoder* decoder = nullptr;
  int64_t layer = 0;
  Decoder::LayerInputs in;
  Decoder::AdapterGroups adapters;
  bool training = false;
  at::Tensor rng_state;  // undefined when not training (no dropout)
  at::Device device = at::kCPU;
};

struct LayerCheckpoint : torch::autograd::Function<LayerCheckpoint> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const at::Tensor& h, at::TensorList params,
                                                c10::intrusive_ptr<LayerClosure> closure) {
    if (closure->training) {
      at::Generator gen = at::globalContext().defaultGenerator(closure->device);
      std::lock_guard<std::mutex> lock(gen.mutex());
      closure->rng_state = gen.get_state();
    }
    at::Tensor y = closure->decoder->DecoderLayer(closure->layer, h, closure->in,
                                                  closure->adapters, closure->training, nullptr);
    std::vector<at::Tensor> saved = {h};
    saved.insert(saved.end(), params.begin(), params.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["closure"] = c10::IValue::make_capsule(std::move(closure));
    return {y};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    c10::intrusive_ptr<torch::CustomClassHolder> holder = ctx->saved_data["closure"].toCapsule();
    const LayerClosure* closure = static_cast<const LayerClosure*>(holder.get());
    torch::autograd::variable_list saved = ctx->get_saved_variables();
    std::vector<at::Tensor> inputs;
    inputs.reserve(saved.size());
    inputs.push_back(saved[0].detach().requires_grad_(true));
    for (size_t k = 1; k < saved.size(); ++k) inputs.push_back(saved[k]);
    at::Tensor y;
    {
      at::AutoGradMode grad(true);
      // The recomputation runs under the forward's mixed precision.
      const DecoderOptions& o = closure->decoder->options();
      const compat::AutocastScope autocast(o.device.type(), o.autocast_dtype);
      if (closure->rng_state.defined()) {
        // The generator's mutex is held only around get/set: dropout takes it.
        at::Generator gen = at::globalContext().defaultGenerator(closure->device);
        at::Tensor now;
        {
          std::lock_guard<std::mutex> lock(gen.mutex());
          now = gen.get_state();
          gen.set_state(closure->rng_state);
        }
        y = closure->decoder->DecoderLayer(closure->layer, inputs[0], closure->in,
                                           closure->adapters, closure->training, nullptr);
        std::lock_guard<std::mutex> lock(gen.mutex());
        gen.set_state(now);
      } else {
        y = closure->decoder->DecoderLayer(closure->layer, inputs[0], closure->in,
                                           closure->adapters, closure->training, nullptr);
      }
    }
    torch::autograd::variable_list grads =
        torch::autograd::grad({y}, inputs, {grad_out[0]}, /*retain_graph=*/false,
                              /*create_graph=*/false, /*allow_unused=*/true);
    grads.emplace_back();  // the closure
    return grads;
  }
};

}  // namespace internal

at::Tensor Decoder::CheckpointedLayer(int64_t i, const at::Tensor& h, const LayerInputs& in,
                                      const AdapterGroups& adapters, bool training) const {
  // The layer's trainable tensors: those autograd must reach through it.
  std::vector<at::Tensor> params;
  auto add = [&](const at::Tensor& t) {
    if (t.defined() && t.requires_grad()) params.push_back(t);
  };
  const Layer& layer = layers_[static_cast<size_t>(i)];
  add(layer.input_norm);
  add(layer.post_attention_norm);
  for (const Linear& lin : layer.proj) {
    add(lin.weight);
    add(lin.bias);
  }
  auto add_adapter = [&](const LoraAdapter* a) {
    if (a == nullptr) return;
    for (Proj p : ModelProjections(config_)) {
      const LoraAdapter::Module& m = a->module(i, p);
      if (!m.defined()) continue;
      add(m.a);
      add(m.b);
    }
  };
  add_adapter(adapters.all);
  for (const auto& [a, rows] : adapters.groups) add_adapter(a);

  auto closure = c10::make_intrusive<internal::LayerClosure>();
  closure->decoder = this;
  closure->layer = i;
  closure->in = in;
  closure->adapters = adapters;
  closure->training = training;
  closure->device = h.device();
  return internal::LayerCheckpoint::apply(h, at::TensorList(params), std::move(closure))[0];
}

}  // namespace tunefleet::model
