// One bad input per validation rule, each asserting the exact line, field and
// code; plus chunking, limits and the example callback.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "services/dataset/jsonl_validator.h"

namespace tunefleet::dataset {
namespace {

using ::testing::HasSubstr;

const char kGood[] =
    R"({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]})";

const char kGoodPreference[] =
    R"({"input": {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]}, "preferred_output": [{"role": "assistant", "content": "Paris."}], "non_preferred_output": [{"role": "assistant", "content": "I am not sure."}]})";

// Nine good lines, then `bad` as line 10, then one more good line.
std::string WithBadLine(const std::string& bad, DataFormat format = DataFormat::kChat) {
  const char* good = format == DataFormat::kPreference ? kGoodPreference : kGood;
  std::string s;
  for (int i = 0; i < 9; ++i) absl::StrAppend(&s, good, "\n");
  absl::StrAppend(&s, bad, "\n", good, "\n");
  return s;
}

ValidationSummary Validate(const std::string& content, ValidatorOptions options = {}) {
  JsonlValidator v(options);
  v.Feed(content);
  return v.Finish();
}

struct Rule {
  std::string name;
  std::string line;
  IssueSeverity severity;
  std::string field;
  std::string code;
  std::string message_part;
  DataFormat format = DataFormat::kChat;
};

class RuleTest : public ::testing::TestWithParam<Rule> {};

TEST_P(RuleTest, NamesLineFieldAndCode) {
  const Rule& r = GetParam();
  ValidatorOptions options;
  options.format = r.format;
  ValidationSummary s = Validate(WithBadLine(r.line, r.format), options);
  ASSERT_FALSE(s.issues.empty()) << r.name;
  const ValidationIssue& issue = s.issues.front();
  EXPECT_EQ(issue.line, 10) << r.name;
  EXPECT_EQ(issue.field, r.field) << r.name;
  EXPECT_EQ(issue.code, r.code) << r.name;
  EXPECT_EQ(issue.severity, r.severity) << r.name;
  EXPECT_THAT(issue.message, HasSubstr(r.message_part)) << r.name;
  if (r.severity == IssueSeverity::kError) {
    EXPECT_FALSE(s.valid());
    EXPECT_EQ(s.examples, 10);  // the other ten lines are fine
  } else {
    EXPECT_TRUE(s.valid()) << r.name;
    // A blank line is skipped; other warnings keep the example.
    EXPECT_EQ(s.examples, r.code == "blank_line" ? 10 : 11) << r.name;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Chat, RuleTest,
    ::testing::Values(
        Rule{"invalid_utf8", "{\"messages\": \"\xC3\x28\"}", IssueSeverity::kError, "",
             "invalid_utf8", "byte 15"},
        Rule{"invalid_json", R"({"messages": [)", IssueSeverity::kError, "", "invalid_json",
             "invalid JSON"},
        Rule{"not_an_object", R"([1, 2])", IssueSeverity::kError, "", "not_an_object",
             "an array"},
        Rule{"messages_not_list", R"({"messages": "hi"})", IssueSeverity::kError, "messages",
             "messages_not_a_list", "a string"},
        Rule{"message_not_object", R"({"messages": [{"role": "assistant", "content": "a"}, 7]})",
             IssueSeverity::kError, "messages[1]", "message_not_an_object", "a number"},
        Rule{"missing_role", R"({"messages": [{"content": "a"}, {"role": "assistant", "content": "b"}]})",
             IssueSeverity::kError, "messages[0].role", "missing_role", "no 'role'"},
        Rule{"unknown_role", R"({"messages": [{"role": "bot", "content": "a"}, {"role": "assistant", "content": "b"}]})",
             IssueSeverity::kError, "messages[0].role", "unknown_role", "'bot'"},
        Rule{"missing_content", R"({"messages": [{"role": "user"}, {"role": "assistant", "content": "b"}]})",
             IssueSeverity::kError, "messages[0].content", "missing_content", "no 'content'"},
        Rule{"empty_content", R"({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "b"}]})",
             IssueSeverity::kError, "messages[0].content", "empty_content", "is empty"},
        Rule{"content_not_string", R"({"messages": [{"role": "user", "content": ["x"]}, {"role": "assistant", "content": "b"}]})",
             IssueSeverity::kError, "messages[0].content", "content_not_a_string", "an array"},
        Rule{"unknown_message_key", R"({"messages": [{"role": "user", "content": "a", "mood": 1}, {"role": "assistant", "content": "b"}]})",
             IssueSeverity::kWarning, "messages[0].mood", "unknown_key", "unknown key 'mood'"},
        Rule{"no_assistant", R"({"messages": [{"role": "user", "content": "a"}]})",
             IssueSeverity::kError, "messages", "no_assistant_message", "no assistant"},
        Rule{"bad_weight", R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 2}]})",
             IssueSeverity::kError, "messages[1].weight", "invalid_weight", "must be 0 or 1, not 2"},
        Rule{"blank_line", "   ", IssueSeverity::kWarning, "", "blank_line", "blank"}),
    [](const ::testing::TestParamInfo<Rule>& info) { return info.param.name; });

