#include "services/serving/grpc/remote_filter.h"

#include <utility>
#include <vector>

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <spdlog/spdlog.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/rpc/channel.h"
#include "tunefleet/v1/content_filter.grpc.pb.h"

namespace tunefleet::serving {
namespace {

namespace v1 = ::tunefleet::v1;

class RemoteFilter final : public ContentFilter {
 public:
  RemoteFilter(std::shared_ptr<grpc::Channel> channel, RemoteFilterOptions options);
  // A failed call (error or deadline): one "classifier"/"error" detection
  // over the whole text with the error in `error`.
  absl::StatusOr<std::vector<Detection>> Classify(absl::string_view text, TextSource source,
                                                  bool partial = false) const override;
  size_t max_span() const override { return options_.max_span; }

 private:
  std::unique_ptr<v1::ContentFilterService::Stub> stub_;
  const RemoteFilterOptions options_;
};

RemoteFilter::RemoteFilter(std::shared_ptr<grpc::Channel> channel, RemoteFilterOptions options)
    : stub_(channel ? v1::ContentFilterService::NewStub(std::move(channel)) : nullptr),
      options_(std::move(options)) {}

absl::StatusOr<std::vector<Detection>> RemoteFilter::Classify(absl::string_view text,
                                                              TextSource source, bool) const {
  v1::ClassifyRequest req;
  req.set_source(source == TextSource::kPrompt ? v1::ClassifyRequest::SOURCE_PROMPT
                                               : v1::ClassifyRequest::SOURCE_COMPLETION);
  req.set_text(std::string(text));
  req.set_deployment(options_.deployment);
  v1::ClassifyResponse resp;
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, options_.api_key, options_.timeout);
  grpc::Status s = stub_ ? stub_->Classify(&ctx, req, &resp)
                         : grpc::Status(grpc::StatusCode::UNAVAILABLE, "no channel to the classifier");
  std::vector<Detection> out;
  if (!s.ok()) {
    const std::string error =
        absl::StrCat(absl::StatusCodeToString(static_cast<absl::StatusCode>(s.error_code())),
                     ": ", s.error_message());
    spdlog::warn("deployment={} remote classifier failed: {}", options_.deployment, error);
    out.push_back(Detection{FilterCategory::kUnspecified, FilterSeverity::kHigh, "classifier",
                            "error", 0, text.size(), "", error});
    return out;
  }
  for (const v1::ContentFilterResult& r : resp.results()) {
    if (!r.detected() && r.severity() <= v1::SEVERITY_SAFE) continue;
    FilterSeverity sev = static_cast<FilterSeverity>(r.severity());
    if (sev == FilterSeverity::kUnspecified || sev == FilterSeverity::kSafe) sev = FilterSeverity::kMedium;
    out.push_back(Detection{static_cast<FilterCategory>(r.category()), sev, "remote",
                            v1::ContentFilterCategory_Name(r.category()), 0, text.size()});
  }
  return out;
}

}  // namespace

std::unique_ptr<ContentFilter> MakeRemoteFilter(std::shared_ptr<grpc::Channel> channel,
                                                RemoteFilterOptions options) {
  return std::make_unique<RemoteFilter>(std::move(channel), std::move(options));
}

}  // namespace tunefleet::serving
