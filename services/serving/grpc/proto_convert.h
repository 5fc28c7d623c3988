// Conversions between the serving core's types and the v1 / internal protos.
#pragma once

#include <chrono>

#include "services/serving/replica.h"
#include "tunefleet/internal/v1/serving.pb.h"
#include "tunefleet/v1/deployments.pb.h"
#include "tunefleet/v1/inference.pb.h"

namespace tunefleet::serving {

FilterPolicy PolicyFromProto(const ::tunefleet::v1::ContentFilterPolicy& p);
DeploymentSpec SpecFromProto(const ::tunefleet::internal::v1::DesiredDeployment& d);
ChatRequest ChatRequestFromProto(const ::tunefleet::v1::ChatCompletionRequest& r,
                                 std::chrono::steady_clock::time_point deadline);
void VerdictToProto(const FilterVerdict& v,
                    google::protobuf::RepeatedPtrField<::tunefleet::v1::ContentFilterResult>* results,
                    google::protobuf::RepeatedPtrField<::tunefleet::v1::ContentFilterFinding>* findings);
::tunefleet::v1::FinishReason FinishToProto(ChatFinish f);
// OpenAI's logprobs.content list.
void LogprobsToProto(const std::vector<ChatLogprob>& logprobs, ::tunefleet::v1::ChoiceLogprobs* out);

}  // namespace tunefleet::serving
