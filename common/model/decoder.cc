// Decoder: the math (embedding, attention with RoPE, MLP, LoRA per row,
// forward, loss, KV-cache extension). Loading is in decoder_load.cc, Hugging
// Face export in decoder_export.cc.
#include "common/model/decoder.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <limits>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/base/status_macros.h"
#include "common/model/decode_attention.h"
#include "common/model/fused_ops.h"
#include "common/model/decoder_internal.h"
#include "common/model/small_gemm.h"
#include "common/model/torch_compat.h"
#include "common/model/torch_status.h"

namespace tunefleet::model {

using internal::CausalKeep;
using internal::ShapeString;

namespace internal {

void GroupRuns(AttentionSegments& segments, int64_t group_cost_pairs) {
  struct Run {
    int64_t start, length;
  };
  std::vector<Run> runs;
  int64_t tokens = 0;
  for (size_t i = 0; i < segments.lengths.size(); ++i) {
    if (!segments.padding[i]) runs.push_back({tokens, segments.lengths[i]});
    tokens += segments.lengths[i];
  }
  // Longest first (ties by position, so the plan is deterministic); a group
  // is then a range [i, j] padded to runs[i].length. best[j + 1] is the
  // least cost of the first j + 1 runs; the search looks back a bounded
  // number of runs so that thousands of runs stay cheap to plan.
  std::stable_sort(runs.begin(), runs.end(),
                   [](const Run& a, const Run& b) { return a.length > b.length; });
  const int64_t n = static_cast<int64_t>(runs.size());
  constexpr int64_t kLookBack = 256;
  std::vector<double> best(n + 1, 0.0);
  std::vector<int64_t> cut(n + 1, 0);
  for (int64_t j = 0; j < n; ++j) {
    best[j + 1] = std::numeric_limits<double>::infinity();
    for (int64_t i = j; i >= std::max<int64_t>(0, j - kLookBack + 1); --i) {
      const double L = static_cast<double>(runs[i].length);
      const double cost = best[i] + static_cast<double>(group_cost_pairs) +
                          static_cast<double>(j - i + 1) * L * L;
      if (cost <= best[j + 1]) {  // ties: the larger group, fewer calls
        best[j + 1] = cost;
        cut[j + 1] = i;
      }
    }
  }
  std::vector<std::pair<int64_t, int64_t>> ranges;  // [i, j)
  for (int64_t j = n; j > 0; j = cut[j]) ranges.emplace_back(cut[j], j);
  std::reverse(ranges.begin(), ranges.end());

  segments.group_runs.clear();
  segments.group_length.clear();
  int64_t slots = 0;
  for (const auto& [i, j] : ranges) slots += (j - i) * runs[i].length;
  at::Tensor gather = at::empty({slots}, at::kLong);
  at::Tensor scatter = at::full({tokens}, slots, at::kLong);  // padding: the zero row
  int64_t* pg = gather.data_ptr<int64_t>();
  int64_t* ps = scatter.data_ptr<int64_t>();
  int64_t slot = 0;
  for (const auto& [i, j] : ranges) {
    const int64_t L = runs[i].length;
    segments.group_runs.push_back(j - i);
    segments.group_length.push_back(L);
    for (int64_t r = i; r < j; ++r) {
      for (int64_t t = 0; t < L; ++t, ++slot) {
        if (t < runs[r].length) {
          pg[slot] = runs[r].start + t;
          ps[runs[r].start + t] = slot;
        } else {
          pg[slot] = runs[r].start;
        }
      }
    }
  }
  segments.gather = gather;
  segments.scatter = scatter;
}

}  // namespace internal

namespace {

// An extra attention call in SegmentedAttention costs about as much as this
// many more query-key pairs (its ~25 small operators forward and backward
// against ~12*H*D flops and a dozen elementwise passes per pair), so runs of
// similar length share a call and very different ones do not.
constexpr int64_t kGroupCostPairs = 8192;

at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({x.narrow(-1, half, half).neg(), x.narrow(-1, 0, half)}, -1);
}

// x [B,H,T,D]; cos/sin [B,1,T,R] with R <= D rotating the first R dims.
at::Tensor ApplyRotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t r = cos.size(-1);
  if (r == x.size(-1)) return x * cos + RotateHalf(x) * sin;
  at::Tensor rot = x.narrow(-1, 0, r);
  return at::cat({rot * cos + RotateHalf(rot) * sin, x.narrow(-1, r, x.size(-1) - r)}, -1);
}

// The runs of tokens that attend only within themselves, as
// LayerInputs::segments, when the masks say so: packing (each run of equal
// sequence ids, none of them reappearing later in its row), padding (an
// attention mask whose ones form one run per row), or both (packed rows
// whose tails are padding). Runs the attention mask zeroes are padding: no
// attention is computed for them (their outputs are ignored). Empty when no
// mask is given, a mask is not on the CPU (reading it would sync a device),
// or the masks need a real [T,T] mask (holes in a row's tokens, an id that
// comes back).
internal::AttentionSegments FindSegments(const ForwardOptions& o, int64_t B, int64_t T) {
  const bool by_ids = o.sequence_ids.defined(), by_mask = o.attention_mask.defined();
  if (!by_ids && !by_mask) return {};
  if ((by_ids && !o.sequence_ids.device().is_cpu()) ||
      (by_mask && !o.attention_mask.device().is_cpu())) {
    return {};
  }
  at::Tensor ids = by_ids ? o.sequence_ids.to(at::kLong).contiguous() : at::Tensor();
  at::Tensor mask = by_mask ? o.attention_mask.to(at::kLong).contiguous() : at::Tensor();
  const int64_t* pi = by_ids ? ids.data_ptr<int64_t>() : nullptr;
  const int64_t* pm = by_mask ? mask.data_ptr<int64_t>() : nullptr;
  auto id = [&](int64_t b, int64_t t) { return pi ? pi[b * T + t] : 0; };
  auto real = [&](int64_t b, int64_t t) { return pm ? pm[b * T + t] != 0 : true; };
  internal::AttentionSegments out;
  std::vector<int64_t> seen;
  for (int64_t b = 0; b < B; ++b) {
    seen.clear();
    int64_t start = 0;
    for (int64_t t = 1; t <= T; ++t) {
      if (t < T && id(b, t) == id(b, start) && real(b, t) == real(b, start)) continue;
      const bool pad = !real(b, start);
      if (!pad) {
        // A second run of tokens with an id already seen (or, with a mask
        // only, a second run of tokens at all) attends across what lies
        // between: only a real mask says that.
        if (std::find(seen.begin(), seen.end(), id(b, start)) != seen.end()) return {};
        seen.push_back(id(b, start));
      }
      out.lengths.push_back(t - start);
      out.padding.push_back(pad ? 1 : 0);
      start = t;
    }
  }
  internal::GroupRuns(out, kGroupCostPairs);
  return out;
}

