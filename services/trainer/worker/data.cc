#include "services/trainer/worker/data.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"

namespace tunefleet::trainer {
namespace {

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Loss-masked tokens after the first (those a label exists for).
int64_t TrainedTokens(const Example& x) {
  int64_t n = 0;
  for (int64_t t = 1; t < x.length; ++t) n += x.mask[t] ? 1 : 0;
  return n;
}

}  // namespace

absl::StatusOr<Dataset> Dataset::Load(const std::vector<std::string>& paths, absl::string_view what,
                                      int64_t max_sequence_length, int64_t model_vocab,
                                      std::optional<int64_t> tokenizer_vocab) {
  Dataset d;
  d.files_.reserve(paths.size());
  for (size_t i = 0; i < paths.size(); ++i) {
    absl::StatusOr<ShardFile> f = ShardFile::Read(paths[i]);
    if (!f.ok()) {
      return absl::Status(f.status().code(),
                          absl::StrCat(what, "[", i, "]: ", f.status().message()));
    }
    const ShardFileInfo& info = f->info();
    if (tokenizer_vocab && static_cast<int64_t>(info.vocab_size) != *tokenizer_vocab) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, "[", i, "]: shard file ", paths[i], " was tokenized with a vocabulary of ",
          info.vocab_size, " tokens but the base model's tokenizer has ", *tokenizer_vocab,
          " (a shard set of another tokenizer)"));
    }
    if (info.max_token_id >= model_vocab) {
      return absl::InvalidArgumentError(absl::StrCat(what, "[", i, "]: shard file ", paths[i],
                                                     " holds token id ", info.max_token_id,
                                                     " but the base model's vocabulary has ",
                                                     model_vocab, " tokens"));
    }
    if (i > 0 && info.pairs != d.pairs_) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, "[", i, "]: shard file ", paths[i], (info.pairs ? " holds" : " does not hold"),
          " preference pairs but ", what, "[0] ", (d.pairs_ ? "does" : "does not")));
    }
    d.pairs_ = info.pairs;
    d.files_.push_back(*std::move(f));
  }
  for (const ShardFile& f : d.files_) {
    for (int64_t i = 0; i < f.size(); ++i) {
      ShardFile::Example e = f.example(i);
      Example x;
      x.ids = e.token_ids.data();
      x.mask = e.loss_mask.data();
      x.length = std::min<int64_t>(static_cast<int64_t>(e.token_ids.size()), max_sequence_length);
      x.label = e.label;
      x.trained = TrainedTokens(x);
      d.examples_.push_back(x);
    }
  }
  if (d.examples_.empty())
    return absl::InvalidArgumentError(absl::StrCat(what, ": the shard files hold no examples"));
  return d;
}

Dataset Dataset::FromOwned(std::vector<Owned> examples, bool pairs) {
  Dataset d;
  d.pairs_ = pairs;
  d.owned_ = std::move(examples);
  d.examples_.reserve(d.owned_.size());
  for (const Owned& o : d.owned_) {
    Example x;
    x.ids = o.ids.data();
    x.mask = o.mask.data();
    x.length = static_cast<int64_t>(o.ids.size());
    x.label = o.label;
    x.trained = TrainedTokens(x);
    d.examples_.push_back(x);
  }
  return d;
}

std::vector<std::vector<int64_t>> BalanceAcrossRanks(const std::vector<int64_t>& costs, int64_t world) {
  std::vector<int64_t> units(costs.size());
  std::iota(units.begin(), units.end(), 0);
  std::stable_sort(units.begin(), units.end(), [&](int64_t a, int64_t b) {
    return costs[static_cast<size_t>(a)] > costs[static_cast<size_t>(b)];
  });
  std::vector<std::vector<int64_t>> out(static_cast<size_t>(std::max<int64_t>(world, 1)));
  std::vector<int64_t> load(out.size(), 0);
  for (int64_t u : units) {
    const size_t r = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    out[r].push_back(u);
    load[r] += costs[static_cast<size_t>(u)];
  }
  for (auto& v : out) std::sort(v.begin(), v.end());
  return out;
}

