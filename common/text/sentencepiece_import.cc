#include "common/text/sentencepiece_import.h"

#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <tuple>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "common/text/sentencepiece_bridge.h"

namespace tunefleet::text {
namespace {

using ojson = nlohmann::ordered_json;

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

}  // namespace

absl::StatusOr<std::string> SentencePieceModelToTokenizerJson(const std::string& model_path,
                                                              bool add_bos) {
  internal::SentencePieceVocab sp;
  std::string error;
  if (!internal::LoadSentencePieceVocab(model_path, &sp, &error)) {
    return absl::InvalidArgumentError(
        absl::StrCat(model_path, ": not a sentencepiece model: ", error));
  }
  const int n = static_cast<int>(sp.pieces.size());
  absl::flat_hash_map<std::string, int> ids;
  for (int id = 0; id < n; ++id) ids.emplace(sp.pieces[id], id);
  // LlamaConverter's merges: every split of every piece into two pieces of
  // the vocabulary, ordered by the merged piece's score (highest first), then
  // by piece id, then by the ids of the halves.
  struct MergeEntry {
    float score;
    int piece, left, right;
  };
  std::vector<MergeEntry> merges;
  for (int id = 0; id < n; ++id) {
    if (sp.types[id] != internal::SentencePieceType::kNormal) continue;
    const std::string& piece = sp.pieces[id];
    for (size_t cut = 1; cut < piece.size(); ++cut) {
      if ((static_cast<unsigned char>(piece[cut]) & 0xC0) == 0x80) continue;  // inside a code point
      auto l = ids.find(piece.substr(0, cut)), r = ids.find(piece.substr(cut));
      if (l != ids.end() && r != ids.end())
        merges.push_back({sp.scores[id], id, l->second, r->second});
    }
  }
  if (merges.empty()) {
    return absl::UnimplementedError(absl::StrCat(model_path, ": no BPE merges (a unigram model?)"));
  }
  std::stable_sort(merges.begin(), merges.end(), [](const MergeEntry& a, const MergeEntry& b) {
    return std::make_tuple(-a.score, a.piece, a.left, a.right) <
           std::make_tuple(-b.score, b.piece, b.left, b.right);
  });
  bool byte_fallback = false;
  ojson vocab = ojson::object();
  for (int id = 0; id < n; ++id) {
    vocab[sp.pieces[id]] = id;
    byte_fallback = byte_fallback || sp.types[id] == internal::SentencePieceType::kByte;
  }
  ojson merge_list = ojson::array();
  for (const MergeEntry& m : merges) merge_list.push_back({sp.pieces[m.left], sp.pieces[m.right]});

  ojson added = ojson::array();
  for (int id = 0; id < n; ++id) {
    if (sp.types[id] != internal::SentencePieceType::kUnknown &&
        sp.types[id] != internal::SentencePieceType::kControl) {
      continue;
    }
    added.push_back({{"id", id},
                     {"content", sp.pieces[id]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  const std::string spm_space = "\xE2\x96\x81";
  ojson tok;
  tok["version"] = "1.0";
  tok["added_tokens"] = added;
  tok["normalizer"] = {
      {"type", "Sequence"},
      {"normalizers",
       {{{"type", "Prepend"}, {"prepend", spm_space}},
        {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", spm_space}}}}};
  tok["pre_tokenizer"] = nullptr;
  ojson single = ojson::array();
  ojson special = ojson::object();
  if (add_bos && sp.bos_id >= 0) {
    const std::string& bos = sp.pieces[sp.bos_id];
    single.push_back({{"SpecialToken", {{"id", bos}, {"type_id", 0}}}});
    special[bos] = {{"id", bos}, {"ids", {sp.bos_id}}, {"tokens", {bos}}};
  }
  single.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
  tok["post_processor"] = {
      {"type", "TemplateProcessing"}, {"single", single}, {"special_tokens", special}};
  tok["decoder"] = {{"type", "Sequence"},
                    {"decoders",
                     {{{"type", "Replace"}, {"pattern", {{"String", spm_space}}}, {"content", " "}},
                      {{"type", "ByteFallback"}},
                      {{"type", "Fuse"}},
                      {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
  tok["model"] = {{"type", "BPE"},
                  {"dropout", nullptr},
                  {"unk_token", sp.unk_id >= 0 ? ojson(sp.pieces[sp.unk_id]) : ojson()},
                  {"fuse_unk", true},
                  {"byte_fallback", byte_fallback},
                  {"vocab", vocab},
                  {"merges", merge_list}};
  return tok.dump();
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerFromDirectory(const std::string& dir) {
  if (Exists(dir + "/tokenizer.json") || !Exists(dir + "/tokenizer.model"))
    return Tokenizer::FromDirectory(dir);
  bool add_bos = true;
  std::ifstream config(dir + "/tokenizer_config.json");
  if (config) {
    std::stringstream ss;
    ss << config.rdbuf();
    const nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("add_bos_token") && j["add_bos_token"].is_boolean()) {
      add_bos = j["add_bos_token"].get<bool>();
    }
  }
  TF_ASSIGN_OR_RETURN(std::string json,
                      SentencePieceModelToTokenizerJson(dir + "/tokenizer.model", add_bos));
  return Tokenizer::FromJson(json, dir + "/tokenizer.model");
}

}  // namespace tunefleet::text
