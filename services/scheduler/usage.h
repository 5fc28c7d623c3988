// Usage and cost: the price table (--price_table) and the pure arithmetic that
// turns a job's event history, a deployment's lifetime and the replicas'
// token counts into usage inside a period [start, end). No gRPC, no store.
//
// Price table: a JSON object keyed by base model id (a folder of
// --models_dir; a fine-tuned model is priced by its root base), "*" for any
// base model not listed. Each entry:
//   {"currency": "USD",                  required, non-empty
//    "per_1m_trained_tokens": 4.0,       per million trained tokens
//    "per_accelerator_hour": 2.5,        per slot-hour a job's attempts hold
//    "per_replica_hour": 1.2,            per desired replica-hour of a deployment
//    "per_1m_prompt_tokens": 0.2,        inference, per million prompt tokens
//    "per_1m_completion_tokens": 0.6}    inference, per million completion tokens
// Every price is optional (0), finite and >= 0; an unknown key is an error
// (a typo must not silently price at 0).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "tunefleet/v1/jobs.pb.h"

namespace tunefleet::scheduler {

struct Price {
  std::string currency;
  double per_1m_trained_tokens = 0;
  double per_accelerator_hour = 0;
  double per_replica_hour = 0;
  double per_1m_prompt_tokens = 0;
  double per_1m_completion_tokens = 0;
};

class PriceTable {
 public:
  PriceTable() = default;
  // INVALID_ARGUMENT naming `source` and the entry/key on a bad table.
  static absl::StatusOr<PriceTable> Parse(absl::string_view json, absl::string_view source);
  static absl::StatusOr<PriceTable> LoadFile(const std::string& path);
  // The entry for `base_model`, else "*", else nullptr (unpriced).
  const Price* Find(const std::string& base_model) const;
  bool empty() const { return prices_.empty(); }

 private:
  std::map<std::string, Price> prices_;
};

// A job's trained-token and accelerator cost; a deployment's replica and
// inference cost.
double JobCost(const Price& p, int64_t trained_tokens, double accelerator_seconds);
double DeploymentCost(const Price& p, double replica_hours, int64_t prompt_tokens,
                      int64_t completion_tokens);

struct Interval {
  absl::Time start;
  absl::Time end;  // absl::InfiniteFuture(): still open
};

// Seconds of `intervals` inside [start, end).
double OverlapSeconds(const std::vector<Interval>& intervals, absl::Time start, absl::Time end);

// When a job held its slots, from its state events: from entering RUNNING
// until it entered a state other than running, pausing or cancelling (its
// ranks are gone). One interval per attempt; the last is open while running.
std::vector<Interval> RunningIntervals(const std::vector<v1::JobEvent>& events);

// Trained tokens a job reported inside [start, end): each metrics point adds
// what it reports above the highest count reported before it (an attempt
// resumed from a checkpoint re-reports tokens already counted; its
// accelerator time is charged instead), and `final_tokens` (Job.trained_tokens)
// adds its remainder at the job's last state change. Over all time the sum is
// max(final_tokens, the highest point).
int64_t TrainedTokensIn(const std::vector<v1::JobEvent>& events, int64_t final_tokens,
                        absl::Time start, absl::Time end);

// A period from the API: start required; end unset = now; end > start.
// INVALID_ARGUMENT naming start_time or end_time.
struct Period {
  absl::Time start;
  absl::Time end;
};
absl::StatusOr<Period> CheckPeriod(bool has_start, int64_t start_seconds, int32_t start_nanos,
                                   bool has_end, int64_t end_seconds, int32_t end_nanos,
                                   absl::Time now);

}  // namespace tunefleet::scheduler
