#include "services/dataset/jsonl_validator.h"

#include <simdjson.h>

#include <set>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"

namespace tunefleet::dataset {
namespace {

using simdjson::dom::element;
using simdjson::dom::element_type;

const char* TypeName(element_type t) {
  switch (t) {
    case element_type::ARRAY: return "an array";
    case element_type::OBJECT: return "an object";
    case element_type::INT64:
    case element_type::UINT64:
    case element_type::DOUBLE: return "a number";
    case element_type::STRING: return "a string";
    case element_type::BOOL: return "a boolean";
    case element_type::NULL_VALUE: return "null";
  }
  return "a value";
}

// Byte offset of the first invalid UTF-8 sequence, or npos.
size_t InvalidUtf8At(absl::string_view s) {
  if (simdjson::validate_utf8(s.data(), s.size())) return absl::string_view::npos;
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (n == 0 || i + n > s.size()) return i;
    if (!simdjson::validate_utf8(s.data() + i, n)) return i;
    i += n;
  }
  return absl::string_view::npos;
}

// Debian's Abseil has its own string_view type; simdjson hands out std's.
absl::string_view A(std::string_view s) { return absl::string_view(s.data(), s.size()); }

bool IsKnownRole(std::string_view r) {
  return r == "system" || r == "user" || r == "assistant" || r == "tool";
}

// OpenAI's rule for function names: ^[a-zA-Z0-9_-]{1,64}$.
bool IsFunctionName(std::string_view n) {
  if (n.empty() || n.size() > 64) return false;
  for (char c : n) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

bool IsContainer(element e) {
  return e.type() == element_type::OBJECT || e.type() == element_type::ARRAY;
}

struct Field {
  absl::string_view key;
  element value;
};

// An object's fields in order. With `dedup` (the line has a repeated key,
// which DuplicateKeys reports), a repeated key keeps its first position and
// takes its last value, as most JSON readers do.
absl::InlinedVector<Field, 8> Fields(element object, bool dedup) {
  absl::InlinedVector<Field, 8> out;
  if (!dedup) {
    for (auto [std_key, value] : object.get_object()) out.push_back({A(std_key), value});
    return out;
  }
  absl::flat_hash_map<absl::string_view, size_t> at;
  for (auto [std_key, value] : object.get_object()) {
    absl::string_view key = A(std_key);
    auto [it, inserted] = at.try_emplace(key, out.size());
    if (inserted) {
      out.push_back({key, value});
    } else {
      out[it->second].value = value;
    }
  }
  return out;
}

// Whether any object in `e` repeats a key. No allocation for the usual
// small objects.
bool HasDuplicateKeys(element e) {
  if (e.type() == element_type::ARRAY) {
    for (element v : e.get_array()) {
      if (IsContainer(v) && HasDuplicateKeys(v)) return true;
    }
    return false;
  }
  if (e.type() != element_type::OBJECT) return false;
  constexpr size_t kSmall = 16;
  std::string_view small[kSmall];
  size_t n = 0;
  absl::flat_hash_map<absl::string_view, bool> large;
  for (auto [key, value] : e.get_object()) {
    if (n < kSmall) {
      for (size_t i = 0; i < n; ++i) {
        if (small[i] == key) return true;
      }
      small[n++] = key;
      if (n == kSmall) {
        for (size_t i = 0; i < n; ++i) large.emplace(A(small[i]), true);
      }
    } else if (!large.emplace(A(key), true).second) {
      return true;
    }
    if (IsContainer(value) && HasDuplicateKeys(value)) return true;
  }
  return false;
}

const char* FormatName(DataFormat f) {
  switch (f) {
    case DataFormat::kChat: return "chat";
    case DataFormat::kClassification: return "classification";
    case DataFormat::kPreference: return "preference";
  }
  return "unknown";
}

// The format of a JSON object line, from its top-level keys; `expected` wins
// when its keys are there.
std::optional<DataFormat> Shape(element doc, std::optional<DataFormat> expected) {
  bool chat = false, preference = false, classification = false;
  for (auto [std_key, value] : doc.get_object()) {
    (void)value;
    chat |= std_key == "messages";
    preference |= std_key == "input" || std_key == "preferred_output" ||
                  std_key == "non_preferred_output";
    classification |= std_key == "text" || std_key == "label";
  }
  auto has = [&](DataFormat f) {
    return f == DataFormat::kChat             ? chat
           : f == DataFormat::kPreference     ? preference
                                              : classification;
  };
  if (expected.has_value() && has(*expected)) return expected;
  for (DataFormat f : {DataFormat::kChat, DataFormat::kPreference, DataFormat::kClassification}) {
    if (has(f)) return f;
  }
  return std::nullopt;
}

}  // namespace

class JsonlValidator::Impl {
 public:
  Impl(ValidatorOptions options, ExampleCallback cb)
      : options_(options), on_example_(std::move(cb)) {}