int64_t Dataset::total_tokens() const {
  int64_t n = 0;
  for (const Example& e : examples_) n += e.length;
  return n;
}

int64_t Dataset::total_trained() const {
  int64_t n = 0;
  for (const Example& e : examples_) n += e.trained;
  return n;
}

std::vector<int64_t> EpochOrder(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  uint64_t state = seed * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(epoch) + 1;
  for (int64_t i = n - 1; i > 0; --i) {
    int64_t j = static_cast<int64_t>(SplitMix64(state) % static_cast<uint64_t>(i + 1));
    std::swap(order[i], order[j]);
  }
  return order;
}

std::vector<std::vector<int64_t>> SplitMicroBatches(const Dataset& data,
                                                    std::vector<int64_t> examples,
                                                    int64_t micro_batch_size, bool packing) {
  if (!packing) {
    // Similar lengths together: less padding in each micro-batch.
    std::stable_sort(examples.begin(), examples.end(), [&](int64_t a, int64_t b) {
      return data.at(a).length > data.at(b).length;
    });
  }
  std::vector<std::vector<int64_t>> out;
  const size_t m = micro_batch_size > 0 ? static_cast<size_t>(micro_batch_size) : examples.size();
  for (size_t i = 0; i < examples.size(); i += m)
    out.emplace_back(examples.begin() + i, examples.begin() + std::min(examples.size(), i + m));
  return out;
}

MicroBatch MakeMicroBatch(const Dataset& data, const std::vector<int64_t>& examples, bool packing,
                          int64_t max_sequence_length, bool classification) {
  // rows[r] = the examples in row r, in order.
  std::vector<std::vector<int64_t>> rows;
  std::vector<int64_t> fill;
  if (packing && !classification) {
    // One row holding every example back to back: the decoder attends
    // within each example (the sequence ids) and the positions restart at
    // each, so rows of max_sequence_length would only add a padded tail
    // (flattened packing, as varlen attention kernels take it).
    rows.push_back(examples);
    fill.push_back(0);
    for (int64_t e : examples) fill[0] += data.at(e).length;
  } else {
    for (int64_t e : examples) {
      rows.push_back({e});
      fill.push_back(data.at(e).length);
    }
  }
  const int64_t R = static_cast<int64_t>(rows.size());
  const int64_t T = std::max<int64_t>(2, *std::max_element(fill.begin(), fill.end()));
  at::Tensor ids = at::zeros({R, T}, at::kLong);
  at::Tensor labels = at::full({R, T}, -100, at::kLong);
  at::Tensor seq = at::zeros({R, T}, at::kLong);
  at::Tensor mask = at::zeros({R, T}, at::kLong);
  at::Tensor cls = at::full({R}, -1, at::kLong);
  at::Tensor last = at::zeros({R}, at::kLong);
  auto pi = ids.accessor<int64_t, 2>();
  auto pl = labels.accessor<int64_t, 2>();
  auto ps = seq.accessor<int64_t, 2>();
  auto pm = mask.accessor<int64_t, 2>();
  MicroBatch mb;
  for (int64_t r = 0; r < R; ++r) {
    int64_t t = 0, sid = 0;
    for (int64_t e : rows[r]) {
      const Example& x = data.at(e);
      for (int64_t k = 0; k < x.length; ++k, ++t) {
        pi[r][t] = x.ids[k];
        ps[r][t] = sid;
        pm[r][t] = 1;
        if (k > 0 && x.mask[k]) pl[r][t] = x.ids[k];
      }
      mb.trained_tokens += x.trained;
      mb.real_tokens += x.length;
      cls[r] = x.label;
      last[r] = t - 1;
      ++sid;
    }
    for (; t < T; ++t) ps[r][t] = sid;  // padding: a sequence of its own
  }
  mb.input_ids = ids;
  mb.labels = labels;
  // Packed rows carry both: the ids separate the examples, the mask marks
  // the tail as padding (the decoder skips attention there).
  if (packing && !classification) mb.sequence_ids = seq;
  mb.attention_mask = mask;
  mb.class_labels = cls;
  mb.last_index = last;
  mb.slots = R * T;
  return mb;
}

}  // namespace tunefleet::trainer
