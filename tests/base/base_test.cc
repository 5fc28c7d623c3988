#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/base/clock.h"
#include "common/base/ids.h"
#include "common/base/scope.h"
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

TEST(Scope, ATenantSeesItsOwnThePlatformSeesAllAndNoTenantSeesNothing) {
  const Scope a = Scope::Tenant("acme");
  EXPECT_TRUE(a.Covers("acme"));
  EXPECT_FALSE(a.Covers("globex"));
  EXPECT_FALSE(a.Covers(""));
  EXPECT_EQ(a.ToString(), "tenant:acme");
  EXPECT_TRUE(Scope::Platform().Covers("acme"));
  EXPECT_TRUE(Scope::Platform().platform());
  // A missing tenant narrows: it never means "every tenant".
  const Scope none = Scope::Tenant("");
  EXPECT_FALSE(none.platform());
  EXPECT_FALSE(none.Covers("acme"));
  EXPECT_FALSE(none.Covers(""));
}

TEST(ManualClock, AdvancesOnlyWhenTold) {
  ManualClock clock;
  absl::Time t0 = clock.Now();
  EXPECT_EQ(clock.Now(), t0);
  clock.Advance(absl::Seconds(5));
  EXPECT_EQ(clock.Now() - t0, absl::Seconds(5));
  EXPECT_EQ(clock.Monotonic(), absl::Seconds(5));
  // A wall-clock step moves Now() only.
  clock.SetWallTime(t0 - absl::Hours(1));
  EXPECT_EQ(clock.Monotonic(), absl::Seconds(5));
}

TEST(ManualClock, TimersFireInDeadlineOrderWhenTimeIsAdvanced) {
  ManualClock clock;
  std::vector<std::string> fired;
  std::vector<absl::Duration> seen_at;
  auto timer = [&](const std::string& name) {
    return [&, name] {
      fired.push_back(name);
      seen_at.push_back(clock.Monotonic());
    };
  };
  clock.AddTimer(absl::Seconds(3), timer("lease"));
  clock.AddTimer(absl::Seconds(1), timer("heartbeat"));
  const Clock::TimerId cancelled = clock.AddTimer(absl::Seconds(2), timer("cancelled"));
  clock.AddTimer(absl::Seconds(1), timer("heartbeat-2"));  // same deadline: added order
  EXPECT_TRUE(clock.CancelTimer(cancelled));
  EXPECT_FALSE(clock.CancelTimer(cancelled));
  clock.Advance(absl::Milliseconds(999));
  EXPECT_TRUE(fired.empty());
  clock.Advance(absl::Milliseconds(1));
  EXPECT_EQ(fired, (std::vector<std::string>{"heartbeat", "heartbeat-2"}));
  // One long advance runs a timer that a due timer adds, at its own time.
  clock.AddTimer(absl::Seconds(1), [&] {
    fired.push_back("rearm");
    clock.AddTimer(absl::Seconds(1), timer("rearmed"));
  });
  clock.Advance(absl::Seconds(10));
  EXPECT_EQ(fired, (std::vector<std::string>{"heartbeat", "heartbeat-2", "rearm", "lease",
                                              "rearmed"}));
  EXPECT_EQ(seen_at.back(), absl::Seconds(3));  // "rearmed" saw 1 + 1 + 1 s
  EXPECT_EQ(clock.Monotonic(), absl::Seconds(11));
  EXPECT_EQ(clock.pending_timers(), 0u);
}

TEST(RealClock, TimerFiresAndCancelledOnesDoNot) {
  Clock* clock = Clock::Real();
  const absl::Duration start = clock->Monotonic();
  absl::Mutex mu;
  bool fired = false;
  bool cancelled_fired = false;
  const Clock::TimerId never = clock->AddTimer(absl::Milliseconds(30), [&] {
    absl::MutexLock lock(&mu);
    cancelled_fired = true;
  });
  EXPECT_TRUE(clock->CancelTimer(never));
  clock->AddTimer(absl::Milliseconds(50), [&] {
    absl::MutexLock lock(&mu);
    fired = true;
  });
  absl::MutexLock lock(&mu);
  EXPECT_TRUE(mu.AwaitWithTimeout(absl::Condition(&fired), absl::Seconds(30)));
  EXPECT_GE(clock->Monotonic() - start, absl::Milliseconds(50));
  EXPECT_FALSE(cancelled_fired);
}

}  // namespace
}  // namespace tunefleet
