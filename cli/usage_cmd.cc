// tunefleet usage: what the caller's tenant used in a period and what it
// costs (UsageService.GetUsage, priced by the scheduler's --price_table).
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "cli/commands.h"
#include "tunefleet/v1/usage.grpc.pb.h"

namespace tunefleet::cli {
namespace {

struct UsageArgs {
  ClientFlags flags;
  std::string start, end, since = "720h", tenant;
};

google::protobuf::Timestamp Stamp(absl::Time t) {
  google::protobuf::Timestamp ts;
  ts.set_seconds(absl::ToUnixSeconds(t));
  return ts;
}

std::string Money(const v1::Cost& c) {
  return c.currency().empty() ? "-" : absl::StrFormat("%.4f %s", c.amount(), c.currency());
}

int Run(const UsageArgs& a) {
  auto endpoint = ResolveService(a.flags, "scheduler");
  if (!endpoint.ok()) return Fail(endpoint.status());
  v1::GetUsageRequest req;
  std::string err;
  absl::Time end = absl::Now();
  if (!a.end.empty()) {
    if (!absl::ParseTime(absl::RFC3339_full, a.end, &end, &err))
      return Fail(absl::InvalidArgumentError(absl::StrCat("--end: ", err)));
    *req.mutable_end_time() = Stamp(end);
  }
  absl::Time start;
  if (!a.start.empty()) {
    if (!absl::ParseTime(absl::RFC3339_full, a.start, &start, &err))
      return Fail(absl::InvalidArgumentError(absl::StrCat("--start: ", err)));
  } else {
    absl::Duration since;
    if (!absl::ParseDuration(a.since, &since) || since <= absl::ZeroDuration())
      return Fail(absl::InvalidArgumentError("--since: a duration such as 24h or 720h"));
    start = end - since;
  }
  *req.mutable_start_time() = Stamp(start);
  req.set_tenant(a.tenant);
  auto u = Call<v1::UsageService>(*endpoint, &v1::UsageService::Stub::GetUsage, req);
  if (!u.ok()) return Fail(u.status());
  if (a.flags.json) {
    std::cout << ToJson(*u) << "\n";
    return 0;
  }
  auto when = [](const google::protobuf::Timestamp& ts) {
    return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::FromUnixSeconds(ts.seconds()),
                            absl::UTCTimeZone());
  };
  std::cout << "usage of " << u->tenant() << " from " << when(u->start_time()) << " to "
            << when(u->end_time()) << "\n";
  if (u->jobs_size() > 0) {
    std::cout << absl::StrFormat("%-28s %-12s %14s %12s %16s %16s\n", "JOB", "STATE",
                                 "TRAINED_TOKENS", "ACCEL_HOURS", "COST", "ESTIMATED");
  }
  for (const auto& j : u->jobs()) {
    std::string state = v1::JobState_Name(j.state()).substr(std::string("JOB_STATE_").size());
    for (char& c : state) c = static_cast<char>(std::tolower(c));
    std::cout << absl::StrFormat("%-28s %-12s %14d %12.3f %16s %16s\n", j.job_id(), state,
                                 j.trained_tokens(), j.accelerator_seconds() / 3600.0,
                                 Money(j.cost()), Money(j.estimated_cost()));
  }
  if (u->deployments_size() > 0) {
    std::cout << absl::StrFormat("%-28s %12s %10s %14s %14s %16s\n", "DEPLOYMENT", "REPLICA_H",
                                 "REQUESTS", "PROMPT_TOKENS", "COMPL_TOKENS", "COST");
  }
  for (const auto& d : u->deployments()) {
    std::cout << absl::StrFormat("%-28s %12.3f %10d %14d %14d %16s\n",
                                 d.deployment_id() + (d.deleted() ? " (deleted)" : ""),
                                 d.replica_hours(), d.requests(), d.prompt_tokens(),
                                 d.completion_tokens(), Money(d.cost()));
  }
  const v1::UsageTotals& t = u->totals();
  std::cout << absl::StrFormat(
      "total: %d trained tokens, %.3f accelerator-hours, %.3f replica-hours, %d requests, %d "
      "prompt + %d completion tokens\n",
      t.trained_tokens(), t.accelerator_seconds() / 3600.0, t.replica_hours(), t.requests(),
      t.prompt_tokens(), t.completion_tokens());
  for (const auto& c : t.costs()) std::cout << "cost: " << Money(c) << "\n";
  for (const auto& b : t.unpriced_base_models()) std::cout << "unpriced base model: " << b << "\n";
  return 0;
}

}  // namespace

void AddUsageCommand(CLI::App* app, int* exit_code) {
  auto a = std::make_shared<UsageArgs>();
  auto* c = app->add_subcommand("usage", "Usage and cost of your tenant in a period");
  AddClientFlags(c, &a->flags, "scheduler");
  c->add_option("--since", a->since, "The period: the last DURATION before --end (e.g. 24h)")
      ->capture_default_str();
  c->add_option("--start", a->start, "The period's start (RFC 3339; instead of --since)");
  c->add_option("--end", a->end, "The period's end (RFC 3339; default: now)");
  c->add_option("--tenant", a->tenant, "The tenant to report (internal keys only)");
  c->callback([a, exit_code] { *exit_code = Run(*a); });
}

}  // namespace tunefleet::cli