  void Feed(absl::string_view chunk) {
    while (!chunk.empty()) {
      size_t nl = chunk.find('\n');
      absl::string_view piece = chunk.substr(0, nl);
      Append(piece);
      if (nl == absl::string_view::npos) return;
      EndLine(/*had_newline=*/true);
      chunk.remove_prefix(nl + 1);
    }
  }

  ValidationSummary Finish() {
    if (!pending_.empty() || overlong_) EndLine(/*had_newline=*/false);
    if (summary_.examples < options_.min_examples && summary_.total_errors == 0) {
      Report(IssueSeverity::kError, 0, "", "too_few_examples",
             absl::StrCat("the file has ", summary_.examples, " valid examples; at least ",
                          options_.min_examples, " are required"));
    } else if (summary_.examples < options_.min_examples) {
      Report(IssueSeverity::kError, 0, "", "too_few_examples",
             absl::StrCat("only ", summary_.examples, " of ", summary_.lines,
                          " lines are valid examples; at least ", options_.min_examples,
                          " are required"));
    }
    return std::move(summary_);
  }

 private:
  void Append(absl::string_view piece) {
    if (overlong_) {
      overlong_bytes_ += static_cast<int64_t>(piece.size());
      return;
    }
    if (pending_.size() + piece.size() > options_.max_line_bytes) {
      overlong_ = true;
      overlong_bytes_ = static_cast<int64_t>(pending_.size() + piece.size());
      pending_.clear();
      pending_.shrink_to_fit();
      return;
    }
    pending_.append(piece.data(), piece.size());
  }

  void EndLine(bool had_newline) {
    const int64_t line = ++summary_.lines;
    if (overlong_) {
      Report(IssueSeverity::kError, line, "", "line_too_long",
             absl::StrCat("line is ", overlong_bytes_, " bytes, over the limit of ",
                          options_.max_line_bytes));
      overlong_ = false;
      overlong_bytes_ = 0;
      return;
    }
    absl::string_view text = pending_;
    if (!text.empty() && text.back() == '\r') {
      text.remove_suffix(1);
      if (!crlf_reported_) {
        crlf_reported_ = true;
        Report(IssueSeverity::kWarning, line, "", "crlf_line_endings",
               "the file uses CRLF line endings; they are accepted but LF is expected");
      }
    }
    if (line == 1 && text.size() >= 3 && text.substr(0, 3) == "\xEF\xBB\xBF") {
      text.remove_prefix(3);
      Report(IssueSeverity::kWarning, 1, "", "byte_order_mark",
             "the file starts with a UTF-8 byte-order mark; it is ignored");
    }
    Validate(line, text);
    pending_.clear();
    (void)had_newline;
  }

  void Validate(int64_t line, absl::string_view text) {
    bool blank = true;
    for (char c : text) blank = blank && (c == ' ' || c == '\t');
    if (blank) {
      Report(IssueSeverity::kWarning, line, "", "blank_line", "blank line is skipped");
      return;
    }
    if (size_t at = InvalidUtf8At(text); at != absl::string_view::npos) {
      Report(IssueSeverity::kError, line, "", "invalid_utf8",
             absl::StrCat("invalid UTF-8 at byte ", at + 1, " of the line"));
      return;
    }
    buffer_.assign(text.data(), text.size());
    buffer_.reserve(text.size() + simdjson::SIMDJSON_PADDING);
    element doc;
    auto error = parser_.parse(buffer_.data(), buffer_.size(), false).get(doc);
    if (error) {
      Report(IssueSeverity::kError, line, "", "invalid_json",
             absl::StrCat("invalid JSON: ", simdjson::error_message(error)));
      return;
    }
    if (doc.type() != element_type::OBJECT) {
      Report(IssueSeverity::kError, line, "", "not_an_object",
             absl::StrCat("the line is ", TypeName(doc.type()), ", not a JSON object"));
      return;
    }
    raw_ = text;
    dedup_ = HasDuplicateKeys(doc);
    if (dedup_) DuplicateKeys(line, doc, "");
    std::optional<DataFormat> shape = Shape(doc, options_.format);
    if (shape.has_value() && *shape != options_.format) {
      Report(IssueSeverity::kError, line, "", "mixed_formats",
             absl::StrCat("line ", line, " is a ", FormatName(*shape), " example, but the file is ",
                          FormatName(options_.format),
                          first_example_line_ > 0
                              ? absl::StrCat(" (like line ", first_example_line_, ")")
                              : std::string(),
                          "; a file holds one format"));
      return;
    }
    if (first_example_line_ == 0 && shape.has_value()) first_example_line_ = line;
    switch (options_.format) {
      case DataFormat::kChat: Chat(line, doc); break;
      case DataFormat::kPreference: Preference(line, doc); break;
      case DataFormat::kClassification: Classification(line, doc); break;
    }
  }