// A user asks, the assistant calls a function (content null), the tool
// answers, the assistant replies. `tools` is spliced in as the line's tools.
std::string ToolLine(const std::string& call, const std::string& tool_message,
                     const std::string& tools = "") {
  return absl::StrCat(
      R"({"messages": [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": null, "tool_calls": [)",
      call, "]}, ", tool_message, R"(, {"role": "assistant", "content": "Sunny."}])",
      tools.empty() ? "" : absl::StrCat(R"(, "tools": )", tools), "}");
}
const char kCall[] =
    R"({"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}})";
const char kAnswer[] = R"({"role": "tool", "tool_call_id": "call_1", "content": "18C, sun"})";
const char kTools[] =
    R"([{"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])";

INSTANTIATE_TEST_SUITE_P(
    ToolCalls, RuleTest,
    ::testing::Values(
        Rule{"calls_on_user",
             R"({"messages": [{"role": "user", "content": "a", "tool_calls": []}, {"role": "assistant", "content": "b"}]})",
             IssueSeverity::kError, "messages[0].tool_calls", "tool_calls_on_non_assistant",
             "only assistant messages call tools"},
        Rule{"null_content_without_calls",
             R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": null}]})",
             IssueSeverity::kError, "messages[1].content", "content_not_a_string",
             "null content needs 'tool_calls'"},
        Rule{"empty_calls_need_content",
             R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": []}]})",
             IssueSeverity::kError, "messages[1].content", "missing_content",
             "no 'content' and no 'tool_calls'"},
        Rule{"calls_not_a_list",
             R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": {}}]})",
             IssueSeverity::kError, "messages[1].tool_calls", "tool_calls_not_a_list", "an object"},
        Rule{"call_not_an_object", ToolLine("7", kAnswer), IssueSeverity::kError,
             "messages[1].tool_calls[0]", "tool_call_not_an_object", "a number"},
        Rule{"invalid_arguments",
             ToolLine(R"({"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": "}})",
                      kAnswer),
             IssueSeverity::kError, "messages[1].tool_calls[0].function.arguments",
             "invalid_arguments", "does not hold valid JSON"},
        Rule{"arguments_not_a_string",
             ToolLine(R"({"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}})",
                      kAnswer),
             IssueSeverity::kError, "messages[1].tool_calls[0].function.arguments",
             "arguments_not_a_string", "an object, not a string"},
        Rule{"missing_arguments",
             ToolLine(R"({"id": "call_1", "type": "function", "function": {"name": "get_weather"}})", kAnswer),
             IssueSeverity::kError, "messages[1].tool_calls[0].function.arguments",
             "missing_arguments", "no 'arguments'"},
        Rule{"arguments_not_an_object",
             ToolLine(R"({"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "[1]"}})",
                      kAnswer),
             IssueSeverity::kWarning, "messages[1].tool_calls[0].function.arguments",
             "arguments_not_an_object", "holds an array"},
        Rule{"missing_call_id",
             ToolLine(R"({"type": "function", "function": {"name": "get_weather", "arguments": "{}"}})", kAnswer),
             IssueSeverity::kError, "messages[1].tool_calls[0].id", "missing_call_id", "no 'id'"},
        Rule{"invalid_call_type",
             ToolLine(R"({"id": "call_1", "type": "code", "function": {"name": "get_weather", "arguments": "{}"}})", kAnswer),
             IssueSeverity::kError, "messages[1].tool_calls[0].type", "invalid_call_type",
             R"(is "code"; expected "function")"},
        Rule{"missing_function", ToolLine(R"({"id": "call_1", "type": "function"})", kAnswer),
             IssueSeverity::kError, "messages[1].tool_calls[0].function", "missing_function",
             "no 'function'"},
        Rule{"invalid_called_name",
             ToolLine(R"({"id": "call_1", "type": "function", "function": {"name": "get weather", "arguments": "{}"}})", kAnswer),
             IssueSeverity::kError, "messages[1].tool_calls[0].function.name",
             "invalid_function_name", "1 to 64 of"},
        Rule{"duplicate_call_id", ToolLine(absl::StrCat(kCall, ", ", kCall), kAnswer),
             IssueSeverity::kError, "messages[1].tool_calls[1].id", "duplicate_call_id",
             "'call_1' is already"},
        Rule{"unknown_tool_call_id",
             ToolLine(kCall, R"({"role": "tool", "tool_call_id": "call_9", "content": "x"})"),
             IssueSeverity::kError, "messages[2].tool_call_id", "unknown_tool_call_id",
             "'call_9', which no earlier tool call"},
        Rule{"tool_answer_before_call",
             R"({"messages": [{"role": "tool", "tool_call_id": "call_1", "content": "x"}, {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]})",
             IssueSeverity::kError, "messages[0].tool_call_id", "unknown_tool_call_id",
             "no earlier tool call"},
        Rule{"missing_tool_call_id", ToolLine(kCall, R"({"role": "tool", "content": "x"})"),
             IssueSeverity::kError, "messages[2].tool_call_id", "missing_tool_call_id",
             "without 'tool_call_id'"},
        Rule{"invalid_tool_call_id",
             ToolLine(kCall, R"({"role": "tool", "tool_call_id": 1, "content": "x"})"),
             IssueSeverity::kError, "messages[2].tool_call_id", "invalid_tool_call_id",
             "a number"},
        Rule{"tool_call_id_on_user",
             R"({"messages": [{"role": "user", "content": "a", "tool_call_id": "x"}, {"role": "assistant", "content": "b"}]})",
             IssueSeverity::kWarning, "messages[0].tool_call_id", "tool_call_id_on_non_tool",
             "only belongs on tool messages"},
        Rule{"unknown_function",
             ToolLine(R"({"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}})",
                      kAnswer, kTools),
             IssueSeverity::kError, "messages[1].tool_calls[0].function.name", "unknown_function",
             "'get_time', which the example's 'tools' do not declare"},
        Rule{"tools_not_a_list", ToolLine(kCall, kAnswer, R"({"get_weather": {}})"),
             IssueSeverity::kError, "tools", "tools_not_a_list", "an object, not a list"},
        Rule{"tool_not_an_object", ToolLine(kCall, kAnswer, R"(["get_weather"])"),
             IssueSeverity::kError, "tools[0]", "tool_not_an_object", "a string"},
        Rule{"invalid_tool_type",
             ToolLine(kCall, kAnswer, R"([{"type": "retrieval", "function": {"name": "get_weather"}}])"),
             IssueSeverity::kError, "tools[0].type", "invalid_tool_type", "\"retrieval\""},
        Rule{"declared_name_invalid",
             ToolLine(kCall, kAnswer, R"([{"type": "function", "function": {"name": "get.weather"}}, {"type": "function", "function": {"name": "get_weather"}}])"),
             IssueSeverity::kError, "tools[0].function.name", "invalid_function_name",
             "\"get.weather\""},
        Rule{"declared_name_missing",
             ToolLine(kCall, kAnswer, R"([{"type": "function", "function": {"description": "x"}}, {"type": "function", "function": {"name": "get_weather"}}])"),
             IssueSeverity::kError, "tools[0].function.name", "missing_function_name",
             "no 'name'"},
        Rule{"duplicate_function",
             ToolLine(kCall, kAnswer, R"([{"type": "function", "function": {"name": "get_weather"}}, {"type": "function", "function": {"name": "get_weather"}}])"),
             IssueSeverity::kError, "tools[1].function.name", "duplicate_function",
             "declared twice"},
        Rule{"parameters_not_an_object",
             ToolLine(kCall, kAnswer, R"([{"type": "function", "function": {"name": "get_weather", "parameters": "city"}}])"),
             IssueSeverity::kError, "tools[0].function.parameters", "parameters_not_an_object",
             "a string"},
        Rule{"description_not_a_string",
             ToolLine(kCall, kAnswer, R"([{"type": "function", "function": {"name": "get_weather", "description": 3}}])"),
             IssueSeverity::kError, "tools[0].function.description", "description_not_a_string",
             "a number"}),
    [](const ::testing::TestParamInfo<Rule>& info) { return info.param.name; });

