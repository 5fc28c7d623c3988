#include "services/serving/chat_request.h"

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/base/sha256.h"
#include "common/errors/error_details.h"

namespace tunefleet::serving {

namespace {

size_t Utf8Characters(const std::string& s) {
  size_t n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

absl::Status CheckPenalty(const char* field, const std::optional<double>& v) {
  if (v && !(*v >= -2 && *v <= 2)) {
    return errors::FieldError(field, absl::StrCat("must be in [-2, 2], got ", *v));
  }
  return absl::OkStatus();
}

// Streams a file through sha256; empty when it cannot be read.
std::string FileSha256(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  Sha256 h;
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    if (in.gcount() > 0) h.Update(absl::string_view(buf.data(), static_cast<size_t>(in.gcount())));
  }
  return h.HexDigest();
}

}  // namespace

std::optional<int64_t> RequestedMaxTokens(const ChatRequest& request, std::string* field) {
  if (request.max_completion_tokens) {
    *field = "max_completion_tokens";
    return request.max_completion_tokens;
  }
  *field = "max_tokens";
  return request.max_tokens;
}

absl::Status CheckChatSamplingFields(const ChatRequest& request) {
  if (request.max_completion_tokens && request.max_tokens &&
      *request.max_completion_tokens != *request.max_tokens) {
    return errors::FieldError(
        "max_completion_tokens",
        absl::StrCat(*request.max_completion_tokens, " differs from max_tokens ",
                     *request.max_tokens, " (its deprecated alias): set one of them"));
  }
  std::string field;
  if (auto max = RequestedMaxTokens(request, &field); max && *max < 1) {
    return errors::FieldError(field, absl::StrCat("must be at least 1, got ", *max));
  }
  if (request.top_logprobs) {
    if (*request.top_logprobs < 0 || *request.top_logprobs > 20) {
      return errors::FieldError("top_logprobs",
                                absl::StrCat("must be in [0, 20], got ", *request.top_logprobs));
    }
    if (*request.top_logprobs > 0 && !request.logprobs) {
      return errors::FieldError("top_logprobs", "needs logprobs: true");
    }
  }
  if (absl::Status s = CheckPenalty("frequency_penalty", request.frequency_penalty); !s.ok())
    return s;
  if (absl::Status s = CheckPenalty("presence_penalty", request.presence_penalty); !s.ok())
    return s;
  if (const size_t n = Utf8Characters(request.user); n > 256) {
    return errors::FieldError("user", absl::StrCat("at most 256 characters, got ", n));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<text::ChatMessage>> TemplateMessages(const ChatRequest& request,
                                                                const text::ChatTemplate& tmpl,
                                                                const std::string& base_model) {
  auto unsupported = [&](const std::string& field, absl::string_view what) {
    return errors::WithReason(
        errors::FieldError(field, absl::StrCat("base model ", base_model, " uses the ", tmpl.name(),
                                               " chat template, which cannot render ", what)),
        "TOOLS_UNSUPPORTED", {{"chat_template", tmpl.name()}, {"base_model", base_model}});
  };
  std::vector<text::ChatMessage> out;
  for (size_t i = 0; i < request.messages.size(); ++i) {
    const ChatMessageIn& m = request.messages[i];
    const std::string at = absl::StrCat("messages[", i, "]");
    if (!m.tool_calls.empty()) {
      if (m.role != "assistant") {
        return errors::FieldError(
            absl::StrCat(at, ".tool_calls"),
            absl::StrCat("only assistant messages carry tool calls, not \"", m.role, "\""));
      }
      for (size_t k = 0; k < m.tool_calls.size(); ++k) {
        const text::ToolCall& c = m.tool_calls[k];
        const std::string call = absl::StrCat(at, ".tool_calls[", k, "]");
        if (!c.type.empty() && c.type != "function") {
          return errors::FieldError(absl::StrCat(call, ".type"),
                                    absl::StrCat("must be \"function\", got \"", c.type, "\""));
        }
        if (c.name.empty())
          return errors::FieldError(absl::StrCat(call, ".function.name"), "must not be empty");
      }
      if (!tmpl.SupportsToolCalls())
        return unsupported(absl::StrCat(at, ".tool_calls"), "tool calls");
    }
    if (m.role == "tool" && tmpl.format() == text::ChatFormat::kPhi3) {
      return unsupported(absl::StrCat(at, ".role"), "tool messages");
    }
    text::ChatMessage t;
    t.role = m.role;
    t.content = m.content;
    t.tool_calls = m.tool_calls;
    t.tool_call_id = m.tool_call_id;
    out.push_back(std::move(t));
  }
  return out;
}

std::string WeightsIdentity(const std::string& dir, bool content) {
  std::vector<std::string> files;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (absl::EndsWith(name, ".safetensors")) files.push_back(name);
  }
  std::sort(files.begin(), files.end());
  std::string id;
  for (const std::string& name : files) {
    const std::string path = absl::StrCat(dir, "/", name);
    if (content) {
      absl::StrAppend(&id, name, " ", FileSha256(path), "\n");
      continue;
    }
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) continue;
    absl::StrAppend(&id, name, " ", st.st_size, " ", st.st_mtim.tv_sec, ".", st.st_mtim.tv_nsec,
                    "\n");
  }
  return Sha256Hex(id);
}

std::string BuildIdentity() {
  static const std::string* id = [] {
    const std::string sha = FileSha256("/proc/self/exe");
    return new std::string(sha.empty() ? "unknown" : sha);
  }();
  return *id;
}

}  // namespace tunefleet::serving
