#include "tests/text/reference_util.h"

#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace tunefleet::text::testing {
namespace {

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

bool NodeOnPath() { return std::system("node --version >/dev/null 2>&1") == 0; }

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

}  // namespace

std::string ReferenceDir() { return std::string(TUNEFLEET_SOURCE_DIR) + "/tests/reference"; }

bool ReferencesAvailable() { return ReferencesMissingReason().empty(); }

std::string ReferencesMissingReason() {
  if (!Exists(ReferenceDir() + "/node_modules/@lenml/tokenizers/package.json") ||
      !Exists(ReferenceDir() + "/node_modules/llama-tokenizer-js/llama-tokenizer.js") ||
      !Exists(ReferenceDir() + "/node_modules/@huggingface/jinja/package.json")) {
    return "the npm reference packages are not installed in tests/reference/node_modules "
           "(run scripts/install-deps, which runs scripts/install-deps.d/npm-references)";
  }
  if (!NodeOnPath()) return "node is not on the PATH";
  return "";
}

absl::StatusOr<std::string> RunNode(const std::string& script,
                                    const std::vector<std::string>& args) {
  std::string cmd =
      absl::StrCat("cd ", ShellQuote(ReferenceDir()), " && node ", ShellQuote(script));
  for (const std::string& a : args) absl::StrAppend(&cmd, " ", ShellQuote(a));
  absl::StrAppend(&cmd, " 2>&1");
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (pipe == nullptr) return absl::InternalError("popen failed");
  std::string out;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
  const int status = ::pclose(pipe);
  if (status != 0) return absl::InternalError(absl::StrCat(cmd, " failed (", status, "): ", out));
  return out;
}

absl::StatusOr<std::vector<std::vector<int32_t>>> ReferenceEncode(
    const std::string& model, const std::vector<std::string>& texts, bool add_special_tokens,
    const std::string& work_dir) {
  nlohmann::json corpus;
  corpus["add_special_tokens"] = add_special_tokens;
  corpus["texts_b64"] = nlohmann::json::array();
  for (const std::string& t : texts) corpus["texts_b64"].push_back(absl::Base64Escape(t));
  const std::string path = work_dir + "/corpus.json";
  {
    std::ofstream out(path);
    out << corpus.dump();
  }
  auto out = RunNode("encode.mjs", {model, path});
  if (!out.ok()) return out.status();
  nlohmann::json result = nlohmann::json::parse(*out, nullptr, false);
  if (result.is_discarded() || !result.contains("ids")) {
    return absl::InternalError(absl::StrCat("encode.mjs printed no JSON: ", *out));
  }
  std::vector<std::vector<int32_t>> ids;
  for (const auto& row : result["ids"]) ids.push_back(row.get<std::vector<int32_t>>());
  return ids;
}

absl::StatusOr<std::vector<std::string>> ReferenceRender(
    const std::string& model,
    const std::vector<std::vector<std::pair<std::string, std::string>>>& conversations,
    bool add_generation_prompt, const std::string& work_dir) {
  nlohmann::json input;
  input["add_generation_prompt"] = add_generation_prompt;
  input["conversations"] = nlohmann::json::array();
  for (const auto& conv : conversations) {
    nlohmann::json messages = nlohmann::json::array();
    for (const auto& [role, content] : conv)
      messages.push_back({{"role", role}, {"content", content}});
    input["conversations"].push_back(messages);
  }
  const std::string path = work_dir + "/conversations.json";
  {
    std::ofstream out(path);
    out << input.dump();
  }
  auto out = RunNode("render.mjs", {model, path});
  if (!out.ok()) return out.status();
  nlohmann::json result = nlohmann::json::parse(*out, nullptr, false);
  if (result.is_discarded() || !result.contains("texts")) {
    return absl::InternalError(absl::StrCat("render.mjs printed no JSON: ", *out));
  }
  return result["texts"].get<std::vector<std::string>>();
}

}  // namespace tunefleet::text::testing
