// Injected time (Envoy's rule): code that depends on time takes a Clock so
// that tests control it instead of sleeping.
//
// Two kinds of time: Now() is wall time, for timestamps people read and
// for records that outlive the process; Monotonic() never jumps (NTP steps,
// a changed time zone), for intervals, timeouts and leases. Timers run a
// callback once a monotonic duration has passed: on the real clock from one
// clock thread, on the manual clock inside Advance() — so lease and
// heartbeat tests move time and see the timers fire, without sleeping.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tunefleet {

class Clock {
 public:
  using TimerId = uint64_t;
  virtual ~Clock() = default;
  // Wall time.
  virtual absl::Time Now() const = 0;
  // Time since an arbitrary origin that never goes back.
  virtual absl::Duration Monotonic() const = 0;
  // Runs `fn` once `after` (monotonic) has passed. Callbacks must be quick
  // and must not call CancelTimer on the timer that is running.
  virtual TimerId AddTimer(absl::Duration after, std::function<void()> fn) = 0;
  // True when the timer was still pending: it will not run.
  virtual bool CancelTimer(TimerId id) = 0;
  // The process-wide real clock.
  static Clock* Real();
};

// A clock that moves only when told to; Advance runs the timers that come
// due, in deadline order (then in the order they were added), on the calling
// thread. Thread-safe.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(absl::Time start = absl::FromUnixSeconds(1700000000)) : now_(start) {}
  absl::Time Now() const override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  absl::Duration Monotonic() const override {
    absl::MutexLock lock(&mu_);
    return mono_;
  }
  TimerId AddTimer(absl::Duration after, std::function<void()> fn) override;
  bool CancelTimer(TimerId id) override;
  // Moves both clocks forward by `d` (negative durations are ignored) and
  // runs every timer due by then, including those that due timers add.
  void Advance(absl::Duration d);
  // Sets wall time only (a clock step): monotonic time and timers stay.
  void SetWallTime(absl::Time t) {
    absl::MutexLock lock(&mu_);
    now_ = t;
  }
  size_t pending_timers() const {
    absl::MutexLock lock(&mu_);
    return timers_.size();
  }

 private:
  mutable absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
  absl::Duration mono_ ABSL_GUARDED_BY(mu_) = absl::ZeroDuration();
  TimerId next_id_ ABSL_GUARDED_BY(mu_) = 1;
  // (deadline, id) -> callback; ids grow, so equal deadlines keep order.
  std::map<std::pair<absl::Duration, TimerId>, std::function<void()>> timers_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace tunefleet