// Causal attention within each run of `segments` (LayerInputs, grouped by
// GroupRuns): q [B,H,T,D], k/v [B,H,T,D] -> [B,T,H*D], zeros for padding
// runs. One gather per input lays the groups end to end, each group is one
// batched attention call, one gather puts the outputs back in token order;
// backward is the matching scatter-adds.
at::Tensor SegmentedAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const internal::AttentionSegments& segments,
                              std::optional<int64_t> window) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  if (segments.group_runs.empty()) return at::zeros({B, T, H * D}, q.options());  // all padding
  std::vector<int64_t> sizes(segments.group_runs.size());
  for (size_t g = 0; g < sizes.size(); ++g) sizes[g] = segments.group_runs[g] * segments.group_length[g];
  auto grouped = [&](const at::Tensor& x) {
    return x.transpose(1, 2).reshape({B * T, H, D}).index_select(0, segments.gather).split_with_sizes(sizes, 0);
  };
  std::vector<at::Tensor> qs = grouped(q), ks = grouped(k), vs = grouped(v);
  std::vector<at::Tensor> out;
  out.reserve(sizes.size() + 1);
  for (size_t g = 0; g < sizes.size(); ++g) {
    const int64_t n = segments.group_runs[g], L = segments.group_length[g];
    at::Tensor keep;  // causal
    if (window && L > *window) {
      keep = CausalKeep(at::arange(L, q.options().dtype(at::kLong)).view({1, L}), L, window);
    }
    auto heads = [&](const at::Tensor& x) { return x.view({n, L, H, D}).transpose(1, 2); };
    at::Tensor o = compat::Attention(heads(qs[g]), heads(ks[g]), heads(vs[g]), keep);  // [n,H,L,D]
    out.push_back(o.transpose(1, 2).reshape({n * L, H, D}));
  }
  out.push_back(at::zeros({1, H, D}, q.options()));  // the padding runs' output
  return at::cat(out, 0).index_select(0, segments.scatter).view({B, T, H * D});
}

// x·Wᵀ (+ b). On the CPU without autograd, InferenceLinear's kernels (which
// read the weights in place, without OpenBLAS's packing copy); with autograd
// and a frozen weight (LoRA training), the same kernels forward and toward
// the input in backward; a single row they do not take (no AVX2, autograd
// on) through a matrix-vector product: OpenBLAS runs GEMM with one row 3-5x
// slower than GEMV.
at::Tensor LinearOp(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  if (x.device().is_cpu()) {
    if (std::optional<at::Tensor> y = InferenceLinear(x, w, b)) return *std::move(y);
    if (std::optional<at::Tensor> y = FrozenWeightLinear(x, w, b)) return *std::move(y);
  }
  if (x.numel() == x.size(-1) && x.device().is_cpu()) {
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = w.size(0);
    at::Tensor y = at::mv(w, x.reshape({-1}));
    if (b.defined()) y = y + b;
    return y.view(shape);
  }
  return at::linear(x, w, b);
}

}  // namespace

at::Tensor Decoder::RmsNorm(const at::Tensor& x, const at::Tensor& weight, bool fused) const {
  if (fused) {
    if (std::optional<at::Tensor> y = FusedRmsNorm(x, weight, config_.rms_norm_eps)) return *std::move(y);
  }
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor var = xf.pow(2).mean(-1, /*keepdim=*/true);
  return weight * (xf * at::rsqrt(var + config_.rms_norm_eps)).to(x.scalar_type());
}

absl::Status Decoder::CheckIds(const at::Tensor& ids, absl::string_view what) const {
  // On the tensor as given (usually on the host), before it moves to the device.
  auto [lo, hi] = at::aminmax(ids);
  if (lo.item<int64_t>() < 0 || hi.item<int64_t>() >= config_.vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": token ids must be in [0, ", config_.vocab_size, ")"));
  }
  return absl::OkStatus();
}

std::pair<at::Tensor, at::Tensor> Decoder::Rotary(const at::Tensor& positions,
                                                  int64_t max_position) const {
  at::Tensor inv = inv_freq_short_;
  // As transformers does: the long factors once the sequence outgrows the
  // original context.
  if (inv_freq_long_.defined() &&
      max_position + 1 > config_.rope_scaling.original_max_position_embeddings) {
    inv = inv_freq_long_;
  }
  at::Tensor freqs = positions.to(at::kFloat).unsqueeze(-1) * inv.view({1, 1, -1});
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  at::Tensor cos = emb.cos(), sin = emb.sin();
  if (rope_mscale_ != 1.0) {
    cos = cos * rope_mscale_;
    sin = sin * rope_mscale_;
  }
  return {cos.to(options_.dtype).unsqueeze(1), sin.to(options_.dtype).unsqueeze(1)};
}

// From this many distinct adapters in one batch, inference gathers their rows
// into one batched matmul pair per projection.
constexpr size_t kMinGatheredAdapters = 3;

