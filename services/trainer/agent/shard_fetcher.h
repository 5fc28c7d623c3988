// Fetches one rank's part of a training or validation file into the agent's
// local cache as a shard file (services/trainer/protocol/shard_file.h): asks
// the dataset service to prepare the shard set (tokenized with the job's base
// model), streams the rank's part, checks the running sha256 the server sends
// with every chunk, and resumes an interrupted stream at the example it
// reached. A file already in the cache is reused (it is complete: the writer
// publishes by rename).
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/rpc/client.h"
#include "tunefleet/internal/v1/shards.grpc.pb.h"

namespace tunefleet::trainer {

// Lets another thread abandon a fetch: in-flight calls are cancelled and
// later ones fail at once with CANCELLED. Thread-safe.
using FetchCancellation = rpc::CallCancellation;

struct ShardFetcherOptions {
  // Shard files go to <cache_dir>/<shard_set_id>/rank-<r>-of-<w>.tfshard.
  std::string cache_dir;
  // The internal API key (sent as authorization: Bearer).
  std::string api_key;
  // PrepareShards tokenizes the whole file on first use.
  absl::Duration prepare_timeout = absl::Minutes(30);
  absl::Duration stream_timeout = absl::Minutes(30);
  // Attempts at a call that fails with UNAVAILABLE (a stream resumes where
  // it stopped), with exponential backoff from `initial_backoff`.
  int max_attempts = 5;
  absl::Duration initial_backoff = absl::Milliseconds(200);
};

struct ShardFetchRequest {
  std::string file_id;
  std::string tenant;
  std::string base_model;
  int32_t max_sequence_length = 0;
  int32_t rank = 0;
  int32_t world_size = 1;
  // The model's vocabulary (its config.json vocab_size): every id is checked
  // against it on the way into the file.
  int64_t vocab_size = 0;
  // Classification: the training file's label names. A validation file's
  // labels are mapped to them by name on the way into the local file (its
  // own list may be a subset, in another order); a name not among them is
  // INVALID_ARGUMENT naming it. Empty: the set's own indices are kept.
  std::vector<std::string> label_names;
};

struct FetchedShard {
  std::string path;
  std::string shard_set_id;
  int64_t examples = 0;  // in this rank's part
  bool cached = false;   // reused from the cache, nothing streamed
  // Classification: the shard set's own label names (ShardManifest).
  std::vector<std::string> label_names;
};

// Thread-safe: concurrent fetches of the same part wait for one another.
class ShardFetcher {
 public:
  ShardFetcher(ShardFetcherOptions options, std::shared_ptr<grpc::Channel> dataset);

  // `cancel` (optional) abandons the fetch from another thread (CANCELLED).
  absl::StatusOr<FetchedShard> Fetch(const ShardFetchRequest& request,
                                     FetchCancellation* cancel = nullptr);

 private:
  absl::StatusOr<internal::v1::ShardManifest> Prepare(const ShardFetchRequest& request,
                                                      FetchCancellation* cancel);
  // `label_map`: the set's label index -> the local file's (empty: as is).
  absl::StatusOr<int64_t> Stream(const ShardFetchRequest& request, const std::string& shard_set_id,
                                 const std::string& path, const std::vector<int32_t>& label_map,
                                 FetchCancellation* cancel);

  const ShardFetcherOptions options_;
  std::unique_ptr<internal::v1::ShardService::Stub> stub_;
  absl::Mutex mu_;
  std::set<std::string> in_flight_ ABSL_GUARDED_BY(mu_);  // paths being written
};

}  // namespace tunefleet::trainer
