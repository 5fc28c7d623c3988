// The parts of a chat request the replica checks and converts outside its
// deployment bookkeeping (no gRPC, no libtorch): the fields added for OpenAI
// parity (max_completion_tokens and its deprecated alias max_tokens,
// logprobs/top_logprobs, frequency/presence penalties, user, tool calls),
// the messages as the chat template takes them, and the identity of what
// serves an answer (system_fingerprint).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/text/chat_template.h"
#include "services/serving/replica.h"

namespace tunefleet::serving {

// INVALID_ARGUMENT (reason INVALID_FIELD) naming the first bad field among
// max_completion_tokens / max_tokens (>= 1; both set and different),
// top_logprobs ([0, 20]; > 0 needs logprobs), frequency_penalty and
// presence_penalty ([-2, 2]) and user (at most 256 characters).
absl::Status CheckChatSamplingFields(const ChatRequest& request);

// max_completion_tokens, else max_tokens; and the name of the field it came
// from (for errors).
std::optional<int64_t> RequestedMaxTokens(const ChatRequest& request, std::string* field);

// The messages as the chat template renders them. INVALID_ARGUMENT naming
// messages[i].tool_calls[k]... for a malformed call (not on an assistant
// turn, a type other than "function", no function name); when `tmpl`
// cannot render tool calls (or, Phi-3, tool turns), INVALID_ARGUMENT with
// reason TOOLS_UNSUPPORTED and metadata {chat_template, base_model}.
absl::StatusOr<std::vector<text::ChatMessage>> TemplateMessages(const ChatRequest& request,
                                                                const text::ChatTemplate& tmpl,
                                                                const std::string& base_model);

// A cheap identity of the weight files (*.safetensors) in `dir`: each one's
// name, size and modification time, or with `content` their sha256 (for
// adapters, which are small). Changes when a weight file is replaced.
std::string WeightsIdentity(const std::string& dir, bool content);

// The sha256 of the running executable (/proc/self/exe): what
// system_fingerprint says of the build. "unknown" where it cannot be read.
std::string BuildIdentity();

}  // namespace tunefleet::serving
