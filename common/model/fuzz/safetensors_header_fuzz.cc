// libFuzzer target: any byte string as a whole safetensors file.
#include <cstddef>
#include <cstdint>

#include "absl/strings/string_view.h"
#include "common/model/safetensors_header.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto header = tunefleet::model::ParseSafetensorsHeader(bytes, size, "fuzz.safetensors");
  if (header.ok()) {
    // Whatever parses must describe bytes inside the file.
    for (const auto& t : header->tensors) {
      if (header->data_offset + t.end > size || t.begin > t.end) __builtin_trap();
    }
  }
  return 0;
}
