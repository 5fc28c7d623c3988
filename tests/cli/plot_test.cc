#include "cli/plot.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace tunefleet::cli {
namespace {

// Checks that every element is closed in order and every attribute quoted:
// enough to know a browser will open the file.
bool WellFormedXml(const std::string& s, std::string* why) {
  std::vector<std::string> stack;
  size_t i = 0;
  while ((i = s.find('<', i)) != std::string::npos) {
    size_t end = s.find('>', i);
    if (end == std::string::npos) return *why = "unterminated tag", false;
    std::string tag = s.substr(i + 1, end - i - 1);
    i = end + 1;
    if (tag.empty()) return *why = "empty tag", false;
    if (tag[0] == '/') {
      if (stack.empty() || stack.back() != tag.substr(1)) return *why = "mismatched </" + tag, false;
      stack.pop_back();
      continue;
    }
    size_t quotes = 0;
    for (char c : tag) quotes += c == '"';
    if (quotes % 2 != 0) return *why = "unbalanced quotes in <" + tag, false;
    if (tag.back() == '/') continue;
    stack.push_back(tag.substr(0, tag.find(' ')));
  }
  if (!stack.empty()) return *why = "unclosed <" + stack.back(), false;
  return true;
}

TEST(PlotTest, ChartHasAxesLegendAndOneLinePerSeries) {
  Series train{"train loss", "#1f77b4", false, {}}, valid{"validation loss", "#d62728", true, {}};
  for (int step = 1; step <= 40; ++step) train.points.push_back({double(step), 3.0 / step});
  valid.points = {{10, 0.5}, {20, 0.3}, {40, 0.2}};
  Series empty{"unused", "#000", false, {}};
  std::string svg = RenderSvgChart("Loss <job>", "step", {train, valid, empty});
  std::string why;
  ASSERT_TRUE(WellFormedXml(svg, &why)) << why;
  EXPECT_THAT(svg, testing::StartsWith("<svg xmlns=\"http://www.w3.org/2000/svg\""));
  EXPECT_THAT(svg, testing::HasSubstr("Loss &lt;job&gt;"));  // escaped title
  EXPECT_THAT(svg, testing::HasSubstr(">train loss<"));
  EXPECT_THAT(svg, testing::HasSubstr(">validation loss<"));
  EXPECT_THAT(svg, testing::Not(testing::HasSubstr(">unused<")));
  size_t polylines = 0, circles = 0;
  for (size_t p = 0; (p = svg.find("<polyline", p)) != std::string::npos; ++p) ++polylines;
  for (size_t p = 0; (p = svg.find("<circle", p)) != std::string::npos; ++p) ++circles;
  EXPECT_EQ(polylines, 2u);
  EXPECT_EQ(circles, 3u);  // evaluation points are marked
  EXPECT_THAT(svg, testing::HasSubstr(">step<"));
}

TEST(PlotTest, NoPointsStillRendersAValidChart) {
  std::string why;
  EXPECT_TRUE(WellFormedXml(RenderSvgChart("empty", "step", {}), &why)) << why;
}

TEST(PlotTest, NiceTicksAreRoundAndCoverTheRange) {
  EXPECT_THAT(NiceTicks(0, 100, 5), testing::ElementsAre(0, 20, 40, 60, 80, 100));
  auto t = NiceTicks(0.13, 2.91, 6);
  ASSERT_FALSE(t.empty());
  EXPECT_GE(t.front(), 0.13);
  EXPECT_LE(t.back(), 2.91);
  EXPECT_DOUBLE_EQ(t[1] - t[0], 0.5);
}

TEST(PlotTest, SparklineFallsWithTheLoss) {
  EXPECT_EQ(Sparkline({4, 3, 2, 1}), "█▆▃▁");
  EXPECT_EQ(Sparkline({}), "");
  EXPECT_EQ(Sparkline({2, 2}), "▄▄");
  // Resampled to the width.
  std::vector<double> many(1000);
  for (int i = 0; i < 1000; ++i) many[i] = 1000 - i;
  std::string s = Sparkline(many, 10);
  EXPECT_EQ(s.size(), 10u * std::string("█").size());
}

}  // namespace
}  // namespace tunefleet::cli