absl::StatusOr<Decoder::AdapterGroups> Decoder::ResolveAdapters(const AdapterChoice& choice,
                                                                int64_t batch) const {
  auto check = [&](const LoraAdapter* a) -> absl::Status {
    if (a != nullptr && a->num_layers() != config_.num_hidden_layers) {
      return absl::InvalidArgumentError(absl::StrCat(
          "adapter has ", a->num_layers(), " layers, the model ", config_.num_hidden_layers));
    }
    return absl::OkStatus();
  };
  AdapterGroups out;
  if (choice.rows.empty()) {
    TF_RETURN_IF_ERROR(check(choice.all));
    out.all = choice.all;
    return out;
  }
  if (static_cast<int64_t>(choice.rows.size()) != batch) {
    return absl::InvalidArgumentError(
        absl::StrCat("per-row adapters: ", choice.rows.size(), " given for ", batch, " rows"));
  }
  std::vector<const LoraAdapter*> distinct;
  for (const LoraAdapter* a : choice.rows) {
    TF_RETURN_IF_ERROR(check(a));
    if (a != nullptr && std::find(distinct.begin(), distinct.end(), a) == distinct.end())
      distinct.push_back(a);
  }
  if (distinct.size() == 1 &&
      std::find(choice.rows.begin(), choice.rows.end(), nullptr) == choice.rows.end()) {
    out.all = distinct[0];
    return out;
  }
  for (const LoraAdapter* a : distinct) {
    std::vector<int64_t> rows;
    for (size_t b = 0; b < choice.rows.size(); ++b) {
      if (choice.rows[b] == a) rows.push_back(static_cast<int64_t>(b));
    }
    out.groups.emplace_back(a, at::tensor(rows, at::kLong).to(options_.device));
  }
  if (distinct.size() >= kMinGatheredAdapters) {
    std::vector<int64_t> rows;
    std::vector<float> scale;
    for (size_t b = 0; b < choice.rows.size(); ++b) {
      if (choice.rows[b] == nullptr) continue;
      rows.push_back(static_cast<int64_t>(b));
      out.gather_adapters.push_back(choice.rows[b]);
      scale.push_back(static_cast<float>(choice.rows[b]->scaling()));
    }
    out.gather_rows = at::tensor(rows, at::kLong).to(options_.device);
    out.gather_scale = at::tensor(scale).view({-1, 1, 1}).to(options_.device);
  }
  return out;
}

namespace {

at::Tensor LoraDelta(const LoraAdapter& adapter, const LoraAdapter::Module& m, const at::Tensor& x,
                     bool training) {
  at::Tensor in = x.to(m.a.scalar_type());
  if (training && adapter.config().dropout > 0)
    in = at::dropout(in, adapter.config().dropout, true);
  return LinearOp(LinearOp(in, m.a, at::Tensor()), m.b, at::Tensor()) * adapter.scaling();
}

}  // namespace

at::Tensor Decoder::GatheredLoraDelta(int64_t index, Proj p, const at::Tensor& x,
                                      const AdapterGroups& adapters) const {
  const size_t n = adapters.gather_adapters.size();
  std::vector<at::Tensor> a(n), b(n);
  for (size_t i = 0; i < n; ++i) {
    const LoraAdapter::Module& m = adapters.gather_adapters[i]->module(index, p);
    if (!m.defined()) return at::Tensor();
    if (i > 0 && (m.a.sizes() != a[0].sizes() || m.a.scalar_type() != a[0].scalar_type() ||
                  m.b.sizes() != b[0].sizes())) {
      return at::Tensor();
    }
    a[i] = m.a;  // [r, in]
    b[i] = m.b;  // [out, r]
  }
  const at::Tensor in = x.index_select(0, adapters.gather_rows).to(a[0].scalar_type());
  if (in.size(1) == 1) {
    // One token a row (decode steps): each row reads its adapter in place.
    std::vector<float> scale(n);
    for (size_t i = 0; i < n; ++i) scale[i] = static_cast<float>(adapters.gather_adapters[i]->scaling());
    if (auto d = InferenceLoraRows(in.squeeze(1), a, b, scale)) return d->unsqueeze(1);
  }
  const at::Tensor h = at::bmm(in, at::stack(a).transpose(1, 2));          // [n, T, r]
  return at::bmm(h, at::stack(b).transpose(1, 2)) * adapters.gather_scale.to(h.scalar_type());
}

at::Tensor Decoder::Project(const Layer& layer, int64_t index, Proj p, const at::Tensor& x,
                            const AdapterGroups& adapters, bool training) const {
  const Linear& lin = layer.proj[static_cast<int>(p)];
  if (adapters.all != nullptr && adapters.groups.empty() && adapters.spans.empty() &&
      !adapters.gather_rows.defined() && x.device().is_cpu()) {
    // One adapter on every row (training, evaluation): its B product joins
    // the base product's pass (h = scale·A·x first, r values a row).
    const LoraAdapter::Module& m = adapters.all->module(index, p);
    if (m.defined() && x.scalar_type() == m.a.scalar_type()) {
      at::Tensor in = x;
      if (training && adapters.all->config().dropout > 0)
        in = at::dropout(in, adapters.all->config().dropout, true);
      at::Tensor h = LinearOp(in, m.a, at::Tensor()) * adapters.all->scaling();
      if (std::optional<at::Tensor> y = FrozenLinearPlusLowRank(x, lin.weight, h, m.b)) {
        return lin.bias.defined() ? *y + lin.bias : *std::move(y);
      }
      return LinearOp(x, lin.weight, lin.bias) + LinearOp(h, m.b, at::Tensor());
    }
  }
  at::Tensor y = LinearOp(x, lin.weight, lin.bias);
  if (adapters.all != nullptr) {
    const LoraAdapter::Module& m = adapters.all->module(index, p);
    if (m.defined()) y = y + LoraDelta(*adapters.all, m, x, training).to(y.scalar_type());
  }
  bool gathered = false;
  if (!training && adapters.gather_rows.defined()) {
    at::Tensor delta = GatheredLoraDelta(index, p, x, adapters);
    if (delta.defined()) {
      y = y.index_add(0, adapters.gather_rows, delta.to(y.scalar_type()));
      gathered = true;
    }
  }
  for (const auto& [adapter, rows] : adapters.groups) {
    if (gathered) break;
    const LoraAdapter::Module& m = adapter->module(index, p);
    if (!m.defined()) continue;
    at::Tensor delta = LoraDelta(*adapter, m, x.index_select(0, rows), training);
    y = y.index_add(0, rows, delta.to(y.scalar_type()));
  }
  for (const AdapterGroups::Span& s : adapters.spans) {
    const LoraAdapter::Module& m = s.adapter->module(index, p);
    if (!m.defined()) continue;
    // y is this call's own result: the slice is added to in place.
    y.narrow(0, s.offset, s.length)
        .add_(LoraDelta(*s.adapter, m, x.narrow(0, s.offset, s.length), training).to(y.scalar_type()));
  }
  return y;
}

