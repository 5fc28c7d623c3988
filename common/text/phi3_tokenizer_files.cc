#include "common/text/phi3_tokenizer_files.h"

#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/base/status_macros.h"

namespace tunefleet::text {

const char kPhi3ChatTemplate[] =
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + "
    "message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif "
    "message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% "
    "endif %}{% endfor "
    "%}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}";

namespace {

using ojson = nlohmann::ordered_json;

constexpr int kLlamaVocabSize = 32000;

struct Phi3Added {
  int id;
  const char* content;
  bool rstrip;
};
// Phi-3's added tokens: the role markers and <|end|> swallow the whitespace
// after them (rstrip), as in microsoft/Phi-3-mini-4k-instruct.
constexpr Phi3Added kPhi3Added[] = {
    {32000, "<|endoftext|>", false},   {32001, "<|assistant|>", true},
    {32002, "<|placeholder1|>", true}, {32003, "<|placeholder2|>", true},
    {32004, "<|placeholder3|>", true}, {32005, "<|placeholder4|>", true},
    {32006, "<|system|>", true},       {32007, "<|end|>", true},
    {32008, "<|placeholder5|>", true}, {32009, "<|placeholder6|>", true},
    {32010, "<|user|>", true},
};

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// The base64 string literal `const NAME = "...";` of llama-tokenizer.js.
absl::StatusOr<std::string> Base64Literal(const std::string& js, const std::string& path,
                                          const std::string& name) {
  const std::string marker = absl::StrCat("const ", name, " = \"");
  const size_t start = js.find(marker);
  if (start == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": no `", name, "` string: not llama-tokenizer-js"));
  }
  const size_t begin = start + marker.size();
  const size_t end = js.find('"', begin);
  if (end == std::string::npos)
    return absl::InvalidArgumentError(absl::StrCat(path, ": unterminated ", name));
  std::string decoded;
  if (!absl::Base64Unescape(absl::string_view(js).substr(begin, end - begin), &decoded)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", name, " is not valid base64"));
  }
  return decoded;
}

absl::Status WriteAtomically(const std::string& path, const std::string& content) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return absl::FailedPreconditionError(absl::StrCat(tmp, ": cannot create"));
    out << content;
    out.flush();
    if (!out) return absl::DataLossError(absl::StrCat(tmp, ": write failed"));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return absl::DataLossError(absl::StrCat(path, ": rename failed"));
  }
  return absl::OkStatus();
}

ojson AddedTokenJson(int id, const std::string& content, bool rstrip, bool special = true) {
  ojson t;
  t["id"] = id;
  t["content"] = content;
  t["single_word"] = false;
  t["lstrip"] = false;
  t["rstrip"] = rstrip;
  t["normalized"] = false;
  t["special"] = special;
  return t;
}

}  // namespace

std::string DefaultLlamaVocabSource() {
  if (const char* env = std::getenv("TUNEFLEET_LLAMA_VOCAB"); env != nullptr && *env != '\0')
    return env;
  return TUNEFLEET_DEFAULT_LLAMA_VOCAB;
}

absl::Status WritePhi3TokenizerFiles(const std::string& out_dir) {
  return WritePhi3TokenizerFiles(DefaultLlamaVocabSource(), out_dir);
}