  // What one conversation has declared so far: its tool call ids, and the
  // functions of its "tools" list when it has one.
  struct Conversation {
    std::set<std::string, std::less<>> call_ids;
    bool has_tools = false;
    std::set<std::string, std::less<>> functions;
  };

  void Chat(int64_t line, element doc) {
    const int64_t errors_before = summary_.total_errors;
    Example ex;
    ex.line = line;
    std::optional<element> messages, tools;
    for (const Field& f : Fields(doc, dedup_)) {
      if (f.key == "messages") {
        messages = f.value;
      } else if (f.key == "tools") {
        tools = f.value;
      } else if (f.key == "parallel_tool_calls") {
        ParallelToolCalls(line, "parallel_tool_calls", f.value);
      } else {
        Report(IssueSeverity::kWarning, line, std::string(f.key), "unknown_key",
               absl::StrCat("unknown key '", f.key, "' is ignored"));
      }
    }
    Conversation conv;
    if (tools.has_value()) Tools(line, "tools", *tools, conv, &ex.tools);
    if (!messages.has_value()) {
      Report(IssueSeverity::kError, line, "messages", "missing_messages",
             "the example has no 'messages' list");
      return;
    }
    if (messages->type() != element_type::ARRAY) {
      Report(IssueSeverity::kError, line, "messages", "messages_not_a_list",
             absl::StrCat("'messages' is ", TypeName(messages->type()), ", not a list"));
      return;
    }
    bool has_assistant = false;
    size_t index = 0;
    ex.messages.reserve(messages->get_array().size());
    for (element m : messages->get_array()) {
      ChatMessage msg;
      if (!Message(line, absl::StrCat("messages[", index++, "]"), m, conv, msg)) continue;
      if (msg.role == "assistant") has_assistant = true;
      ex.messages.push_back(std::move(msg));
    }
    if (!has_assistant) {
      Report(IssueSeverity::kError, line, "messages", "no_assistant_message",
             "the example has no assistant message to learn from");
    }
    if (summary_.total_errors == errors_before) Accept(ex);
  }

  void Preference(int64_t line, element doc) {
    const int64_t errors_before = summary_.total_errors;
    Example ex;
    ex.line = line;
    std::optional<element> input, preferred, non_preferred;
    for (const Field& f : Fields(doc, dedup_)) {
      if (f.key == "input") {
        input = f.value;
      } else if (f.key == "preferred_output") {
        preferred = f.value;
      } else if (f.key == "non_preferred_output") {
        non_preferred = f.value;
      } else {
        Report(IssueSeverity::kWarning, line, std::string(f.key), "unknown_key",
               absl::StrCat("unknown key '", f.key, "' is ignored"));
      }
    }
    Conversation conv;
    if (!input.has_value()) {
      Report(IssueSeverity::kError, line, "input", "missing_input",
             "the example has no 'input' object");
    } else if (input->type() != element_type::OBJECT) {
      Report(IssueSeverity::kError, line, "input", "input_not_an_object",
             absl::StrCat("'input' is ", TypeName(input->type()), ", not an object"));
    } else {
      std::optional<element> messages, tools;
      for (const Field& f : Fields(*input, dedup_)) {
        if (f.key == "messages") {
          messages = f.value;
        } else if (f.key == "tools") {
          tools = f.value;
        } else if (f.key == "parallel_tool_calls") {
          ParallelToolCalls(line, "input.parallel_tool_calls", f.value);
        } else {
          Report(IssueSeverity::kWarning, line, absl::StrCat("input.", f.key), "unknown_key",
                 absl::StrCat("unknown key '", f.key, "' in input is ignored"));
        }
      }
      if (tools.has_value()) Tools(line, "input.tools", *tools, conv, &ex.tools);
      if (!messages.has_value()) {
        Report(IssueSeverity::kError, line, "input.messages", "missing_messages",
               "the example's input has no 'messages' list");
      } else if (messages->type() != element_type::ARRAY) {
        Report(IssueSeverity::kError, line, "input.messages", "messages_not_a_list",
               absl::StrCat("'input.messages' is ", TypeName(messages->type()), ", not a list"));
      } else {
        size_t index = 0;
        for (element m : messages->get_array()) {
          ChatMessage msg;
          if (!Message(line, absl::StrCat("input.messages[", index++, "]"), m, conv, msg)) {
            continue;
          }
          ex.messages.push_back(std::move(msg));
        }
        if (index == 0) {
          Report(IssueSeverity::kError, line, "input.messages", "empty_messages",
                 "'input.messages' is empty; the prompt needs at least one message");
        } else if (!ex.messages.empty() && ex.messages.back().role == "assistant") {
          Report(IssueSeverity::kWarning, line, absl::StrCat("input.messages[", index - 1, "]"),
                 "input_ends_with_assistant",
                 absl::StrCat("input.messages[", index - 1,
                              "] is an assistant message; the outputs answer the last "
                              "message, usually a user's"));
        }
      }
    }
    ex.prompt_messages = ex.messages.size();
    ChatMessage chosen, rejected;
    bool chosen_ok = Output(line, "preferred_output", preferred, conv, chosen);
    bool rejected_ok = Output(line, "non_preferred_output", non_preferred, conv, rejected);
    if (chosen_ok && rejected_ok && chosen.content == rejected.content &&
        chosen.tool_calls == rejected.tool_calls) {
      Report(IssueSeverity::kError, line, "non_preferred_output[0]", "identical_outputs",
             "non_preferred_output[0] is identical to preferred_output[0]; a preference pair "
             "needs two different answers");
    }
    if (summary_.total_errors == errors_before) {
      ex.messages.push_back(std::move(chosen));
      ex.non_preferred = std::move(rejected);
      Accept(ex);
    }
  }

