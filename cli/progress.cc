#include "cli/progress.h"

#include <unistd.h>

#include <algorithm>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace tunefleet::cli {

std::string FormatBytes(int64_t bytes) {
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  const char* units[] = {"KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes) / 1024;
  int u = 0;
  while (v >= 1024 && u < 3) {
    v /= 1024;
    ++u;
  }
  return absl::StrFormat("%.1f %s", v, units[u]);
}

ProgressBar::ProgressBar(std::string label, int64_t total, std::ostream* out, bool tty)
    : label_(std::move(label)), total_(total), out_(out), tty_(tty), start_(absl::Now()) {}

ProgressBar::ProgressBar(std::string label, int64_t total)
    : ProgressBar(std::move(label), total, &std::cerr, isatty(STDERR_FILENO) != 0) {}

std::string ProgressBar::Line(int64_t done) const {
  double seconds = absl::ToDoubleSeconds(absl::Now() - start_);
  double rate = seconds > 0 ? static_cast<double>(done) / seconds : 0;
  std::string speed = rate > 0 ? absl::StrCat(FormatBytes(static_cast<int64_t>(rate)), "/s") : "";
  if (total_ <= 0) return absl::StrCat(label_, ": ", FormatBytes(done), " ", speed);
  int percent = static_cast<int>(100 * std::min(done, total_) / total_);
  std::string eta;
  if (rate > 0 && done < total_) {
    eta = absl::StrFormat(" ETA %ds", static_cast<int>((total_ - done) / rate + 0.5));
  }
  if (!tty_) {
    return absl::StrFormat("%s: %d%% (%s of %s) %s%s", label_, percent, FormatBytes(done),
                           FormatBytes(total_), speed, eta);
  }
  const int width = 24;
  int filled = width * percent / 100;
  return absl::StrFormat("%s [%s%s] %3d%% %s/%s %s%s", label_, std::string(filled, '#'),
                         std::string(width - filled, '.'), percent, FormatBytes(done),
                         FormatBytes(total_), speed, eta);
}

void ProgressBar::Update(int64_t done) {
  done_ = done;
  if (tty_) {
    absl::Time now = absl::Now();
    if (now - last_draw_ < absl::Milliseconds(100)) return;
    last_draw_ = now;
    *out_ << "\r\033[K" << Line(done) << std::flush;
    return;
  }
  // Plain lines: one per tenth of the way (unknown totals: none until the end).
  if (total_ <= 0) return;
  int tenth = static_cast<int>(10 * std::min(done, total_) / total_);
  if (tenth <= last_tenth_ || tenth >= 10) return;
  last_tenth_ = tenth;
  if (tenth == 0) return;
  *out_ << Line(done) << "\n" << std::flush;
}

void ProgressBar::Finish() {
  if (finished_) return;
  finished_ = true;
  double seconds = absl::ToDoubleSeconds(absl::Now() - start_);
  std::string line = absl::StrFormat("%s: %s%s in %.1fs", label_, total_ > 0 ? "100% " : "",
                                     FormatBytes(done_), seconds);
  *out_ << (tty_ ? "\r\033[K" : "") << line << "\n" << std::flush;
}

}  // namespace tunefleet::cli
