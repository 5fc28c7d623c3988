// Client calls done one way everywhere (CLI, services dialling services,
// tests): a fresh context per attempt with a deadline and the API key,
// retries of UNAVAILABLE with exponential backoff and jitter, bounded by
// attempts and an overall deadline, cancellable from another thread, and the
// answer as an absl::Status with its google.rpc details (rpc::FromGrpcStatus).
//
// Retry rule: UNAVAILABLE is retried (the call did not reach a server that
// would act on it: no connection, a server going down). DEADLINE_EXCEEDED is
// retried only when the caller says the call is idempotent
// (`retry_deadline_exceeded`): an attempt that timed out may have taken
// effect. Every other code (INVALID_ARGUMENT, NOT_FOUND, ...) is the answer.
// Loops that must keep going whatever the answer (a controller re-registering
// with its scheduler) set `retry_every_error` and a cancellation.
#pragma once

#include <functional>
#include <memory>
#include <set>
#include <string>
#include <utility>

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/support/status.h>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tunefleet::rpc {

// Lets another thread abandon calls: attempts in flight are cancelled, a
// backoff wait ends at once, later calls fail with CANCELLED. One-shot.
// Thread-safe.
class CallCancellation {
 public:
  void Cancel();
  bool cancelled() const;
  // False (and nothing registered) when already cancelled.
  bool Register(grpc::ClientContext* context);
  void Unregister(grpc::ClientContext* context);
  // Waits `d`; false when cancelled before or meanwhile.
  bool SleepFor(absl::Duration d);

 private:
  mutable absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::set<grpc::ClientContext*> contexts_ ABSL_GUARDED_BY(mu_);
};

struct CallOptions {
  // Deadline of each attempt.
  absl::Duration timeout = absl::Seconds(10);
  // Attempts in all; <= 0: until it succeeds, the overall deadline passes
  // or `cancel` fires.
  int max_attempts = 4;
  absl::Duration initial_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(5);
  // Bounds all attempts and waits together.
  absl::Duration overall_timeout = absl::InfiniteDuration();
  // Only for idempotent calls (see the retry rule above).
  bool retry_deadline_exceeded = false;
  bool retry_every_error = false;
  // `authorization: Bearer <api_key>`; an internal caller acting for a
  // tenant also names it (x-tunefleet-tenant).
  std::string api_key;
  std::string on_behalf_of;
  CallCancellation* cancel = nullptr;
  // Called for each failed attempt that will be retried (to log it, count
  // it); `attempt` counts from 1.
  std::function<void(const absl::Status& status, int attempt, absl::Duration backoff)> on_retry;
};

// Whether `status` is retried under `options`.
bool IsRetryable(const CallOptions& options, const absl::Status& status);

// The loop behind CallWithRetry (not a template, so that it lives in one .cc).
absl::Status RunWithRetry(const CallOptions& options,
                          absl::FunctionRef<grpc::Status(grpc::ClientContext*)> attempt);

// Runs `attempt(grpc::ClientContext*) -> grpc::Status` until it succeeds or
// the retry rule says stop. Each attempt gets a fresh context with its
// deadline and metadata, and must leave its results where the caller reads
// them only on success (each attempt starts over).
template <typename Fn>
absl::Status CallWithRetry(const CallOptions& options, Fn&& attempt) {
  return RunWithRetry(options, absl::FunctionRef<grpc::Status(grpc::ClientContext*)>(attempt));
}

// One unary method of a generated stub:
//   CallUnary(stub, &Stub::GetFile, request, options)
template <typename Stub, typename Req, typename Resp>
absl::StatusOr<Resp> CallUnary(
    Stub* stub, grpc::Status (Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
    const Req& request, const CallOptions& options) {
  Resp response;
  absl::Status s = CallWithRetry(options, [&](grpc::ClientContext* ctx) {
    response.Clear();
    return (stub->*method)(ctx, request, &response);
  });
  if (!s.ok()) return s;
  return response;
}

// A service's stub over a shared channel, with the options every call
// starts from. Thread-safe (stubs are).
template <typename Service>
class TypedClient {
 public:
  using Stub = typename Service::Stub;
  TypedClient(std::shared_ptr<grpc::Channel> channel, CallOptions defaults)
      : channel_(std::move(channel)), stub_(Service::NewStub(channel_)),
        defaults_(std::move(defaults)) {}

  template <typename Req, typename Resp>
  absl::StatusOr<Resp> Call(grpc::Status (Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
                            const Req& request) const {
    return CallUnary(stub_.get(), method, request, defaults_);
  }
  template <typename Req, typename Resp>
  absl::StatusOr<Resp> Call(grpc::Status (Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
                            const Req& request, const CallOptions& options) const {
    return CallUnary(stub_.get(), method, request, options);
  }

  Stub* stub() const { return stub_.get(); }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }
  const CallOptions& defaults() const { return defaults_; }

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<Stub> stub_;
  CallOptions defaults_;
};

}  // namespace tunefleet::rpc