  // `name` is "preferred_output" or "non_preferred_output": a list of exactly
  // one assistant message. True if that message is well formed.
  bool Output(int64_t line, absl::string_view name, const std::optional<element>& value,
              const Conversation& input_conv, ChatMessage& out) {
    const std::string field(name);
    if (!value.has_value()) {
      Report(IssueSeverity::kError, line, field, absl::StrCat("missing_", name),
             absl::StrCat("the example has no '", name, "' list"));
      return false;
    }
    if (value->type() != element_type::ARRAY) {
      Report(IssueSeverity::kError, line, field, "output_not_a_list",
             absl::StrCat("'", name, "' is ", TypeName(value->type()),
                          ", not a list of one assistant message"));
      return false;
    }
    simdjson::dom::array list = value->get_array();
    if (list.size() != 1) {
      Report(IssueSeverity::kError, line, field, "output_not_one_message",
             absl::StrCat("'", name, "' holds ", list.size(),
                          " messages; exactly one assistant message is expected"));
      return false;
    }
    const int64_t errors_before = summary_.total_errors;
    Conversation conv = input_conv;  // each output continues the input on its own
    const std::string path = absl::StrCat(name, "[0]");
    element first;
    if (list.at(0).get(first) || !Message(line, path, first, conv, out)) return false;
    if (!out.role.empty() && out.role != "assistant") {
      Report(IssueSeverity::kError, line, absl::StrCat(path, ".role"), "output_not_assistant",
             absl::StrCat(path, ".role is '", out.role, "'; the output must be an assistant "
                                                         "message"));
    }
    return summary_.total_errors == errors_before;
  }

  // One message at `path` (e.g. "messages[2]"). False if it is not an object.
  bool Message(int64_t line, const std::string& path, element m, Conversation& conv,
               ChatMessage& msg) {
    if (m.type() != element_type::OBJECT) {
      Report(IssueSeverity::kError, line, path, "message_not_an_object",
             absl::StrCat(path, " is ", TypeName(m.type()), ", not an object"));
      return false;
    }
    bool has_role = false, has_content = false, content_null = false;
    std::optional<element> tool_calls, tool_call_id;
    for (const Field& fd : Fields(m, dedup_)) {
      const absl::string_view key = fd.key;
      const element value = fd.value;
      const std::string f = absl::StrCat(path, ".", key);
      if (key == "role") {
        has_role = true;
        std::string_view role;
        if (value.get(role) != simdjson::SUCCESS) {
          Report(IssueSeverity::kError, line, f, "invalid_role",
                 absl::StrCat(f, " is ", TypeName(value.type()), ", not a string"));
        } else if (!IsKnownRole(role)) {
          Report(IssueSeverity::kError, line, f, "unknown_role",
                 absl::StrCat(f, " is '", A(role), "'; expected system, user, assistant or tool"));
        } else {
          msg.role = std::string(role);
        }
      } else if (key == "content") {
        has_content = true;
        std::string_view content;
        if (value.is_null()) {
          content_null = true;  // fine beside tool_calls; decided below
        } else if (value.get(content) != simdjson::SUCCESS) {
          Report(IssueSeverity::kError, line, f, "content_not_a_string",
                 absl::StrCat(f, " is ", TypeName(value.type()), ", not a string"));
        } else if (content.empty()) {
          Report(IssueSeverity::kError, line, f, "empty_content", absl::StrCat(f, " is empty"));
        } else {
          msg.content = std::string(content);
        }
      } else if (key == "weight") {
        int64_t w = -1;
        if (value.get(w) != simdjson::SUCCESS || (w != 0 && w != 1)) {
          Report(IssueSeverity::kError, line, f, "invalid_weight",
                 absl::StrCat(f, " must be 0 or 1, not ", simdjson::to_string(value)));
        } else {
          msg.weight = static_cast<int>(w);
        }
      } else if (key == "name") {
        // Accepted and ignored: some exports label speakers.
      } else if (key == "tool_calls") {
        tool_calls = value;
      } else if (key == "tool_call_id") {
        tool_call_id = value;
      } else {
        Report(IssueSeverity::kWarning, line, f, "unknown_key",
               absl::StrCat("unknown key '", key, "' in ", path, " is ignored"));
      }
    }
    if (!has_role) {
      Report(IssueSeverity::kError, line, absl::StrCat(path, ".role"), "missing_role",
             absl::StrCat(path, " has no 'role'"));
    }
    bool has_calls = false;
    if (tool_calls.has_value()) {
      const std::string f = absl::StrCat(path, ".tool_calls");
      if (!msg.role.empty() && msg.role != "assistant") {
        Report(IssueSeverity::kError, line, f, "tool_calls_on_non_assistant",
               absl::StrCat(f, " is on a ", msg.role, " message; only assistant messages call "
                                                      "tools"));
      } else {
        has_calls = ToolCalls(line, f, *tool_calls, conv, msg);
      }
    }
    if (!has_content && !has_calls) {
      Report(IssueSeverity::kError, line, absl::StrCat(path, ".content"), "missing_content",
             absl::StrCat(path, " has no 'content'",
                          msg.role == "assistant" ? " and no 'tool_calls'" : ""));
    } else if (content_null && !has_calls) {
      Report(IssueSeverity::kError, line, absl::StrCat(path, ".content"), "content_not_a_string",
             absl::StrCat(path, ".content is null, not a string",
                          msg.role == "assistant" ? "; null content needs 'tool_calls' beside it"
                                                  : ""));
    }
    if (msg.weight.has_value() && msg.role != "assistant" && !msg.role.empty()) {
      Report(IssueSeverity::kWarning, line, absl::StrCat(path, ".weight"),
             "weight_on_non_assistant",
             absl::StrCat(path, ".weight only affects assistant messages; ignored for ",
                          msg.role));
    }
    if (msg.role == "tool" || (tool_call_id.has_value() && !msg.role.empty())) {
      ToolCallId(line, path, tool_call_id, conv, msg);
    }
    return true;
  }

