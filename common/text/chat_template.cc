#include "common/text/chat_template.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/base/status_macros.h"
#include "common/text/config_json.h"
#include "common/text/unicode.h"

namespace tunefleet::text {
namespace {

using json = nlohmann::json;

// Python's str.strip() / Jinja's trim: Unicode whitespace at both ends.
std::string Trim(absl::string_view s) {
  size_t begin = 0, end = s.size();
  while (begin < end) {
    size_t p = begin;
    if (!IsWhiteSpace(NextCodepoint(s, &p))) break;
    begin = p;
  }
  while (end > begin) {
    size_t start = end - 1;
    while (start > begin && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
    size_t p = start;
    if (!IsWhiteSpace(NextCodepoint(s, &p))) break;
    end = start;
  }
  return std::string(s.substr(begin, end - begin));
}

std::string StripChars(absl::string_view s, char c, bool left, bool right) {
  size_t begin = 0, end = s.size();
  while (left && begin < end && s[begin] == c) ++begin;
  while (right && end > begin && s[end - 1] == c) --end;
  return std::string(s.substr(begin, end - begin));
}

absl::StatusOr<json> ReadJson(const std::string& path, bool* exists) {
  std::ifstream in(path, std::ios::binary);
  *exists = static_cast<bool>(in);
  if (!in) return json();
  std::stringstream ss;
  ss << in.rdbuf();
  json j = json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": $: not a JSON object"));
  }
  return j;
}


class SegmentWriter {
 public:
  void Add(absl::string_view text, bool trainable) {
    if (text.empty()) return;
    if (!segments_.empty() && segments_.back().trainable == trainable) {
      absl::StrAppend(&segments_.back().text, text);
    } else {
      segments_.push_back({std::string(text), trainable});
    }
  }
  std::vector<ChatSegment> Take() { return std::move(segments_); }

 private:
  std::vector<ChatSegment> segments_;
};

bool Trains(const ChatMessage& m) { return !m.weight.has_value() || *m.weight != 0; }

absl::Status BadRole(size_t i, const std::string& role, absl::string_view family) {
  return absl::InvalidArgumentError(absl::StrCat(
      "messages[", i, "].role: \"", role, "\" is not rendered by the ", family, " chat template"));
}

}  // namespace

ChatTemplate::ChatTemplate(ChatFormat format, std::string bos_token, std::string eos_token)
    : format_(format), bos_token_(std::move(bos_token)), eos_token_(std::move(eos_token)) {
  if (bos_token_.empty() && format_ == ChatFormat::kLlama3) bos_token_ = "<|begin_of_text|>";
  if (eos_token_.empty()) {
    switch (format_) {
      case ChatFormat::kPhi3:
        eos_token_ = "<|endoftext|>";
        break;
      case ChatFormat::kLlama3:
        eos_token_ = "<|eot_id|>";
        break;
      case ChatFormat::kChatML:
      case ChatFormat::kQwen3:
        eos_token_ = "<|im_end|>";
        break;
    }
  }
}

absl::StatusOr<ChatTemplate> ChatTemplate::FromJinja(const std::string& t, std::string bos_token,
                                                     std::string eos_token) {
  std::optional<ChatFormat> format;
  if (absl::StrContains(t, "<|im_start|>")) {
    // Phi-4's <|im_sep|> variant is another format.
    if (!absl::StrContains(t, "<|im_sep|>")) {
      format = absl::StrContains(t, "</think>") ? ChatFormat::kQwen3 : ChatFormat::kChatML;
    }
  } else if (absl::StrContains(t, "<|start_header_id|>")) {
    // Llama-3.1 and later write a dated system preamble (today's date under
    // transformers): not rendered here.
    if (!absl::StrContains(t, "Cutting Knowledge Date")) format = ChatFormat::kLlama3;
  } else if (absl::StrContains(t, "<|assistant|>") && absl::StrContains(t, "<|end|>")) {
    // Phi-3 and Phi-3.5 end turns with "<|end|>\n"; Phi-4-mini's markers
    // without newlines, and the first Phi-3 template (BOS, no system turn),
    // are other formats.
    const bool newline_turns =
        absl::StrContains(t, "<|end|>\n'") || absl::StrContains(t, "<|end|>\\n'");
    if (newline_turns && !absl::StrContains(t, "bos_token")) format = ChatFormat::kPhi3;
  }
  if (!format) {
    return absl::UnimplementedError(
        "chat_template: not a supported Phi-3, Llama-3, ChatML or Qwen3 template");
  }
  ChatTemplate tmpl(*format, std::move(bos_token), std::move(eos_token));
  tmpl.skip_empty_system_ =
      absl::StrContains(t, "message['role'] == 'system' and message['content']");
  tmpl.always_generation_prompt_ =
      *format == ChatFormat::kLlama3 && !absl::StrContains(t, "add_generation_prompt");
  for (const char* system : {"You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
                             "You are a helpful assistant."}) {
    if (*format == ChatFormat::kChatML &&
        absl::StrContains(t, absl::StrCat("<|im_start|>system\\n", system))) {
      tmpl.default_system_ = system;
      break;
    }
  }
  return tmpl;
}

