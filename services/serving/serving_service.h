// The serving replica's gRPC surface: chat completions, and the built-in
// content classifier behind the same contract external classifiers
// implement. Generation lands with the serving issue.
#pragma once

#include "common/rpc/auth.h"
#include "common/rpc/service_util.h"
#include "tunefleet/v1/content_filter.grpc.pb.h"
#include "tunefleet/v1/inference.grpc.pb.h"

namespace tunefleet::serving {

using rpc::Audience;
namespace v1 = ::tunefleet::v1;

class InferenceServiceImpl final : public v1::InferenceService::CallbackService {
 public:
  explicit InferenceServiceImpl(const rpc::Authenticator* auth) : auth_(*auth) {}
  TF_NOT_IMPLEMENTED_UNARY(ChatCompletion, v1::ChatCompletionRequest,
                           v1::ChatCompletionResponse, Audience::kTenant)
  TF_NOT_IMPLEMENTED_SERVER_STREAM(StreamChatCompletion, v1::ChatCompletionRequest,
                                   v1::ChatCompletionChunk, Audience::kTenant)

 private:
  const rpc::Authenticator& auth_;
};

class ContentFilterServiceImpl final : public v1::ContentFilterService::CallbackService {
 public:
  explicit ContentFilterServiceImpl(const rpc::Authenticator* auth) : auth_(*auth) {}
  TF_NOT_IMPLEMENTED_UNARY(Classify, v1::ClassifyRequest, v1::ClassifyResponse,
                           Audience::kInternal)

 private:
  const rpc::Authenticator& auth_;
};

}  // namespace tunefleet::serving
