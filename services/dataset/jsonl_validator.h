// Line-by-line validation of training files before any GPU is spent: every
// problem names its 1-based line and JSON field. Fed in chunks of any size,
// with memory bounded by the longest allowed line.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace tunefleet::dataset {

// Mirrors tunefleet.v1.DataFormat.
enum class DataFormat { kChat = 1, kClassification = 2, kPreference = 3 };
enum class IssueSeverity { kError = 1, kWarning = 2 };

struct ValidationIssue {
  IssueSeverity severity = IssueSeverity::kError;
  int64_t line = 0;   // 1-based; 0 for the whole file
  std::string field;  // e.g. "messages[2].content"; empty for the line itself
  std::string code;   // stable, e.g. "invalid_json"
  std::string message;
};

// An OpenAI-style function call made by an assistant message.
struct ToolCall {
  std::string id;
  std::string name;
  std::string arguments;  // a JSON text, checked to parse
  bool operator==(const ToolCall& o) const {
    return id == o.id && name == o.name && arguments == o.arguments;
  }
};

struct ChatMessage {
  std::string role;
  std::string content;  // empty for an assistant message that only calls tools
  std::optional<int> weight;
  std::vector<ToolCall> tool_calls;  // assistant
  std::string tool_call_id;          // tool: the call it answers
};

// One valid example, handed to the caller for statistics and tokenization.
struct Example {
  int64_t line = 0;
  // The line's JSON text (without line ending); valid during the callback.
  absl::string_view raw;
  // Chat: the conversation. Preference: input.messages followed by the
  // preferred output, so that statistics and token counts see the chosen
  // conversation; the first `prompt_messages` of them are the input.
  std::vector<ChatMessage> messages;
  size_t prompt_messages = 0;         // preference
  ChatMessage non_preferred;          // preference
  std::string tools;                  // the "tools" list as compact JSON; empty if absent
  std::string text, label;            // classification
};

struct ValidatorOptions {
  DataFormat format = DataFormat::kChat;
  size_t max_line_bytes = 1 << 20;
  // Issues reported in detail; all are counted.
  size_t max_issues = 100;
  int64_t min_examples = 10;
};

struct ValidationSummary {
  std::vector<ValidationIssue> issues;  // the first max_issues
  int64_t total_errors = 0;
  int64_t total_warnings = 0;
  int64_t lines = 0;
  int64_t examples = 0;  // valid examples
  bool valid() const { return total_errors == 0; }
};

// The format a line's top-level keys suggest ("messages" -> chat; "input",
// "preferred_output" or "non_preferred_output" -> preference; "text" or
// "label" -> classification), or nullopt when the line is not a JSON object
// or has none of them.
std::optional<DataFormat> DetectLineFormat(absl::string_view line);

// Not thread-safe.
class JsonlValidator {
 public:
  using ExampleCallback = std::function<void(const Example&)>;

  explicit JsonlValidator(ValidatorOptions options, ExampleCallback on_example = nullptr);
  ~JsonlValidator();

  void Feed(absl::string_view chunk);
  // Ends the input (a last line without '\n' counts) and returns the result.
  ValidationSummary Finish();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tunefleet::dataset
