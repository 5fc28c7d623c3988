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

}  // namespace tunefleet::model::internal
