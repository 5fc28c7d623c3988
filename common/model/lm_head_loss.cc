// The vocabulary head's log-probabilities of the labels, fused with their
// gradient and chunked over rows.
//
// Training scores only the label of each trained token, yet the plain path
// (linear -> log_softmax -> gather) materialises [N, vocab] logits, their
// log-softmax and, in backward, two more [N, vocab] gradients: with a 32K
// vocabulary that is ~130 KB per token, hundreds of MB a step, each buffer a
// fresh allocation that the kernel must fault in and zero. Here the logits
// exist one chunk of rows at a time (a few MB, reused by the allocator), and
// because d log p(y|h) / dh = W^T (onehot(y) - softmax(W h)) does not depend
// on the upstream gradient, that [N, hidden] Jacobian is computed in the same
// pass and backward is one scaling. When the head itself is trained (full
// fine-tuning), backward recomputes each chunk's softmax instead, since the
// head's gradient needs the upstream gradient per row. Under autocast (mixed
// precision) backward's products run under the forward's autocast too, as
// the backward of an autocast product would, instead of in the fp32 of the
// weights.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>

#include "common/model/decoder_internal.h"
#include "common/model/small_gemm.h"
#include "common/model/torch_compat.h"

namespace tunefleet::model::internal {
namespace {

// Rows per chunk: logits of ~16 MB (fp32), at least 16 rows.
int64_t ChunkRows(int64_t vocab) {
  return std::max<int64_t>(16, (int64_t{16} << 20) / (4 * std::max<int64_t>(vocab, 1)));
}

// A chunk's logits h·wᵀ and the rows d·w toward the hidden states, through
// the CPU kernels where they apply (autograd is off in here).
at::Tensor ChunkLogits(const at::Tensor& h, const at::Tensor& w) {
  if (std::optional<at::Tensor> y = InferenceLinear(h, w, at::Tensor())) return *std::move(y);
  return at::linear(h, w);
}

// The forward's autocast dtype on `device`, or Undefined when it is off.
at::ScalarType AutocastNow(at::DeviceType device) {
  return compat::AutocastEnabled(device) ? compat::AutocastDtype(device) : at::ScalarType::Undefined;
}

void RowsTowardHidden(at::Tensor& rows, const at::Tensor& d, const at::Tensor& w) {
  if (std::optional<at::Tensor> y = InferenceLinearInputGrad(d, w)) {
    rows.copy_(*y);
  } else if (AutocastNow(d.device().type()) != at::ScalarType::Undefined) {
    rows.copy_(at::mm(d, w));  // out= variants are not autocast's
  } else {
    at::mm_out(rows, d, w);
  }
}

// (onehot(y) - softmax(logits)) in place, for fp32 logits [n, V] and their
// log-sum-exp [n].
void OneHotMinusSoftmax(at::Tensor& logits, const at::Tensor& lse, const at::Tensor& y) {
  logits.sub_(lse.unsqueeze(1)).exp_().neg_();
  logits.scatter_add_(1, y.unsqueeze(1), at::ones({y.size(0), 1}, logits.options()));
}

struct HeadLogProb : torch::autograd::Function<HeadLogProb> {
  // Returns {log p [N] fp32, correct (scalar int64, not differentiable)}.
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const at::Tensor& hs, const at::Tensor& w,
                                                const at::Tensor& target, bool grad_h,
                                                bool grad_w) {
    const int64_t N = hs.size(0), H = hs.size(1);
    const int64_t chunk = ChunkRows(w.size(0));
    at::Tensor logp = at::empty({N}, hs.options().dtype(at::kFloat));
    at::Tensor correct = at::zeros({}, target.options());
    // With the head frozen, the Jacobian rows are all backward needs.
    at::Tensor jac = grad_h && !grad_w ? at::empty({N, H}, hs.options()) : at::Tensor();
    for (int64_t s = 0; s < N; s += chunk) {
      const int64_t n = std::min(chunk, N - s);
      at::Tensor y = target.narrow(0, s, n);
      at::Tensor logits = ChunkLogits(hs.narrow(0, s, n), w).to(at::kFloat);
      at::Tensor lse = at::logsumexp(logits, 1);
      logp.narrow(0, s, n).copy_(logits.gather(1, y.unsqueeze(1)).squeeze(1) - lse);
      correct.add_((logits.argmax(1) == y).sum());
      if (jac.defined()) {
        OneHotMinusSoftmax(logits, lse, y);
        at::Tensor rows = jac.narrow(0, s, n);
        RowsTowardHidden(rows, logits.to(w.scalar_type()), w);
      }
    }
    ctx->mark_non_differentiable({correct});
    ctx->save_for_backward({hs, w, target, jac});
    ctx->saved_data["grad_w"] = grad_w;
    ctx->saved_data["autocast"] = static_cast<int64_t>(AutocastNow(hs.device().type()));
    return {logp, correct};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    torch::autograd::variable_list saved = ctx->get_saved_variables();
    const at::Tensor &hs = saved[0], &w = saved[1], &target = saved[2], &jac = saved[3];
    at::Tensor g = grad_out[0];  // [N] fp32
    if (!g.defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    if (jac.defined()) {
      return {jac * g.unsqueeze(1).to(jac.scalar_type()), at::Tensor(), at::Tensor(),
              at::Tensor(), at::Tensor()};
    }
    // The head is trained: recompute each chunk's softmax.
    const at::ScalarType autocast_dtype =
        static_cast<at::ScalarType>(ctx->saved_data["autocast"].toInt());
    const compat::AutocastScope autocast(hs.device().type(), autocast_dtype);
    const int64_t N = hs.size(0);
    const int64_t chunk = ChunkRows(w.size(0));
    at::Tensor grad_h = at::empty_like(hs);
    at::Tensor grad_w = ctx->saved_data["grad_w"].toBool() ? at::zeros_like(w) : at::Tensor();
    for (int64_t s = 0; s < N; s += chunk) {
      const int64_t n = std::min(chunk, N - s);
      at::Tensor h = hs.narrow(0, s, n);
      at::Tensor y = target.narrow(0, s, n);
      at::Tensor logits = ChunkLogits(h, w).to(at::kFloat);
      at::Tensor lse = at::logsumexp(logits, 1);
      OneHotMinusSoftmax(logits, lse, y);
      logits.mul_(g.narrow(0, s, n).unsqueeze(1));
      at::Tensor d = logits.to(w.scalar_type());
      at::Tensor rows = grad_h.narrow(0, s, n);
      RowsTowardHidden(rows, d, w);
      if (grad_w.defined()) {
        if (autocast_dtype != at::ScalarType::Undefined) {
          grad_w.add_(at::mm(d.t(), h));
        } else {
          grad_w.addmm_(d.t(), h);
        }
      }
    }
    return {grad_h, grad_w, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

HeadLogProbs LabelLogProbs(const at::Tensor& hs, const at::Tensor& w, const at::Tensor& target) {
  const bool grad = at::GradMode::is_enabled();
  const bool grad_h = grad && hs.requires_grad(), grad_w = grad && w.requires_grad();
  torch::autograd::variable_list out = HeadLogProb::apply(hs, w, target, grad_h, grad_w);
  return {out[0], out[1].item<int64_t>()};
}

}  // namespace tunefleet::model::internal