INSTANTIATE_TEST_SUITE_P(
    DuplicateKeys, RuleTest,
    ::testing::Values(
        Rule{"in_a_message",
             R"({"messages": [{"role": "user", "content": "a", "role": "user"}, {"role": "assistant", "content": "b"}]})",
             IssueSeverity::kWarning, "messages[0].role", "duplicate_key",
             "key 'role' appears 2 times in messages[0]"},
        Rule{"at_the_top",
             R"({"messages": [{"role": "assistant", "content": "b"}], "messages": [{"role": "assistant", "content": "c"}]})",
             IssueSeverity::kWarning, "messages", "duplicate_key",
             "key 'messages' appears 2 times in the line's object; the last value is used"},
        Rule{"deep_inside_tools",
             ToolLine(kCall, kAnswer, R"([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "type": "object"}}}])"),
             IssueSeverity::kWarning, "tools[0].function.parameters.type", "duplicate_key",
             "appears 2 times in tools[0].function.parameters"},
        Rule{"the_last_value_is_used",
             R"({"messages": [{"role": "bot", "role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})",
             IssueSeverity::kWarning, "messages[0].role", "duplicate_key", "'role' appears 2 times"}),
    [](const ::testing::TestParamInfo<Rule>& info) { return info.param.name; });

constexpr DataFormat kPref = DataFormat::kPreference;