at::Tensor Decoder::Body(const at::Tensor& input_ids, const at::Tensor& positions,
                         int64_t max_position, const at::Tensor& keep,
                         const AdapterGroups& adapters, bool training, KvCache* cache,
                         bool checkpoint, internal::AttentionSegments segments,
                         const at::Tensor& cache_rows) const {
  const ModelConfig& c = config_;
  const int64_t B = input_ids.size(0), T = input_ids.size(1);
  at::Tensor h = at::embedding(embed_, input_ids);
  auto [cos, sin] = Rotary(positions, max_position);
  LayerInputs in{cos, sin, keep, std::move(segments), at::Tensor(), at::Tensor(), T};
  in.fused = cache != nullptr;
  if (in.segments.gather.defined() && in.segments.gather.device() != options_.device) {
    in.segments.gather = in.segments.gather.to(options_.device);
    in.segments.scatter = in.segments.scatter.to(options_.device);
  }
  if (cache != nullptr && cache_rows.defined()) {
    // Ragged: positions are the cache slots; the keys of a row reach its
    // furthest new token.
    in.cache_rows = cache_rows;
    in.rows = cache_rows.view({B, 1});
    in.cols = positions;
    in.span = max_position + 1;
  } else if (cache != nullptr) {
    at::Tensor lens = at::tensor(cache->lengths_, at::kLong).to(options_.device);
    in.rows = at::arange(B, lens.options()).view({B, 1}).expand({B, T});
    in.cols = lens.view({B, 1}) + at::arange(T, lens.options()).view({1, T});
    in.span = *std::max_element(cache->lengths_.begin(), cache->lengths_.end()) + T;
  }
  // Recomputation only pays where autograd would keep the activations.
  checkpoint = checkpoint && cache == nullptr && at::GradMode::is_enabled();
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    h = checkpoint ? CheckpointedLayer(i, h, in, adapters, training)
                   : DecoderLayer(i, h, in, adapters, training, cache);
  }
  return RmsNorm(h, norm_, in.fused);
}

at::Tensor Decoder::DecoderLayer(int64_t i, at::Tensor h, const LayerInputs& in,
                                 const AdapterGroups& adapters, bool training,
                                 KvCache* cache) const {
  const ModelConfig& c = config_;
  const int64_t B = h.size(0), T = h.size(1);
  const int64_t H = c.num_attention_heads, KV = c.num_key_value_heads, D = c.head_dim;
  const Layer& layer = layers_[i];
  at::Tensor x = RmsNorm(h, layer.input_norm, in.fused);
  at::Tensor q, k, v;
  if (c.fused_projections()) {
    at::Tensor qkv = Project(layer, i, Proj::kQkv, x, adapters, training);
    q = qkv.narrow(-1, 0, c.q_size());
    k = qkv.narrow(-1, c.q_size(), c.kv_size());
    v = qkv.narrow(-1, c.q_size() + c.kv_size(), c.kv_size());
  } else {
    q = Project(layer, i, Proj::kQ, x, adapters, training);
    k = Project(layer, i, Proj::kK, x, adapters, training);
    v = Project(layer, i, Proj::kV, x, adapters, training);
  }
  // With a cache on the CPU (inference), rotary and the cache write are one
  // pass (fused_ops.h); k and v are then read back from the cache below.
  std::optional<at::Tensor> fused_q;
  if (cache != nullptr && in.fused) {
    fused_q = FusedRotaryIntoCache(q, k, v, in.cos, in.sin, cache->k_[i], cache->v_[i], in.rows,
                                   in.cols, H, KV);
  }
  if (fused_q) {
    q = *std::move(fused_q);
  } else {
    q = ApplyRotary(q.reshape({B, T, H, D}).transpose(1, 2), in.cos, in.sin);
    k = ApplyRotary(k.reshape({B, T, KV, D}).transpose(1, 2), in.cos, in.sin);
    v = v.reshape({B, T, KV, D}).transpose(1, 2);
    if (cache != nullptr) {
      cache->k_[i].index_put_({in.rows, in.cols}, k.transpose(1, 2));
      cache->v_[i].index_put_({in.rows, in.cols}, v.transpose(1, 2));
    }
  }
  at::Tensor attn;  // [B,T,H*D]
  if (cache != nullptr) {
    // A decode step: each row's query against its own cached keys, in place
    // (ragged: against the keys of its cache row).
    if (T == 1) {
      if (auto a = DecodeAttention(q, cache->k_[i], cache->v_[i], in.cols, c.sliding_window,
                                   in.cache_rows)) {
        attn = *std::move(a);
      }
    }
    if (!attn.defined()) {
      at::Tensor ck = cache->k_[i], cv = cache->v_[i];
      if (in.cache_rows.defined()) {
        const at::Tensor r = in.cache_rows.to(ck.device());
        ck = ck.narrow(1, 0, in.span).index_select(0, r);
        cv = cv.narrow(1, 0, in.span).index_select(0, r);
      }
      k = ck.narrow(1, 0, in.span).transpose(1, 2);
      v = cv.narrow(1, 0, in.span).transpose(1, 2);
    }
  }
  if (H != KV && !attn.defined()) {
    const int64_t S = k.size(2);
    k = k.unsqueeze(2).expand({B, KV, H / KV, S, D}).reshape({B, H, S, D});
    v = v.unsqueeze(2).expand({B, KV, H / KV, S, D}).reshape({B, H, S, D});
  }
  if (!attn.defined()) {
    attn = in.segments.lengths.empty()
               ? compat::Attention(q, k, v, in.keep).transpose(1, 2).reshape({B, T, H * D})
               : SegmentedAttention(q, k, v, in.segments, c.sliding_window);
  }
  h = h + Project(layer, i, Proj::kO, attn, adapters, training);

  x = RmsNorm(h, layer.post_attention_norm, in.fused);
  at::Tensor gate, up;
  if (c.fused_projections()) {
    at::Tensor gu = Project(layer, i, Proj::kGateUp, x, adapters, training);
    gate = gu.narrow(-1, 0, c.intermediate_size);
    up = gu.narrow(-1, c.intermediate_size, c.intermediate_size);
  } else {
    gate = Project(layer, i, Proj::kGate, x, adapters, training);
    up = Project(layer, i, Proj::kUp, x, adapters, training);
  }
  std::optional<at::Tensor> act = in.fused ? FusedSiluMul(gate, up) : std::nullopt;
  return h + Project(layer, i, Proj::kDown, act ? *act : up * at::silu(gate), adapters, training);
}

