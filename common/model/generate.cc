#include "common/model/generate.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "common/model/random.h"
#include "common/model/torch_status.h"

namespace tunefleet::model {

absl::StatusOr<std::vector<Generation>> Generate(const Decoder& decoder,
                                                 const std::vector<std::vector<int64_t>>& prompts,
                                                 const GenerationOptions& options) {
  const ModelConfig& c = decoder.config();
  if (prompts.empty()) return std::vector<Generation>{};
  if (!options.stop_strings.empty() && !options.detokenize) {
    return absl::InvalidArgumentError("Generate: stop strings need a detokenize function");
  }
  if (options.max_new_tokens < 0)
    return absl::InvalidArgumentError("Generate: max_new_tokens is negative");
  if (options.top_p <= 0 || options.top_p > 1)
    return absl::InvalidArgumentError("Generate: top_p must be in (0, 1]");
  if (options.top_logprobs < 0 || options.top_logprobs > c.vocab_size)
    return absl::InvalidArgumentError("Generate: top_logprobs must be in [0, vocab_size]");
  const size_t B = prompts.size();
  int64_t longest = 0;
  for (size_t b = 0; b < B; ++b) {
    if (prompts[b].empty())
      return absl::InvalidArgumentError(absl::StrCat("Generate: prompt ", b, " is empty"));
    for (int64_t t : prompts[b]) {
      if (t < 0 || t >= c.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("Generate: prompt ", b, " has token id ", t,
                                                       " outside [0, ", c.vocab_size, ")"));
      }
    }
    longest = std::max<int64_t>(longest, static_cast<int64_t>(prompts[b].size()));
  }
  if (longest >= c.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Generate: a prompt of ", longest, " tokens leaves no room below max_position_embeddings ",
        c.max_position_embeddings));
  }
  const int64_t max_new = std::min(options.max_new_tokens, c.max_position_embeddings - longest);
  std::vector<int64_t> stop_ids =
      options.stop_token_ids.empty() ? c.eos_token_ids : options.stop_token_ids;

  std::vector<Generation> out(B);
  if (max_new == 0) return out;
  TF_ASSIGN_OR_RETURN(KvCache cache, decoder.NewCache(static_cast<int64_t>(B), longest + max_new));

  // One Sequence per row: it owns the row's stop rules and text.
  std::vector<Sequence> seqs;
  seqs.reserve(B);
  for (size_t b = 0; b < B; ++b) {
    SamplingParams p = options;
    p.max_new_tokens = max_new;
    p.seed = options.seed + b;
    p.stop_token_ids = stop_ids;
    seqs.emplace_back(std::move(p), options.detokenize);
  }
  std::vector<SplitMix64> rngs;
  for (size_t b = 0; b < B; ++b) rngs.emplace_back(options.seed + b);

  return internal::CatchTorch("Generate", [&]() -> absl::StatusOr<std::vector<Generation>> {
    std::vector<int64_t> flat(B * static_cast<size_t>(longest), 0);
    std::vector<int64_t> lengths(B);
    for (size_t b = 0; b < B; ++b) {
      std::copy(prompts[b].begin(), prompts[b].end(),
                flat.begin() + static_cast<int64_t>(b) * longest);
      lengths[b] = static_cast<int64_t>(prompts[b].size());
    }
    at::Tensor ids = at::tensor(flat, at::kLong).view({static_cast<int64_t>(B), longest});
    std::vector<float> scratch;  // penalized logits of one row
    TF_ASSIGN_OR_RETURN(at::Tensor logits, decoder.Extend(cache, ids, lengths, options.adapter));

    for (int64_t step = 0; step < max_new; ++step) {
      at::Tensor cpu = logits.to(at::kCPU).contiguous();
      const float* data = cpu.data_ptr<float>();
      std::vector<int64_t> next(B, 0);
      std::vector<int64_t> chunk(B, 0);
      for (size_t b = 0; b < B; ++b) {
        Sequence& seq = seqs[b];
        if (seq.finished()) continue;
        const double u = options.temperature > 0 ? rngs[b].Uniform() : 0.0;
        TokenChoice choice = ChooseToken(seq, data + b * static_cast<size_t>(c.vocab_size),
                                         c.vocab_size, u, &scratch);
        const int64_t tok = choice.token;
        const std::optional<FinishReason> finish = seq.Accept(tok, std::move(choice.logprob));
        if (finish == FinishReason::kStopToken) continue;
        if (options.on_token && !options.on_token(b, tok)) {
          seq.Cancel();
          continue;
        }
        if (finish) continue;
        next[b] = tok;
        chunk[b] = 1;
      }
      if (std::all_of(seqs.begin(), seqs.end(), [](const Sequence& q) { return q.finished(); }))
        break;
      if (step + 1 == max_new) break;
      at::Tensor step_ids = at::tensor(next, at::kLong).view({static_cast<int64_t>(B), 1});
      TF_ASSIGN_OR_RETURN(logits, decoder.Extend(cache, step_ids, chunk, options.adapter));
    }
    for (size_t b = 0; b < B; ++b) {
      const Sequence& seq = seqs[b];
      Generation& g = out[b];
      g.tokens = seq.tokens();
      g.finish_reason = seq.finish_reason().value_or(FinishReason::kLength);
      g.stop_token_id = seq.stop_token_id();
      g.stop_string = seq.stop_string();
      g.text = seq.text();
      g.logprobs = seq.logprobs();
    }
    return out;
  });
}

}  // namespace tunefleet::model
