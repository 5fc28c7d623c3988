// Resource ids with a type prefix: "file-…", "ftjob-…", "ckpt-…", "dep-…".
#pragma once

#include <string>

#include "absl/strings/string_view.h"

namespace tunefleet {

// Returns `<prefix>-<24 random lowercase base32 characters>` (120 bits from
// the OS random source). Thread-safe.
std::string NewId(absl::string_view prefix);

// True when `id` is `<prefix>-` followed by 1..64 characters of [a-z0-9_-].
bool HasIdPrefix(absl::string_view id, absl::string_view prefix);

}  // namespace tunefleet