absl::StatusOr<at::Tensor> Decoder::Forward(const at::Tensor& input_ids,
                                            const ForwardOptions& options) const {
  const compat::AutocastScope autocast(options_.device.type(), options_.autocast_dtype);
  TF_ASSIGN_OR_RETURN(at::Tensor h, ForwardHidden(input_ids, options));
  return internal::CatchTorch("Decoder::Forward", [&]() -> absl::StatusOr<at::Tensor> {
    return at::linear(h, lm_head_).to(at::kFloat);
  });
}

absl::StatusOr<Decoder::LossOutput> Decoder::Loss(const at::Tensor& input_ids,
                                                  const at::Tensor& labels,
                                                  const ForwardOptions& options) const {
  const compat::AutocastScope autocast(options_.device.type(), options_.autocast_dtype);
  if (!labels.defined() || !input_ids.defined() || labels.sizes() != input_ids.sizes() ||
      labels.dim() != 2 || labels.size(1) < 2) {
    return absl::InvalidArgumentError(
        "Loss: labels must match input_ids [batch, tokens] with tokens >= 2");
  }
  TF_ASSIGN_OR_RETURN(at::Tensor h, ForwardHidden(input_ids, options));
  return internal::CatchTorch("Decoder::Loss", [&]() -> absl::StatusOr<LossOutput> {
    const int64_t T = h.size(1), H = h.size(2);
    at::Tensor y = labels.narrow(1, 1, T - 1).reshape({-1}).to(h.device(), at::kLong);
    at::Tensor rows = at::nonzero(y != -100).reshape({-1});
    LossOutput out;
    out.tokens = rows.size(0);
    if (out.tokens == 0) {
      out.loss = h.sum() * 0.0;  // keeps the graph, so backward() still works
      return out;
    }
    at::Tensor hs = h.narrow(1, 0, T - 1).reshape({-1, H}).index_select(0, rows);
    at::Tensor target = y.index_select(0, rows);
    internal::HeadLogProbs scored = internal::LabelLogProbs(hs, lm_head_, target);
    out.loss = -scored.logp.mean();
    out.correct = scored.correct;
    return out;
  });
}

absl::StatusOr<Decoder::SequenceLogProbs> Decoder::SequenceLogProb(
    const at::Tensor& input_ids, const at::Tensor& labels, const ForwardOptions& options) const {
  const compat::AutocastScope autocast(options_.device.type(), options_.autocast_dtype);
  if (!labels.defined() || !input_ids.defined() || labels.sizes() != input_ids.sizes() ||
      labels.dim() != 2 || labels.size(1) < 2) {
    return absl::InvalidArgumentError(
        "SequenceLogProb: labels must match input_ids [batch, tokens] with tokens >= 2");
  }
  TF_ASSIGN_OR_RETURN(at::Tensor h, ForwardHidden(input_ids, options));
  return internal::CatchTorch("Decoder::SequenceLogProb", [&]() -> absl::StatusOr<SequenceLogProbs> {
    const int64_t B = h.size(0), T = h.size(1), H = h.size(2);
    at::Tensor y = labels.narrow(1, 1, T - 1).reshape({-1}).to(h.device(), at::kLong);
    at::Tensor flat = at::nonzero(y != -100).reshape({-1});
    SequenceLogProbs out;
    at::Tensor counts = (labels.narrow(1, 1, T - 1) != -100).sum(1).to(at::kCPU, at::kLong);
    out.tokens.assign(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + B);
    if (flat.size(0) == 0) {
      out.sum = h.sum() * 0.0 + at::zeros({B}, h.options().dtype(at::kFloat));
      return out;
    }
    at::Tensor hs = h.narrow(1, 0, T - 1).reshape({-1, H}).index_select(0, flat);
    at::Tensor target = y.index_select(0, flat);
    at::Tensor logp = internal::LabelLogProbs(hs, lm_head_, target).logp;
    at::Tensor row = at::div(flat, T - 1, "floor");
    out.sum = at::zeros({B}, logp.options()).index_add(0, row, logp);
    return out;
  });
}