INSTANTIATE_TEST_SUITE_P(
    Preference, RuleTest,
    ::testing::Values(
        Rule{"missing_input",
             R"({"preferred_output": [{"role": "assistant", "content": "a"}], "non_preferred_output": [{"role": "assistant", "content": "b"}]})",
             IssueSeverity::kError, "input", "missing_input", "no 'input'", kPref},
        Rule{"input_not_an_object",
             R"({"input": [], "preferred_output": [{"role": "assistant", "content": "a"}], "non_preferred_output": [{"role": "assistant", "content": "b"}]})",
             IssueSeverity::kError, "input", "input_not_an_object", "an array", kPref},
        Rule{"input_missing_messages",
             R"({"input": {}, "preferred_output": [{"role": "assistant", "content": "a"}], "non_preferred_output": [{"role": "assistant", "content": "b"}]})",
             IssueSeverity::kError, "input.messages", "missing_messages", "no 'messages'", kPref},
        Rule{"input_messages_empty",
             R"({"input": {"messages": []}, "preferred_output": [{"role": "assistant", "content": "a"}], "non_preferred_output": [{"role": "assistant", "content": "b"}]})",
             IssueSeverity::kError, "input.messages", "empty_messages", "is empty", kPref},
        Rule{"input_message_content",
             R"({"input": {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": 5}]}, "preferred_output": [{"role": "assistant", "content": "a"}], "non_preferred_output": [{"role": "assistant", "content": "b"}]})",
             IssueSeverity::kError, "input.messages[1].content", "content_not_a_string",
             "a number", kPref},
        Rule{"input_message_role",
             R"({"input": {"messages": [{"role": "human", "content": "q"}]}, "preferred_output": [{"role": "assistant", "content": "a"}], "non_preferred_output": [{"role": "assistant", "content": "b"}]})",
             IssueSeverity::kError, "input.messages[0].role", "unknown_role", "'human'", kPref},
        Rule{"input_ends_with_assistant",
             R"({"input": {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}]}, "preferred_output": [{"role": "assistant", "content": "a"}], "non_preferred_output": [{"role": "assistant", "content": "b"}]})",
             IssueSeverity::kWarning, "input.messages[1]", "input_ends_with_assistant",
             "is an assistant message", kPref},
        Rule{"unknown_input_key",
             R"({"input": {"messages": [{"role": "user", "content": "q"}], "temperature": 1}, "preferred_output": [{"role": "assistant", "content": "a"}], "non_preferred_output": [{"role": "assistant", "content": "b"}]})",
             IssueSeverity::kWarning, "input.temperature", "unknown_key", "'temperature'", kPref},
        Rule{"missing_preferred",
             R"({"input": {"messages": [{"role": "user", "content": "q"}]}, "non_preferred_output": [{"role": "assistant", "content": "b"}]})",
             IssueSeverity::kError, "preferred_output", "missing_preferred_output",
             "no 'preferred_output'", kPref},
        Rule{"missing_non_preferred",
             R"({"input": {"messages": [{"role": "user", "content": "q"}]}, "preferred_output": [{"role": "assistant", "content": "a"}]})",
             IssueSeverity::kError, "non_preferred_output", "missing_non_preferred_output",
             "no 'non_preferred_output'", kPref},
        Rule{"output_not_a_list",
             R"({"input": {"messages": [{"role": "user", "content": "q"}]}, "preferred_output": {"role": "assistant", "content": "a"}, "non_preferred_output": [{"role": "assistant", "content": "b"}]})",
             IssueSeverity::kError, "preferred_output", "output_not_a_list", "an object", kPref},
        Rule{"two_outputs",
             R"({"input": {"messages": [{"role": "user", "content": "q"}]}, "preferred_output": [{"role": "assistant", "content": "a"}], "non_preferred_output": [{"role": "assistant", "content": "b"}, {"role": "assistant", "content": "c"}]})",
             IssueSeverity::kError, "non_preferred_output", "output_not_one_message",
             "holds 2 messages; exactly one", kPref},
        Rule{"output_role",
             R"({"input": {"messages": [{"role": "user", "content": "q"}]}, "preferred_output": [{"role": "user", "content": "a"}], "non_preferred_output": [{"role": "assistant", "content": "b"}]})",
             IssueSeverity::kError, "preferred_output[0].role", "output_not_assistant",
             "is 'user'", kPref},
        Rule{"output_content",
             R"({"input": {"messages": [{"role": "user", "content": "q"}]}, "preferred_output": [{"role": "assistant", "content": "a"}], "non_preferred_output": [{"role": "assistant", "content": ""}]})",
             IssueSeverity::kError, "non_preferred_output[0].content", "empty_content", "is empty",
             kPref},
        Rule{"identical_outputs",
             R"({"input": {"messages": [{"role": "user", "content": "q"}]}, "preferred_output": [{"role": "assistant", "content": "same"}], "non_preferred_output": [{"content": "same", "role": "assistant"}]})",
             IssueSeverity::kError, "non_preferred_output[0]", "identical_outputs",
             "identical to preferred_output[0]", kPref},
        Rule{"output_calls_undeclared_function",
             absl::StrCat(R"({"input": {"messages": [{"role": "user", "content": "q"}], "tools": )", kTools,
                          R"(}, "preferred_output": [{"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}], "non_preferred_output": [{"role": "assistant", "content": "b"}]})"),
             IssueSeverity::kError, "preferred_output[0].tool_calls[0].function.name",
             "unknown_function", "'get_time'", kPref},
        Rule{"chat_line_in_preference_file", kGood, IssueSeverity::kError, "", "mixed_formats",
             "line 10 is a chat example, but the file is preference (like line 1)", kPref},
        Rule{"preference_line_in_chat_file", kGoodPreference, IssueSeverity::kError, "",
             "mixed_formats",
             "line 10 is a preference example, but the file is chat (like line 1); a file holds "
             "one format"},
        Rule{"classification_line_in_chat_file", R"({"text": "t", "label": "l"})",
             IssueSeverity::kError, "", "mixed_formats", "is a classification example"}),
    [](const ::testing::TestParamInfo<Rule>& info) { return info.param.name; });