absl::Status WritePhi3TokenizerFiles(const std::string& vocab_source, const std::string& out_dir) {
  const std::string js_path =
      IsDirectory(vocab_source) ? vocab_source + "/llama-tokenizer.js" : vocab_source;
  std::ifstream in(js_path, std::ios::binary);
  if (!in) {
    return absl::FailedPreconditionError(absl::StrCat(
        "LLaMA-2 vocabulary source ", js_path,
        " not found: install llama-tokenizer-js with scripts/install-deps (npm-references) or set "
        "TUNEFLEET_LLAMA_VOCAB to its llama-tokenizer.js"));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string js = ss.str();
  TF_ASSIGN_OR_RETURN(std::string vocab_text, Base64Literal(js, js_path, "llama_vocab_base64"));
  TF_ASSIGN_OR_RETURN(std::string merges_bin, Base64Literal(js, js_path, "llama_merges_binary"));
  const std::vector<std::string> tokens = absl::StrSplit(vocab_text, '\n');
  if (tokens.size() != kLlamaVocabSize || tokens[0] != "<unk>" || tokens[1] != "<s>" ||
      tokens[2] != "</s>") {
    return absl::InvalidArgumentError(
        absl::StrCat(js_path, ": llama_vocab_base64 has ", tokens.size(),
                     " tokens; expected the 32000-token LLaMA vocabulary"));
  }
  if (merges_bin.size() % 4 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(js_path, ": llama_merges_binary is not pairs of uint16"));
  }
  if (!IsDirectory(out_dir))
    return absl::FailedPreconditionError(absl::StrCat(out_dir, ": not a directory"));

  ojson vocab = ojson::object();
  for (int id = 0; id < kLlamaVocabSize; ++id) vocab[tokens[id]] = id;
  if (vocab.size() != kLlamaVocabSize) {
    return absl::InvalidArgumentError(
        absl::StrCat(js_path, ": duplicate tokens in llama_vocab_base64"));
  }
  ojson merges = ojson::array();
  auto u16 = [&](size_t at) {
    return static_cast<int>(static_cast<unsigned char>(merges_bin[at])) |
           (static_cast<int>(static_cast<unsigned char>(merges_bin[at + 1])) << 8);
  };
  for (size_t at = 0; at < merges_bin.size(); at += 4) {
    const int a = u16(at), b = u16(at + 2);
    if (a >= kLlamaVocabSize || b >= kLlamaVocabSize || !vocab.contains(tokens[a] + tokens[b])) {
      return absl::InvalidArgumentError(
          absl::StrCat(js_path, ": merge #", at / 4, " is not in the vocabulary"));
    }
    merges.push_back(absl::StrCat(tokens[a], " ", tokens[b]));
  }

  ojson added = ojson::array();
  added.push_back(AddedTokenJson(0, "<unk>", false));
  added.push_back(AddedTokenJson(1, "<s>", false));
  // As Phi-3 ships it, </s> is not special and swallows the whitespace after it.
  added.push_back(AddedTokenJson(2, "</s>", /*rstrip=*/true, /*special=*/false));
  for (const Phi3Added& t : kPhi3Added) added.push_back(AddedTokenJson(t.id, t.content, t.rstrip));

  const std::string spm_space = "\xE2\x96\x81";
  ojson tok;
  tok["version"] = "1.0";
  tok["truncation"] = nullptr;
  tok["padding"] = nullptr;
  tok["added_tokens"] = added;
  tok["normalizer"] = {
      {"type", "Sequence"},
      {"normalizers",
       {{{"type", "Prepend"}, {"prepend", spm_space}},
        {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", spm_space}}}}};
  tok["pre_tokenizer"] = nullptr;
  // As in the Llama-2 and Phi-3 files: BOS here, and tokenizer_config's
  // add_bos_token=false turns it off for Phi-3 in transformers (and in
  // Tokenizer::FromDirectory).
  ojson bos_piece = {{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}};
  tok["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", {bos_piece, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
      {"pair",
       {bos_piece,
        {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
        {{"SpecialToken", {{"id", "<s>"}, {"type_id", 1}}}},
        {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
      {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}};
  tok["decoder"] = {{"type", "Sequence"},
                    {"decoders",
                     {{{"type", "Replace"}, {"pattern", {{"String", spm_space}}}, {"content", " "}},
                      {{"type", "ByteFallback"}},
                      {{"type", "Fuse"}},
                      {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
  tok["model"] = {{"type", "BPE"},
                  {"dropout", nullptr},
                  {"unk_token", "<unk>"},
                  {"continuing_subword_prefix", nullptr},
                  {"end_of_word_suffix", nullptr},
                  {"fuse_unk", true},
                  {"byte_fallback", true},
                  {"vocab", vocab},
                  {"merges", merges}};

  ojson decoder_map = ojson::object();
  for (const ojson& t : added) {
    ojson entry = t;
    entry.erase("id");
    decoder_map[std::to_string(t["id"].get<int>())] = entry;
  }
  ojson config;
  config["add_bos_token"] = false;
  config["add_eos_token"] = false;
  config["added_tokens_decoder"] = decoder_map;
  config["bos_token"] = "<s>";
  config["chat_template"] = kPhi3ChatTemplate;
  config["clean_up_tokenization_spaces"] = false;
  config["eos_token"] = "<|endoftext|>";
  config["model_max_length"] = 4096;
  config["pad_token"] = "<|endoftext|>";
  config["padding_side"] = "left";
  config["sp_model_kwargs"] = ojson::object();
  config["tokenizer_class"] = "LlamaTokenizer";
  config["unk_token"] = "<unk>";
  config["use_default_system_prompt"] = false;

  TF_RETURN_IF_ERROR(WriteAtomically(out_dir + "/tokenizer.json", tok.dump(2)));
  return WriteAtomically(out_dir + "/tokenizer_config.json", config.dump(2));
}

}  // namespace tunefleet::text
