#include "services/dataset/shards.h"

#include <algorithm>
#include <cstring>
#include <map>

#include <nlohmann/json.hpp>

#include "common/errors/error_details.h"
#include "absl/strings/str_cat.h"
#include "common/base/sha256.h"
#include "common/base/status_macros.h"
#include "services/dataset/analyzer.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "shard files are little-endian and written with memcpy");

namespace tunefleet::dataset {
namespace {

std::string Path(const std::string& id, const char* file) {
  return absl::StrCat("shards/", id, "/", file);
}

absl::string_view Bytes(const void* data, size_t n) {
  return absl::string_view(static_cast<const char*>(data), n);
}

// Reads exactly `n` bytes (less only at the end of the blob).
absl::StatusOr<std::string> ReadExactly(store::ArtifactReader& r, size_t n) {
  std::string out;
  while (out.size() < n) {
    TF_ASSIGN_OR_RETURN(std::string part, r.Read(n - out.size()));
    if (part.empty()) break;
    out += part;
  }
  return out;
}

}  // namespace

std::string ShardSetId(const std::string& file_sha256, const std::string& tokenizer_id,
                       int32_t max_sequence_length) {
  return absl::StrCat("shard-", Sha256Hex(absl::StrCat(file_sha256, "\n", tokenizer_id, "\n",
                                                       max_sequence_length))
                                    .substr(0, 32));
}

absl::StatusOr<ShardManifest> ReadManifest(store::ArtifactStore& store,
                                           const std::string& shard_set_id) {
  absl::StatusOr<std::string> text = store.Get(Path(shard_set_id, "manifest.json"));
  if (absl::IsNotFound(text.status())) {
    return absl::NotFoundError(absl::StrCat("shard set ", shard_set_id, " not found"));
  }
  if (!text.ok()) return text.status();
  nlohmann::json j = nlohmann::json::parse(*text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::DataLossError(absl::StrCat("manifest of ", shard_set_id, " is damaged"));
  }
  ShardManifest m;
  m.shard_set_id = shard_set_id;
  m.examples = j.value("examples", int64_t{0});
  m.tokens = j.value("tokens", int64_t{0});
  m.trained_tokens = j.value("trained_tokens", int64_t{0});
  m.truncated_examples = j.value("truncated_examples", int64_t{0});
  m.pairs = j.value("pairs", false);
  if (j.contains("label_names") && j["label_names"].is_array()) {
    for (const auto& name : j["label_names"]) {
      if (!name.is_string()) {
        return absl::DataLossError(absl::StrCat("manifest of ", shard_set_id, " is damaged"));
      }
      m.label_names.push_back(name.get<std::string>());
    }
  }
  m.sha256 = j.value("sha256", "");
  return m;
}

absl::StatusOr<TokenizedExample> TokenizeClassification(const ExampleTokenizer& tokenizer,
                                                        const Example& ex) {
  Example input;
  input.line = ex.line;
  input.messages.push_back(ChatMessage{"user", ex.text, std::nullopt, {}, {}});
  TF_ASSIGN_OR_RETURN(TokenizedExample t, tokenizer(input));
  if (t.ids.empty()) return absl::InternalError("the text rendered to no tokens");
  std::fill(t.loss_mask.begin(), t.loss_mask.end(), 0);
  t.loss_mask.back() = 1;
  return t;
}

absl::StatusOr<ShardManifest> PrepareShardSet(store::ArtifactStore& store,
                                              store::ArtifactReader& content,
                                              const std::string& shard_set_id,
                                              const ExampleTokenizer& tokenizer,
                                              int32_t max_sequence_length,
                                              std::optional<DataFormat> format) {
  if (max_sequence_length <= 0) {
    return errors::InvalidField("max_sequence_length", "max_sequence_length must be positive");
  }
  absl::StatusOr<ShardManifest> cached = ReadManifest(store, shard_set_id);
  if (!cached.ok() && !absl::IsNotFound(cached.status())) return cached;
  if (cached.ok() && format && *format != DataFormat::kClassification) return cached;
  TF_ASSIGN_OR_RETURN(std::string first_chunk, content.Read(1 << 20));
  if (!format) format = SniffFormat(first_chunk);
  // A classification set cached before labels were sharded (no label names,
  // the label rendered as an answer) is rebuilt.
  if (cached.ok() && !(*format == DataFormat::kClassification && cached->label_names.empty())) {
    return cached;
  }

  TF_ASSIGN_OR_RETURN(auto tokens, store.OpenWriter(Path(shard_set_id, "tokens.bin")));
  TF_ASSIGN_OR_RETURN(auto mask, store.OpenWriter(Path(shard_set_id, "mask.bin")));
  TF_ASSIGN_OR_RETURN(auto index, store.OpenWriter(Path(shard_set_id, "index.bin")));
  ShardManifest m;
  m.shard_set_id = shard_set_id;
  absl::Status failure;
  m.pairs = *format == DataFormat::kPreference;
  const bool classification = *format == DataFormat::kClassification;
  std::vector<std::string> example_labels;  // classification: each example's label
  auto write_one = [&](const Example& ex) -> absl::Status {
    TokenizedExample t;
    if (classification) {
      TF_ASSIGN_OR_RETURN(t, TokenizeClassification(tokenizer, ex));
      example_labels.push_back(ex.label);
    } else {
      TF_ASSIGN_OR_RETURN(t, tokenizer(ex));
    }
    if (t.ids.size() != t.loss_mask.size()) {
      return absl::InternalError("tokenizer returned a mask of the wrong length");
    }
    if (static_cast<int64_t>(t.ids.size()) > max_sequence_length) {
      if (classification) {  // keep the end: the head reads the last token
        t.ids.erase(t.ids.begin(), t.ids.end() - max_sequence_length);
        t.loss_mask.erase(t.loss_mask.begin(), t.loss_mask.end() - max_sequence_length);
      } else {
        t.ids.resize(max_sequence_length);
        t.loss_mask.resize(max_sequence_length);
      }
      ++m.truncated_examples;
    }
    TF_RETURN_IF_ERROR(index->Append(Bytes(&m.tokens, sizeof(m.tokens))));
    TF_RETURN_IF_ERROR(tokens->Append(Bytes(t.ids.data(), t.ids.size() * sizeof(int32_t))));
    TF_RETURN_IF_ERROR(mask->Append(Bytes(t.loss_mask.data(), t.loss_mask.size())));
    for (uint8_t b : t.loss_mask) m.trained_tokens += b ? 1 : 0;
    m.tokens += static_cast<int64_t>(t.ids.size());
    ++m.examples;
    return absl::OkStatus();
  };
  auto write_example = [&](const Example& ex) -> absl::Status {
    if (!m.pairs) return write_one(ex);
    // Chosen, then rejected: the prompt's own assistant turns carry no
    // loss, the completion does (DPO scores the completion only).
    if (ex.prompt_messages + 1 != ex.messages.size()) {
      return absl::InternalError("a preference example without exactly one preferred output");
    }
    Example pair = ex;
    for (size_t i = 0; i < pair.prompt_messages; ++i) {
      if (pair.messages[i].role == "assistant") pair.messages[i].weight = 0;
    }
    pair.messages.back().weight = 1;
    TF_RETURN_IF_ERROR(write_one(pair));
    pair.messages.back() = ex.non_preferred;
    pair.messages.back().weight = 1;
    return write_one(pair);
  };
  ValidatorOptions vopts;
  vopts.format = *format;
  vopts.max_issues = 1;
  vopts.min_examples = 1;
  JsonlValidator validator(vopts, [&](const Example& ex) {
    if (failure.ok()) {
      failure = write_example(ex);
      if (!failure.ok()) {
        failure = absl::Status(failure.code(), absl::StrCat("line ", ex.line, ": ", failure.message()));
      }
    }
  });
  for (std::string chunk = std::move(first_chunk); !chunk.empty();) {
    validator.Feed(chunk);
    TF_RETURN_IF_ERROR(failure);
    TF_ASSIGN_OR_RETURN(chunk, content.Read(1 << 20));
  }
  ValidationSummary summary = validator.Finish();
  TF_RETURN_IF_ERROR(failure);
  if (!summary.valid()) {
    const ValidationIssue& first = summary.issues.front();
    return absl::FailedPreconditionError(
        absl::StrCat("the file has ", summary.total_errors, " validation errors; the first: line ",
                     first.line, ": ", first.message));
  }
  TF_RETURN_IF_ERROR(index->Append(Bytes(&m.tokens, sizeof(m.tokens))));
  std::string labels_sha;
  if (classification) {
    // Label names in byte order; each example's label is its name's index.
    std::map<std::string, int32_t> index_of;
    for (const std::string& l : example_labels) index_of.emplace(l, 0);
    for (auto& [name, i] : index_of) {
      i = static_cast<int32_t>(m.label_names.size());
      m.label_names.push_back(name);
    }
    std::vector<int32_t> labels;
    labels.reserve(example_labels.size());
    for (const std::string& l : example_labels) labels.push_back(index_of[l]);
    TF_ASSIGN_OR_RETURN(auto label_writer, store.OpenWriter(Path(shard_set_id, "labels.bin")));
    TF_RETURN_IF_ERROR(label_writer->Append(Bytes(labels.data(), labels.size() * sizeof(int32_t))));
    TF_ASSIGN_OR_RETURN(store::ArtifactInfo li, label_writer->Commit());
    labels_sha = li.sha256;
  }
  TF_ASSIGN_OR_RETURN(store::ArtifactInfo ti, tokens->Commit());
  TF_ASSIGN_OR_RETURN(store::ArtifactInfo mi, mask->Commit());
  TF_ASSIGN_OR_RETURN(store::ArtifactInfo ii, index->Commit());
  m.sha256 = Sha256Hex(absl::StrCat(ti.sha256, mi.sha256, ii.sha256, labels_sha));
  nlohmann::json j = {{"examples", m.examples},
                      {"tokens", m.tokens},
                      {"trained_tokens", m.trained_tokens},
                      {"truncated_examples", m.truncated_examples},
                      {"max_sequence_length", max_sequence_length},
                      {"pairs", m.pairs},
                      {"sha256", m.sha256}};
  if (classification) j["label_names"] = m.label_names;
  TF_RETURN_IF_ERROR(store.Put(Path(shard_set_id, "manifest.json"), j.dump(2)).status());
  return m;
}

absl::StatusOr<RankRange> RankExamples(int64_t examples, int32_t rank, int32_t world_size,
                                       bool pairs) {
  if (world_size <= 0) return errors::InvalidField("world_size", "world_size must be positive");
  if (rank < 0 || rank >= world_size) {
    return errors::InvalidField(
        "rank", absl::StrCat("rank ", rank, " is outside [0, ", world_size, ")"));
  }
  if (pairs) {
    const int64_t n = examples / 2;
    return RankRange{2 * (n * rank / world_size), 2 * (n * (rank + 1) / world_size)};
  }
  return RankRange{examples * rank / world_size, examples * (rank + 1) / world_size};
}

class ShardStreamer::Impl {
 public:
  int64_t part_size = 0;    // examples in the rank's part
  int64_t next = 0;         // next example to send, within the part
  int64_t batch_tokens = 0;
  int64_t token_pos = 0;    // token offset of `next`
  bool pairs = false;
  std::unique_ptr<store::ArtifactReader> index, tokens, mask;
  std::unique_ptr<store::ArtifactReader> labels;  // classification sets only
  Sha256 sha;
  bool done = false;