TEST(JsonlValidator, AcceptsToolCallConversationsAndHandsThemOn) {
  std::vector<Example> seen;
  JsonlValidator v({}, [&](const Example& e) { seen.push_back(e); });
  v.Feed(WithBadLine(ToolLine(kCall, kAnswer, kTools)));
  ValidationSummary s = v.Finish();
  EXPECT_TRUE(s.valid());
  EXPECT_EQ(s.total_warnings, 0);
  ASSERT_EQ(seen.size(), 11u);
  const Example& ex = seen[9];
  ASSERT_EQ(ex.messages.size(), 4u);
  EXPECT_EQ(ex.messages[1].role, "assistant");
  EXPECT_EQ(ex.messages[1].content, "");
  ASSERT_EQ(ex.messages[1].tool_calls.size(), 1u);
  EXPECT_EQ(ex.messages[1].tool_calls[0].id, "call_1");
  EXPECT_EQ(ex.messages[1].tool_calls[0].name, "get_weather");
  EXPECT_EQ(ex.messages[1].tool_calls[0].arguments, R"({"city": "Paris"})");
  EXPECT_EQ(ex.messages[2].tool_call_id, "call_1");
  EXPECT_THAT(ex.tools, HasSubstr(R"("name":"get_weather")"));
  EXPECT_TRUE(seen[0].tools.empty());
}

