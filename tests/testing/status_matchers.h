// The status matchers Debian's Abseil lacks: IsOk(), StatusIs() and
// IsOkAndHolds().
#pragma once

#include <ostream>

#include <gmock/gmock.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tunefleet::testing {

inline const absl::Status& GetStatus(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

MATCHER(IsOk, "is OK") {
  const absl::Status& s = GetStatus(arg);
  if (!s.ok()) *result_listener << "status is " << s;
  return s.ok();
}

// StatusIs(code) or StatusIs(code, message_matcher).
MATCHER_P2(StatusIs, code, message_matcher,
           "has code " + absl::StatusCodeToString(code)) {
  const absl::Status& s = GetStatus(arg);
  *result_listener << "status is " << s;
  return s.code() == code &&
         ::testing::Matches(::testing::Matcher<std::string>(message_matcher))(
             std::string(s.message()));
}

MATCHER_P(StatusIs, code, "has code " + absl::StatusCodeToString(code)) {
  const absl::Status& s = GetStatus(arg);
  *result_listener << "status is " << s;
  return s.code() == code;
}

// A StatusOr that is OK and whose value matches `matcher`.
MATCHER_P(IsOkAndHolds, matcher, "is OK and holds a value that matches") {
  if (!arg.ok()) {
    *result_listener << "status is " << arg.status();
    return false;
  }
  return ::testing::ExplainMatchResult(matcher, *arg, result_listener);
}

}  // namespace tunefleet::testing

#define TF_ASSERT_OK(expr) ASSERT_THAT((expr), ::tunefleet::testing::IsOk())
#define TF_EXPECT_OK(expr) EXPECT_THAT((expr), ::tunefleet::testing::IsOk())
// `TF_ASSERT_OK_AND_ASSIGN(auto x, MakeX());`
#define TF_ASSERT_OK_AND_ASSIGN(lhs, rexpr) \
  TF_ASSERT_OK_AND_ASSIGN_IMPL_(TF_TEST_CONCAT_(tf_test_so_, __LINE__), lhs, rexpr)
#define TF_TEST_CONCAT_INNER_(a, b) a##b
#define TF_TEST_CONCAT_(a, b) TF_TEST_CONCAT_INNER_(a, b)
#define TF_ASSERT_OK_AND_ASSIGN_IMPL_(so, lhs, rexpr) \
  auto so = (rexpr);                                  \
  ASSERT_THAT(so.status(), ::tunefleet::testing::IsOk()); \
  lhs = std::move(so).value()
