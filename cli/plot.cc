#include "cli/plot.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tunefleet::cli {
namespace {

std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string Num(double v) {
  if (std::fabs(v) >= 1000 || v == std::floor(v)) return absl::StrFormat("%.0f", v);
  if (std::fabs(v) >= 10) return absl::StrFormat("%.1f", v);
  return absl::StrFormat("%.2f", v);
}

}  // namespace

std::vector<double> NiceTicks(double lo, double hi, int count) {
  if (!(hi > lo)) hi = lo + 1;
  double raw = (hi - lo) / std::max(1, count);
  double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0}) {
    step = m * mag;
    if (step >= raw) break;
  }
  std::vector<double> ticks;
  for (double t = std::ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step) {
    ticks.push_back(std::fabs(t) < step * 1e-9 ? 0.0 : t);
  }
  return ticks;
}

std::string RenderSvgChart(const std::string& title, const std::string& x_label,
                           const std::vector<Series>& series, int width, int height) {
  const double left = 70, right = 20, top = 40, bottom = 55;
  double x0 = std::numeric_limits<double>::infinity(), x1 = -x0, y0 = x0, y1 = -x0;
  for (const auto& s : series) {
    for (const auto& p : s.points) {
      if (!std::isfinite(p.value) || !std::isfinite(p.step)) continue;
      x0 = std::min(x0, p.step);
      x1 = std::max(x1, p.step);
      y0 = std::min(y0, p.value);
      y1 = std::max(y1, p.value);
    }
  }
  if (!std::isfinite(x0)) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  if (x1 <= x0) x1 = x0 + 1;
  if (y1 <= y0) y1 = y0 + 1;
  double pad = (y1 - y0) * 0.05;
  y0 -= pad;
  y1 += pad;
  std::vector<double> xt = NiceTicks(x0, x1, 8), yt = NiceTicks(y0, y1, 6);
  const double pw = width - left - right, ph = height - top - bottom;
  auto X = [&](double v) { return left + (v - x0) / (x1 - x0) * pw; };
  auto Y = [&](double v) { return top + (1 - (v - y0) / (y1 - y0)) * ph; };

  std::string svg = absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n"
      "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
      "<text x=\"%d\" y=\"24\" text-anchor=\"middle\" font-size=\"16\">%s</text>\n",
      width, height, width, height, width / 2, Escape(title));
  for (double t : xt) {
    if (t < x0 || t > x1) continue;
    absl::StrAppendFormat(&svg,
                          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                          "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n",
                          X(t), top, X(t), top + ph, X(t), top + ph + 18, Num(t));
  }
  for (double t : yt) {
    if (t < y0 || t > y1) continue;
    absl::StrAppendFormat(&svg,
                          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                          "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n",
                          left, Y(t), left + pw, Y(t), left - 6, Y(t) + 4, Num(t));
  }
  absl::StrAppendFormat(&svg,
                        "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
                        "stroke=\"black\"/>\n"
                        "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%s</text>\n",
                        left, top, pw, ph, left + pw / 2, height - 12, Escape(x_label));
  int legend = 0;
  for (const auto& s : series) {
    if (s.points.empty()) continue;
    std::string pts;
    for (const auto& p : s.points) {
      if (!std::isfinite(p.value)) continue;
      absl::StrAppendFormat(&pts, "%.1f,%.1f ", X(p.step), Y(p.value));
    }
    absl::StrAppendFormat(&svg,
                          "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" "
                          "points=\"%s\"/>\n",
                          s.color, pts);
    if (s.markers) {
      for (const auto& p : s.points) {
        if (!std::isfinite(p.value)) continue;
        absl::StrAppendFormat(&svg, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"%s\"/>\n",
                              X(p.step), Y(p.value), s.color);
      }
    }
    double ly = top + 16 + 18 * legend++;
    absl::StrAppendFormat(&svg,
                          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
                          "stroke-width=\"3\"/><text x=\"%.1f\" y=\"%.1f\">%s</text>\n",
                          left + pw - 150, ly, left + pw - 125, ly, s.color, left + pw - 118,
                          ly + 4, Escape(s.name));
  }
  svg += "</svg>\n";
  return svg;
}

std::string Sparkline(const std::vector<double>& values, int width) {
  static const char* kBars[] = {"▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"};
  std::vector<double> v;
  int n = static_cast<int>(values.size());
  if (n == 0 || width <= 0) return "";
  int m = std::min(n, width);
  for (int i = 0; i < m; ++i) {
    // Mean of the values this character stands for.
    int a = i * n / m, b = std::max(a + 1, (i + 1) * n / m);
    double sum = 0;
    for (int k = a; k < b; ++k) sum += values[k];
    v.push_back(sum / (b - a));
  }
  double lo = *std::min_element(v.begin(), v.end()), hi = *std::max_element(v.begin(), v.end());
  std::string out;
  for (double x : v) {
    int level = hi > lo ? static_cast<int>(std::lround((x - lo) / (hi - lo) * 7)) : 3;
    out += kBars[std::clamp(level, 0, 7)];
  }
  return out;
}

}  // namespace tunefleet::cli
