// The Scheduler's usage and cost (issue #9 item 7): deployment stretches and
// replica counters as they change, the job view's cost, and GetUsage. The
// arithmetic is usage.h's; this file gathers the inputs under the lock.
#include <algorithm>
#include <optional>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/base/ids.h"
#include "common/base/proto_time.h"
#include "common/base/status_macros.h"
#include "services/scheduler/model_ids.h"
#include "services/scheduler/scheduler.h"

namespace tunefleet::scheduler {
namespace {

// The base model a job's price is looked up by (a continued model's root).
std::string PricedBase(const std::string& base_model) {
  std::optional<FineTunedId> ft = ParseFineTunedId(base_model);
  return ft ? ft->base : base_model;
}

void SetCost(double amount, const Price& p, v1::Cost* out) {
  out->set_amount(amount);
  out->set_currency(p.currency);
}

}  // namespace

void Scheduler::AddJobCost(const std::string& id, const JobRecord& j, v1::Job* job) {
  auto ev = events_.find(id);
  if (ev == events_.end()) return;
  const double seconds =
      OverlapSeconds(RunningIntervals(ev->second), absl::InfinitePast(), options_.clock->Now()) *
      std::max(1, j.job.gpus());
  job->set_accelerator_seconds(seconds);
  if (const Price* p = options_.prices.Find(PricedBase(j.job.base_model()))) {
    job->set_cost(JobCost(*p, j.job.trained_tokens(), seconds));
    job->set_currency(p->currency);
  }
}

void Scheduler::DeploymentUsageChanged(Batch& b, absl::Time at, const std::string& dep_id,
                                       const DeploymentRecord* now) {
  const int64_t now_us = absl::ToUnixMicros(at);
  auto it = deployment_usage_.find(dep_id);
  if (it != deployment_usage_.end()) {
    for (const DeploymentUsageRecord& u : it->second) {
      if (u.end_us != 0) continue;
      DeploymentUsageRecord closed = u;
      closed.end_us = std::max(now_us, u.start_us + 1);
      b.deployment_usage.push_back(closed);
    }
  }
  if (now == nullptr) return;
  b.deployment_usage.push_back(DeploymentUsageRecord{
      NewId("dusage"), dep_id, now->tenant, now->deployment.model(), now->base_artifact,
      now->deployment.replicas(), now_us, 0});
}

void Scheduler::CountInference(Batch& b, absl::Time at, const std::string& replica_id,
                               const iv1::ReplicaDeploymentStatus& s) {
  if (s.requests() <= 0 && s.prompt_tokens() <= 0 && s.completion_tokens() <= 0) return;
  // Whose deployment: the live one, else its last stretch (deleted meanwhile).
  std::string tenant, base;
  auto d = deployments_.find(s.deployment_id());
  if (d != deployments_.end()) {
    tenant = d->second.tenant;
    base = d->second.base_artifact;
  } else {
    auto u = deployment_usage_.find(s.deployment_id());
    if (u == deployment_usage_.end() || u->second.empty()) return;  // never known
    tenant = u->second.back().tenant;
    base = u->second.back().base_model;
  }
  // The base: what this transaction already counted, else what is durable.
  UsageCounters prev;
  bool pending = false;
  for (const auto& c : b.replica_counters) {
    if (c.replica_id == replica_id && c.deployment_id == s.deployment_id()) {
      prev = c.counters;
      pending = true;
    }
  }
  if (!pending) {
    auto c = replica_counters_.find({replica_id, s.deployment_id()});
    if (c != replica_counters_.end()) prev = c->second;
  }
  // Counters only grow under one replica id (a restarted replica registers
  // anew): a smaller one is a stale report, and counts nothing.
  if (s.requests() < prev.requests || s.prompt_tokens() < prev.prompt_tokens ||
      s.completion_tokens() < prev.completion_tokens)
    return;
  UsageCounters delta{s.requests() - prev.requests, s.prompt_tokens() - prev.prompt_tokens,
                      s.completion_tokens() - prev.completion_tokens};
  if (delta.requests == 0 && delta.prompt_tokens == 0 && delta.completion_tokens == 0) return;
  b.replica_counters.push_back(ReplicaCounterRecord{
      replica_id, s.deployment_id(),
      UsageCounters{s.requests(), s.prompt_tokens(), s.completion_tokens()}});
  const int64_t minute = absl::ToUnixMicros(at) / 60000000 * 60000000;
  b.inference.push_back(InferenceDelta{s.deployment_id(), tenant, base, minute, delta});
}

absl::StatusOr<v1::UsageReport> Scheduler::GetUsage(const std::string& tenant, absl::Time start,
                                                    absl::Time end) {
  if (end <= start) return absl::InvalidArgumentError("end_time: must be after start_time");
  v1::UsageReport out;
  out.set_tenant(tenant);
  *out.mutable_start_time() = ToTimestamp(start);
  *out.mutable_end_time() = ToTimestamp(end);
  v1::UsageTotals* totals = out.mutable_totals();
  std::map<std::string, double> costs;  // by currency
  std::set<std::string> unpriced;
  auto price = [&](const std::string& base) -> const Price* {
    const Price* p = options_.prices.Find(base);
    if (p == nullptr) unpriced.insert(base);
    return p;
  };
  // Inference first (a store query, without the lock).
  TF_ASSIGN_OR_RETURN(std::vector<InferenceTotal> inference,
                      store_->InferenceUsage(tenant, absl::ToUnixMicros(start),
                                             absl::ToUnixMicros(end)));
  std::map<std::string, std::vector<const InferenceTotal*>> served;
  for (const auto& i : inference) served[i.deployment_id].push_back(&i);
  absl::MutexLock lock(&mu_);
  const absl::Time now = options_.clock->Now();
  const absl::Time until = std::min(end, now);
  for (const auto& [id, j] : jobs_) {
    if (j.tenant != tenant) continue;
    auto ev = events_.find(id);
    if (ev == events_.end()) continue;
    const std::vector<Interval> running = RunningIntervals(ev->second);
    const double gpus = std::max(1, j.job.gpus());
    const double seconds = OverlapSeconds(running, start, until) * gpus;
    const int64_t tokens = TrainedTokensIn(ev->second, j.job.trained_tokens(), start, end);
    if (seconds <= 0 && tokens <= 0) continue;
    v1::JobUsage* line = out.add_jobs();
    line->set_job_id(id);
    line->set_base_model(j.job.base_model());
    line->set_state(j.job.state());
    line->set_gpus(j.job.gpus());
    line->set_trained_tokens(tokens);
    line->set_accelerator_seconds(seconds);
    line->set_estimated_trained_tokens(j.estimated_tokens);
    if (const Price* p = price(PricedBase(j.job.base_model()))) {
      SetCost(JobCost(*p, tokens, seconds), *p, line->mutable_cost());
      SetCost(JobCost(*p, j.estimated_tokens, 0), *p, line->mutable_estimated_cost());
      const double all = OverlapSeconds(running, absl::InfinitePast(), now) * gpus;
      SetCost(JobCost(*p, j.job.trained_tokens(), all), *p, line->mutable_job_cost());
      costs[p->currency] += line->cost().amount();
    }
    totals->set_trained_tokens(totals->trained_tokens() + tokens);
    totals->set_accelerator_seconds(totals->accelerator_seconds() + seconds);
  }
  std::set<std::string> ids;
  for (const auto& [id, list] : deployment_usage_) ids.insert(id);
  for (const auto& [id, list] : served) ids.insert(id);
  for (const std::string& id : ids) {
    double hours = 0;
    std::string model, base;
    auto u = deployment_usage_.find(id);
    if (u != deployment_usage_.end()) {
      for (const DeploymentUsageRecord& r : u->second) {
        if (r.tenant != tenant) continue;
        const Interval i{absl::FromUnixMicros(r.start_us),
                         r.end_us == 0 ? absl::InfiniteFuture() : absl::FromUnixMicros(r.end_us)};
        const double s = OverlapSeconds({i}, start, until);
        if (s <= 0) continue;
        hours += s / 3600.0 * r.replicas;
        model = r.model;
        base = r.base_model;
      }
    }
    UsageCounters counters;
    auto sv = served.find(id);
    if (sv != served.end()) {
      for (const InferenceTotal* i : sv->second) {
        counters.requests += i->counters.requests;
        counters.prompt_tokens += i->counters.prompt_tokens;
        counters.completion_tokens += i->counters.completion_tokens;
        if (base.empty()) base = i->base_model;
      }
    }
    if (hours <= 0 && counters.requests <= 0 && counters.prompt_tokens <= 0 &&
        counters.completion_tokens <= 0)
      continue;
    v1::DeploymentUsage* line = out.add_deployments();
    line->set_deployment_id(id);
    line->set_model(model);
    line->set_base_model(base);
    line->set_replica_hours(hours);
    line->set_requests(counters.requests);
    line->set_prompt_tokens(counters.prompt_tokens);
    line->set_completion_tokens(counters.completion_tokens);
    auto live = deployments_.find(id);
    line->set_deleted(live == deployments_.end() || live->second.tenant != tenant);
    if (const Price* p = price(base)) {
      SetCost(DeploymentCost(*p, hours, counters.prompt_tokens, counters.completion_tokens), *p,
              line->mutable_cost());
      costs[p->currency] += line->cost().amount();
    }
    totals->set_replica_hours(totals->replica_hours() + hours);
    totals->set_requests(totals->requests() + counters.requests);
    totals->set_prompt_tokens(totals->prompt_tokens() + counters.prompt_tokens);
    totals->set_completion_tokens(totals->completion_tokens() + counters.completion_tokens);
  }
  for (const auto& [currency, amount] : costs) {
    v1::Cost* c = totals->add_costs();
    c->set_currency(currency);
    c->set_amount(amount);
  }
  for (const auto& b : unpriced) totals->add_unpriced_base_models(b);
  return out;
}

}  // namespace tunefleet::scheduler
