#include "services/serving/engine/contract.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tunefleet::serving {

absl::StatusOr<ServeContract> ParseContract(const std::string& json, const std::string& source) {
  nlohmann::json j = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  }
  ServeContract c;
  auto str = [&](const char* key, std::string* out) -> absl::Status {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return absl::OkStatus();
    if (!it->is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": \"", key, "\" must be a string"));
    }
    *out = it->get<std::string>();
    return absl::OkStatus();
  };
  absl::Status s = str("base_model", &c.base_model);
  if (s.ok() && c.base_model.empty()) s = str("base_model_id", &c.base_model);
  if (s.ok()) s = str("tokenizer_sha256", &c.tokenizer_sha256);
  if (s.ok()) s = str("chat_template", &c.chat_template);
  if (!s.ok()) return s;
  if (auto it = j.find("stop_token_ids"); it != j.end() && !it->is_null()) {
    if (!it->is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": \"stop_token_ids\" must be an array of integers"));
    }
    for (const auto& v : *it) {
      if (!v.is_number_integer()) {
        return absl::InvalidArgumentError(
            absl::StrCat(source, ": \"stop_token_ids\" must be an array of integers"));
      }
      c.stop_token_ids.push_back(v.get<int64_t>());
    }
  }
  if (s = str("task", &c.task); !s.ok()) return s;
  if (c.classification()) {
    auto names = j.find("label_names");
    if (names == j.end() || !names->is_array() || names->size() < 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": a classification contract needs \"label_names\" (at least 2 strings)"));
    }
    for (const auto& v : *names) {
      if (!v.is_string() || v.get<std::string>().empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(source, ": \"label_names\" must be non-empty strings"));
      }
      c.label_names.push_back(v.get<std::string>());
    }
    if (auto h = j.find("classification_head"); h != j.end() && h->is_object()) {
      if (auto f = h->find("file"); f != h->end() && f->is_string()) c.head_file = f->get<std::string>();
      if (auto t = h->find("tensor"); t != h->end() && t->is_string())
        c.head_tensor = t->get<std::string>();
      if (c.head_file.empty() || c.head_file.find('/') != std::string::npos || c.head_file == "..") {
        return absl::InvalidArgumentError(absl::StrCat(
            source, ": \"classification_head.file\" must be a file name in the adapter directory"));
      }
    }
  }
  if (auto it = j.find("generation"); it != j.end() && it->is_object()) {
    if (auto t = it->find("temperature"); t != it->end() && t->is_number())
      c.generation.temperature = t->get<double>();
    if (auto t = it->find("top_p"); t != it->end() && t->is_number())
      c.generation.top_p = t->get<double>();
    if (auto t = it->find("max_tokens"); t != it->end() && t->is_number_integer())
      c.generation.max_tokens = t->get<int64_t>();
  }
  return c;
}

absl::StatusOr<std::optional<ServeContract>> ReadContract(const std::string& adapter_dir) {
  const std::string path = adapter_dir + "/" + kContractFileName;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return std::optional<ServeContract>();
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::UnavailableError(absl::StrCat(path, ": cannot be read"));
  std::stringstream buf;
  buf << in.rdbuf();
  auto c = ParseContract(buf.str(), path);
  if (!c.ok()) return c.status();
  return std::optional<ServeContract>(*std::move(c));
}

absl::Status CheckContract(const ServeContract& contract, const BaseIdentity& base,
                           const std::string& what) {
  auto mismatch = [&](absl::string_view field, absl::string_view theirs, absl::string_view ours) {
    return absl::FailedPreconditionError(
        absl::StrCat("adapter ", what, " does not match the served base: its contract's ", field,
                     " is \"", theirs, "\" but the base's is \"", ours, "\""));
  };
  if (!contract.base_model.empty() && !base.model_id.empty() &&
      contract.base_model != base.model_id) {
    return mismatch("base_model", contract.base_model, base.model_id);
  }
  if (!contract.tokenizer_sha256.empty() && !base.tokenizer_sha256.empty() &&
      contract.tokenizer_sha256 != base.tokenizer_sha256) {
    return mismatch("tokenizer_sha256", contract.tokenizer_sha256, base.tokenizer_sha256);
  }
  if (!contract.chat_template.empty() && !base.chat_template.empty() &&
      contract.chat_template != base.chat_template) {
    return mismatch("chat_template", contract.chat_template, base.chat_template);
  }
  if (!contract.stop_token_ids.empty() && !base.stop_token_ids.empty()) {
    std::vector<int64_t> a = contract.stop_token_ids, b = base.stop_token_ids;
    std::sort(a.begin(), a.end());
    a.erase(std::unique(a.begin(), a.end()), a.end());
    std::sort(b.begin(), b.end());
    b.erase(std::unique(b.begin(), b.end()), b.end());
    if (a != b) {
      return mismatch("stop_token_ids", absl::StrJoin(a, ","), absl::StrJoin(b, ","));
    }
  }
  return absl::OkStatus();
}

}  // namespace tunefleet::serving