  void ToolCallId(int64_t line, const std::string& path, const std::optional<element>& tool_call_id,
                  const Conversation& conv, ChatMessage& msg) {
    const std::string id_field = absl::StrCat(path, ".tool_call_id");
    if (msg.role == "tool") {
      std::string_view id;
      if (!tool_call_id.has_value()) {
        Report(IssueSeverity::kError, line, id_field, "missing_tool_call_id",
               absl::StrCat(path, " is a tool message without 'tool_call_id'"));
      } else if (tool_call_id->get(id) != simdjson::SUCCESS || id.empty()) {
        Report(IssueSeverity::kError, line, id_field, "invalid_tool_call_id",
               absl::StrCat(id_field, " is ",
                            tool_call_id->is_string() ? "empty" : TypeName(tool_call_id->type()),
                            "; expected the id of an earlier tool call"));
      } else if (conv.call_ids.find(id) == conv.call_ids.end()) {
        Report(IssueSeverity::kError, line, id_field, "unknown_tool_call_id",
               absl::StrCat(id_field, " is '", A(id),
                            "', which no earlier tool call in this conversation has as its id"));
      } else {
        msg.tool_call_id = std::string(id);
      }
    } else if (tool_call_id.has_value() && !msg.role.empty()) {
      Report(IssueSeverity::kWarning, line, id_field, "tool_call_id_on_non_tool",
             absl::StrCat(id_field, " only belongs on tool messages; ignored for ", msg.role));
    }
  }

