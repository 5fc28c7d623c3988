// The worker's data pieces that need no model: splitting a step's units
// among ranks by tokens, and a dataset over examples it holds itself.
#include "services/trainer/worker/data.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

namespace tunefleet::trainer {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

TEST(BalanceAcrossRanksTest, LongestFirstToTheLeastLoadedRank) {
  // 5 -> r0, 4 -> r1, 3 -> r1 (7), 3 -> r0 (8), 3 -> r1 (10).
  const auto parts = BalanceAcrossRanks({5, 4, 3, 3, 3}, 2);
  ASSERT_EQ(parts.size(), 2u);
  EXPECT_THAT(parts[0], ElementsAre(0, 3));
  EXPECT_THAT(parts[1], ElementsAre(1, 2, 4));
  // One rank takes everything, in order; more ranks than units leaves some idle.
  EXPECT_THAT(BalanceAcrossRanks({1, 9, 4}, 1)[0], ElementsAre(0, 1, 2));
  const auto idle = BalanceAcrossRanks({7, 7}, 3);
  EXPECT_THAT(idle[0], ElementsAre(0));
  EXPECT_THAT(idle[1], ElementsAre(1));
  EXPECT_THAT(idle[2], IsEmpty());
}

// Chat-like lengths: every unit on exactly one rank, each rank's units
// ascending, and the loads within one unit's cost of each other (the greedy
// rule's bound), far tighter than the parts a random split gives.
TEST(BalanceAcrossRanksTest, EveryUnitOnceAndLoadsWithinTheLongestUnit) {
  std::mt19937_64 rng(3);
  std::lognormal_distribution<double> len(4.5, 0.7);
  for (int64_t world : {2, 3, 8}) {
    for (int trial = 0; trial < 50; ++trial) {
      std::vector<int64_t> costs(32);
      for (int64_t& c : costs) c = std::clamp<int64_t>(static_cast<int64_t>(len(rng)), 8, 512);
      const auto parts = BalanceAcrossRanks(costs, world);
      ASSERT_EQ(static_cast<int64_t>(parts.size()), world);
      std::vector<int64_t> seen, loads;
      for (const auto& p : parts) {
        EXPECT_TRUE(std::is_sorted(p.begin(), p.end()));
        int64_t load = 0;
        for (int64_t u : p) load += costs[static_cast<size_t>(u)];
        loads.push_back(load);
        seen.insert(seen.end(), p.begin(), p.end());
      }
      std::sort(seen.begin(), seen.end());
      std::vector<int64_t> all(costs.size());
      std::iota(all.begin(), all.end(), 0);
      EXPECT_EQ(seen, all);
      const auto [lo, hi] = std::minmax_element(loads.begin(), loads.end());
      EXPECT_LE(*hi - *lo, *std::max_element(costs.begin(), costs.end()));
      EXPECT_EQ(parts, BalanceAcrossRanks(costs, world));  // the same on every rank
    }
  }
}

TEST(DatasetTest, FromOwnedHoldsItsExamples) {
  std::vector<Dataset::Owned> ex(2);
  ex[0].ids = {5, 6, 7, 8};
  ex[0].mask = {0, 0, 1, 1};
  ex[0].label = 1;
  ex[1].ids = {9, 10};
  ex[1].mask = {1, 1};
  Dataset d = Dataset::FromOwned(std::move(ex), /*pairs=*/true);
  Dataset moved = std::move(d);  // the examples' pointers survive a move
  ASSERT_EQ(moved.size(), 2);
  EXPECT_TRUE(moved.pairs());
  EXPECT_EQ(moved.at(0).length, 4);
  EXPECT_EQ(moved.at(0).trained, 2);  // tokens after the first with a label
  EXPECT_EQ(moved.at(0).label, 1);
  EXPECT_EQ(moved.at(0).ids[3], 8);
  EXPECT_EQ(moved.at(1).length, 2);
  EXPECT_EQ(moved.at(1).trained, 1);
  EXPECT_EQ(moved.at(1).label, -1);
  EXPECT_EQ(moved.at(1).mask[0], 1);
  EXPECT_EQ(moved.total_tokens(), 6);
  EXPECT_EQ(moved.total_trained(), 3);
}

}  // namespace
}  // namespace tunefleet::trainer
