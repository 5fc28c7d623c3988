// A content filter behind a team's own tunefleet.v1.ContentFilterService
// (a classifier such as Llama Guard): each Classify is one RPC with a
// deadline; when the classifier fails, it reports a "classifier"/"error"
// detection carrying the error, and the deployment's policy decides
// (on_classifier_error: fail closed blocks the text, fail open lets it pass).
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
  // The hold-back window streams keep for this classifier.
  size_t max_span = 64;
  std::string deployment;  // passed along in each request
};

class RemoteFilter final : public ContentFilter {
 public:
  RemoteFilter(std::shared_ptr<grpc::Channel> channel, RemoteFilterOptions options);
  // Detections cover the whole text (a classifier reports categories, not
  // spans). A failed call (error or deadline): one "classifier"/"error"
  // detection over the whole text with the error in `error`.
  absl::StatusOr<std::vector<Detection>> Classify(absl::string_view text, TextSource source,
                                                  bool partial = false) const override;
  size_t max_span() const override { return options_.max_span; }

 private:
  std::unique_ptr<::tunefleet::v1::ContentFilterService::Stub> stub_;
  const RemoteFilterOptions options_;
};

}  // namespace tunefleet::serving
