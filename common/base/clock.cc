#include "common/base/clock.h"

#include <chrono>
#include <thread>
#include <vector>

namespace tunefleet {
namespace {

absl::Duration SteadyNow() {
  return absl::FromChrono(std::chrono::steady_clock::now().time_since_epoch());
}

// The real clock's timers: one thread, started on first use, sleeping until
// the earliest deadline. The clock is a process-wide singleton that is never
// destroyed, so the thread is detached.
class RealClock final : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
  absl::Duration Monotonic() const override { return SteadyNow(); }

  TimerId AddTimer(absl::Duration after, std::function<void()> fn) override {
    absl::MutexLock lock(&mu_);
    if (!started_) {
      started_ = true;
      std::thread([this] { Loop(); }).detach();
    }
    const TimerId id = next_id_++;
    timers_.emplace(std::make_pair(SteadyNow() + std::max(after, absl::ZeroDuration()), id),
                    std::move(fn));
    return id;
  }

  bool CancelTimer(TimerId id) override {
    absl::MutexLock lock(&mu_);
    for (auto it = timers_.begin(); it != timers_.end(); ++it) {
      if (it->first.second == id) {
        timers_.erase(it);
        return true;
      }
    }
    return false;
  }

 private:
  void Loop() {
    for (;;) {
      std::function<void()> fn;
      {
        absl::MutexLock lock(&mu_);
        for (;;) {
          if (timers_.empty()) {
            mu_.Await(absl::Condition(
                +[](std::map<std::pair<absl::Duration, TimerId>, std::function<void()>>* t) {
                  return !t->empty();
                },
                &timers_));
            continue;
          }
          const absl::Duration wait = timers_.begin()->first.first - SteadyNow();
          if (wait <= absl::ZeroDuration()) break;
          // Wakes early when a timer is added (the earliest may change).
          const size_t count = timers_.size();
          auto changed = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return timers_.size() != count; };
          mu_.AwaitWithTimeout(absl::Condition(&changed), wait);
        }
        fn = std::move(timers_.begin()->second);
        timers_.erase(timers_.begin());
      }
      fn();
    }
  }

  absl::Mutex mu_;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  TimerId next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<std::pair<absl::Duration, TimerId>, std::function<void()>> timers_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace

Clock* Clock::Real() {
  static RealClock* clock = new RealClock();
  return clock;
}

Clock::TimerId ManualClock::AddTimer(absl::Duration after, std::function<void()> fn) {
  absl::MutexLock lock(&mu_);
  const TimerId id = next_id_++;
  timers_.emplace(std::make_pair(mono_ + std::max(after, absl::ZeroDuration()), id),
                  std::move(fn));
  return id;
}

bool ManualClock::CancelTimer(TimerId id) {
  absl::MutexLock lock(&mu_);
  for (auto it = timers_.begin(); it != timers_.end(); ++it) {
    if (it->first.second == id) {
      timers_.erase(it);
      return true;
    }
  }
  return false;
}

void ManualClock::Advance(absl::Duration d) {
  absl::Duration target;
  {
    absl::MutexLock lock(&mu_);
    if (d < absl::ZeroDuration()) d = absl::ZeroDuration();
    target = mono_ + d;
  }
  // Timers run one at a time, with the clock showing their deadline, and
  // outside the lock (a callback may read the clock or add timers).
  for (;;) {
    std::function<void()> fn;
    {
      absl::MutexLock lock(&mu_);
      if (timers_.empty() || timers_.begin()->first.first > target) {
        now_ += target - mono_;
        mono_ = target;
        return;
      }
      const absl::Duration due = timers_.begin()->first.first;
      now_ += due - mono_;
      mono_ = due;
      fn = std::move(timers_.begin()->second);
      timers_.erase(timers_.begin());
    }
    fn();
  }
}

}  // namespace tunefleet
