// libFuzzer target: any byte string as config.json.
#include <cstddef>
#include <cstdint>

#include "absl/strings/string_view.h"
#include "common/model/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::string_view text(reinterpret_cast<const char*>(data), size);
  auto config = tunefleet::model::ParseModelConfig(text, "fuzz/config.json");
  if (config.ok()) {
    // Parsed configs are internally consistent.
    if (config->head_dim <= 0 || config->num_attention_heads % config->num_key_value_heads != 0 ||
        config->rotary_dim % 2 != 0 || config->rotary_dim > config->head_dim) {
      __builtin_trap();
    }
  }
  return 0;
}
