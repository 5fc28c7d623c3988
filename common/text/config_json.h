// Reading Hugging Face tokenizer_config.json fields shared by the tokenizer
// and the chat templates. Internal to the text library (nlohmann::json).
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace tunefleet::text {

// A special token in tokenizer_config.json: "text" or {"content": "text",
// ...}; empty when absent or of another shape.
std::string ConfigToken(const nlohmann::json& config, const char* key);

}  // namespace tunefleet::text