absl::StatusOr<at::Tensor> Decoder::ForwardHidden(const at::Tensor& input_ids,
                                                  const ForwardOptions& options) const {
  const compat::AutocastScope autocast(options_.device.type(), options_.autocast_dtype);
  if (!input_ids.defined() || input_ids.dim() != 2 || input_ids.size(1) == 0) {
    return absl::InvalidArgumentError(
        "Forward: input_ids must be a non-empty [batch, tokens] tensor");
  }
  return internal::CatchTorch("Decoder::Forward", [&]() -> absl::StatusOr<at::Tensor> {
    const at::Device dev = options_.device;
    TF_RETURN_IF_ERROR(CheckIds(input_ids, "Forward"));
    at::Tensor ids = input_ids.to(dev, at::kLong);
    const int64_t B = ids.size(0), T = ids.size(1);
    for (const at::Tensor* t :
         {&options.attention_mask, &options.position_ids, &options.sequence_ids}) {
      if (t->defined() && t->sizes() != ids.sizes()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Forward: masks and position ids must have shape ", ShapeString(ids.sizes())));
      }
    }
    at::Tensor idx = at::arange(T, ids.options());
    // Packed or padded rows whose masks are runs attend per run, unmasked.
    internal::AttentionSegments segments = FindSegments(options, B, T);
    const bool masked = segments.lengths.empty();
    at::Tensor keep = masked ? CausalKeep(idx.view({1, T}), T, config_.sliding_window)
                                   .expand({B, 1, T, T})  // [B,1,Tq,Tk]
                             : at::Tensor();
    at::Tensor positions;
    if (options.attention_mask.defined()) {
      at::Tensor m = options.attention_mask.to(dev).to(at::kBool);
      if (masked) keep = keep.logical_and(m.view({B, 1, 1, T}));
      positions = (m.to(at::kLong).cumsum(1) - 1).clamp_min(0);
    } else {
      positions = idx.view({1, T}).expand({B, T});
    }
    if (masked && options.sequence_ids.defined()) {
      at::Tensor s = options.sequence_ids.to(dev);
      keep = keep.logical_and(s.view({B, 1, T, 1}) == s.view({B, 1, 1, T}));
    }
    if (options.position_ids.defined()) {
      positions = options.position_ids.to(dev, at::kLong);
    } else if (options.sequence_ids.defined()) {
      // Restart at each change of sequence id: position = index - start index.
      at::Tensor s = options.sequence_ids.to(dev);
      at::Tensor starts = at::ones({B, T}, ids.options().dtype(at::kBool));
      if (T > 1) starts.narrow(1, 1, T - 1).copy_(s.narrow(1, 1, T - 1) != s.narrow(1, 0, T - 1));
      at::Tensor start_idx = std::get<0>(at::cummax(
          at::where(starts, idx.view({1, T}).expand({B, T}), at::zeros_like(positions)), 1));
      positions = idx.view({1, T}) - start_idx;
    }
    // Padding queries would otherwise see no key at all; let them see
    // themselves so that softmax stays finite (their outputs are ignored).
    if (masked) {
      keep = keep.logical_or(at::eye(T, ids.options().dtype(at::kBool)).view({1, 1, T, T}));
    }
    // Nothing but causality: let the attention kernel take its causal path.
    if (!options.attention_mask.defined() && !options.sequence_ids.defined() &&
        (!config_.sliding_window || T <= *config_.sliding_window)) {
      keep = at::Tensor();
    }
    TF_ASSIGN_OR_RETURN(AdapterGroups adapters, ResolveAdapters(options.adapter, B));
    // Only longrope needs the largest position; it costs a sync.
    const int64_t max_position = inv_freq_long_.defined() ? positions.max().item<int64_t>() : T - 1;
    return Body(ids, positions, max_position, keep, adapters, options.training, nullptr,
                options.gradient_checkpointing, std::move(segments));
  });
}

absl::StatusOr<KvCache> Decoder::NewCache(int64_t batch, int64_t capacity) const {
  if (batch <= 0 || capacity <= 0)
    return absl::InvalidArgumentError("NewCache: batch and capacity must be positive");
  return internal::CatchTorch("Decoder::NewCache", [&]() -> absl::StatusOr<KvCache> {
    KvCache cache;
    auto opts = at::TensorOptions().dtype(options_.dtype).device(options_.device);
    for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
      cache.k_.push_back(
          at::zeros({batch, capacity, config_.num_key_value_heads, config_.head_dim}, opts));
      cache.v_.push_back(
          at::zeros({batch, capacity, config_.num_key_value_heads, config_.head_dim}, opts));
    }
    cache.lengths_.assign(static_cast<size_t>(batch), 0);
    cache.capacity_ = capacity;
    return cache;
  });
}

absl::Status KvCache::CopyRow(const KvCache& from, int64_t from_row, int64_t to_row) {
  if (from_row < 0 || from_row >= from.batch_size() || to_row < 0 || to_row >= batch_size()) {
    return absl::InvalidArgumentError(absl::StrCat("KvCache::CopyRow: row ", from_row, " of ",
                                                   from.batch_size(), " to row ", to_row, " of ",
                                                   batch_size()));
  }
  const int64_t n = from.lengths_[static_cast<size_t>(from_row)];
  if (n > capacity_ || from.k_.size() != k_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("KvCache::CopyRow: ", n, " tokens into capacity ",
                                                   capacity_, ", ", from.k_.size(), " layers into ",
                                                   k_.size()));
  }
  return internal::CatchTorch("KvCache::CopyRow", [&]() -> absl::Status {
    for (size_t l = 0; l < k_.size() && n > 0; ++l) {
      k_[l][to_row].narrow(0, 0, n).copy_(from.k_[l][from_row].narrow(0, 0, n));
      v_[l][to_row].narrow(0, 0, n).copy_(from.v_[l][from_row].narrow(0, 0, n));
    }
    lengths_[static_cast<size_t>(to_row)] = n;
    return absl::OkStatus();
  });
}

absl::StatusOr<at::Tensor> Decoder::Extend(KvCache& cache, const at::Tensor& input_ids,
                                           const std::vector<int64_t>& chunk_lengths,
                                           const AdapterChoice& adapter, bool all_logits) const {
  const compat::AutocastScope autocast(options_.device.type(), options_.autocast_dtype);
  if (!input_ids.defined() || input_ids.dim() != 2 || input_ids.size(1) == 0 ||
      input_ids.size(0) != cache.batch_size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Extend: input_ids must be [", cache.batch_size(), ", tokens] with tokens > 0"));
  }
  const int64_t B = input_ids.size(0), T = input_ids.size(1);
  std::vector<int64_t> chunk = chunk_lengths;
  if (chunk.empty()) chunk.assign(static_cast<size_t>(B), T);
  if (static_cast<int64_t>(chunk.size()) != B) {
    return absl::InvalidArgumentError("Extend: chunk_lengths must have one entry per row");
  }
  for (int64_t b = 0; b < B; ++b) {
    if (chunk[b] < 0 || chunk[b] > T) {
      return absl::InvalidArgumentError(
          absl::StrCat("Extend: chunk_lengths[", b, "] is outside [0, ", T, "]"));
    }
    if (cache.lengths_[b] + T > cache.capacity_) {
      return absl::ResourceExhaustedError(
          absl::StrCat("Extend: row ", b, " holds ", cache.lengths_[b], " tokens; ", T,
                       " more exceed the cache capacity ", cache.capacity_));
    }
  }
  return internal::CatchTorch("Decoder::Extend", [&]() -> absl::StatusOr<at::Tensor> {
    at::NoGradGuard no_grad;
    const at::Device dev = options_.device;
    TF_RETURN_IF_ERROR(CheckIds(input_ids, "Extend"));
    at::Tensor ids = input_ids.to(dev, at::kLong);
    at::Tensor lens = at::tensor(cache.lengths_, at::kLong).to(dev);
    at::Tensor positions = lens.view({B, 1}) + at::arange(T, ids.options()).view({1, T});  // [B,T]
    const int64_t span = *std::max_element(cache.lengths_.begin(), cache.lengths_.end()) + T;
    at::Tensor keep = CausalKeep(positions, span, config_.sliding_window);  // [B,1,T,span]
    // A prefill into an empty cache is plain causal attention (padding sits
    // after each row's real tokens, so real queries never see it).
    if (span == T && (!config_.sliding_window || T <= *config_.sliding_window)) keep = at::Tensor();
    TF_ASSIGN_OR_RETURN(AdapterGroups adapters, ResolveAdapters(adapter, B));
    int64_t max_position = 0;
    for (int64_t b = 0; b < B; ++b)
      max_position = std::max(max_position, cache.lengths_[b] + std::max<int64_t>(chunk[b], 1) - 1);
    at::Tensor h = Body(ids, positions, max_position, keep, adapters, false, &cache, false);
    for (int64_t b = 0; b < B; ++b) cache.lengths_[b] += chunk[b];
    if (all_logits) return at::linear(h, lm_head_).to(at::kFloat);
    std::vector<int64_t> last(chunk.size());
    for (size_t b = 0; b < chunk.size(); ++b) last[b] = std::max<int64_t>(chunk[b] - 1, 0);
    at::Tensor last_idx = at::tensor(last, at::kLong).to(dev);
    at::Tensor hl = h.index({at::arange(B, ids.options()), last_idx});  // [B,hidden]
    return LinearOp(hl, lm_head_, at::Tensor()).to(at::kFloat);
  });
}