absl::StatusOr<ChatTemplate> ChatTemplate::FromModelDirectory(const std::string& dir) {
  const std::string tc_path = dir + "/tokenizer_config.json", config_path = dir + "/config.json";
  bool tc_exists = false, config_exists = false;
  TF_ASSIGN_OR_RETURN(json tc, ReadJson(tc_path, &tc_exists));
  const std::string bos = tc_exists ? ConfigToken(tc, "bos_token") : "";
  const std::string eos = tc_exists ? ConfigToken(tc, "eos_token") : "";
  if (tc_exists && tc.contains("chat_template")) {
    std::string text;
    const json& ct = tc["chat_template"];
    if (ct.is_string()) {
      text = ct.get<std::string>();
    } else if (ct.is_array()) {
      for (const json& named : ct) {
        if (named.is_object() && named.value("name", "") == "default" &&
            named.contains("template") && named["template"].is_string()) {
          text = named["template"].get<std::string>();
        }
      }
    }
    absl::StatusOr<ChatTemplate> t = FromJinja(text, bos, eos);
    if (t.ok()) return t;
    return absl::UnimplementedError(
        absl::StrCat(tc_path, ": chat_template: ", t.status().message()));
  }
  TF_ASSIGN_OR_RETURN(json config, ReadJson(config_path, &config_exists));
  const std::string model_type = config_exists ? config.value("model_type", "") : "";
  if (model_type == "phi3") return ChatTemplate(ChatFormat::kPhi3, bos, eos);
  if (model_type == "qwen3") return ChatTemplate(ChatFormat::kQwen3, bos, eos);
  if (model_type == "qwen2") return ChatTemplate(ChatFormat::kChatML, bos, eos);
  if (model_type == "llama" && bos == "<|begin_of_text|>")
    return ChatTemplate(ChatFormat::kLlama3, bos, eos);
  return absl::UnimplementedError(absl::StrCat(
      "no supported chat template: ", tc_path, " has no chat_template and ", config_path,
      " model_type \"", model_type, "\" is not phi3, qwen2, qwen3 or a Llama-3 llama"));
}

const char* ChatTemplate::name() const {
  switch (format_) {
    case ChatFormat::kPhi3:
      return "phi3";
    case ChatFormat::kLlama3:
      return "llama3";
    case ChatFormat::kChatML:
      return "chatml";
    case ChatFormat::kQwen3:
      return "qwen3";
  }
  return "";
}

std::string ChatTemplate::EndOfTurn() const {
  switch (format_) {
    case ChatFormat::kPhi3:
      return "<|end|>";
    case ChatFormat::kLlama3:
      return "<|eot_id|>";
    case ChatFormat::kChatML:
    case ChatFormat::kQwen3:
      return "<|im_end|>";
  }
  return "";
}

absl::StatusOr<std::string> ChatTemplate::Render(absl::Span<const ChatMessage> messages,
                                                 bool add_generation_prompt) const {
  TF_ASSIGN_OR_RETURN(std::vector<ChatSegment> segments,
                      RenderSegments(messages, add_generation_prompt));
  std::string out;
  for (const ChatSegment& s : segments) out += s.text;
  return out;
}

