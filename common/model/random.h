// The model library's seeded generator is the project's one (common/base).
#pragma once

#include "common/base/random.h"

namespace tunefleet::model {
using ::tunefleet::SplitMix64;
}  // namespace tunefleet::model
