// tunefleet-model: model-directory utilities.
//   tunefleet-model init-tiny --out DIR --seed N [--layers --hidden --heads ...]
//   tunefleet-model inspect DIR
//   tunefleet-model logits DIR --ids 1,2,3 [--adapter ADAPTER_DIR] --out FILE
//     (fp32 logits [tokens, vocab] of one forward, as tensor "logits" in a
//     safetensors file: for checks against other implementations)
//   tunefleet-model chat DIR --user TEXT [--system TEXT] [--adapter DIR]
//     (the greedy answer through the model library: a reference for serving)
#include <ATen/ATen.h>

#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/model/decoder.h"
#include "common/model/lora.h"
#include "common/model/safetensors.h"
#include "common/model/tiny_model.h"
#ifdef TUNEFLEET_HAVE_PHI3_TOKENIZER_FILES
#include "common/text/chat_template.h"
#include "common/model/generate.h"
#include "common/text/phi3_tokenizer_files.h"
#endif

ABSL_FLAG(std::string, out, "", "init-tiny: output directory; logits: output file");
ABSL_FLAG(uint64_t, seed, 0, "init-tiny: seed of the weights");
ABSL_FLAG(int64_t, layers, 2, "init-tiny: decoder layers");
ABSL_FLAG(int64_t, hidden, 64, "init-tiny: hidden size");
ABSL_FLAG(int64_t, heads, 4, "init-tiny: attention heads");
ABSL_FLAG(int64_t, kv_heads, 4, "init-tiny: key/value heads");
ABSL_FLAG(int64_t, intermediate, 128, "init-tiny: MLP size");
ABSL_FLAG(int64_t, vocab, 32064, "init-tiny: vocabulary (embedding rows)");
ABSL_FLAG(int64_t, max_position, 4096, "init-tiny: max_position_embeddings");
ABSL_FLAG(bool, long_context, false, "init-tiny: 128k-style longrope config");
ABSL_FLAG(std::string, dtype, "float32", "init-tiny: float32, bfloat16 or float16");
ABSL_FLAG(std::string, user, "", "chat: the user's message");
ABSL_FLAG(std::string, system, "", "chat: an optional system message");
ABSL_FLAG(double, lm_head_scale, 1.0,
          "init-tiny: multiply lm_head.weight (e.g. 40 for a model that LoRA can visibly teach)");
ABSL_FLAG(int64_t, original_max_position, 4096,
          "init-tiny: with --long_context, the pre-extension context");
ABSL_FLAG(std::string, tokenizer, "auto",
          "init-tiny: write Phi-3 tokenizer.json/tokenizer_config.json: yes, no, or auto (when the "
          "LLaMA-2 "
          "vocabulary is installed)");
ABSL_FLAG(std::string, llama_vocab, "",
          "init-tiny: llama-tokenizer-js vocabulary source (default: the text library's)");
ABSL_FLAG(std::string, ids, "", "logits: comma-separated token ids");
ABSL_FLAG(std::string, adapter, "", "logits: a PEFT adapter directory to apply");
ABSL_FLAG(uint64_t, max_shard_bytes, 5'000'000'000ull,
          "init-tiny: shard the weights above this size");