absl::StatusOr<std::vector<ChatSegment>> ChatTemplate::RenderSegments(
    absl::Span<const ChatMessage> messages, bool add_generation_prompt) const {
  if (!SupportsToolCalls()) {
    for (size_t i = 0; i < messages.size(); ++i) {
      if (!messages[i].tool_calls.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("messages[", i, "].tool_calls: the ", name(),
                         " chat template does not render tool calls"));
      }
    }
  }
  SegmentWriter w;
  switch (format_) {
    case ChatFormat::kPhi3: {
      for (size_t i = 0; i < messages.size(); ++i) {
        const ChatMessage& m = messages[i];
        if (m.role == "system") {
          if (skip_empty_system_ && m.content.empty()) continue;
          w.Add(absl::StrCat("<|system|>\n", m.content, "<|end|>\n"), false);
        } else if (m.role == "user") {
          w.Add(absl::StrCat("<|user|>\n", m.content, "<|end|>\n"), false);
        } else if (m.role == "assistant") {
          w.Add("<|assistant|>\n", false);
          w.Add(absl::StrCat(m.content, "<|end|>"), Trains(m));
          w.Add("\n", false);
        } else {
          return BadRole(i, m.role, "Phi-3");
        }
      }
      w.Add(add_generation_prompt ? "<|assistant|>\n" : eos_token_, false);
      break;
    }
    case ChatFormat::kLlama3: {
      for (size_t i = 0; i < messages.size(); ++i) {
        const ChatMessage& m = messages[i];
        w.Add(absl::StrCat(i == 0 ? bos_token_ : "", "<|start_header_id|>", m.role,
                           "<|end_header_id|>\n\n"),
              false);
        w.Add(absl::StrCat(Trim(m.content), "<|eot_id|>"), m.role == "assistant" && Trains(m));
      }
      if (add_generation_prompt || always_generation_prompt_) {
        w.Add("<|start_header_id|>assistant<|end_header_id|>\n\n", false);
      }
      break;
    }
    case ChatFormat::kChatML: {
      if (!default_system_.empty() && (messages.empty() || messages[0].role != "system")) {
        w.Add(absl::StrCat("<|im_start|>system\n", default_system_, "<|im_end|>\n"), false);
      }
      for (const ChatMessage& m : messages) {
        w.Add(absl::StrCat("<|im_start|>", m.role, "\n"), false);
        w.Add(absl::StrCat(m.content, "<|im_end|>"), m.role == "assistant" && Trains(m));
        w.Add("\n", false);
      }
      if (add_generation_prompt) w.Add("<|im_start|>assistant\n", false);
      break;
    }
    case ChatFormat::kQwen3: {
      const size_t n = messages.size();
      if (n > 0 && messages[0].role == "system") {
        w.Add(absl::StrCat("<|im_start|>system\n", messages[0].content, "<|im_end|>\n"), false);
      }
      // The last user message that is not a tool response.
      size_t last_query = n == 0 ? 0 : n - 1;
      for (size_t k = n; k > 0; --k) {
        const ChatMessage& m = messages[k - 1];
        if (m.role == "user" && !(absl::StartsWith(m.content, "<tool_response>") &&
                                  absl::EndsWith(m.content, "</tool_response>"))) {
          last_query = k - 1;
          break;
        }
      }
      for (size_t i = 0; i < n; ++i) {
        const ChatMessage& m = messages[i];
        if (m.role == "user" || (m.role == "system" && i != 0)) {
          w.Add(absl::StrCat("<|im_start|>", m.role, "\n", m.content, "<|im_end|>\n"), false);
        } else if (m.role == "system") {
          // Rendered above.
        } else if (m.role == "assistant") {
          std::string content = m.content, reasoning;
          if (absl::StrContains(m.content, "</think>")) {
            const std::vector<absl::string_view> parts = absl::StrSplit(m.content, "</think>");
            content = StripChars(parts.back(), '\n', true, false);
            const std::string head = StripChars(parts.front(), '\n', false, true);
            const std::vector<absl::string_view> before = absl::StrSplit(head, "<think>");
            reasoning = StripChars(before.back(), '\n', true, false);
          }
          const bool train = Trains(m);
          if (i > last_query && (i + 1 == n || !reasoning.empty())) {
            const std::string think = absl::StrCat(
                "<think>\n", StripChars(reasoning, '\n', true, true), "\n</think>\n\n");
            w.Add("<|im_start|>assistant\n", false);
            // An empty think block is the template's scaffolding; real
            // reasoning is the assistant's output.
            w.Add(think, train && !reasoning.empty());
            w.Add(StripChars(content, '\n', true, false), train);
          } else {
            w.Add("<|im_start|>assistant\n", false);
            w.Add(content, train);
          }
          // The official template: each call as a <tool_call> JSON block,
          // after a newline unless it is the first and the content is empty.
          for (size_t k = 0; k < m.tool_calls.size(); ++k) {
            const ToolCall& call = m.tool_calls[k];
            w.Add(absl::StrCat(k > 0 || !content.empty() ? "\n" : "",
                               "<tool_call>\n{\"name\": \"", call.name, "\", \"arguments\": ",
                               call.arguments, "}\n</tool_call>"),
                  train);
          }
          w.Add("<|im_end|>", train);
          w.Add("\n", false);
        } else if (m.role == "tool") {
          if (i == 0 || messages[i - 1].role != "tool") w.Add("<|im_start|>user", false);
          w.Add(absl::StrCat("\n<tool_response>\n", m.content, "\n</tool_response>"), false);
          if (i + 1 == n || messages[i + 1].role != "tool") w.Add("<|im_end|>\n", false);
        } else {
          return BadRole(i, m.role, "Qwen3");
        }
      }
      if (add_generation_prompt) w.Add("<|im_start|>assistant\n", false);
      break;
    }
  }
  return w.Take();
}

