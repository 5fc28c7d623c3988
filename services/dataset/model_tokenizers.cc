#include "services/dataset/model_tokenizers.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/errors/error_details.h"
#include "absl/strings/str_cat.h"
#include "common/base/sha256.h"
#include "common/base/status_macros.h"
#include "common/text/chat_template.h"
#include "common/text/tokenizer.h"

namespace tunefleet::dataset {

struct ModelDirTokenizerProvider::Loaded {
  std::unique_ptr<text::Tokenizer> tokenizer;
  std::unique_ptr<text::ChatTemplate> chat_template;
  std::string id;
};

namespace {

bool ValidModelName(const std::string& name) {
  if (name.empty() || name.size() > 128 || name == "." || name == "..") return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string ReadAll(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

absl::StatusOr<ModelTokenizer> ModelDirTokenizerProvider::Get(const std::string& base_model) {
  if (!ValidModelName(base_model)) {
    return errors::InvalidField("base_model", absl::StrCat("base_model '", base_model,
                                                   "' is not a model name ([A-Za-z0-9._-])"));
  }
  std::shared_ptr<const Loaded> loaded;
  {
    absl::MutexLock lock(&mu_);
    auto it = loaded_.find(base_model);
    if (it != loaded_.end()) loaded = it->second;
  }
  if (loaded == nullptr) {
    const std::filesystem::path dir = std::filesystem::path(models_dir_) / base_model;
    if (models_dir_.empty() || !std::filesystem::is_directory(dir)) {
      return errors::InvalidField("base_model", absl::StrCat("base_model '", base_model,
                                                     "' is not a model this service knows"));
    }
    auto fresh = std::make_shared<Loaded>();
    TF_ASSIGN_OR_RETURN(fresh->tokenizer, text::Tokenizer::FromDirectory(dir.string()));
    TF_ASSIGN_OR_RETURN(text::ChatTemplate tmpl,
                        text::ChatTemplate::FromModelDirectory(dir.string()));
    fresh->chat_template = std::make_unique<text::ChatTemplate>(std::move(tmpl));
    // Shard sets are cached by this id: it changes whenever the files do.
    fresh->id = Sha256Hex(absl::StrCat(ReadAll(dir / "tokenizer.json"), "\n",
                                       ReadAll(dir / "tokenizer_config.json")));
    absl::MutexLock lock(&mu_);
    loaded = loaded_.try_emplace(base_model, std::move(fresh)).first->second;
  }
  ModelTokenizer out;
  out.id = loaded->id;
  out.tokenize = [loaded](const Example& ex) -> absl::StatusOr<TokenizedExample> {
    std::vector<text::ChatMessage> messages;
    if (ex.messages.empty()) {
      // Classification examples train as a one-turn chat: the text asks, the
      // label answers.
      messages.push_back({"user", ex.text, std::nullopt});
      messages.push_back({"assistant", ex.label, std::nullopt});
    } else {
      for (const ChatMessage& m : ex.messages) messages.push_back({m.role, m.content, m.weight});
    }
    TF_ASSIGN_OR_RETURN(text::TokenizedChat chat,
                        text::TokenizeChat(*loaded->tokenizer, *loaded->chat_template, messages));
    return TokenizedExample{std::move(chat.ids), std::move(chat.loss_mask)};
  };
  return out;
}

}  // namespace tunefleet::dataset