TEST(JsonlValidator, ToolCallsWithoutToolsListAreNotCheckedAgainstIt) {
  ValidationSummary s = Validate(WithBadLine(ToolLine(
      R"({"id": "call_1", "type": "function", "function": {"name": "anything", "arguments": "{}"}})",
      kAnswer)));
  EXPECT_TRUE(s.valid());
  EXPECT_EQ(s.examples, 11);
}

TEST(JsonlValidator, DuplicateKeyTakesTheLastValue) {
  std::vector<Example> seen;
  JsonlValidator v({}, [&](const Example& e) { seen.push_back(e); });
  v.Feed(WithBadLine(
      R"({"messages": [{"role": "bot", "role": "user", "content": "first", "content": "second"}, {"role": "assistant", "content": "b"}]})"));
  ValidationSummary s = v.Finish();
  EXPECT_TRUE(s.valid());
  ASSERT_EQ(s.issues.size(), 2u);
  EXPECT_EQ(s.issues[0].field, "messages[0].role");
  EXPECT_EQ(s.issues[1].field, "messages[0].content");
  EXPECT_EQ(s.issues[1].line, 10);
  ASSERT_EQ(seen.size(), 11u);
  EXPECT_EQ(seen[9].messages[0].role, "user");
  EXPECT_EQ(seen[9].messages[0].content, "second");
}

TEST(JsonlValidator, PreferenceExamplesCarryPromptAndBothOutputs) {
  std::vector<Example> seen;
  ValidatorOptions o;
  o.format = DataFormat::kPreference;
  JsonlValidator v(o, [&](const Example& e) { seen.push_back(e); });
  v.Feed(WithBadLine(kGoodPreference, DataFormat::kPreference));
  ValidationSummary s = v.Finish();
  EXPECT_TRUE(s.valid());
  EXPECT_TRUE(s.issues.empty());
  ASSERT_EQ(seen.size(), 11u);
  const Example& ex = seen[0];
  EXPECT_EQ(ex.prompt_messages, 2u);
  ASSERT_EQ(ex.messages.size(), 3u);
  EXPECT_EQ(ex.messages[1].content, "Capital of France?");
  EXPECT_EQ(ex.messages[2].role, "assistant");
  EXPECT_EQ(ex.messages[2].content, "Paris.");
  EXPECT_EQ(ex.non_preferred.role, "assistant");
  EXPECT_EQ(ex.non_preferred.content, "I am not sure.");
}