int64_t TokenizedChat::trained_tokens() const {
  int64_t n = 0;
  for (uint8_t m : loss_mask) n += m;
  return n;
}

// The reference way to place mask boundaries, by encoding every prefix;
// used when the text cannot be mapped byte for byte (invalid UTF-8).
static absl::StatusOr<TokenizedChat> TokenizeChatByPrefixes(const Tokenizer& tokenizer,
                                           const ChatTemplate& chat_template,
                                           absl::Span<const ChatMessage> messages) {
  TF_ASSIGN_OR_RETURN(std::vector<ChatSegment> segments,
                      chat_template.RenderSegments(messages, false));
  std::string text;
  TokenizedChat out;
  for (const ChatSegment& s : segments) {
    text += s.text;
    const std::vector<int32_t> ids = tokenizer.Encode(s.text, /*add_special_tokens=*/false);
    out.ids.insert(out.ids.end(), ids.begin(), ids.end());
    out.loss_mask.insert(out.loss_mask.end(), ids.size(), s.trainable ? 1 : 0);
  }
  // Segment by segment is what the whole text gives, except where a token
  // would span a segment boundary; then each boundary is placed where the
  // tokens of the text before it stop agreeing with the whole text's.
  const std::vector<int32_t> full = tokenizer.Encode(text, /*add_special_tokens=*/false);
  if (full == out.ids) return out;
  std::vector<size_t> boundary_token;  // token index at the end of each segment
  size_t offset = 0;
  for (const ChatSegment& s : segments) {
    offset += s.text.size();
    const std::vector<int32_t> prefix =
        offset == text.size() ? full
                              : tokenizer.Encode(absl::string_view(text).substr(0, offset), false);
    size_t lcp = 0;
    while (lcp < prefix.size() && lcp < full.size() && prefix[lcp] == full[lcp]) ++lcp;
    boundary_token.push_back(lcp);
  }
  out.ids = full;
  out.loss_mask.assign(full.size(), 0);
  size_t begin = 0;
  for (size_t k = 0; k < segments.size(); ++k) {
    const size_t end = std::max(begin, boundary_token[k]);
    if (segments[k].trainable) {
      for (size_t t = begin; t < end; ++t) out.loss_mask[t] = 1;
    }
    begin = end;
  }
  return out;
}

