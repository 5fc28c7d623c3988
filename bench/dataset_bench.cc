// Dataset pipeline throughput on one core: validate + tokenize (Phi-3 chat
// template, real 32000-token LLaMA-2 vocabulary) + write shards, beside two
// baselines measured in the same run on the same bytes: JSON parsing alone
// (simdjson, what the validator parses with) and the tokenizer's Encode
// alone over the messages' text. Prints MB/s, the ratios and peak memory.
//
//   dataset_bench [--mb 32] [--seed 1]
#include <simdjson.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/base/random.h"
#include "common/store/directory_artifact_store.h"
#include "common/store/memory_artifact_store.h"
#include "common/text/chat_template.h"
#include "common/text/phi3_tokenizer_files.h"
#include "common/text/tokenizer.h"
#include "services/dataset/jsonl_validator.h"
#include "services/dataset/model_tokenizers.h"
#include "services/dataset/shards.h"

namespace tunefleet::dataset {
namespace {

// Sentences in several scripts; examples mix them with numbers and emoji.
const char* kPhrases[] = {
    "How do I rotate the API keys for my team without downtime?",
    "Open Settings, then Security, and create the new key before revoking the old one.",
    "¿Puedo exportar los registros de auditoría de los últimos noventa días?",
    "Sí: en Auditoría, elige el intervalo y pulsa Exportar; recibirás un archivo CSV.",
    "Quelle est la différence entre le plan Équipe et le plan Entreprise ?",
    "Der Vertrag verlängert sich automatisch, sofern er nicht gekündigt wird.",
    "请帮我总结一下这份季度报告的要点。",
    "第三季度收入增长了百分之十二，主要来自新客户。",
    "東京の天気は明日どうなりますか？",
    "Привет! Как настроить двухфакторную аутентификацию?",
    "The invoice total is 1,284.50 EUR, due on 2026-12-01 (ref. #A-77213).",
    "Great, thanks! 🎉 That fixed it 👍",
    "    indented code:\n\tfor i in range(10):\n\t\tprint(i)",
};

std::string Phrase(SplitMix64& rng, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) {
    absl::StrAppend(&s, i ? " " : "", kPhrases[rng.Below(sizeof(kPhrases) / sizeof(*kPhrases))]);
  }
  return s;
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default: out += c;
    }
  }
  return out + "\"";
}

std::string MakeFile(size_t bytes, uint64_t seed) {
  SplitMix64 rng(seed);
  std::string out;
  while (out.size() < bytes) {
    absl::StrAppend(&out, R"({"messages": [{"role": "system", "content": )",
                    JsonString(Phrase(rng, 1)), R"(}, {"role": "user", "content": )",
                    JsonString(Phrase(rng, 1 + rng.Below(3))),
                    R"(}, {"role": "assistant", "content": )",
                    JsonString(Phrase(rng, 2 + rng.Below(6))), "}]}\n");
  }
  return out;
}

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// kB of a /proc/self/status line ("VmHWM:", "VmRSS:").
long StatusKb(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field, 0) == 0) return std::stol(line.substr(field.size()));
  }
  return -1;
}

// Resets the peak resident size (VmHWM) to the current one (Linux >= 4.0).
void ResetPeakRss() { std::ofstream("/proc/self/clear_refs") << "5"; }

