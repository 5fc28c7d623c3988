// Internal to the model library: the decoder's weight names and helpers
// shared by its three files (decoder.cc: the math; decoder_load.cc: loading
// and RoPE variants; decoder_export.cc: Hugging Face export).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <string>

#include "common/model/decoder.h"

namespace tunefleet::model::internal {

std::string ShapeString(at::IntArrayRef shape);
std::string LayerPrefix(int64_t i);
std::string ProjWeightName(int64_t layer, Proj p);
std::string ProjBiasName(int64_t layer, Proj p);
bool ProjHasBias(const ModelConfig& c, Proj p);

// The one attention-mask builder: keep[b, 0, q, k] says whether the query
// at position q_pos[b, q] may attend to key slot k (k < span): causal, and
// within the sliding window when the model has one. Forward and Extend
// start from it (Forward then adds padding and packing masks).
at::Tensor CausalKeep(const at::Tensor& q_pos, int64_t span, std::optional<int64_t> window);

// log p(target[i] | hs[i]) through the head w [vocab, hidden] for each row of
// hs [N, hidden] (fp32 [N]; differentiable in hs and, when it requires grad,
// in w), and how many rows' argmax is their target. The [N, vocab] logits
// never exist whole (lm_head_loss.cc).
struct HeadLogProbs {
  at::Tensor logp;
  int64_t correct = 0;
};
HeadLogProbs LabelLogProbs(const at::Tensor& hs, const at::Tensor& w, const at::Tensor& target);

}  // namespace tunefleet::model::internal
