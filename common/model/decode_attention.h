// Attention for a decode step (one new token a row) straight from the KV
// cache, on the CPU.
//
// libtorch 1.13 without MKL runs a batched matmul over B·H small matrices as
// one OpenBLAS call each (a select per operand, a thread hand-off per call):
// a decode step of 32 rows and 12 heads made 6,144 such calls over 8 layers,
// which cost more than the step's attention arithmetic by far and grew with
// the batch. DecodeAttention computes each (row, head) with AVX2 dot products
// over the cached keys and values where they lie (no gather, no copy),
// rows and groups of heads split across libtorch's threads (one row: its
// heads across the threads). A group walks the cache slot by slot, its heads'
// part of each slot at once, and asks for the slots a few ahead: in a decode
// step the cache is cold (the weights streamed through between layers), and
// a head alone read 256 bytes every 3 KB, which the prefetchers did not
// follow (attention took 0.40 ms of a ~5.3 ms single-stream step, 0.25 ms
// after). Each head's arithmetic is the same in any group, so a row's result
// depends neither on the other rows nor on the thread count.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

namespace tunefleet::model {

// softmax(q·kᵀ/√D)·v for q [B,H,1,D] against keys and values k/v
// [R,capacity,KV,D] (the cache layout; H a multiple of KV), the query of row
// b at position positions[b] (int64 [B,1] on the CPU, the slot its own key
// was written to) seeing the keys at slots (positions[b] - window,
// positions[b]] of cache row rows[b] (int64 [B] on the CPU; undefined: row b,
// and then R == B). With `rows`, several queries may read one cache row: the
// tokens of a chunk, each at its own position, after the chunk's keys and
// values were written (a ragged step, Decoder::ExtendRows). Returns
// [B,1,H·D]; std::nullopt (the caller runs the general path) unless
// everything is fp32 on the CPU with AVX2+FMA and autograd off.
std::optional<at::Tensor> DecodeAttention(const at::Tensor& q, const at::Tensor& k,
                                          const at::Tensor& v, const at::Tensor& positions,
                                          std::optional<int64_t> window,
                                          const at::Tensor& rows = at::Tensor());

// Whether DecodeAttention can run here (enabled, AVX2+FMA): its other
// conditions are the caller's to meet.
bool DecodeAttentionAvailable();

// On by default; benchmarks turn it off to measure the general path.
void EnableDecodeAttention(bool on);

}  // namespace tunefleet::model
