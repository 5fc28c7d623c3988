#include "services/dataset/jsonl_validator.h"

#include <simdjson.h>

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
    if (options_.format == DataFormat::kChat) {
      Chat(line, doc);
    } else {
      Classification(line, doc);
    }
  }

  void Chat(int64_t line, element doc) {
    const int64_t errors_before = summary_.total_errors;
    Example ex;
    ex.line = line;
    element messages;
    bool has_messages = false;
    for (auto [std_key, value] : doc.get_object()) {
      absl::string_view key = A(std_key);
      if (key == "messages") {
        messages = value;
        has_messages = true;
      } else {
        Report(IssueSeverity::kWarning, line, std::string(key), "unknown_key",
               absl::StrCat("unknown key '", key, "' is ignored"));
      }
    }
    if (!has_messages) {
      Report(IssueSeverity::kError, line, "messages", "missing_messages",
             "the example has no 'messages' list");
      return;
    }
    if (messages.type() != element_type::ARRAY) {
      Report(IssueSeverity::kError, line, "messages", "messages_not_a_list",
             absl::StrCat("'messages' is ", TypeName(messages.type()), ", not a list"));
      return;
    }
    bool has_assistant = false;
    size_t index = 0;
    for (element m : messages.get_array()) {
      const std::string field = absl::StrCat("messages[", index++, "]");
      if (m.type() != element_type::OBJECT) {
        Report(IssueSeverity::kError, line, field, "message_not_an_object",
               absl::StrCat(field, " is ", TypeName(m.type()), ", not an object"));
        continue;
      }
      ChatMessage msg;
      bool has_role = false, has_content = false;
      for (auto [std_key, value] : m.get_object()) {
        absl::string_view key = A(std_key);
        const std::string f = absl::StrCat(field, ".", key);
        if (key == "role") {
          has_role = true;
          std::string_view role;
          if (value.get(role) != simdjson::SUCCESS) {
            Report(IssueSeverity::kError, line, f, "invalid_role",
                   absl::StrCat(f, " is ", TypeName(value.type()), ", not a string"));
          } else if (!IsKnownRole(role)) {
            Report(IssueSeverity::kError, line, f, "unknown_role",
                   absl::StrCat(f, " is '", A(role),
                                "'; expected system, user, assistant or tool"));
          } else {
            msg.role = std::string(role);
          }
        } else if (key == "content") {
          has_content = true;
          std::string_view content;
          if (value.get(content) != simdjson::SUCCESS) {
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
        } else {
          Report(IssueSeverity::kWarning, line, f, "unknown_key",
                 absl::StrCat("unknown key '", key, "' in ", field, " is ignored"));
        }
      }
      if (!has_role) {
        Report(IssueSeverity::kError, line, absl::StrCat(field, ".role"), "missing_role",
               absl::StrCat(field, " has no 'role'"));
      }
      if (!has_content) {
        Report(IssueSeverity::kError, line, absl::StrCat(field, ".content"), "missing_content",
               absl::StrCat(field, " has no 'content'"));
      }
      if (msg.weight.has_value() && msg.role != "assistant" && !msg.role.empty()) {
        Report(IssueSeverity::kWarning, line, absl::StrCat(field, ".weight"),
               "weight_on_non_assistant",
               absl::StrCat(field, ".weight only affects assistant messages; ignored for ",
                            msg.role));
      }
      if (msg.role == "assistant") has_assistant = true;
      ex.messages.push_back(std::move(msg));
    }
    if (!has_assistant) {
      Report(IssueSeverity::kError, line, "messages", "no_assistant_message",
             "the example has no assistant message to learn from");
    }
    if (summary_.total_errors == errors_before) Accept(ex);
  }

  void Classification(int64_t line, element doc) {
    const int64_t errors_before = summary_.total_errors;
    Example ex;
    ex.line = line;
    bool has_text = false, has_label = false;
    for (auto [std_key, value] : doc.get_object()) {
      absl::string_view key = A(std_key);
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
};

JsonlValidator::JsonlValidator(ValidatorOptions options, ExampleCallback on_example)
    : impl_(std::make_unique<Impl>(options, std::move(on_example))) {}
JsonlValidator::~JsonlValidator() = default;
void JsonlValidator::Feed(absl::string_view chunk) { impl_->Feed(chunk); }
ValidationSummary JsonlValidator::Finish() { return impl_->Finish(); }

}  // namespace tunefleet::dataset
