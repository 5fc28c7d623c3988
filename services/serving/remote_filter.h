// A content filter behind a team's own tunefleet.v1.ContentFilterService
// (a classifier such as Llama Guard): each Classify is one RPC with a
// deadline; when the classifier fails, the policy's choice applies —
// fail-open (nothing detected) or fail-closed (a detection that blocks).
// Thread-safe (the stub is).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/channel.h>

#include "absl/time/time.h"
#include "services/serving/filters/content_filter.h"
#include "tunefleet/v1/content_filter.grpc.pb.h"

namespace tunefleet::serving {

struct RemoteFilterOptions {
  std::string api_key;  // sent as the bearer token
  absl::Duration timeout = absl::Milliseconds(500);
  bool fail_open = false;
  // The hold-back window streams keep for this classifier.
  size_t max_span = 64;
  std::string deployment;  // passed along in each request
};

class RemoteFilter final : public ContentFilter {
 public:
  RemoteFilter(std::shared_ptr<grpc::Channel> channel, RemoteFilterOptions options);
  // Detections cover the whole text (a classifier reports categories, not
  // spans). A failed call: nothing (fail-open) or one "remote"/"unavailable"
  // detection, which blocks like a blocklist entry (fail-closed).
  absl::StatusOr<std::vector<Detection>> Classify(absl::string_view text, TextSource source,
                                                  bool partial = false) const override;
  size_t max_span() const override { return options_.max_span; }

 private:
  std::unique_ptr<::tunefleet::v1::ContentFilterService::Stub> stub_;
  const RemoteFilterOptions options_;
};

}  // namespace tunefleet::serving
