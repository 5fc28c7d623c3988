// A content filter behind a team's own tunefleet.v1.ContentFilterService
// (a classifier such as Llama Guard): each Classify is one RPC with a
// deadline; when the classifier fails, it reports a "classifier"/"error"
// detection carrying the error, and the deployment's policy decides
// (on_classifier_error: fail closed blocks the text, fail open lets it pass).
// Detections cover the whole text (a classifier reports categories, not
// spans). Thread-safe. The header shows no gRPC: callers hold a
// ContentFilter.
#pragma once

#include <memory>
#include <string>

#include "absl/time/time.h"
#include "services/serving/filters/content_filter.h"

namespace grpc {
class Channel;
}  // namespace grpc

namespace tunefleet::serving {

struct RemoteFilterOptions {
  std::string api_key;  // sent as the bearer token
  absl::Duration timeout = absl::Milliseconds(500);
  // The hold-back window streams keep for this classifier.
  size_t max_span = 64;
  std::string deployment;  // passed along in each request
};

// A null `channel` (the endpoint could not be dialled) gives a filter whose
// every call fails as UNAVAILABLE, so that the policy still decides.
std::unique_ptr<ContentFilter> MakeRemoteFilter(std::shared_ptr<grpc::Channel> channel,
                                                RemoteFilterOptions options);

}  // namespace tunefleet::serving
