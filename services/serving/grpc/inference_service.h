// The replica's gRPC surface: tunefleet.v1.InferenceService (unary and
// streamed chat completions over the Replica core) and ContentFilterService
// (the built-in classifier behind the contract external classifiers
// implement). Thin: authenticate, convert, call the core; generation runs on
// the engine thread, lookups and prompt work on an executor, never on a
// gRPC reaction thread.
#pragma once

#include "common/rpc/auth.h"
#include "common/rpc/service_util.h"
#include "services/serving/filters/builtin_filter.h"
#include "services/serving/replica.h"
#include "services/serving/grpc/serving_metrics.h"
#include "tunefleet/v1/content_filter.grpc.pb.h"
#include "tunefleet/v1/inference.grpc.pb.h"

namespace tunefleet::serving {

namespace v1 = ::tunefleet::v1;

class InferenceServiceImpl final : public v1::InferenceService::CallbackService {
 public:
  InferenceServiceImpl(const rpc::Authenticator* auth, Replica* replica, rpc::Executor* executor,
                       ServingMetrics* metrics = nullptr)
      : auth_(*auth), replica_(replica), executor_(executor), metrics_(metrics) {}

  grpc::ServerUnaryReactor* ChatCompletion(grpc::CallbackServerContext* context,
                                           const v1::ChatCompletionRequest* request,
                                           v1::ChatCompletionResponse* response) override;
  grpc::ServerWriteReactor<v1::ChatCompletionChunk>* StreamChatCompletion(
      grpc::CallbackServerContext* context, const v1::ChatCompletionRequest* request) override;

 private:
  class UnarySink;
  class StreamFeed;
  class StreamReactor;
  const rpc::Authenticator& auth_;
  Replica* replica_;
  rpc::Executor* executor_;
  ServingMetrics* metrics_;
};

// Classify: when `replica` serves ClassifyRequest.deployment as a
// classification model, that model classifies the text (on `executor`):
// each label that maps to a category by its name ("violence" -> VIOLENCE,
// "self-harm" -> SELF_HARM; others such as "safe" are not reported) gives a
// result with the severity of its probability (>= 0.8 high, >= 0.5 medium,
// >= 0.25 low, else safe and not detected); the deployment's owner (a
// tenant key) or an internal caller may call it. Any other deployment (or
// none): the built-in filter, internal callers only.
class ContentFilterServiceImpl final : public v1::ContentFilterService::CallbackService {
 public:
  ContentFilterServiceImpl(const rpc::Authenticator* auth, const ContentFilter* filter,
                           Replica* replica = nullptr, rpc::Executor* executor = nullptr)
      : auth_(*auth), filter_(filter), replica_(replica), executor_(executor) {}
  grpc::ServerUnaryReactor* Classify(grpc::CallbackServerContext* context,
                                     const v1::ClassifyRequest* request,
                                     v1::ClassifyResponse* response) override;

 private:
  const rpc::Authenticator& auth_;
  const ContentFilter* filter_;
  Replica* replica_;
  rpc::Executor* executor_;
};

// The status a blocked prompt fails with: INVALID_ARGUMENT whose details (a
// google.rpc.Status) carry a ChatCompletionResponse with only the prompt's
// filter results.
grpc::Status BlockedPromptStatus(const absl::Status& status, const FilterVerdict& verdict);

}  // namespace tunefleet::serving