  // An assistant message's "tool_calls" at `path`. True if it is a
  // non-empty list (so that "content" may be null or absent).
  bool ToolCalls(int64_t line, const std::string& path, element value, Conversation& conv,
                 ChatMessage& msg) {
    if (value.type() != element_type::ARRAY) {
      Report(IssueSeverity::kError, line, path, "tool_calls_not_a_list",
             absl::StrCat(path, " is ", TypeName(value.type()), ", not a list"));
      return true;  // a broken list still stands in for content
    }
    size_t index = 0;
    for (element c : value.get_array()) {
      const std::string cp = absl::StrCat(path, "[", index++, "]");
      if (c.type() != element_type::OBJECT) {
        Report(IssueSeverity::kError, line, cp, "tool_call_not_an_object",
               absl::StrCat(cp, " is ", TypeName(c.type()), ", not an object"));
        continue;
      }
      ToolCall call;
      bool has_id = false, has_type = false, has_function = false;
      for (const Field& fd : Fields(c, dedup_)) {
        const std::string f = absl::StrCat(cp, ".", fd.key);
        if (fd.key == "id") {
          has_id = true;
          std::string_view id;
          if (fd.value.get(id) != simdjson::SUCCESS || id.empty()) {
            Report(IssueSeverity::kError, line, f, "invalid_call_id",
                   absl::StrCat(f, " is ", fd.value.is_string() ? "empty" : TypeName(fd.value.type()),
                                "; expected a non-empty string"));
          } else {
            call.id = std::string(id);
          }
        } else if (fd.key == "type") {
          has_type = true;
          std::string_view type;
          if (fd.value.get(type) != simdjson::SUCCESS || type != "function") {
            Report(IssueSeverity::kError, line, f, "invalid_call_type",
                   absl::StrCat(f, " is ", simdjson::to_string(fd.value), "; expected \"function\""));
          }
        } else if (fd.key == "function") {
          has_function = true;
          CalledFunction(line, f, fd.value, conv, call);
        } else {
          Report(IssueSeverity::kWarning, line, f, "unknown_key",
                 absl::StrCat("unknown key '", fd.key, "' in ", cp, " is ignored"));
        }
      }
      if (!has_id) {
        Report(IssueSeverity::kError, line, absl::StrCat(cp, ".id"), "missing_call_id",
               absl::StrCat(cp, " has no 'id'; tool messages answer a call by its id"));
      } else if (!call.id.empty() && !conv.call_ids.insert(call.id).second) {
        Report(IssueSeverity::kError, line, absl::StrCat(cp, ".id"), "duplicate_call_id",
               absl::StrCat(cp, ".id '", call.id,
                            "' is already the id of an earlier call in this conversation"));
      }
      if (!has_type) {
        Report(IssueSeverity::kError, line, absl::StrCat(cp, ".type"), "invalid_call_type",
               absl::StrCat(cp, " has no 'type'; expected \"function\""));
      }
      if (!has_function) {
        Report(IssueSeverity::kError, line, absl::StrCat(cp, ".function"), "missing_function",
               absl::StrCat(cp, " has no 'function'"));
      }
      msg.tool_calls.push_back(std::move(call));
    }
    return index > 0;
  }

  // tool_calls[i].function at `path`: {"name": ..., "arguments": "<JSON>"}.
  void CalledFunction(int64_t line, const std::string& path, element value,
                      const Conversation& conv, ToolCall& call) {
    if (value.type() != element_type::OBJECT) {
      Report(IssueSeverity::kError, line, path, "function_not_an_object",
             absl::StrCat(path, " is ", TypeName(value.type()), ", not an object"));
      return;
    }
    bool has_name = false, has_arguments = false;
    for (const Field& fd : Fields(value, dedup_)) {
      const std::string f = absl::StrCat(path, ".", fd.key);
      if (fd.key == "name") {
        has_name = true;
        std::string_view name;
        if (fd.value.get(name) != simdjson::SUCCESS || !IsFunctionName(name)) {
          Report(IssueSeverity::kError, line, f, "invalid_function_name",
                 absl::StrCat(f, " is ", simdjson::to_string(fd.value),
                              "; a function name is 1 to 64 of a-z, A-Z, 0-9, _ and -"));
        } else if (conv.has_tools && conv.functions.find(name) == conv.functions.end()) {
          Report(IssueSeverity::kError, line, f, "unknown_function",
                 absl::StrCat(f, " is '", A(name), "', which the example's 'tools' do not "
                                                      "declare"));
          call.name = std::string(name);
        } else {
          call.name = std::string(name);
        }
      } else if (fd.key == "arguments") {
        has_arguments = true;
        std::string_view arguments;
        if (fd.value.get(arguments) != simdjson::SUCCESS) {
          Report(IssueSeverity::kError, line, f, "arguments_not_a_string",
                 absl::StrCat(f, " is ", TypeName(fd.value.type()),
                              ", not a string; arguments are a JSON text inside a string"));
          continue;
        }
        simdjson::padded_string padded(arguments);
        element parsed;
        auto error = arguments_parser_.parse(padded).get(parsed);
        if (error) {
          Report(IssueSeverity::kError, line, f, "invalid_arguments",
                 absl::StrCat(f, " does not hold valid JSON: ", simdjson::error_message(error)));
        } else if (parsed.type() != element_type::OBJECT) {
          Report(IssueSeverity::kWarning, line, f, "arguments_not_an_object",
                 absl::StrCat(f, " holds ", TypeName(parsed.type()),
                              "; function arguments are usually a JSON object"));
        }
        call.arguments = std::string(arguments);
      } else {
        Report(IssueSeverity::kWarning, line, f, "unknown_key",
               absl::StrCat("unknown key '", fd.key, "' in ", path, " is ignored"));
      }
    }
    if (!has_name) {
      Report(IssueSeverity::kError, line, absl::StrCat(path, ".name"), "missing_function_name",
             absl::StrCat(path, " has no 'name'"));
    }
    if (!has_arguments) {
      Report(IssueSeverity::kError, line, absl::StrCat(path, ".arguments"), "missing_arguments",
             absl::StrCat(path, " has no 'arguments' (use \"{}\" for none)"));
    }
  }