int Main(int argc, char** argv) {
  size_t mb = 32;
  uint64_t seed = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--mb") mb = std::strtoul(argv[i + 1], nullptr, 10);
    if (flag == "--seed") seed = std::strtoull(argv[i + 1], nullptr, 10);
  }
  const std::filesystem::path tmp =
      std::filesystem::temp_directory_path() / absl::StrCat("tunefleet-bench-", getpid());
  std::filesystem::create_directories(tmp / "models/phi-3");
  if (absl::Status s = text::WritePhi3TokenizerFiles((tmp / "models/phi-3").string()); !s.ok()) {
    std::fprintf(stderr, "cannot write the Phi-3 tokenizer (run scripts/install-deps): %s\n",
                 s.ToString().c_str());
    return 1;
  }
  const std::string file = MakeFile(mb << 20, seed);
  const double file_mb = static_cast<double>(file.size()) / (1 << 20);
  std::printf("dataset_bench: %.1f MB of multilingual chat JSONL, one core\n", file_mb);

  // Baseline 1: JSON parsing alone, line by line.
  auto t0 = std::chrono::steady_clock::now();
  simdjson::dom::parser parser;
  size_t objects = 0;
  {
    std::string line;
    line.reserve(1 << 20);
    size_t start = 0;
    while (start < file.size()) {
      size_t nl = file.find('\n', start);
      line.assign(file, start, nl - start);
      line.reserve(line.size() + simdjson::SIMDJSON_PADDING);
      simdjson::dom::element doc;
      if (!parser.parse(line.data(), line.size(), false).get(doc)) ++objects;
      start = nl + 1;
    }
  }
  const double json_s = Seconds(t0);

  // Baseline 2: the tokenizer's Encode alone over every message's text.
  auto tokenizer = text::Tokenizer::FromDirectory((tmp / "models/phi-3").string());
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "%s\n", tokenizer.status().ToString().c_str());
    return 1;
  }
  std::vector<std::string> texts;
  {
    JsonlValidator v({.min_examples = 1}, [&](const Example& ex) {
      for (const ChatMessage& m : ex.messages) texts.push_back(m.content);
    });
    v.Feed(file);
    (void)v.Finish();
  }
  t0 = std::chrono::steady_clock::now();
  size_t encoded = 0;
  for (const std::string& t : texts) encoded += (*tokenizer)->Encode(t, false).size();
  const double encode_s = Seconds(t0);

  // Validation alone.
  t0 = std::chrono::steady_clock::now();
  {
    JsonlValidator v({.min_examples = 1});
    v.Feed(file);
    (void)v.Finish();
  }
  const double validate_s = Seconds(t0);

  // The pipeline: validate + tokenize with the chat template + write shards
  // to a directory store (real files, fsync at commit).
  ModelDirTokenizerProvider provider((tmp / "models").string());
  auto model = provider.Get("phi-3");
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", model.status().ToString().c_str());
    return 1;
  }
  auto store = store::DirectoryArtifactStore::Open((tmp / "store").string());
  store::MemoryArtifactStore source;
  (void)source.Put("file", file);
  auto reader = source.OpenReader("file", 0);
  texts.clear();
  texts.shrink_to_fit();
  ResetPeakRss();
  const long rss_before_kb = StatusKb("VmRSS:");
  t0 = std::chrono::steady_clock::now();
  auto manifest = PrepareShardSet(**store, **reader, "shard-bench", model->tokenize, 4096);
  const double pipeline_s = Seconds(t0);
  const long pipeline_peak_mib = (StatusKb("VmHWM:") - rss_before_kb) / 1024;
  if (!manifest.ok()) {
    std::fprintf(stderr, "%s\n", manifest.status().ToString().c_str());
    return 1;
  }

  std::printf("%-42s %10s\n", "stage (one core)", "MB/s");
  std::printf("%-42s %10.1f\n", "JSON parse alone (simdjson DOM)", file_mb / json_s);
  std::printf("%-42s %10.1f\n", "tokenizer Encode alone (message text)", file_mb / encode_s);
  std::printf("%-42s %10.1f\n", "validation alone", file_mb / validate_s);
  std::printf("%-42s %10.1f\n", "validate + tokenize + shard (pipeline)", file_mb / pipeline_s);
  std::printf("pipeline throughput / JSON parse = %.3f; pipeline throughput / Encode = %.3f\n",
              json_s / pipeline_s, encode_s / pipeline_s);
  std::printf("examples %lld, tokens %lld (Encode alone: %zu); pipeline peak memory growth %ld MiB\n",
              static_cast<long long>(manifest->examples), static_cast<long long>(manifest->tokens),
              encoded, pipeline_peak_mib);
  std::filesystem::remove_all(tmp);
  return 0;
}

}  // namespace
}  // namespace tunefleet::dataset

int main(int argc, char** argv) { return tunefleet::dataset::Main(argc, argv); }
