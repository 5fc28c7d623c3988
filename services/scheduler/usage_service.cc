#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "common/errors/error_details.h"
#include "services/scheduler/scheduler_service.h"

namespace tunefleet::scheduler {
namespace {

// Whose usage: a tenant key its own; an internal key the tenant it names
// (in the request, or acting for one).
absl::StatusOr<std::string> UsageTenant(const rpc::Principal& p, const std::string& asked) {
  if (p.internal()) {
    const std::string& t = !asked.empty() ? asked : p.tenant;
    if (t.empty()) return errors::FieldError("tenant", "an internal caller names the tenant to report");
    return t;
  }
  if (!asked.empty() && asked != p.tenant) {
    return absl::PermissionDeniedError(
        absl::StrCat("tenant: a tenant key reports only its own usage, not ", asked));
  }
  return p.tenant;
}

}  // namespace

grpc::ServerUnaryReactor* UsageServiceImpl::GetUsage(grpc::CallbackServerContext* context,
                                                     const v1::GetUsageRequest* request,
                                                     v1::UsageReport* response) {
  return Unary(context, auth_.Authenticate(*context), executor_, response,
               [this, request](const rpc::Principal& p) -> absl::StatusOr<v1::UsageReport> {
                 TF_ASSIGN_OR_RETURN(std::string tenant, UsageTenant(p, request->tenant()));
                 TF_ASSIGN_OR_RETURN(
                     Period period,
                     CheckPeriod(request->has_start_time(), request->start_time().seconds(),
                                 request->start_time().nanos(), request->has_end_time(),
                                 request->end_time().seconds(), request->end_time().nanos(),
                                 scheduler_->Now()));
                 return scheduler_->GetUsage(tenant, period.start, period.end);
               });
}

}  // namespace tunefleet::scheduler
