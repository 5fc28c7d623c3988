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

// Nine good lines, then `bad` as line 10, then one more good line.
std::string WithBadLine(const std::string& bad) {
  std::string s;
  for (int i = 0; i < 9; ++i) absl::StrAppend(&s, kGood, "\n");
  absl::StrAppend(&s, bad, "\n", kGood, "\n");
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
};

class RuleTest : public ::testing::TestWithParam<Rule> {};

TEST_P(RuleTest, NamesLineFieldAndCode) {
  const Rule& r = GetParam();
  ValidationSummary s = Validate(WithBadLine(r.line));
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