namespace {

int InitTiny() {
  tunefleet::model::TinyModelOptions o;
  o.seed = absl::GetFlag(FLAGS_seed);
  o.num_layers = absl::GetFlag(FLAGS_layers);
  o.hidden_size = absl::GetFlag(FLAGS_hidden);
  o.lm_head_scale = absl::GetFlag(FLAGS_lm_head_scale);
  o.num_heads = absl::GetFlag(FLAGS_heads);
  o.num_kv_heads = absl::GetFlag(FLAGS_kv_heads);
  o.intermediate_size = absl::GetFlag(FLAGS_intermediate);
  o.vocab_size = absl::GetFlag(FLAGS_vocab);
  o.max_position_embeddings = absl::GetFlag(FLAGS_max_position);
  o.long_context = absl::GetFlag(FLAGS_long_context);
  o.original_max_position_embeddings = absl::GetFlag(FLAGS_original_max_position);
  o.dtype = absl::GetFlag(FLAGS_dtype);
  o.max_shard_bytes = absl::GetFlag(FLAGS_max_shard_bytes);
  const std::string out = absl::GetFlag(FLAGS_out);
  if (out.empty()) {
    std::fprintf(stderr, "init-tiny: --out is required\n");
    return 2;
  }
  const std::string tokenizer = absl::GetFlag(FLAGS_tokenizer);
  if (tokenizer != "yes" && tokenizer != "no" && tokenizer != "auto") {
    std::fprintf(stderr, "init-tiny: --tokenizer must be yes, no or auto\n");
    return 2;
  }
  absl::Status s = tunefleet::model::WriteTinyPhi3(out, o);
  if (s.ok() && tokenizer != "no") {
#ifdef TUNEFLEET_HAVE_PHI3_TOKENIZER_FILES
    const std::string vocab = absl::GetFlag(FLAGS_llama_vocab);
    s = vocab.empty() ? tunefleet::text::WritePhi3TokenizerFiles(out)
                      : tunefleet::text::WritePhi3TokenizerFiles(vocab, out);
    if (!s.ok() && tokenizer == "auto" && absl::IsFailedPrecondition(s)) {
      std::fprintf(stderr, "init-tiny: no tokenizer files (%s)\n", s.ToString().c_str());
      s = absl::OkStatus();
    }
#else
    if (tokenizer == "yes") {
      s = absl::FailedPreconditionError("this build has no text library to write tokenizer files");
    }
#endif
  }
  if (!s.ok()) {
    std::fprintf(stderr, "init-tiny: %s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("wrote %s\n", out.c_str());
  return 0;
}

int Inspect(const std::string& dir) {
  auto config = tunefleet::model::LoadModelConfig(dir);
  if (!config.ok()) {
    std::fprintf(stderr, "inspect: %s\n", config.status().ToString().c_str());
    return 1;
  }
  auto weights = tunefleet::model::SafetensorsDir::Open(dir);
  if (!weights.ok()) {
    std::fprintf(stderr, "inspect: %s\n", weights.status().ToString().c_str());
    return 1;
  }
  std::printf(
      "model_type %s: %lld layers, hidden %lld, heads %lld/%lld, vocab %lld, %.1fM parameters\n",
      config->model_type.c_str(), static_cast<long long>(config->num_hidden_layers),
      static_cast<long long>(config->hidden_size),
      static_cast<long long>(config->num_attention_heads),
      static_cast<long long>(config->num_key_value_heads),
      static_cast<long long>(config->vocab_size),
      static_cast<double>(config->NumParameters()) / 1e6);
  for (const auto& file : weights->files()) {
    std::printf("%s (%llu bytes)\n", file->path().c_str(),
                static_cast<unsigned long long>(file->file_size()));
    for (const auto& t : file->header().tensors) {
      std::string shape;
      for (int64_t d : t.shape) shape += (shape.empty() ? "" : ", ") + std::to_string(d);
      std::printf("  %-60s %-5s [%s]\n", t.name.c_str(),
                  std::string(tunefleet::model::DTypeName(t.dtype)).c_str(), shape.c_str());
    }
  }
  auto decoder = tunefleet::model::Decoder::Load(dir);
  if (!decoder.ok()) {
    std::fprintf(stderr, "inspect: %s\n", decoder.status().ToString().c_str());
    return 1;
  }
  std::printf("loads: OK\n");
  return 0;
}

int Logits(const std::string& dir) {
  std::vector<int64_t> ids;
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_ids), ',', absl::SkipEmpty())) {
    int64_t id = 0;
    if (!absl::SimpleAtoi(part, &id)) {
      std::fprintf(stderr, "logits: bad id '%s'\n", std::string(part).c_str());
      return 2;
    }
    ids.push_back(id);
  }
  const std::string out = absl::GetFlag(FLAGS_out);
  if (ids.empty() || out.empty()) {
    std::fprintf(stderr, "logits: --ids and --out are required\n");
    return 2;
  }
  auto decoder = tunefleet::model::Decoder::Load(dir);
  if (!decoder.ok()) {
    std::fprintf(stderr, "logits: %s\n", decoder.status().ToString().c_str());
    return 1;
  }
  tunefleet::model::ForwardOptions options;
  std::optional<tunefleet::model::LoraAdapter> adapter;
  if (!absl::GetFlag(FLAGS_adapter).empty()) {
    auto a = tunefleet::model::LoraAdapter::Load(absl::GetFlag(FLAGS_adapter), decoder->config());
    if (!a.ok()) {
      std::fprintf(stderr, "logits: %s\n", a.status().ToString().c_str());
      return 1;
    }
    adapter = *std::move(a);
    options.adapter = &*adapter;
  }
  auto logits = decoder->Forward(at::tensor(ids, at::kLong).view({1, -1}), options);
  if (!logits.ok()) {
    std::fprintf(stderr, "logits: %s\n", logits.status().ToString().c_str());
    return 1;
  }
  absl::Status s = tunefleet::model::WriteSafetensors(out, {{"logits", (*logits)[0].detach()}});
  if (!s.ok()) {
    std::fprintf(stderr, "logits: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}

#ifdef TUNEFLEET_HAVE_PHI3_TOKENIZER_FILES
// Greedy answer of the model (and adapter) to one chat, through the model
// library's Generate: a reference that serving's answers can be held to.
int Chat(const std::string& dir) {
  auto decoder = tunefleet::model::Decoder::Load(dir);
  if (!decoder.ok()) {
    std::fprintf(stderr, "chat: %s\n", decoder.status().ToString().c_str());
    return 1;
  }
  auto chat = tunefleet::text::ChatTokenizer::Load(dir);
  if (!chat.ok()) {
    std::fprintf(stderr, "chat: %s\n", chat.status().ToString().c_str());
    return 1;
  }
  std::vector<tunefleet::text::ChatMessage> messages;
  if (!absl::GetFlag(FLAGS_system).empty()) messages.push_back({"system", absl::GetFlag(FLAGS_system), {}});
  messages.push_back({"user", absl::GetFlag(FLAGS_user), {}});
  auto prompt = chat->EncodePrompt(messages);
  if (!prompt.ok()) {
    std::fprintf(stderr, "chat: %s\n", prompt.status().ToString().c_str());
    return 1;
  }
  tunefleet::model::GenerationOptions g;
  g.max_new_tokens = 128;
  for (int32_t id : chat->StopIds()) g.stop_token_ids.push_back(id);
  for (int64_t id : decoder->config().eos_token_ids) g.stop_token_ids.push_back(id);
  std::optional<tunefleet::model::LoraAdapter> adapter;
  if (!absl::GetFlag(FLAGS_adapter).empty()) {
    auto a = tunefleet::model::LoraAdapter::Load(absl::GetFlag(FLAGS_adapter), decoder->config());
    if (!a.ok()) {
      std::fprintf(stderr, "chat: %s\n", a.status().ToString().c_str());
      return 1;
    }
    adapter = *std::move(a);
    g.adapter = &*adapter;
  }
  std::vector<std::vector<int64_t>> prompts = {{prompt->begin(), prompt->end()}};
  auto out = tunefleet::model::Generate(*decoder, prompts, g);
  if (!out.ok()) {
    std::fprintf(stderr, "chat: %s\n", out.status().ToString().c_str());
    return 1;
  }
  std::vector<int32_t> ids((*out)[0].tokens.begin(), (*out)[0].tokens.end());
  std::printf("%s\n", chat->tokenizer().Decode(ids).c_str());
  return 0;
}
#endif

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "tunefleet-model init-tiny --out DIR [--seed N --layers L --hidden H ...] | inspect DIR | "
      "logits DIR --ids 1,2,3 [--adapter DIR] --out FILE | "
      "chat DIR --user TEXT [--system TEXT] [--adapter DIR]");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() >= 2 && std::string(args[1]) == "init-tiny" && args.size() == 2)
    return InitTiny();
  if (args.size() == 3 && std::string(args[1]) == "inspect") return Inspect(args[2]);
  if (args.size() == 3 && std::string(args[1]) == "logits") return Logits(args[2]);
#ifdef TUNEFLEET_HAVE_PHI3_TOKENIZER_FILES
  if (args.size() == 3 && std::string(args[1]) == "chat") return Chat(args[2]);
#endif
  std::fprintf(stderr, "usage: %s\n", absl::ProgramUsageMessage().data());
  return 2;
}