  // The next example's [start, end) token offsets.
  absl::StatusOr<std::pair<int64_t, int64_t>> Bounds() {
    TF_ASSIGN_OR_RETURN(std::string raw, ReadExactly(*index, sizeof(int64_t)));
    if (raw.size() != sizeof(int64_t)) return absl::DataLossError("shard index is truncated");
    int64_t end;
    std::memcpy(&end, raw.data(), sizeof(end));
    if (end < token_pos) return absl::DataLossError("shard index is not increasing");
    return std::make_pair(token_pos, end);
  }

  absl::Status ReadExample(std::vector<int32_t>* ids, std::string* mask_out, int32_t* length,
                           std::vector<int32_t>* labels_out = nullptr) {
    TF_ASSIGN_OR_RETURN(auto bounds, Bounds());
    int64_t n = bounds.second - bounds.first;
    TF_ASSIGN_OR_RETURN(std::string t, ReadExactly(*tokens, n * sizeof(int32_t)));
    TF_ASSIGN_OR_RETURN(std::string m, ReadExactly(*mask, n));
    if (static_cast<int64_t>(t.size()) != n * 4 || static_cast<int64_t>(m.size()) != n) {
      return absl::DataLossError("shard data is truncated");
    }
    sha.Update(t);
    sha.Update(m);
    if (labels != nullptr) {
      TF_ASSIGN_OR_RETURN(std::string l, ReadExactly(*labels, sizeof(int32_t)));
      if (l.size() != sizeof(int32_t)) return absl::DataLossError("shard labels are truncated");
      sha.Update(l);
      int32_t label;
      std::memcpy(&label, l.data(), sizeof(label));
      if (labels_out != nullptr) labels_out->push_back(label);
    }
    size_t old = ids->size();
    ids->resize(old + n);
    std::memcpy(ids->data() + old, t.data(), t.size());
    mask_out->append(m);
    *length = static_cast<int32_t>(n);
    token_pos = bounds.second;
    ++next;
    return absl::OkStatus();
  }
};

absl::StatusOr<std::unique_ptr<ShardStreamer>> ShardStreamer::Open(
    store::ArtifactStore& store, const std::string& shard_set_id, int32_t rank,
    int32_t world_size, int64_t example_offset, int64_t batch_tokens) {
  TF_ASSIGN_OR_RETURN(ShardManifest m, ReadManifest(store, shard_set_id));
  TF_ASSIGN_OR_RETURN(RankRange range, RankExamples(m.examples, rank, world_size, m.pairs));
  auto impl = std::make_shared<Impl>();
  impl->pairs = m.pairs;
  impl->part_size = range.end - range.begin;
  if (example_offset < 0 || example_offset > impl->part_size) {
    return absl::OutOfRangeError(absl::StrCat("example_offset ", example_offset,
                                              " is outside rank ", rank, "'s part of ",
                                              impl->part_size, " examples"));
  }
  impl->batch_tokens = std::max<int64_t>(1, batch_tokens);
  // Position every file at the start of the part.
  TF_ASSIGN_OR_RETURN(impl->index, store.OpenReader(Path(shard_set_id, "index.bin"),
                                                    range.begin * int64_t{sizeof(int64_t)}));
  TF_ASSIGN_OR_RETURN(std::string first, ReadExactly(*impl->index, sizeof(int64_t)));
  if (first.size() != sizeof(int64_t)) return absl::DataLossError("shard index is truncated");
  std::memcpy(&impl->token_pos, first.data(), sizeof(int64_t));
  TF_ASSIGN_OR_RETURN(impl->tokens, store.OpenReader(Path(shard_set_id, "tokens.bin"),
                                                     impl->token_pos * int64_t{sizeof(int32_t)}));
  TF_ASSIGN_OR_RETURN(impl->mask, store.OpenReader(Path(shard_set_id, "mask.bin"),
                                                   impl->token_pos));
  if (!m.label_names.empty()) {
    TF_ASSIGN_OR_RETURN(impl->labels, store.OpenReader(Path(shard_set_id, "labels.bin"),
                                                       range.begin * int64_t{sizeof(int32_t)}));
  }
  // The running checksum covers the part from its first example, so a
  // resumed stream first hashes what the client already has.
  std::vector<int32_t> skip_ids;
  std::string skip_mask;
  while (impl->next < example_offset) {
    int32_t len;
    skip_ids.clear();
    skip_mask.clear();
    TF_RETURN_IF_ERROR(impl->ReadExample(&skip_ids, &skip_mask, &len));
  }
  auto streamer = std::unique_ptr<ShardStreamer>(new ShardStreamer());
  streamer->impl_ = std::move(impl);
  return streamer;
}

absl::StatusOr<ShardBatch> ShardStreamer::Next() {
  Impl& s = *impl_;
  if (s.done) return absl::OutOfRangeError("the part has been streamed completely");
  ShardBatch batch;
  batch.first_example = s.next;
  batch.pairs = s.pairs;
  while (s.next < s.part_size &&
         (batch.example_lengths.empty() || (s.pairs && s.next % 2 != 0) ||
          static_cast<int64_t>(batch.token_ids.size()) < s.batch_tokens)) {
    int32_t len;
    TF_RETURN_IF_ERROR(s.ReadExample(&batch.token_ids, &batch.loss_mask, &len, &batch.labels));
    batch.example_lengths.push_back(len);
  }
  batch.last = s.next >= s.part_size;
  s.done = batch.last;
  batch.running_sha256 = s.sha.PeekHexDigest();
  return batch;
}

}  // namespace tunefleet::dataset