TEST(JsonlValidator, MixedFormatsNameTheFirstLineThatDiffers) {
  std::string content;
  for (int i = 0; i < 12; ++i) absl::StrAppend(&content, kGood, "\n");
  absl::StrAppend(&content, kGoodPreference, "\n", kGood, "\n", kGoodPreference, "\n");
  ValidationSummary s = Validate(content);
  EXPECT_FALSE(s.valid());
  EXPECT_EQ(s.examples, 13);
  ASSERT_EQ(s.issues.size(), 2u);
  EXPECT_EQ(s.issues[0].line, 13);
  EXPECT_EQ(s.issues[0].code, "mixed_formats");
  EXPECT_EQ(s.issues[1].line, 15);
}

TEST(JsonlValidator, DetectsALinesFormatFromItsKeys) {
  EXPECT_EQ(DetectLineFormat(kGood), DataFormat::kChat);
  EXPECT_EQ(DetectLineFormat(kGoodPreference), DataFormat::kPreference);
  EXPECT_EQ(DetectLineFormat(R"({"text": "a", "label": "b"})"), DataFormat::kClassification);
  EXPECT_EQ(DetectLineFormat(R"({"preferred_output": []})"), DataFormat::kPreference);
  EXPECT_FALSE(DetectLineFormat(R"({"other": 1})").has_value());
  EXPECT_FALSE(DetectLineFormat("[1]").has_value());
  EXPECT_FALSE(DetectLineFormat("{not json").has_value());
}

TEST(JsonlValidator, MissingMessagesIsAnErrorAfterTheUnknownKeyWarning) {
  ValidationSummary s = Validate(WithBadLine(R"({"msgs": []})"));
  ASSERT_EQ(s.issues.size(), 2u);
  EXPECT_EQ(s.issues[1].line, 10);
  EXPECT_EQ(s.issues[1].field, "messages");
  EXPECT_EQ(s.issues[1].code, "missing_messages");
  EXPECT_EQ(s.issues[1].severity, IssueSeverity::kError);
}

TEST(JsonlValidator, ByteOrderMarkAndCrlfAreWarningsOnce) {
  std::string content = "\xEF\xBB\xBF";
  for (int i = 0; i < 12; ++i) absl::StrAppend(&content, kGood, "\r\n");
  ValidationSummary s = Validate(content);
  EXPECT_TRUE(s.valid());
  EXPECT_EQ(s.examples, 12);
  ASSERT_EQ(s.issues.size(), 2u);
  EXPECT_EQ(s.issues[0].code, "crlf_line_endings");
  EXPECT_EQ(s.issues[0].line, 1);
  EXPECT_EQ(s.issues[1].code, "byte_order_mark");
  EXPECT_EQ(s.total_warnings, 2);
}

TEST(JsonlValidator, LineOverTheLimitIsNamedWithItsLength) {
  ValidatorOptions o;
  o.max_line_bytes = 200;
  std::string longline = absl::StrCat(R"({"messages": [{"role": "user", "content": ")",
                                      std::string(500, 'x'), R"("}]})");
  ValidationSummary s = Validate(WithBadLine(longline), o);
  ASSERT_FALSE(s.issues.empty());
  EXPECT_EQ(s.issues[0].line, 10);
  EXPECT_EQ(s.issues[0].code, "line_too_long");
  EXPECT_THAT(s.issues[0].message,
              HasSubstr(absl::StrCat(longline.size(), " bytes, over the limit of 200")));
  EXPECT_EQ(s.lines, 11);
}

TEST(JsonlValidator, TooFewExamplesIsAnError) {
  std::string content;
  for (int i = 0; i < 9; ++i) absl::StrAppend(&content, kGood, "\n");
  ValidationSummary s = Validate(content);
  EXPECT_FALSE(s.valid());
  ASSERT_EQ(s.issues.size(), 1u);
  EXPECT_EQ(s.issues[0].line, 0);
  EXPECT_EQ(s.issues[0].code, "too_few_examples");
  EXPECT_THAT(s.issues[0].message, HasSubstr("9 valid examples; at least 10"));
}

