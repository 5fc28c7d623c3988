#include "common/rpc/client.h"

#include <algorithm>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/rpc/channel.h"
#include "common/rpc/status.h"

namespace tunefleet::rpc {
namespace {

// Half fixed, half random: many clients that lost the same server do not
// come back in step.
absl::Duration Jittered(absl::Duration backoff) {
  thread_local std::mt19937_64 rng(std::random_device{}());
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  return backoff / 2 + backoff / 2 * unit(rng);
}

absl::Status Cancelled(const absl::Status& last) {
  return absl::CancelledError(
      last.ok() ? "the call was cancelled"
                : absl::StrCat("the call was cancelled (last attempt: ", last.ToString(), ")"));
}

}  // namespace

void CallCancellation::Cancel() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  for (grpc::ClientContext* ctx : contexts_) ctx->TryCancel();
}

bool CallCancellation::cancelled() const {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

bool CallCancellation::Register(grpc::ClientContext* context) {
  absl::MutexLock lock(&mu_);
  if (cancelled_) return false;
  contexts_.insert(context);
  return true;
}

void CallCancellation::Unregister(grpc::ClientContext* context) {
  absl::MutexLock lock(&mu_);
  contexts_.erase(context);
}

bool CallCancellation::SleepFor(absl::Duration d) {
  absl::MutexLock lock(&mu_);
  return !mu_.AwaitWithTimeout(absl::Condition(&cancelled_), d);
}

bool IsRetryable(const CallOptions& options, const absl::Status& status) {
  if (status.ok()) return false;
  if (options.retry_every_error) return true;
  return status.code() == absl::StatusCode::kUnavailable ||
         (options.retry_deadline_exceeded &&
          status.code() == absl::StatusCode::kDeadlineExceeded);
}

absl::Status RunWithRetry(const CallOptions& options,
                          absl::FunctionRef<grpc::Status(grpc::ClientContext*)> attempt) {
  const absl::Time overall = absl::Now() + options.overall_timeout;
  absl::Duration backoff = options.initial_backoff;
  absl::Status last;
  for (int n = 1;; ++n) {
    absl::Time now = absl::Now();
    grpc::ClientContext ctx;
    PrepareContext(&ctx, options.api_key, std::min(options.timeout, overall - now),
                   options.on_behalf_of);
    if (options.cancel != nullptr && !options.cancel->Register(&ctx)) return Cancelled(last);
    last = FromGrpcStatus(attempt(&ctx));
    if (options.cancel != nullptr) {
      options.cancel->Unregister(&ctx);
      if (options.cancel->cancelled()) return Cancelled(last);
    }
    if (last.ok() || !IsRetryable(options, last)) return last;
    if (options.max_attempts > 0 && n >= options.max_attempts) return last;
    absl::Duration wait = std::min(Jittered(backoff), overall - absl::Now());
    if (wait <= absl::ZeroDuration()) return last;
    if (options.on_retry) options.on_retry(last, n, wait);
    if (options.cancel != nullptr) {
      if (!options.cancel->SleepFor(wait)) return Cancelled(last);
    } else {
      absl::SleepFor(wait);
    }
    backoff = std::min(backoff * 2, options.max_backoff);
  }
}

}  // namespace tunefleet::rpc