absl::StatusOr<Decoder::AdapterGroups> Decoder::ResolveRaggedAdapters(
    const AdapterChoice& choice, const std::vector<int64_t>& chunks, int64_t tokens) const {
  const int64_t B = static_cast<int64_t>(chunks.size());
  // Checks every adapter; one adapter (or none) for all rows needs no more.
  TF_ASSIGN_OR_RETURN(AdapterGroups by_row, ResolveAdapters(choice, B));
  if (choice.rows.empty() || by_row.all != nullptr) return by_row;
  std::vector<const LoraAdapter*> singles(static_cast<size_t>(tokens), nullptr);
  AdapterGroups spans;
  for (int64_t b = 0, at = 0; b < B; at += chunks[b], ++b) {
    const LoraAdapter* a = choice.rows[b];
    if (a == nullptr || chunks[b] == 0) continue;
    if (chunks[b] == 1) {
      singles[at] = a;
    } else {
      spans.spans.push_back({a, at, chunks[b]});
    }
  }
  AdapterGroups out;
  if (std::any_of(singles.begin(), singles.end(), [](const LoraAdapter* a) { return a != nullptr; })) {
    TF_ASSIGN_OR_RETURN(out, ResolveAdapters(AdapterChoice(std::move(singles)), tokens));
  }
  out.spans = std::move(spans.spans);
  return out;
}

bool Decoder::RaggedExtend() const {
  return options_.ragged_extend && options_.device.is_cpu() && options_.dtype == at::kFloat &&
         DecodeAttentionAvailable();
}

absl::StatusOr<at::Tensor> Decoder::ExtendRows(KvCache& cache, const std::vector<int64_t>& ids,
                                               const std::vector<int64_t>& chunk_lengths,
                                               const AdapterChoice& adapter) const {
  const compat::AutocastScope autocast(options_.device.type(), options_.autocast_dtype);
  const int64_t B = cache.batch_size();
  if (static_cast<int64_t>(chunk_lengths.size()) != B) {
    return absl::InvalidArgumentError(absl::StrCat("ExtendRows: ", chunk_lengths.size(),
                                                   " chunk lengths for ", B, " rows"));
  }
  int64_t N = 0, longest = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = chunk_lengths[b];
    if (n < 0) return absl::InvalidArgumentError(absl::StrCat("ExtendRows: chunk_lengths[", b, "] < 0"));
    N += n;
    longest = std::max(longest, n);
  }
  if (static_cast<int64_t>(ids.size()) != N || N == 0) {
    return absl::InvalidArgumentError(absl::StrCat("ExtendRows: ", ids.size(), " ids for ", N,
                                                   " tokens in the chunks (at least 1)"));
  }
  // CheckIds's test on the host vector (no tensor operators in a decode step).
  for (const int64_t id : ids) {
    if (id < 0 || id >= config_.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("ExtendRows: token ids must be in [0, ", config_.vocab_size, ")"));
    }
  }
  bool room_for_padding = true;
  for (int64_t b = 0; b < B; ++b) room_for_padding &= cache.lengths_[b] + longest <= cache.capacity_;
  // Padded when there is no kernel for the ragged attention, or when padding
  // costs little (under a quarter of the step): a prompt's tokens then meet
  // in one matrix product per head rather than one dot product per key.
  if (!RaggedExtend() || (N * 4 > B * longest * 3 && room_for_padding)) {
    std::vector<int64_t> padded(static_cast<size_t>(B * longest), 0);
    for (int64_t b = 0, at = 0; b < B; at += chunk_lengths[b], ++b) {
      std::copy(ids.begin() + at, ids.begin() + at + chunk_lengths[b], padded.begin() + b * longest);
    }
    return Extend(cache, at::from_blob(padded.data(), {B, longest}, at::kLong).clone(),
                  chunk_lengths, adapter);
  }
  for (int64_t b = 0; b < B; ++b) {
    if (cache.lengths_[b] + chunk_lengths[b] > cache.capacity_) {
      return absl::ResourceExhaustedError(
          absl::StrCat("ExtendRows: row ", b, " holds ", cache.lengths_[b], " tokens; ",
                       chunk_lengths[b], " more exceed the cache capacity ", cache.capacity_));
    }
  }
  // Token n of the step is row n of a [N,1] batch: its cache row, its slot
  // (its row's adapter: ResolveRaggedAdapters).
  // The vocabulary head runs over the rows with new tokens only (`active`,
  // each at its last token `last`): a batch's idle rows would otherwise cost
  // a head product each (a 32-row cache serving one stream spent more on
  // them than on the whole decoder).
  std::vector<int64_t> rows(static_cast<size_t>(N)), slots(static_cast<size_t>(N));
  std::vector<int64_t> active, last;
  int64_t max_position = 0;
  for (int64_t b = 0, n = 0; b < B; ++b) {
    for (int64_t j = 0; j < chunk_lengths[b]; ++j, ++n) {
      rows[n] = b;
      slots[n] = cache.lengths_[b] + j;
      max_position = std::max(max_position, slots[n]);
    }
    if (chunk_lengths[b] > 0) {
      active.push_back(b);
      last.push_back(n - 1);
    }
  }
  return internal::CatchTorch("Decoder::ExtendRows", [&]() -> absl::StatusOr<at::Tensor> {
    at::NoGradGuard no_grad;
    at::Tensor input = at::from_blob(const_cast<int64_t*>(ids.data()), {N, 1}, at::kLong);
    at::Tensor positions = at::from_blob(slots.data(), {N, 1}, at::kLong).clone();
    at::Tensor cache_rows = at::from_blob(rows.data(), {N}, at::kLong).clone();
    // Each query sees its row's keys up to its own slot; the chunk's keys are
    // written before any attention reads them.
    at::Tensor keep = CausalKeep(positions, max_position + 1, config_.sliding_window);
    TF_ASSIGN_OR_RETURN(AdapterGroups adapters, ResolveRaggedAdapters(adapter, chunk_lengths, N));
    at::Tensor h = Body(input, positions, max_position, keep, adapters, false, &cache, false, {},
                        cache_rows);
    for (int64_t b = 0; b < B; ++b) cache.lengths_[b] += chunk_lengths[b];
    const int64_t A = static_cast<int64_t>(active.size());
    at::Tensor hl = h.view({N, -1}).index_select(0, at::from_blob(last.data(), {A}, at::kLong));
    at::Tensor logits = LinearOp(hl, lm_head_, at::Tensor()).to(at::kFloat);
    if (A == B) return logits;
    at::Tensor out = at::empty({B, logits.size(1)}, logits.options());
    if (out.device().is_cpu() && logits.is_contiguous()) {
      // A row copy each (index_copy_ took ~0.2 ms for one row of 32k logits).
      const int64_t V = logits.size(1);
      const float* from = logits.data_ptr<float>();
      float* to = out.data_ptr<float>();
      for (int64_t j = 0; j < A; ++j) std::copy(from + j * V, from + (j + 1) * V, to + active[j] * V);
    } else {
      out.index_copy_(0, at::from_blob(active.data(), {A}, at::kLong).to(out.device()), logits);
    }
    return out;
  });
}