TEST(JsonlValidator, IssuesAreCappedButAllCounted) {
  std::string content;
  for (int i = 0; i < 500; ++i) absl::StrAppend(&content, "not json\n");
  ValidatorOptions o;
  o.max_issues = 7;
  ValidationSummary s = Validate(content, o);
  EXPECT_EQ(s.issues.size(), 7u);
  EXPECT_EQ(s.total_errors, 501);  // 500 lines + too few examples
  EXPECT_EQ(s.issues[6].line, 7);
}

TEST(JsonlValidator, ChunkBoundariesAnywhereGiveTheSameResult) {
  std::string content = WithBadLine(R"({"messages": [{"role": "bot", "content": "ü€😀"}]})");
  ValidationSummary whole = Validate(content);
  for (size_t step : {1u, 2u, 3u, 7u, 64u}) {
    JsonlValidator v({});
    for (size_t i = 0; i < content.size(); i += step) v.Feed(content.substr(i, step));
    ValidationSummary s = v.Finish();
    ASSERT_EQ(s.issues.size(), whole.issues.size()) << step;
    for (size_t i = 0; i < s.issues.size(); ++i) {
      EXPECT_EQ(s.issues[i].line, whole.issues[i].line);
      EXPECT_EQ(s.issues[i].code, whole.issues[i].code);
    }
    EXPECT_EQ(s.examples, whole.examples);
  }
}

TEST(JsonlValidator, LastLineWithoutNewlineCounts) {
  std::string content;
  for (int i = 0; i < 10; ++i) absl::StrAppend(&content, i ? "\n" : "", kGood);
  ValidationSummary s = Validate(content);
  EXPECT_TRUE(s.valid());
  EXPECT_EQ(s.examples, 10);
  EXPECT_EQ(s.lines, 10);
}

TEST(JsonlValidator, HandsValidExamplesToTheCallback) {
  std::vector<Example> seen;
  JsonlValidator v({}, [&](const Example& e) { seen.push_back(e); });
  v.Feed(WithBadLine(
      R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0}]})"));
  ValidationSummary s = v.Finish();
  EXPECT_TRUE(s.valid());
  ASSERT_EQ(seen.size(), 11u);
  EXPECT_EQ(seen[9].line, 10);
  ASSERT_EQ(seen[9].messages.size(), 2u);
  EXPECT_EQ(seen[9].messages[1].role, "assistant");
  EXPECT_EQ(seen[9].messages[1].content, "b");
  EXPECT_EQ(seen[9].messages[1].weight, 0);
  EXPECT_EQ(seen[0].messages[0].role, "system");
}

TEST(JsonlValidator, ClassificationRules) {
  ValidatorOptions o;
  o.format = DataFormat::kClassification;
  std::string content;
  for (int i = 0; i < 10; ++i) absl::StrAppend(&content, R"({"text": "great", "label": "pos"})", "\n");
  absl::StrAppend(&content, R"({"text": "meh"})", "\n", R"({"text": 3, "label": "neg"})", "\n",
                  R"({"text": "x", "label": "", "extra": 1})", "\n");
  ValidationSummary s = Validate(content, o);
  EXPECT_EQ(s.examples, 10);
  ASSERT_EQ(s.issues.size(), 4u);
  EXPECT_EQ(s.issues[0].line, 11);
  EXPECT_EQ(s.issues[0].field, "label");
  EXPECT_EQ(s.issues[0].code, "missing_label");
  EXPECT_EQ(s.issues[1].line, 12);
  EXPECT_EQ(s.issues[1].field, "text");
  EXPECT_EQ(s.issues[1].code, "text_not_a_string");
  EXPECT_EQ(s.issues[2].line, 13);
  EXPECT_EQ(s.issues[2].code, "empty_label");
  EXPECT_EQ(s.issues[3].field, "extra");
  EXPECT_EQ(s.issues[3].severity, IssueSeverity::kWarning);
}

}  // namespace
}  // namespace tunefleet::dataset
