#include "services/scheduler/usage.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/errors/error_details.h"

namespace tunefleet::scheduler {
namespace {

absl::Time EventTime(const v1::JobEvent& e) {
  return absl::FromUnixSeconds(e.created_at().seconds()) + absl::Nanoseconds(e.created_at().nanos());
}

bool HoldsSlots(v1::JobState s) {
  return s == v1::JOB_STATE_RUNNING || s == v1::JOB_STATE_PAUSING ||
         s == v1::JOB_STATE_CANCELLING;
}

bool Inside(absl::Time t, absl::Time start, absl::Time end) { return t >= start && t < end; }

}  // namespace

absl::StatusOr<PriceTable> PriceTable::Parse(absl::string_view text, absl::string_view source) {
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("price table ", source, ": ", what));
  };
  nlohmann::json doc = nlohmann::json::parse(text.begin(), text.end(), nullptr,
                                             /*allow_exceptions=*/false);
  if (doc.is_discarded()) return bad("not valid JSON");
  if (!doc.is_object()) return bad("must be a JSON object keyed by base model id");
  PriceTable table;
  for (const auto& [model, entry] : doc.items()) {
    if (model.empty()) return bad("an empty base model id");
    if (!entry.is_object()) return bad(absl::StrCat("'", model, "' must be an object"));
    Price p;
    for (const auto& [key, value] : entry.items()) {
      if (key == "currency") {
        if (!value.is_string() || value.get<std::string>().empty())
          return bad(absl::StrCat("'", model, "'.currency must be a non-empty string"));
        p.currency = value.get<std::string>();
        continue;
      }
      double* field = key == "per_1m_trained_tokens"      ? &p.per_1m_trained_tokens
                      : key == "per_accelerator_hour"     ? &p.per_accelerator_hour
                      : key == "per_replica_hour"         ? &p.per_replica_hour
                      : key == "per_1m_prompt_tokens"     ? &p.per_1m_prompt_tokens
                      : key == "per_1m_completion_tokens" ? &p.per_1m_completion_tokens
                                                          : nullptr;
      if (field == nullptr) return bad(absl::StrCat("'", model, "'.", key, " is not a known key"));
      if (!value.is_number() || !std::isfinite(value.get<double>()) || value.get<double>() < 0)
        return bad(absl::StrCat("'", model, "'.", key, " must be a number >= 0"));
      *field = value.get<double>();
    }
    if (p.currency.empty()) return bad(absl::StrCat("'", model, "'.currency is required"));
    table.prices_[model] = p;
  }
  return table;
}

absl::StatusOr<PriceTable> PriceTable::LoadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("price table ", path, " cannot be read"));
  std::stringstream ss;
  ss << in.rdbuf();
  return Parse(ss.str(), path);
}

const Price* PriceTable::Find(const std::string& base_model) const {
  auto it = prices_.find(base_model);
  if (it == prices_.end()) it = prices_.find("*");
  return it == prices_.end() ? nullptr : &it->second;
}

double JobCost(const Price& p, int64_t trained_tokens, double accelerator_seconds) {
  return static_cast<double>(trained_tokens) / 1e6 * p.per_1m_trained_tokens +
         accelerator_seconds / 3600.0 * p.per_accelerator_hour;
}

double DeploymentCost(const Price& p, double replica_hours, int64_t prompt_tokens,
                      int64_t completion_tokens) {
  return replica_hours * p.per_replica_hour +
         static_cast<double>(prompt_tokens) / 1e6 * p.per_1m_prompt_tokens +
         static_cast<double>(completion_tokens) / 1e6 * p.per_1m_completion_tokens;
}

double OverlapSeconds(const std::vector<Interval>& intervals, absl::Time start, absl::Time end) {
  double total = 0;
  for (const Interval& i : intervals) {
    absl::Time a = std::max(i.start, start), b = std::min(i.end, end);
    if (b > a) total += absl::ToDoubleSeconds(b - a);
  }
  return total;
}

std::vector<Interval> RunningIntervals(const std::vector<v1::JobEvent>& events) {
  std::vector<Interval> out;
  bool open = false;
  for (const v1::JobEvent& e : events) {
    if (e.payload_case() != v1::JobEvent::kState) continue;
    const bool holds = HoldsSlots(e.state());
    if (holds && !open) {
      out.push_back(Interval{EventTime(e), absl::InfiniteFuture()});
      open = true;
    } else if (!holds && open) {
      out.back().end = EventTime(e);
      open = false;
    }
  }
  return out;
}

int64_t TrainedTokensIn(const std::vector<v1::JobEvent>& events, int64_t final_tokens,
                        absl::Time start, absl::Time end) {
  int64_t high = 0, in = 0;
  absl::Time last_state = absl::InfinitePast();
  for (const v1::JobEvent& e : events) {
    if (e.payload_case() == v1::JobEvent::kState) last_state = EventTime(e);
    if (e.payload_case() != v1::JobEvent::kMetrics) continue;
    const int64_t n = e.metrics().trained_tokens();
    if (n <= high) continue;
    if (Inside(EventTime(e), start, end)) in += n - high;
    high = n;
  }
  if (final_tokens > high && Inside(last_state, start, end)) in += final_tokens - high;
  return in;
}

absl::StatusOr<Period> CheckPeriod(bool has_start, int64_t start_seconds, int32_t start_nanos,
                                   bool has_end, int64_t end_seconds, int32_t end_nanos,
                                   absl::Time now) {
  // google.protobuf.Timestamp's range: 0001-01-01 .. 9999-12-31.
  constexpr int64_t kMin = -62135596800, kMax = 253402300799;
  auto valid = [](int64_t s, int32_t n) { return s >= kMin && s <= kMax && n >= 0 && n < 1000000000; };
  if (!has_start) return errors::FieldError("start_time", "required");
  if (!valid(start_seconds, start_nanos))
    return errors::FieldError("start_time", "not a valid timestamp");
  if (has_end && !valid(end_seconds, end_nanos))
    return errors::FieldError("end_time", "not a valid timestamp");
  Period p;
  p.start = absl::FromUnixSeconds(start_seconds) + absl::Nanoseconds(start_nanos);
  p.end = has_end ? absl::FromUnixSeconds(end_seconds) + absl::Nanoseconds(end_nanos) : now;
  if (p.end <= p.start) {
    return errors::FieldError("end_time", has_end ? "must be after start_time"
                                                  : "unset means now, which is not after start_time");
  }
  return p;
}

}  // namespace tunefleet::scheduler
