// Pictures of a job's training curve: an SVG chart a person can open, and a
// one-line sparkline for the terminal. Pure functions (no I/O, no gRPC).
#pragma once

#include <string>
#include <vector>

namespace tunefleet::cli {

struct CurvePoint {
  double step = 0;
  double value = 0;
};

struct Series {
  std::string name;    // legend text, e.g. "train loss"
  std::string color;   // CSS color
  bool markers = false;  // draw each point (evaluation points)
  std::vector<CurvePoint> points;
};

// A chart with axes, ticks, grid, a legend and one polyline per series.
// Series with no points are left out of the chart and the legend.
std::string RenderSvgChart(const std::string& title, const std::string& x_label,
                           const std::vector<Series>& series, int width = 800, int height = 450);

// "▇▆▅▄▃▂▂▁" for the values, resampled to at most `width` characters.
std::string Sparkline(const std::vector<double>& values, int width = 40);

// Round tick values covering [lo, hi] (about `count` of them).
std::vector<double> NiceTicks(double lo, double hi, int count);

}  // namespace tunefleet::cli
