// Progress of a long transfer (uploads, model downloads) on standard error:
// a bar redrawn in place when it is a terminal; plain lines otherwise (one
// per tenth of the way and one at the end), so logs and scripts get a
// readable record instead of carriage returns.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

#include "absl/time/time.h"

namespace tunefleet::cli {

// Transfers this small finish in one chunk: no progress is shown for them.
inline constexpr int64_t kProgressMinBytes = 1 << 20;

// "1.5 MiB", "312 B".
std::string FormatBytes(int64_t bytes);

class ProgressBar {
 public:
  // `total` bytes expected (0: unknown). `tty`: whether `out` is a terminal
  // (the default asks isatty(2)).
  ProgressBar(std::string label, int64_t total, std::ostream* out, bool tty);
  ProgressBar(std::string label, int64_t total);
  void Update(int64_t done);
  // The last line ("label: 100% 1.5 MiB in 2s, 0.8 MiB/s").
  void Finish();

 private:
  std::string Line(int64_t done) const;
  std::string label_;
  int64_t total_;
  std::ostream* out_;
  bool tty_;
  absl::Time start_;
  absl::Time last_draw_ = absl::InfinitePast();
  int last_tenth_ = -1;
  int64_t done_ = 0;
  bool finished_ = false;
};

}  // namespace tunefleet::cli
