#include "services/trainer/agent/shard_fetcher.h"

#include <algorithm>
#include <filesystem>
#include <system_error>

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "common/base/sha256.h"
#include "common/base/status_macros.h"
#include "common/rpc/channel.h"
#include "common/rpc/status.h"
#include "services/trainer/protocol/shard_file.h"

namespace tunefleet::trainer {
namespace {

// An interrupted stream resumes on the same rule as a unary call.
bool Retryable(const absl::Status& s) { return rpc::IsRetryable(rpc::CallOptions(), s); }

absl::Status Cancelled() { return absl::CancelledError("the shard fetch was cancelled"); }

// Registers a call's context with the cancellation for its lifetime.
class CallGuard {
 public:
  CallGuard(FetchCancellation* cancel, grpc::ClientContext* ctx) : cancel_(cancel), ctx_(ctx) {
    ok_ = cancel_ == nullptr || cancel_->Register(ctx_);
  }
  ~CallGuard() {
    if (cancel_ != nullptr && ok_) cancel_->Unregister(ctx_);
  }
  bool ok() const { return ok_; }

 private:
  FetchCancellation* cancel_;
  grpc::ClientContext* ctx_;
  bool ok_;
};

// Sleeps up to `d`; false when cancelled meanwhile.
bool Backoff(FetchCancellation* cancel, absl::Duration d) {
  if (cancel != nullptr) return cancel->SleepFor(d);
  absl::SleepFor(d);
  return true;
}

}  // namespace

ShardFetcher::ShardFetcher(ShardFetcherOptions options, std::shared_ptr<grpc::Channel> dataset)
    : options_(std::move(options)), stub_(internal::v1::ShardService::NewStub(dataset)) {}

absl::StatusOr<internal::v1::ShardManifest> ShardFetcher::Prepare(
    const ShardFetchRequest& request, FetchCancellation* cancel) {
  internal::v1::PrepareShardsRequest req;
  req.set_file_id(request.file_id);
  req.set_tenant(request.tenant);
  req.set_base_model(request.base_model);
  req.set_max_sequence_length(request.max_sequence_length);
  rpc::CallOptions o;
  o.api_key = options_.api_key;
  o.on_behalf_of = request.tenant;
  o.timeout = options_.prepare_timeout;
  o.max_attempts = options_.max_attempts;
  o.initial_backoff = options_.initial_backoff;
  o.cancel = cancel;
  o.on_retry = [&](const absl::Status& s, int attempt, absl::Duration) {
    spdlog::warn("file={} PrepareShards attempt {} failed: {}", request.file_id, attempt,
                 s.ToString());
  };
  absl::StatusOr<internal::v1::ShardManifest> manifest =
      rpc::CallUnary(stub_.get(), &internal::v1::ShardService::Stub::PrepareShards, req, o);
  if (cancel != nullptr && cancel->cancelled()) return Cancelled();
  return manifest;
}

absl::StatusOr<int64_t> ShardFetcher::Stream(const ShardFetchRequest& request,
                                             const std::string& shard_set_id,
                                             const std::string& path,
                                             const std::vector<int32_t>& label_map,
                                             FetchCancellation* cancel) {
  TF_ASSIGN_OR_RETURN(auto writer, ShardFileWriter::Create(path, request.vocab_size));
  // The server's running checksum covers the part from example 0: token ids
  // (int32, little-endian) then the mask, example by example. It survives a
  // resumed stream because it is kept here, across attempts.
  Sha256 sha;
  int64_t received = 0;
  bool last = false;
  absl::Duration backoff = options_.initial_backoff;
  for (int attempt = 1; !last; ++attempt) {
    internal::v1::StreamShardRequest req;
    req.set_shard_set_id(shard_set_id);
    req.set_rank(request.rank);
    req.set_world_size(request.world_size);
    req.set_example_offset(received);
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, options_.api_key, options_.stream_timeout, request.tenant);
    CallGuard guard(cancel, &ctx);
    if (!guard.ok()) return Cancelled();
    auto reader = stub_->StreamShard(&ctx, req);
    internal::v1::ShardChunk chunk;
    absl::Status failure;
    while (failure.ok() && reader->Read(&chunk)) {
      if (chunk.first_example() != received) {
        failure = absl::DataLossError(absl::StrCat(
            "shard set ", shard_set_id, " rank ", request.rank, ": chunk starts at example ",
            chunk.first_example(), ", expected ", received));
        break;
      }
      int64_t tokens = 0;
      for (int32_t len : chunk.example_lengths()) {
        if (len < 0) {
          failure = absl::DataLossError(absl::StrCat("shard set ", shard_set_id,
                                                     ": negative example length"));
          break;
        }
        tokens += len;
      }
      if (!failure.ok()) break;
      if (chunk.labels_size() != 0 && chunk.labels_size() != chunk.example_lengths_size()) {
        failure = absl::DataLossError(absl::StrCat(
            "shard set ", shard_set_id, " rank ", request.rank, ": chunk at example ",
            chunk.first_example(), " has ", chunk.labels_size(), " labels for ",
            chunk.example_lengths_size(), " examples"));
        break;
      }
      if (tokens != chunk.token_ids_size() ||
          tokens != static_cast<int64_t>(chunk.loss_mask().size())) {
        failure = absl::DataLossError(absl::StrCat(
            "shard set ", shard_set_id, " rank ", request.rank, ": chunk at example ",
            chunk.first_example(), " has ", chunk.token_ids_size(), " ids and ",
            chunk.loss_mask().size(), " mask bytes for ", tokens, " tokens"));
        break;
      }
      int64_t pos = 0;
      std::vector<int32_t> labels;
      for (int e = 0; e < chunk.example_lengths_size(); ++e) {
        const int32_t len = chunk.example_lengths(e);
        sha.Update(absl::string_view(reinterpret_cast<const char*>(chunk.token_ids().data() + pos),
                                     static_cast<size_t>(len) * sizeof(int32_t)));
        sha.Update(absl::string_view(chunk.loss_mask()).substr(pos, len));
        pos += len;
        if (chunk.labels_size() == 0) continue;
        const int32_t label = chunk.labels(e);
        sha.Update(absl::string_view(reinterpret_cast<const char*>(&label), sizeof(label)));
        if (label_map.empty()) {
          labels.push_back(label);
        } else if (label >= 0 && static_cast<size_t>(label) < label_map.size()) {
          labels.push_back(label_map[label]);
        } else {
          failure = absl::DataLossError(absl::StrCat("shard set ", shard_set_id, ": label ", label,
                                                     " outside its ", label_map.size(), " names"));
          break;
        }
      }
      if (!failure.ok()) break;
      if (sha.PeekHexDigest() != chunk.running_sha256()) {
        failure = absl::DataLossError(absl::StrCat(
            "shard set ", shard_set_id, " rank ", request.rank,
            ": running sha256 mismatch after example ",
            received + chunk.example_lengths_size(), " (received ", sha.PeekHexDigest(),
            ", server says ", chunk.running_sha256(), ")"));
        break;
      }
      failure = writer->SetPairs(chunk.pairs());  // preference pairs (DPO)
      if (!failure.ok()) break;
      failure = writer->AddChunk(chunk.token_ids(), chunk.loss_mask(), chunk.example_lengths(),
                                 labels);
      if (!failure.ok()) break;
      received += chunk.example_lengths_size();
      last = chunk.last();
    }
    if (!failure.ok()) {
      ctx.TryCancel();
      reader->Finish();
      return failure;
    }
    absl::Status s = rpc::FromGrpcStatus(reader->Finish());
    if (cancel != nullptr && cancel->cancelled()) return Cancelled();
    if (s.ok() && !last) {
      s = absl::UnavailableError(absl::StrCat("shard set ", shard_set_id, " rank ", request.rank,
                                              ": stream ended before its last chunk"));
    }
    if (s.ok()) break;
    if (!Retryable(s) || attempt >= options_.max_attempts) return s;
    spdlog::warn("shards={} rank={} stream attempt {} stopped at example {}: {}", shard_set_id,
                 request.rank, attempt, received, s.ToString());
    if (!Backoff(cancel, backoff)) return Cancelled();
    backoff *= 2;
  }
  TF_RETURN_IF_ERROR(writer->Finish());
  return received;
}

