#include <set>

#include <gtest/gtest.h>

#include "common/base/clock.h"
#include "common/base/ids.h"
#include "common/base/sha256.h"
#include "common/base/status_macros.h"
#include "tests/testing/status_matchers.h"

namespace tunefleet {
namespace {

using ::tunefleet::testing::StatusIs;

TEST(Ids, PrefixedAndUnique) {
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {
    std::string id = NewId("file");
    EXPECT_TRUE(HasIdPrefix(id, "file")) << id;
    EXPECT_FALSE(HasIdPrefix(id, "ftjob")) << id;
    EXPECT_EQ(id.size(), 5u + 24u);
    seen.insert(id);
  }
  EXPECT_EQ(seen.size(), 1000u);
  EXPECT_FALSE(HasIdPrefix("file-", "file"));
  EXPECT_FALSE(HasIdPrefix("file-../x", "file"));
  EXPECT_FALSE(HasIdPrefix("filex-abc", "file"));
}

TEST(Sha256, KnownVectors) {
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  Sha256 h;
  h.Update("a");
  h.Update("bc");
  EXPECT_EQ(h.PeekHexDigest(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(h.HexDigest(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

absl::StatusOr<int> Half(int x) {
  if (x % 2) return absl::InvalidArgumentError("odd");
  return x / 2;
}
absl::StatusOr<int> Quarter(int x) {
  TF_ASSIGN_OR_RETURN(int h, Half(x));
  TF_ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

TEST(StatusMacros, PropagateErrors) {
  EXPECT_EQ(*Quarter(8), 2);
  EXPECT_THAT(Quarter(6), StatusIs(absl::StatusCode::kInvalidArgument, "odd"));
}

TEST(ManualClock, AdvancesOnlyWhenTold) {
  ManualClock clock;
  absl::Time t0 = clock.Now();
  EXPECT_EQ(clock.Now(), t0);
  clock.Advance(absl::Seconds(5));
  EXPECT_EQ(clock.Now() - t0, absl::Seconds(5));
}

}  // namespace
}  // namespace tunefleet
