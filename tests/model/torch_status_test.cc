// The one libtorch exception boundary: out of memory is RESOURCE_EXHAUSTED
// (callers shrink a batch or make a request wait), other errors INTERNAL.
#include "common/model/torch_status.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <new>

#include "absl/status/statusor.h"
#include "tests/testing/status_matchers.h"

namespace tunefleet::model {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;
using ::tunefleet::testing::StatusIs;

TEST(CatchTorch, OutOfMemoryIsResourceExhausted) {
  absl::Status s = internal::CatchTorch("forward", []() -> absl::Status {
    TORCH_CHECK_WITH(OutOfMemoryError, false, "CUDA out of memory. Tried to allocate 2.00 GiB");
    return absl::OkStatus();
  });
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kResourceExhausted,
                          AllOf(HasSubstr("forward: out of memory"), HasSubstr("2.00 GiB"),
                                Not(HasSubstr("Exception raised from")))));
  absl::StatusOr<int> v = internal::CatchTorch("alloc", []() -> absl::StatusOr<int> {
    throw std::bad_alloc();
  });
  EXPECT_THAT(v.status(), StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("alloc")));
}

TEST(CatchTorch, OtherErrorsAreInternalWithoutBacktrace) {
  absl::Status s = internal::CatchTorch("matmul", []() -> absl::Status {
    TORCH_CHECK(false, "shapes cannot be multiplied");
    return absl::OkStatus();
  });
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInternal,
                          AllOf(HasSubstr("matmul: shapes cannot be multiplied"),
                                Not(HasSubstr("Exception raised from")))));
  EXPECT_TRUE(internal::CatchTorch("ok", [] { return absl::OkStatus(); }).ok());
}

}  // namespace
}  // namespace tunefleet::model