  // The "tools" list at `path`: [{"type": "function", "function": {"name",
  // "description"?, "parameters"?, "strict"?}}]. Declares the functions.
  void Tools(int64_t line, const std::string& path, element value, Conversation& conv,
             std::string* json) {
    if (value.type() != element_type::ARRAY) {
      Report(IssueSeverity::kError, line, path, "tools_not_a_list",
             absl::StrCat(path, " is ", TypeName(value.type()), ", not a list"));
      return;
    }
    conv.has_tools = true;
    *json = simdjson::to_string(value);
    size_t index = 0;
    for (element t : value.get_array()) {
      const std::string tp = absl::StrCat(path, "[", index++, "]");
      if (t.type() != element_type::OBJECT) {
        Report(IssueSeverity::kError, line, tp, "tool_not_an_object",
               absl::StrCat(tp, " is ", TypeName(t.type()), ", not an object"));
        continue;
      }
      bool has_type = false, has_function = false;
      for (const Field& fd : Fields(t, dedup_)) {
        const std::string f = absl::StrCat(tp, ".", fd.key);
        if (fd.key == "type") {
          has_type = true;
          std::string_view type;
          if (fd.value.get(type) != simdjson::SUCCESS || type != "function") {
            Report(IssueSeverity::kError, line, f, "invalid_tool_type",
                   absl::StrCat(f, " is ", simdjson::to_string(fd.value), "; expected \"function\""));
          }
        } else if (fd.key == "function") {
          has_function = true;
          DeclaredFunction(line, f, fd.value, conv);
        } else {
          Report(IssueSeverity::kWarning, line, f, "unknown_key",
                 absl::StrCat("unknown key '", fd.key, "' in ", tp, " is ignored"));
        }
      }
      if (!has_type) {
        Report(IssueSeverity::kError, line, absl::StrCat(tp, ".type"), "invalid_tool_type",
               absl::StrCat(tp, " has no 'type'; expected \"function\""));
      }
      if (!has_function) {
        Report(IssueSeverity::kError, line, absl::StrCat(tp, ".function"), "missing_function",
               absl::StrCat(tp, " has no 'function'"));
      }
    }
  }

  void DeclaredFunction(int64_t line, const std::string& path, element value,
                        Conversation& conv) {
    if (value.type() != element_type::OBJECT) {
      Report(IssueSeverity::kError, line, path, "function_not_an_object",
             absl::StrCat(path, " is ", TypeName(value.type()), ", not an object"));
      return;
    }
    bool has_name = false;
    for (const Field& fd : Fields(value, dedup_)) {
      const std::string f = absl::StrCat(path, ".", fd.key);
      if (fd.key == "name") {
        has_name = true;
        std::string_view name;
        if (fd.value.get(name) != simdjson::SUCCESS || !IsFunctionName(name)) {
          Report(IssueSeverity::kError, line, f, "invalid_function_name",
                 absl::StrCat(f, " is ", simdjson::to_string(fd.value),
                              "; a function name is 1 to 64 of a-z, A-Z, 0-9, _ and -"));
        } else if (!conv.functions.emplace(name).second) {
          Report(IssueSeverity::kError, line, f, "duplicate_function",
                 absl::StrCat(f, " '", A(name), "' is declared twice in the tools list"));
        }
      } else if (fd.key == "description") {
        if (!fd.value.is_string()) {
          Report(IssueSeverity::kError, line, f, "description_not_a_string",
                 absl::StrCat(f, " is ", TypeName(fd.value.type()), ", not a string"));
        }
      } else if (fd.key == "parameters") {
        if (fd.value.type() != element_type::OBJECT) {
          Report(IssueSeverity::kError, line, f, "parameters_not_an_object",
                 absl::StrCat(f, " is ", TypeName(fd.value.type()),
                              ", not an object (a JSON Schema)"));
        }
      } else if (fd.key == "strict") {
        if (!fd.value.is_bool()) {
          Report(IssueSeverity::kError, line, f, "strict_not_a_boolean",
                 absl::StrCat(f, " is ", TypeName(fd.value.type()), ", not a boolean"));
        }
      } else {
        Report(IssueSeverity::kWarning, line, f, "unknown_key",
               absl::StrCat("unknown key '", fd.key, "' in ", path, " is ignored"));
      }
    }
    if (!has_name) {
      Report(IssueSeverity::kError, line, absl::StrCat(path, ".name"), "missing_function_name",
             absl::StrCat(path, " has no 'name'"));
    }
  }