absl::StatusOr<ChatTokenizer> ChatTokenizer::Load(const std::string& dir) {
  TF_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, Tokenizer::FromDirectory(dir));
  TF_ASSIGN_OR_RETURN(ChatTemplate chat_template, ChatTemplate::FromModelDirectory(dir));
  return ChatTokenizer(std::move(tokenizer), std::move(chat_template));
}

absl::StatusOr<std::vector<int32_t>> ChatTokenizer::EncodePrompt(
    absl::Span<const ChatMessage> messages) const {
  TF_ASSIGN_OR_RETURN(std::string prompt,
                      chat_template_.Render(messages, /*add_generation_prompt=*/true));
  return tokenizer_->Encode(prompt, /*add_special_tokens=*/false);
}

std::vector<int32_t> ChatTokenizer::StopIds() const {
  std::vector<int32_t> ids;
  for (const std::string& token : {chat_template_.EndOfTurn(), chat_template_.eos_token()}) {
    const std::optional<int32_t> id = tokenizer_->TokenToId(token);
    if (id && std::find(ids.begin(), ids.end(), *id) == ids.end()) ids.push_back(*id);
  }
  return ids;
}

namespace {

// The first token at or after byte `b` of `text`, given how the whole text
// was encoded: the number of leading tokens that belong to text[0, b).
size_t BoundaryToken(const Tokenizer& tokenizer, absl::string_view text,
                     const std::vector<int32_t>& ids,
                     const std::vector<Tokenizer::EncodedPiece>& pieces, size_t b) {
  for (const Tokenizer::EncodedPiece& p : pieces) {
    if (b <= p.byte_begin) return p.token_begin;
    if (b >= p.byte_end) continue;
    if (p.added) {
      // Inside whitespace an added token strips (lstrip before, rstrip after
      // its text): the token goes with the side that holds its text.
      const std::string content = tokenizer.IdToToken(ids[p.token_begin]);
      const size_t at = text.substr(0, p.byte_end).find(content, p.byte_begin);
      return at != absl::string_view::npos && b >= at + content.size() ? p.token_end
                                                                        : p.token_begin;
    }
    // Inside a piece between added tokens: as many of its tokens as encoding
    // only the part before `b` agrees with (tokens never cross pieces, so
    // the pieces before are identical).
    const std::vector<int32_t> part =
        tokenizer.EncodePiece(text.substr(p.byte_begin, b - p.byte_begin), p.byte_begin == 0);
    size_t lcp = 0;
    while (lcp < part.size() && p.token_begin + lcp < p.token_end &&
           part[lcp] == ids[p.token_begin + lcp]) {
      ++lcp;
    }
    return p.token_begin + lcp;
  }
  return ids.size();
}

}  // namespace

absl::StatusOr<TokenizedChat> TokenizeChat(const Tokenizer& tokenizer,
                                           const ChatTemplate& chat_template,
                                           absl::Span<const ChatMessage> messages) {
  TF_ASSIGN_OR_RETURN(std::vector<ChatSegment> segments,
                      chat_template.RenderSegments(messages, false));
  std::string text;
  for (const ChatSegment& s : segments) text += s.text;
  // One encode of the whole text (what training sees), then each segment
  // boundary is placed by re-encoding only the part of the one piece it
  // falls in, not everything before it.
  std::vector<Tokenizer::EncodedPiece> pieces;
  std::optional<std::vector<int32_t>> full = tokenizer.EncodeWithPieces(text, &pieces);
  if (!full.has_value()) return TokenizeChatByPrefixes(tokenizer, chat_template, messages);
  TokenizedChat out;
  out.ids = *std::move(full);
  out.loss_mask.assign(out.ids.size(), 0);
  size_t offset = 0, begin = 0;
  for (const ChatSegment& s : segments) {
    offset += s.text.size();
    const size_t end =
        std::max(begin, offset == text.size()
                            ? out.ids.size()
                            : BoundaryToken(tokenizer, text, out.ids, pieces, offset));
    if (s.trainable) {
      for (size_t t = begin; t < end; ++t) out.loss_mask[t] = 1;
    }
    begin = end;
  }
  return out;
}

}  // namespace tunefleet::text
