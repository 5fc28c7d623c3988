// IsOkAndHolds(m): a StatusOr that is OK and whose value matches m (Debian's
// Abseil has no status matchers; tests/testing has IsOk and StatusIs only).
#pragma once

#include <gmock/gmock.h>

namespace tunefleet::testing {

MATCHER_P(IsOkAndHolds, matcher, "is OK and holds a value that matches") {
  if (!arg.ok()) {
    *result_listener << "status is " << arg.status();
    return false;
  }
  return ::testing::ExplainMatchResult(matcher, *arg, result_listener);
}

}  // namespace tunefleet::testing
