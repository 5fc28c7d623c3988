// Chat templates: a messages list rendered the way a model family's official
// Jinja chat_template renders it (Phi-3, Llama-3, ChatML, Qwen3), chosen from
// the model directory, and tokenized for training with a loss mask over the
// assistant turns' content and end-of-turn token.
//
// The families are recognized, not interpreted: a chat_template is matched
// to one of the formats by its markers, and a template of an unknown family
// is UNIMPLEMENTED rather than rendered approximately.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/text/tokenizer.h"

namespace tunefleet::text {

// A function call an assistant turn asks for (OpenAI's tool_calls entry).
struct ToolCall {
  std::string id;
  std::string type = "function";
  std::string name;       // function.name
  std::string arguments;  // function.arguments: a JSON text
};

struct ChatMessage {
  std::string role;  // system, user, assistant (tool for Qwen3; any for Llama-3, ChatML)
  std::string content;  // may be empty beside tool_calls
  std::optional<int> weight;  // assistant turns: 0 = no loss; default 1
  std::vector<ToolCall> tool_calls;  // assistant turns
  std::string tool_call_id;          // tool turns: the call this answers
};

enum class ChatFormat {
  // <|system|>\n…<|end|>\n<|user|>\n…<|end|>\n<|assistant|>\n…<|end|>\n, then
  // <|assistant|>\n (generation prompt) or eos_token; no BOS
  // (microsoft/Phi-3-mini-4k-instruct).
  kPhi3,
  // bos_token<|start_header_id|>role<|end_header_id|>\n\ncontent|trim<|eot_id|>…
  kLlama3,
  // <|im_start|>role\ncontent<|im_end|>\n…
  kChatML,
  // ChatML with Qwen3's rules: system first, <think> blocks of the turns after
  // the last user query, tool responses.
  kQwen3,
};

// One rendered piece; `trainable` pieces carry loss.
struct ChatSegment {
  std::string text;
  bool trainable = false;
};

class ChatTemplate {
 public:
  // The family from tokenizer_config.json's chat_template, else config.json's
  // model_type; bos/eos token text from tokenizer_config.json. UNIMPLEMENTED
  // naming the files when neither gives a supported family.
  static absl::StatusOr<ChatTemplate> FromModelDirectory(const std::string& dir);
  // The family of a Jinja chat_template text; UNIMPLEMENTED if unknown.
  static absl::StatusOr<ChatTemplate> FromJinja(const std::string& chat_template,
                                                std::string bos_token, std::string eos_token);
  explicit ChatTemplate(ChatFormat format, std::string bos_token = "", std::string eos_token = "");

  ChatFormat format() const { return format_; }
  const std::string& bos_token() const { return bos_token_; }
  const std::string& eos_token() const { return eos_token_; }
  // The token text that ends an assistant turn (<|end|>, <|eot_id|>, <|im_end|>).
  std::string EndOfTurn() const;
  // Whether the family's official template renders assistant tool calls
  // (Qwen3: <tool_call> blocks) and tool turns. Rendering a message with
  // tool_calls under a family that does not is INVALID_ARGUMENT naming
  // messages[i].tool_calls.
  bool SupportsToolCalls() const { return format_ == ChatFormat::kQwen3; }
  // The family's short name: "phi3", "llama3", "chatml", "qwen3".
  const char* name() const;

  // The prompt text. INVALID_ARGUMENT naming messages[i].role for a role the
  // family's template does not render.
  absl::StatusOr<std::string> Render(absl::Span<const ChatMessage> messages,
                                     bool add_generation_prompt) const;
  // The same text in pieces: each assistant turn's content and end-of-turn
  // token are one trainable piece (unless its weight is 0).
  absl::StatusOr<std::vector<ChatSegment>> RenderSegments(absl::Span<const ChatMessage> messages,
                                                          bool add_generation_prompt) const;

 private:
  ChatFormat format_;
  std::string bos_token_, eos_token_;
  bool skip_empty_system_ = false;         // Phi-3.5: `system and message['content']`
  bool always_generation_prompt_ = false;  // early Llama-3 templates
  std::string default_system_;             // Qwen2/2.5 ChatML
};

struct TokenizedChat {
  std::vector<int32_t> ids;
  std::vector<uint8_t> loss_mask;  // same length; 1 where the token carries loss
  int64_t trained_tokens() const;
};

// The rendered conversation (no generation prompt) as `tokenizer.Encode`
// gives it for the whole text, with add_special_tokens=false as
// apply_chat_template does (templates write their own BOS), and its loss mask.
absl::StatusOr<TokenizedChat> TokenizeChat(const Tokenizer& tokenizer,
                                           const ChatTemplate& chat_template,
                                           absl::Span<const ChatMessage> messages);

// A model directory's tokenizer and chat template together: what the
// dataset service counts and tokenizes with and the serving engine prompts
// with. Thread-safe (immutable).
class ChatTokenizer {
 public:
  // Tokenizer::FromDirectory and ChatTemplate::FromModelDirectory.
  static absl::StatusOr<ChatTokenizer> Load(const std::string& dir);
  ChatTokenizer(std::shared_ptr<const Tokenizer> tokenizer, ChatTemplate chat_template)
      : tokenizer_(std::move(tokenizer)), chat_template_(std::move(chat_template)) {}

  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const ChatTemplate& chat_template() const { return chat_template_; }
  // A training example: ids and loss mask (TokenizeChat).
  absl::StatusOr<TokenizedChat> Tokenize(absl::Span<const ChatMessage> messages) const {
    return TokenizeChat(*tokenizer_, chat_template_, messages);
  }
  // The ids of a prompt that asks for the next assistant turn.
  absl::StatusOr<std::vector<int32_t>> EncodePrompt(absl::Span<const ChatMessage> messages) const;
  // The end-of-turn and eos token ids generation stops at.
  std::vector<int32_t> StopIds() const;

 private:
  std::shared_ptr<const Tokenizer> tokenizer_;
  ChatTemplate chat_template_;
};

}  // namespace tunefleet::text