absl::Status Decoder::ApplyAdapter(const LoraAdapter& adapter, double sign) {
  if (adapter.num_layers() != config_.num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "adapter has ", adapter.num_layers(), " layers, the model ", config_.num_hidden_layers));
  }
  return internal::CatchTorch("Decoder::MergeAdapter", [&]() -> absl::Status {
    at::NoGradGuard no_grad;
    for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
      for (Proj p : ModelProjections(config_)) {
        const LoraAdapter::Module& m = adapter.module(i, p);
        if (!m.defined()) continue;
        at::Tensor& w = layers_[i].proj[static_cast<int>(p)].weight;
        at::Tensor delta =
            at::matmul(m.b.to(at::kFloat), m.a.to(at::kFloat)) * (sign * adapter.scaling());
        // Out of place: copies of this Decoder share weight storage, and a
        // merge must not change them (nor dirty mapped file pages).
        w = w + delta.to(w.device(), w.scalar_type());
      }
    }
    return absl::OkStatus();
  });
}

absl::Status Decoder::MergeAdapter(const LoraAdapter& adapter) {
  return ApplyAdapter(adapter, 1.0);
}
absl::Status Decoder::UnmergeAdapter(const LoraAdapter& adapter) {
  return ApplyAdapter(adapter, -1.0);
}

std::vector<at::Tensor> Decoder::Parameters() const {
  std::vector<at::Tensor> out = {embed_};
  for (const Layer& l : layers_) {
    out.push_back(l.input_norm);
    for (const Linear& lin : l.proj) {
      if (lin.weight.defined()) out.push_back(lin.weight);
      if (lin.bias.defined()) out.push_back(lin.bias);
    }
    out.push_back(l.post_attention_norm);
  }
  out.push_back(norm_);
  if (!config_.tie_word_embeddings) out.push_back(lm_head_);
  return out;
}

int64_t Decoder::WeightBytes() const {
  int64_t n = embed_.numel() * embed_.element_size() + norm_.numel() * norm_.element_size();
  if (!config_.tie_word_embeddings) n += lm_head_.numel() * lm_head_.element_size();
  for (const Layer& l : layers_) {
    n += (l.input_norm.numel() + l.post_attention_norm.numel()) * l.input_norm.element_size();
    for (const Linear& lin : l.proj) {
      if (lin.weight.defined()) n += lin.weight.numel() * lin.weight.element_size();
      if (lin.bias.defined()) n += lin.bias.numel() * lin.bias.element_size();
    }
  }
  return n;
}

absl::StatusOr<at::Tensor> CausalLmLoss(const at::Tensor& logits, const at::Tensor& labels) {
  if (!logits.defined() || !labels.defined() || logits.dim() != 3 || labels.dim() != 2 ||
      logits.size(0) != labels.size(0) || logits.size(1) != labels.size(1) || logits.size(1) < 2) {
    return absl::InvalidArgumentError(
        "CausalLmLoss: logits [B,T,V] and labels [B,T] with T >= 2 expected");
  }
  return internal::CatchTorch("CausalLmLoss", [&]() -> absl::StatusOr<at::Tensor> {
    const int64_t T = logits.size(1), V = logits.size(2);
    at::Tensor l = logits.narrow(1, 0, T - 1).reshape({-1, V}).to(at::kFloat);
    at::Tensor y = labels.narrow(1, 1, T - 1).reshape({-1}).to(logits.device(), at::kLong);
    return at::cross_entropy_loss(l, y, {}, at::Reduction::Mean, -100);
  });
}

}  // namespace tunefleet::model