  void ParallelToolCalls(int64_t line, const std::string& field, element value) {
    if (!value.is_bool()) {
      Report(IssueSeverity::kError, line, field, "parallel_tool_calls_not_a_boolean",
             absl::StrCat(field, " is ", TypeName(value.type()), ", not a boolean"));
    }
  }

  // Reports every key that appears more than once in an object, anywhere in
  // the line, as a warning naming the key's path; the last value is used.
  void DuplicateKeys(int64_t line, element e, const std::string& path) {
    if (e.type() == element_type::ARRAY) {
      size_t index = 0;
      for (element v : e.get_array()) {
        if (IsContainer(v)) DuplicateKeys(line, v, absl::StrCat(path, "[", index, "]"));
        ++index;
      }
      return;
    }
    if (e.type() != element_type::OBJECT) return;
    absl::flat_hash_map<absl::string_view, int> count;
    std::vector<absl::string_view> repeated;
    for (auto [std_key, value] : e.get_object()) {
      absl::string_view key = A(std_key);
      if (++count[key] == 2) repeated.push_back(key);
      if (IsContainer(value)) {
        DuplicateKeys(line, value, path.empty() ? std::string(key) : absl::StrCat(path, ".", key));
      }
    }
    for (absl::string_view key : repeated) {
      Report(IssueSeverity::kWarning, line, path.empty() ? std::string(key) : absl::StrCat(path, ".", key),
             "duplicate_key",
             absl::StrCat("key '", key, "' appears ", count[key], " times in ",
                          path.empty() ? "the line's object" : path, "; the last value is used"));
    }
  }

  void Classification(int64_t line, element doc) {
    const int64_t errors_before = summary_.total_errors;
    Example ex;
    ex.line = line;
    bool has_text = false, has_label = false;
    for (const Field& f : Fields(doc, dedup_)) {
      const absl::string_view key = f.key;
      const element value = f.value;
      if (key == "text" || key == "label") {
        bool is_text = key == "text";
        (is_text ? has_text : has_label) = true;
        std::string_view v;
        if (value.get(v) != simdjson::SUCCESS) {
          Report(IssueSeverity::kError, line, std::string(key),
                 is_text ? "text_not_a_string" : "label_not_a_string",
                 absl::StrCat("'", key, "' is ", TypeName(value.type()), ", not a string"));
        } else if (v.empty()) {
          Report(IssueSeverity::kError, line, std::string(key),
                 is_text ? "empty_text" : "empty_label", absl::StrCat("'", key, "' is empty"));
        } else {
          (is_text ? ex.text : ex.label) = std::string(v);
        }
      } else {
        Report(IssueSeverity::kWarning, line, std::string(key), "unknown_key",
               absl::StrCat("unknown key '", key, "' is ignored"));
      }
    }
    if (!has_text) {
      Report(IssueSeverity::kError, line, "text", "missing_text", "the example has no 'text'");
    }
    if (!has_label) {
      Report(IssueSeverity::kError, line, "label", "missing_label", "the example has no 'label'");
    }
    if (summary_.total_errors == errors_before) Accept(ex);
  }

  void Accept(Example& ex) {
    ++summary_.examples;
    ex.raw = raw_;
    if (on_example_) on_example_(ex);
  }

  void Report(IssueSeverity severity, int64_t line, std::string field, std::string code,
              std::string message) {
    (severity == IssueSeverity::kError ? summary_.total_errors : summary_.total_warnings)++;
    if (summary_.issues.size() < options_.max_issues) {
      summary_.issues.push_back(
          {severity, line, std::move(field), std::move(code), std::move(message)});
    }
  }

  ValidatorOptions options_;
  ExampleCallback on_example_;
  ValidationSummary summary_;
  std::string pending_;
  bool overlong_ = false;
  int64_t overlong_bytes_ = 0;
  bool crlf_reported_ = false;
  std::string buffer_;
  absl::string_view raw_;
  simdjson::dom::parser parser_;
  simdjson::dom::parser arguments_parser_;  // tool call arguments, inside a line
  int64_t first_example_line_ = 0;          // the first line of the file's format
  bool dedup_ = false;                      // the current line repeats a key
};

std::optional<DataFormat> DetectLineFormat(absl::string_view line) {
  simdjson::dom::parser parser;
  simdjson::padded_string padded(line.data(), line.size());
  element doc;
  if (parser.parse(padded).get(doc) || doc.type() != element_type::OBJECT) return std::nullopt;
  return Shape(doc, std::nullopt);
}

JsonlValidator::JsonlValidator(ValidatorOptions options, ExampleCallback on_example)
    : impl_(std::make_unique<Impl>(options, std::move(on_example))) {}
JsonlValidator::~JsonlValidator() = default;
void JsonlValidator::Feed(absl::string_view chunk) { impl_->Feed(chunk); }
ValidationSummary JsonlValidator::Finish() { return impl_->Finish(); }

}  // namespace tunefleet::dataset