absl::StatusOr<FetchedShard> ShardFetcher::Fetch(const ShardFetchRequest& request,
                                                 FetchCancellation* cancel) {
  if (request.world_size <= 0 || request.rank < 0 || request.rank >= request.world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", request.rank, " of world_size ", request.world_size));
  }
  TF_ASSIGN_OR_RETURN(internal::v1::ShardManifest manifest, Prepare(request, cancel));
  FetchedShard out;
  out.shard_set_id = manifest.shard_set_id();
  out.label_names.assign(manifest.label_names().begin(), manifest.label_names().end());
  // A classification file's labels in the job's (training file's) indices.
  std::vector<int32_t> label_map;
  std::string mapped;  // a distinct local file for a non-identity mapping
  if (!request.label_names.empty() && out.label_names != request.label_names) {
    for (const std::string& name : out.label_names) {
      auto it = std::find(request.label_names.begin(), request.label_names.end(), name);
      if (it == request.label_names.end()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "file ", request.file_id, " has the label '", name,
            "', which the training file does not have"));
      }
      label_map.push_back(static_cast<int32_t>(it - request.label_names.begin()));
    }
    std::string joined;
    for (const std::string& name : request.label_names) absl::StrAppend(&joined, name, "\n");
    mapped = absl::StrCat("-labels-", Sha256Hex(joined).substr(0, 12));
  }
  std::string dir = absl::StrCat(options_.cache_dir, "/", manifest.shard_set_id());
  out.path = absl::StrCat(dir, "/rank-", request.rank, "-of-", request.world_size, mapped,
                          ".tfshard");
  // One writer per path: the writer's temporary name is per process.
  {
    absl::MutexLock lock(&mu_);
    auto free = [this, &out]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return in_flight_.count(out.path) == 0;
    };
    mu_.Await(absl::Condition(&free));
    in_flight_.insert(out.path);
  }
  auto release = [this, &out] {
    absl::MutexLock lock(&mu_);
    in_flight_.erase(out.path);
  };
  std::error_code ec;
  if (std::filesystem::exists(out.path, ec)) {
    auto cached = ShardFile::Read(out.path);
    // A classification part cached before labels were sharded has none.
    const bool unlabelled = cached.ok() && !out.label_names.empty() && cached->size() > 0 &&
                            cached->example(0).label < 0;
    if (cached.ok() && !unlabelled &&
        cached->info().vocab_size == static_cast<uint64_t>(request.vocab_size)) {
      release();
      out.examples = cached->size();
      out.cached = true;
      return out;
    }
    spdlog::warn("shards={} cached file {} is unusable, fetching again: {}", out.shard_set_id,
                 out.path,
                 cached.ok() ? (unlabelled ? "no labels" : "another vocabulary")
                             : cached.status().ToString());
    std::filesystem::remove(out.path, ec);
  }
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    release();
    return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  }
  absl::StatusOr<int64_t> examples =
      Stream(request, out.shard_set_id, out.path, label_map, cancel);
  release();
  if (!examples.ok()) return examples.status();
  out.examples = *examples;
  spdlog::info("file={} shards={} rank={}/{} examples={} -> {}", request.file_id,
               out.shard_set_id, request.rank, request.world_size, out.examples, out.path);
  return out;
}

}  // namespace tunefleet::trainer
